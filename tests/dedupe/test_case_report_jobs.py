"""A case report job (DedupeJob.case_report: dispatch opened or moved a case onto an incident it was not queued for)
keeps the incident naming its case's report (dispatch_report_id). It died after [queue] max_attempts transient
failures like any stage job, with a dead letter only: the incident went on naming another report, nobody told.
Now it is retried as a closing is (dedupe.service.keeps_following_its_case), and dies only for a permanent cause,
with a `case_report_dead` alert on the case's report (SQLite and PostgreSQL)."""
from __future__ import annotations

import json

from dedupe import schema
from dedupe.matcher import IncidentMatcher
from dedupe.service import STAGE
from ingest.clock import FakeClock
from ingest.jobs import DedupeJob, case_report_subject
from ingest.store import Store
from ingest.worker import StageWorker
from tests.dedupe.test_case_state_versions import Contended, retrying_worker
from tests.dedupe.test_instances import TEXT, pg_factory  # noqa: F401
from tests.dedupe.test_stage import HOUR, T0, _classified, _vec
from tests.stores import StoreFactory, store_factory  # noqa: F401

OTHER = "Ngập nước sâu trên đường Nguyễn Văn Cừ quận 1 sau mưa"


async def two_incidents(store_factory: StoreFactory) -> tuple[Store, StageWorker, Contended, int, int, str]:
    """Two reports, each opening its incident and case: (store, worker, blocks, first, second, first's incident)."""
    store = await store_factory.open(FakeClock(T0 + 2 * HOUR), {"dedupe": schema.MIGRATIONS})
    blocks = Contended(IncidentMatcher(store))
    worker = retrying_worker(store, blocks)
    first = await _classified(store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
    second = await _classified(store, "2", T0 + 60, OTHER, topic="flooding", district="quan-1", vector=_vec(2))
    while await worker.run_once():
        pass
    inc = (await store.get_report(first)).incident_id  # type: ignore[union-attr]
    assert inc is not None and inc != (await store.get_report(second)).incident_id  # type: ignore[union-attr]
    return store, worker, blocks, first, second, inc


async def case_moved(store: Store, inc: str, report_id: int) -> None:
    """What dispatch commits when it moves the case of `report_id` onto `inc` (dispatch/cases.py
    _tell_case_report)."""
    async with store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='dispatched' WHERE id=?", (report_id,))  # its case opened
        await tx.enqueue(STAGE, report_id, DedupeJob(incident_id=inc, case_report=True),
                         subject=case_report_subject(inc))


async def test_a_case_report_job_failing_for_a_transient_cause_is_retried_past_max_attempts_until_applied(
        store_factory: StoreFactory) -> None:
    store, worker, blocks, first, second, inc = await two_incidents(store_factory)
    blocks.down = True
    await case_moved(store, inc, second)
    for _ in range(10):  # three times max_attempts
        store.clock.advance(61.0)  # type: ignore[attr-defined]
        assert await worker.run_once() == 1
        job = await store.fetchone("SELECT state, attempts, available_at FROM jobs WHERE subject=?",
                                   (case_report_subject(inc),))
        assert job["state"] == "ready", job["attempts"]  # before: 'dead' at attempt 3
        assert job["available_at"] <= store.clock.now() + 60.0  # type: ignore[attr-defined]
    blocks.down = False
    store.clock.advance(61.0)  # type: ignore[attr-defined]
    assert await worker.run_once() == 1
    row = await store.fetchone("SELECT dispatch_report_id FROM incidents WHERE id=?", (inc,))
    assert row["dispatch_report_id"] == second
    assert not await store.fetchall("SELECT id FROM events WHERE kind='alert'")
    assert not await store.queue.dead_letters(STAGE)


async def test_a_case_report_job_dead_for_a_permanent_cause_alerts_the_operators(
        store_factory: StoreFactory) -> None:
    """Dead only for a permanent cause (an incident this store does not know; a payload a newer build wrote): an
    alert on the case's report naming the incident, besides the dead letter (before: the dead letter was all)."""
    store, worker, _, first, second, inc = await two_incidents(store_factory)
    await case_moved(store, "INC-999999", second)
    assert await worker.run_once() == 1
    newer = json.dumps({"type": "DedupeJob", "schema_version": 99, "incident_id": inc, "case_report": True})
    async with store.transaction() as tx:
        job_id = await tx.enqueue(STAGE, second, None, subject=case_report_subject(inc))
        await tx.execute("UPDATE jobs SET payload=? WHERE id=?", (newer, job_id))
    assert await worker.run_once() == 0  # its lease buries it
    assert [d.subject for d in await store.queue.dead_letters(STAGE)] == [case_report_subject(inc),
                                                                          case_report_subject("INC-999999")]
    alerts = [json.loads(r["data"]) for r in await store.fetchall(
        "SELECT data FROM events WHERE kind='alert' AND report_id=? ORDER BY id", (second,))]
    assert [(a["alert"], a["incident_id"]) for a in alerts] == [("case_report_dead", "INC-999999"),
                                                                 ("case_report_dead", inc)]
    assert (await store.get_report(second)).status == "dispatched"  # type: ignore[union-attr]
