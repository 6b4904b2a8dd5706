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


async def _routed(store: AnyStore, key: str) -> int:
    """A report classified by its stage's job: 'routed', its dedupe job waiting."""
    result = await store.submit(_message(key), b"raw", "text/plain")
    (classify,) = await store.lease("classify", 1, 30)

    async def routed(tx) -> None:  # type: ignore[no-untyped-def]
        await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (result.report_id,))
        await tx.enqueue("dedupe", result.report_id)

    assert await store.finish(classify, routed)
    return result.report_id


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
    report_id = await _routed(store, "b")
    (dedupe,) = await store.lease("dedupe", 1, 30)
    await store.fail(dedupe, "index unavailable", retry_in=0, dead=True)
    assert await _status(store, report_id) == "failed"
    assert await store.replay_dead("dedupe") == 1
    assert await _status(store, report_id) == "routed"
    (again,) = await store.lease("dedupe", 1, 30)
    assert again.report_id == report_id


async def test_a_replay_after_an_undecodable_jobs_second_burial_restores_the_status_before_the_first(
        store: AnyStore) -> None:
    """A stage job whose payload does not decode is buried by its lease (report failed, previous status routed);
    replayed as it is, it is buried again and that dead letter finds the report failed. Once its payload is mended,
    its replay gives the report back 'routed', the status its dedupe job takes: it was left 'received', which no
    stage would ever take on with a dedupe job."""
    report_id = await _routed(store, "c")
    (job,) = await store.fetchall("SELECT id, payload FROM jobs WHERE stage='dedupe'")
    async with store.transaction() as tx:
        await tx.execute("UPDATE jobs SET payload=? WHERE id=?", ("{", job["id"]))
    for _ in range(2):  # buried by its lease, replayed as it is, buried again
        assert await store.lease("dedupe", 1, 30) == []
        assert await _status(store, report_id) == "failed"
        assert await store.queue.replay(ids=[job["id"]]) == 1
    assert await store.lease("dedupe", 1, 30) == []
    async with store.transaction() as tx:
        await tx.execute("UPDATE jobs SET payload=? WHERE id=?", (job["payload"], job["id"]))
    assert await store.queue.replay(ids=[job["id"]]) == 1
    assert await _status(store, report_id) == "routed"
    (again,) = await store.lease("dedupe", 1, 30)
    assert again.report_id == report_id


async def test_an_undecodable_side_job_is_recorded_on_its_report_and_leaves_its_status(store: AnyStore) -> None:
    """A side job (a reporter's follow-up) whose payload does not decode is buried by its lease with the event
    its death leaves on the report (it left none); the report's status is its stages' business."""
    result = await store.submit(_message("d"), b"raw", "text/plain")
    async with store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='dispatched' WHERE id=?", (result.report_id,))
        await tx.enqueue("reporter_follow_up", result.report_id, {"text": "Vẫn chưa sửa", "channel": "email"})
        await tx.execute("UPDATE jobs SET payload='{' WHERE stage='reporter_follow_up'")
    assert await store.lease("reporter_follow_up", 1, 30) == []
    assert await _status(store, result.report_id) == "dispatched"
    (event,) = await store.fetchall("SELECT data FROM events WHERE report_id=? AND kind='side_job_dead'",
                                    (result.report_id,))
    assert "payload does not decode" in event["data"]
