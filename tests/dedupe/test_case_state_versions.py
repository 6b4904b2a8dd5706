"""A case closed, disputed and closed again (C1, R1, C2) while dedupe lagged: the incident ends as the case's latest
state, with C2's date and result, whatever order its jobs are applied in. Each job carries the case's state version
(DedupeJob.version, as dispatch/cases.py writes it). Before versions: a closing was skipped for a reopening queued
before it still leased (same SQLite batch, or another instance), so the incident stayed open forever; a reopening
applied after the case closed again was skipped, so a report received while the disputed case ran opened a
second case."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from config.schema import QueueConfig
from dedupe import schema
from dedupe.blocks import LocalBlocks
from dedupe.matcher import IncidentMatcher
from dedupe.service import STAGE, DedupeStage, worker_settings
from ingest.clock import FakeClock
from ingest.errors import TransientError
from ingest.jobs import DedupeJob, closing_subject, reopening_subject
from ingest.store import Store
from ingest.worker import StageWorker, WorkerSettings
from ops.metrics import KEEPS_TRYING_STAGES, OpsMetrics
from tests.dedupe.test_instances import TEXT, Instance, pg_factory  # noqa: F401
from tests.dedupe.test_stage import HOUR, T0, _classified, _vec
from tests.stores import StoreFactory, store_factory  # noqa: F401


async def changed(store: Store, rid: int, inc: str, version: int, *, at: float | None = None,
                  closed_as: str = "resolved") -> None:
    """What dispatch commits when the case of `inc` (opened by report `rid`) closes at `at` (None: reopens)."""
    async with store.transaction() as tx:
        await tx.execute("UPDATE reports SET status=? WHERE id=?", ("dispatched" if at is None else "closed", rid))
        if at is None:
            job = DedupeJob(incident_id=inc, incident_state="open", version=version)
        else:
            job = DedupeJob(incident_id=inc, incident_state="closed", closed_as=closed_as, at=at, version=version)
        await tx.enqueue(STAGE, rid, job, subject=(reopening_subject if at is None else closing_subject)(inc))


async def started(store_factory: StoreFactory, settings: WorkerSettings) -> tuple[Store, StageWorker, int, str]:
    """A store whose first report opened an incident: (store, dedupe worker, report, incident)."""
    store = await store_factory.open(FakeClock(T0 + 2 * HOUR), {"dedupe": schema.MIGRATIONS})
    worker = StageWorker(store, STAGE, DedupeStage(store, IncidentMatcher(store)).handle, settings)
    rid = await _classified(store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
    assert await worker.run_once() == 1
    return store, worker, rid, (await store.get_report(rid)).incident_id  # type: ignore[union-attr,return-value]


async def test_closing_reopening_and_new_closing_in_one_batch_leave_the_incident_closed(
        store_factory: StoreFactory) -> None:
    # As DedupeService runs on SQLite: one batch, committed at once.
    store, worker, rid, inc = await started(store_factory, WorkerSettings(batch=16, group_commit=True, group_size=8))
    await changed(store, rid, inc, 1, at=T0 + 100)
    await changed(store, rid, inc, 2)
    await changed(store, rid, inc, 3, at=T0 + 300, closed_as="refused")
    while await worker.run_once():
        pass
    row = await store.fetchone("SELECT state, closed_as, closed_at FROM incidents WHERE id=?", (inc,))
    # Open, a next report of the problem would join it as a duplicate of a closed case: no result, ever.
    assert (row["state"], row["closed_as"], row["closed_at"]) == ("closed", "refused", T0 + 300)


async def test_a_report_received_while_the_disputed_case_ran_shares_its_new_result(store_factory: StoreFactory) -> None:
    store, worker, rid, inc = await started(store_factory, WorkerSettings(batch=1))
    await changed(store, rid, inc, 1, at=T0 + 100)
    assert await worker.run_once() == 1  # the case closed; dedupe applied it at once
    await changed(store, rid, inc, 2)  # the reporter disputes (the reopening queued)
    # A neighbour reports the same blocked drain while the case runs again (queued behind the reopening) ...
    during = await _classified(store, "2", T0 + 200, TEXT, topic="drainage", district="quan-5",
                               vector=_vec(2, _vec(1), 0.02))
    await changed(store, rid, inc, 3, at=T0 + 300)  # ... and the agency closes it again before dedupe caught up
    while await worker.run_once():
        pass
    # Received while the case ran, it belongs to that case (closed with it, told its result), not a new one.
    report = await store.get_report(during)
    assert report is not None and (report.incident_id, report.status) == (inc, "closed")
    assert not await store.fetchall("SELECT id FROM jobs WHERE stage='dispatch' AND report_id=?", (during,))
    row = await store.fetchone("SELECT state, closed_at FROM incidents WHERE id=?", (inc,))
    assert (row["state"], row["closed_at"]) == ("closed", T0 + 300)


async def test_a_new_closing_is_not_skipped_for_the_earlier_reopening_another_instance_holds(pg_factory) -> None:
    # PostgreSQL, two instances, one job a transaction: b holds the reopening's lease while a applies the case's
    # new closing; b applies the reopening last, stale.
    try:
        a, b = await Instance.start(pg_factory), await Instance.start(pg_factory)
        rid = await _classified(a.store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
        assert await a.worker.run_once() == 1
        inc = (await a.store.get_report(rid)).incident_id  # type: ignore[union-attr]
        assert inc is not None
        await changed(a.store, rid, inc, 1, at=T0 + 100)
        await changed(a.store, rid, inc, 2)
        assert await a.worker.run_once() == 1  # C1: overtaken by the waiting reopening
        (reopening,) = await b.store.lease(STAGE, 1, 60)  # b takes R1 ...
        await changed(a.store, rid, inc, 3, at=T0 + 300, closed_as="refused")  # ... the case closes again: C2
        assert await a.worker.run_once() == 1  # C2 on a, while b still holds R1
        report = await b.store.get_report(reopening.report_id)
        assert report is not None
        assert await b.store.finish(reopening, await b.stage.handle(reopening, report))
        row = await a.store.fetchone("SELECT state, closed_as FROM incidents WHERE id=?", (inc,))
        assert (row["state"], row["closed_as"]) == ("closed", "refused")
    finally:
        await pg_factory.close_all()


async def test_a_change_queued_before_versions_decodes_and_is_applied_until_a_versioned_one_was(
        store_factory: StoreFactory) -> None:
    # A store upgraded with closing and reopening jobs still waiting: their payloads carry no version (None), and
    # the incident starts at version 0 (migration 4). They apply in queue order until the first versioned change
    # (queued after the upgrade, so after them all) was applied; then they are stale.
    store, worker, rid, inc = await started(store_factory, WorkerSettings(batch=1))
    old = json.dumps({"type": "DedupeJob", "schema_version": 1, "incident_id": inc, "incident_state": "closed"})
    async with store.transaction() as tx:
        await tx.enqueue(STAGE, rid, json.loads(old))
    assert await worker.run_once() == 1
    row = await store.fetchone("SELECT state, state_version FROM incidents WHERE id=?", (inc,))
    assert (row["state"], row["state_version"]) == ("closed", 0)
    await changed(store, rid, inc, 1)  # after the upgrade: the dispute's reopening, version 1
    assert await worker.run_once() == 1
    async with store.transaction() as tx:  # the old closing replayed from the dead letters: stale
        await tx.enqueue(STAGE, rid, json.loads(old))
    assert await worker.run_once() == 1
    row = await store.fetchone("SELECT state, state_version FROM incidents WHERE id=?", (inc,))
    assert (row["state"], row["state_version"]) == ("open", 1)


class Contended(LocalBlocks):
    """The district's lock out of reach while `down` (another instance holding it, a store hiccup): every decision
    in it fails with a TransientError, as SharedBlocks' do."""

    def __init__(self, matcher: IncidentMatcher) -> None:
        super().__init__(matcher)
        self.down = False

    async def enter(self, tx: Any, district: str | None) -> None:
        if self.down:
            raise TransientError("district lock out of reach")


