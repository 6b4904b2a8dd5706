"""A dead job marks its report `failed` only while the report's own pipeline is unfinished; replay restores it."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ingest.records import InboundMessage
from tests.stores import AnyStore, StoreFactory, store_factory  # noqa: F401  (the parametrised fixture)

@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[AnyStore]:
    yield await store_factory.open()


def _message(key: str) -> InboundMessage:
    return InboundMessage(channel="app", channel_instance="app", idempotency_key=key,
                          received_at="2026-09-01T08:00:00+07:00", text="Đèn đường tắt")


async def _status(store: AnyStore, report_id: int) -> str:
    row = await store.fetchone("SELECT status FROM reports WHERE id=?", (report_id,))
    assert row is not None
    return str(row["status"])


async def test_dead_side_job_leaves_dispatched_report_alone(store: AnyStore) -> None:
    result = await store.submit(_message("a"), b"raw", "text/plain")
    async with store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='dispatched' WHERE id=?", (result.report_id,))
        await tx.enqueue("notify", result.report_id, {"template": "ack"})
    (job,) = await store.lease("notify", 1, 30)
    await store.fail(job, "SMS gateway refused", retry_in=0, dead=True)
    assert await _status(store, result.report_id) == "dispatched"
    dead = await store.fetchone("SELECT state, last_error FROM jobs WHERE id=?", (job.id,))
    assert dead is not None and dead["state"] == "dead" and "SMS" in dead["last_error"]


async def test_replay_restores_the_status_before_failure(store: AnyStore) -> None:
    result = await store.submit(_message("b"), b"raw", "text/plain")
    (classify,) = await store.lease("classify", 1, 30)

    async def routed(tx) -> None:  # type: ignore[no-untyped-def]
        await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (result.report_id,))
        await tx.enqueue("dedupe", result.report_id)

    assert await store.finish(classify, routed)
    (dedupe,) = await store.lease("dedupe", 1, 30)
    await store.fail(dedupe, "index unavailable", retry_in=0, dead=True)
    assert await _status(store, result.report_id) == "failed"
    assert await store.replay_dead("dedupe") == 1
    assert await _status(store, result.report_id) == "routed"
    (again,) = await store.lease("dedupe", 1, 30)
    assert again.report_id == result.report_id