def retrying_worker(store: Store, blocks: LocalBlocks) -> StageWorker:
    """The dedupe worker as DedupeService runs it (worker_settings: a closing, reopening or case report job kept past
    max_attempts for a transient cause) with [queue] max_attempts 3, one job a batch, and the backoff capped at a
    minute, so that advancing the clock 61 s makes the next retry due."""
    settings = replace(worker_settings(QueueConfig(max_attempts=3, batch=1), blocks), backoff_cap=60.0)
    return StageWorker(store, STAGE, DedupeStage(store, blocks.matcher, blocks).handle, settings)


async def retrying_incident(store_factory: StoreFactory) -> tuple[Store, StageWorker, Contended, int, str]:
    """A store whose first report opened an incident through `retrying_worker`, its district lock in reach until the
    test takes it away: (store, worker, blocks, report, incident)."""
    store = await store_factory.open(FakeClock(T0 + 2 * HOUR), {"dedupe": schema.MIGRATIONS})
    blocks = Contended(IncidentMatcher(store))
    worker = retrying_worker(store, blocks)
    rid = await _classified(store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
    assert await worker.run_once() == 1
    inc = (await store.get_report(rid)).incident_id  # type: ignore[union-attr]
    assert inc is not None
    return store, worker, blocks, rid, inc


async def test_a_closing_failing_for_a_transient_cause_is_retried_past_max_attempts_until_applied(
        store_factory: StoreFactory) -> None:
    """An incident-state job never dies of a transient cause: dead after `max_attempts`, the incident stayed open
    under a closed case and a repeat of the fixed problem was swallowed into it. It is retried with capped backoff
    until the cause passes, then applied."""
    store, worker, blocks, rid, inc = await retrying_incident(store_factory)
    blocks.down = True
    await changed(store, rid, inc, 1, at=T0 + 100)
    for _ in range(10):  # three times max_attempts
        store.clock.advance(61.0)  # type: ignore[attr-defined]
        assert await worker.run_once() == 1
        job = await store.fetchone("SELECT state, attempts, available_at FROM jobs WHERE subject=?",
                                   (closing_subject(inc),))
        assert job["state"] == "ready", job["attempts"]
        assert job["available_at"] <= store.clock.now() + 60.0  # type: ignore[attr-defined]
    blocks.down = False
    store.clock.advance(61.0)  # type: ignore[attr-defined]
    assert await worker.run_once() == 1
    row = await store.fetchone("SELECT state, closed_as FROM incidents WHERE id=?", (inc,))
    assert (row["state"], row["closed_as"]) == ("closed", "resolved")
    assert not await store.fetchall("SELECT id FROM events WHERE kind='alert'")


async def test_an_incident_state_job_dead_for_a_permanent_cause_alerts_the_operators(
        store_factory: StoreFactory) -> None:
    """Dead only for a permanent cause (a state this build does not know; a payload written by a newer build that
    does not decode): the incident no longer follows its case, so operators get an alert on the case's report
    naming the incident, besides the dead letter (no alert before: the dead letter was all)."""
    store, worker, rid, inc = await started(store_factory, worker_settings(QueueConfig(max_attempts=3, batch=1),
                                                                           LocalBlocks(None)))  # type: ignore[arg-type]
    async with store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='closed' WHERE id=?", (rid,))  # as dispatch closes the case
        await tx.enqueue(STAGE, rid, DedupeJob(incident_id=inc, incident_state="paused", version=1),
                         subject=closing_subject(inc))
    assert await worker.run_once() == 1
    newer = json.dumps({"type": "DedupeJob", "schema_version": 99, "incident_id": inc, "incident_state": "closed"})
    async with store.transaction() as tx:
        job_id = await tx.enqueue(STAGE, rid, None, subject=reopening_subject(inc))
        await tx.execute("UPDATE jobs SET payload=? WHERE id=?", (newer, job_id))
    assert await worker.run_once() == 0  # its lease buries it
    assert [d.subject for d in await store.queue.dead_letters(STAGE)] == [reopening_subject(inc),
                                                                          closing_subject(inc)]
    alerts = [json.loads(r["data"]) for r in await store.fetchall(
        "SELECT data FROM events WHERE kind='alert' AND report_id=? ORDER BY id", (rid,))]
    assert [(a["alert"], a["incident_id"], a["change"]) for a in alerts] == [
        ("incident_state_dead", inc, "close"), ("incident_state_dead", inc, "reopen")]
    assert (await store.get_report(rid)).status == "closed"  # type: ignore[union-attr]


class Broken(LocalBlocks):
    """A decision that fails the same way every time (a bug, a bad row): not a cause that passes by itself."""

    async def enter(self, tx: Any, district: str | None) -> None:
        raise KeyError("district")


async def test_a_closing_failing_for_a_cause_that_never_passes_dies_after_max_attempts_with_its_alert(
        store_factory: StoreFactory) -> None:
    """Retried for ever only for a transient cause: a closing that fails with a bug's error was retried silently
    for ever (no dead letter, no alert); it dies after `max_attempts` into the dead letters, with the operators'
    incident_state_dead alert."""
    store, _, blocks, rid, inc = await retrying_incident(store_factory)
    worker = retrying_worker(store, Broken(blocks.matcher))
    await changed(store, rid, inc, 1, at=T0 + 100)
    for _ in range(10):
        store.clock.advance(61.0)  # type: ignore[attr-defined]
        if not await worker.run_once():
            break
    job = await store.fetchone("SELECT state, attempts FROM jobs WHERE subject=?", (closing_subject(inc),))
    assert (job["state"], job["attempts"]) == ("dead", 3)
    alerts = [json.loads(r["data"])["alert"] for r in await store.fetchall("SELECT data FROM events WHERE kind='alert'")]
    assert alerts == ["incident_state_dead"]


def retrying_past_limit(text: str) -> dict[str, float]:
    """The jobs_retrying_past_limit gauge of a /metrics text, per stage."""
    prefix = 'hcmc1022_jobs_retrying_past_limit{stage="'
    return {line[len(prefix):].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


async def test_a_closing_retried_past_max_attempts_is_counted_on_metrics_until_applied(
        store_factory: StoreFactory) -> None:
    """A job kept retrying past `max_attempts` has no dead letter and no alert: only a log line said so, once.
    /metrics counts it (jobs_retrying_past_limit{stage}) from the attempt where another job would have died until
    it is applied, every stage listed from the first scrape (0)."""
    store, worker, blocks, rid, inc = await retrying_incident(store_factory)
    metrics = OpsMetrics(store, cache_seconds=0, max_attempts=3)
    assert retrying_past_limit(await metrics.render()) == dict.fromkeys(KEEPS_TRYING_STAGES, 0.0)
    blocks.down = True
    await changed(store, rid, inc, 1, at=T0 + 100)
    seen = []
    for _ in range(6):
        store.clock.advance(61.0)  # type: ignore[attr-defined]
        assert await worker.run_once() == 1
        seen.append(retrying_past_limit(await metrics.render())["dedupe"])
    assert seen == [0, 0, 1, 1, 1, 1]  # from the third failure on, where max_attempts 3 would have killed it
    blocks.down = False
    store.clock.advance(61.0)  # type: ignore[attr-defined]
    assert await worker.run_once() == 1
    assert retrying_past_limit(await metrics.render()) == dict.fromkeys(KEEPS_TRYING_STAGES, 0.0)
