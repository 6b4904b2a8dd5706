"""Incident decisions when reports are not matched in arrival order, and when several instances share one
PostgreSQL store (issue 20): each instance has its own window, so what another instance decided must reach it
from the store, and two instances deciding about one place at once must not each open an incident."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from classifier import schema as classifier_schema
from classifier.review.decisions import decide
from config.directory import load_directory
from dedupe import schema
from dedupe.blocks import SharedBlocks
from dedupe.matcher import IncidentMatcher
from dedupe.service import STAGE, DedupeStage
from ingest.clock import FakeClock
from ingest.jobs import DedupeJob, reopening_subject
from ingest.store import Tx
from ingest.worker import StageWorker, WorkerSettings
from tests.dedupe.test_stage import HOUR, T0, _classified, _vec
from tests.stores import AnyStore, StoreFactory, store_factory  # noqa: F401  (the parametrised fixture)

TEXT = "Cống thoát nước đường Ngô Gia Tự bị rác bít kín, mưa xuống là ngập nửa bánh xe"


async def _drain(store: AnyStore, matcher: IncidentMatcher, batch: int = 16) -> None:
    worker = StageWorker(store, STAGE, DedupeStage(store, matcher).handle, WorkerSettings(batch=batch))
    while await worker.run_once():
        pass


async def test_a_report_matched_after_a_later_report_of_its_incident_joins_it(store_factory: StoreFactory) -> None:
    # The later report was classified first (by the faster instance, or the earlier one's job came back only
    # when a killed instance's lease expired): the earlier report, matched second, must find it.
    store = await store_factory.open(FakeClock(T0 + 2 * HOUR), {"dedupe": schema.MIGRATIONS})
    base = _vec(1)
    later = await _classified(store, "later", T0 + 0.5 * HOUR, TEXT, topic="drainage", district="quan-5",
                              vector=base, street="ngo gia tu")
    earlier = await _classified(store, "earlier", T0, TEXT, topic="drainage", district="quan-5",
                                vector=_vec(2, base, 0.02), street="ngo gia tu")
    await _drain(store, IncidentMatcher(store), batch=1)
    first, second = [await store.get_report(i) for i in (later, earlier)]
    assert first is not None and second is not None
    assert first.incident_id == second.incident_id == "INC-000001"
    assert second.status == "duplicate"


class Instance:
    """One daemon's dedupe stage on the shared PostgreSQL store: its own connections, window and worker."""

    def __init__(self, store: AnyStore) -> None:
        self.store = store
        self.matcher = IncidentMatcher(store)
        self.blocks = SharedBlocks(self.matcher)
        self.stage = DedupeStage(store, self.matcher, self.blocks)
        self.worker = StageWorker(store, STAGE, self.stage.handle, WorkerSettings(batch=1))

    @classmethod
    async def start(cls, factory: StoreFactory) -> Instance:
        instance = cls(await factory.open(FakeClock(T0 + 2 * HOUR), {"dedupe": schema.MIGRATIONS}))
        await instance.blocks.rebuild(instance.store)
        return instance

    async def decide_and_hold(self, release: asyncio.Event) -> tuple[asyncio.Task[bool], asyncio.Event]:
        """Decide the next job in a transaction left open until `release` (a decision under way elsewhere)."""
        (job,) = await self.store.lease(STAGE, 1, 60)
        report = await self.store.get_report(job.report_id)
        assert report is not None
        writes = await self.stage.handle(job, report)
        assert writes is not None
        decided = asyncio.Event()

        async def held(tx: Tx) -> None:
            await writes(tx)
            decided.set()
            await release.wait()
        task = asyncio.create_task(self.store.finish(job, held))
        await asyncio.wait_for(decided.wait(), 30)
        return task, decided


async def _incidents(store: AnyStore, *report_ids: int) -> list[str | None]:
    return [(await store.get_report(i)).incident_id for i in report_ids]  # type: ignore[union-attr]


async def _until_waiting(store: AnyStore, deciding: asyncio.Task[int]) -> None:
    """Until a connection to the test's database waits for a lock (the other instance's decision, ordered after
    the open one), or `deciding` ended without waiting (then the test's assertions see what it decided). Polled
    rather than slept on: without the lock the decision has ended by then on any machine, however loaded."""
    async def waiting() -> None:
        while not deciding.done() and not await store.fetchone(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"):
            await asyncio.sleep(0.01)
    await asyncio.wait_for(waiting(), 30)


async def test_a_closing_retried_after_the_reopening_leaves_the_incident_open(store_factory: StoreFactory) -> None:
    # One instance: the closing's first attempt failed (or its lease lapsed) and it comes back after the dispute's
    # reopening, queued behind it, was applied. The case runs again: the incident stays open.
    store = await store_factory.open(FakeClock(T0 + 2 * HOUR), {"dedupe": schema.MIGRATIONS})
    stage = DedupeStage(store, IncidentMatcher(store))
    rid = await _classified(store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
    worker = StageWorker(store, STAGE, stage.handle, WorkerSettings(batch=1))
    assert await worker.run_once() == 1
    inc = (await store.get_report(rid)).incident_id  # type: ignore[union-attr]
    async with store.transaction() as tx:  # dispatch: the case closes
        await tx.execute("UPDATE reports SET status='closed' WHERE id=?", (rid,))
        await tx.enqueue(STAGE, rid, DedupeJob(incident_id=inc, incident_state="closed", closed_as="resolved",
                                               version=1, at=T0 + 100))
    (closing,) = await store.lease(STAGE, 1, 60)  # its attempt, to be finished after the reopening
    async with store.transaction() as tx:  # the reporter disputes
        await tx.execute("UPDATE reports SET status='dispatched' WHERE id=?", (rid,))
        await tx.enqueue(STAGE, rid, DedupeJob(incident_id=inc, incident_state="open", version=2),
                         subject=reopening_subject(inc))
    assert await worker.run_once() == 1  # the reopening
    report = await store.get_report(closing.report_id)
    assert report is not None
    assert await store.finish(closing, await stage.handle(closing, report))
    assert (await store.fetchone("SELECT state FROM incidents WHERE id=?", (inc,)))["state"] == "open"


@pytest.fixture
async def pg_factory(tmp_path: Path, pg_url: str) -> AsyncIterator[StoreFactory]:
    # every instance a test starts is closed here, so the tests hold no try/finally of their own
    factory = StoreFactory("postgresql", tmp_path, pg_url)
    yield factory
    await factory.close_all()


async def test_an_instance_finds_the_incident_another_instance_opened_after_its_window_was_built(
        pg_factory: StoreFactory) -> None:
    a, b = await Instance.start(pg_factory), await Instance.start(pg_factory)
    base = _vec(1)
    first = await _classified(a.store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=base)
    second = await _classified(b.store, "2", T0 + 60, TEXT, topic="drainage", district="quan-5",
                               vector=_vec(2, base, 0.02))
    assert await a.worker.run_once() == 1
    assert await b.worker.run_once() == 1
    assert await _incidents(a.store, first, second) == ["INC-000001", "INC-000001"]


@pytest.mark.parametrize("district", ["quan-5", None])
async def test_two_instances_deciding_about_one_place_at_once_share_one_incident(
        pg_factory: StoreFactory, district: str | None) -> None:
    # Instance a has decided about the first report and not committed yet when b takes the second (with a
    # district, or without one: it could be any district's). b must wait for a's decision and join it.
    a, b = await Instance.start(pg_factory), await Instance.start(pg_factory)
    base = _vec(1)
    first = await _classified(a.store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=base)
    release = asyncio.Event()
    committing, _ = await a.decide_and_hold(release)
    second = await _classified(b.store, "2", T0 + 60, TEXT, topic="drainage", district=district,
                               vector=_vec(2, base, 0.02))
    deciding = asyncio.create_task(b.worker.run_once())
    await _until_waiting(a.store, deciding)  # b decides before a commits, were it not ordered after a
    release.set()
    assert await committing and await deciding == 1
    assert await _incidents(a.store, first, second) == ["INC-000001", "INC-000001"]


async def test_two_instances_decide_about_different_districts_at_once(pg_factory: StoreFactory) -> None:
    a, b = await Instance.start(pg_factory), await Instance.start(pg_factory)
    lamp = "Đèn đường Lê Lợi tắt cả tuần nay"
    known = await _classified(b.store, "0", T0, lamp, topic="street_lighting", district="quan-1", vector=_vec(3))
    assert await b.worker.run_once() == 1
    first = await _classified(a.store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
    release = asyncio.Event()
    committing, _ = await a.decide_and_hold(release)
    second = await _classified(b.store, "2", T0 + 60, lamp, topic="street_lighting", district="quan-1",
                               vector=_vec(4, _vec(3), 0.02))
    # b's decision (joining an incident of another district) is not ordered after a's open transaction: it
    # commits while a's is still open (a wait here would be a hang, ended by the timeout). Two new incidents
    # would wait for each other's number, the one thing they share.
    assert await asyncio.wait_for(b.worker.run_once(), 30) == 1
    assert not committing.done()
    release.set()
    assert await committing
    assert await _incidents(a.store, known, second, first) == ["INC-000001", "INC-000001", "INC-000002"]


async def test_two_incidents_opened_at_once_in_two_districts_take_two_numbers(pg_factory: StoreFactory) -> None:
    a, b = await Instance.start(pg_factory), await Instance.start(pg_factory)
    first = await _classified(a.store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
    release = asyncio.Event()
    committing, _ = await a.decide_and_hold(release)  # INC-000001, not committed yet
    second = await _classified(b.store, "2", T0 + 60, "Đèn đường Lê Lợi tắt cả tuần nay",
                               topic="street_lighting", district="quan-1", vector=_vec(3))
    deciding = asyncio.create_task(b.worker.run_once())
    await _until_waiting(a.store, deciding)  # b reaches the number a holds
    release.set()
    assert await committing and await deciding == 1
    assert await _incidents(a.store, first, second) == ["INC-000001", "INC-000002"]


async def test_a_closing_taken_by_one_instance_never_overrides_the_reopening_another_applied(
        pg_factory: StoreFactory) -> None:
    # Each instance leases its own batch: b applies the dispute's reopening (the incident still open: nothing to
    # do) before a applies the closing queued ahead of it. The case runs again, so the incident must stay open.
    a, b = await Instance.start(pg_factory), await Instance.start(pg_factory)
    rid = await _classified(a.store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
    assert await a.worker.run_once() == 1
    inc = (await a.store.get_report(rid)).incident_id  # type: ignore[union-attr]
    # What dispatch commits: the case closes (its report closed, the closing queued), then the reporter
    # disputes (its report forwarded again, the reopening queued).
    async with a.store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='closed' WHERE id=?", (rid,))
        await tx.enqueue(STAGE, rid, DedupeJob(incident_id=inc, incident_state="closed", closed_as="resolved",
                                               version=1, at=T0 + 100))
    async with a.store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='dispatched' WHERE id=?", (rid,))
        await tx.enqueue(STAGE, rid, DedupeJob(incident_id=inc, version=2, incident_state="open"),
                         subject=reopening_subject(inc))
    (closing,) = await a.store.lease(STAGE, 1, 60)  # a's batch: the closing
    assert await b.worker.run_once() == 1  # b's batch: the reopening, applied first
    report = await a.store.get_report(closing.report_id)
    assert report is not None
    assert await a.store.finish(closing, await a.stage.handle(closing, report))
    row = await a.store.fetchone("SELECT state FROM incidents WHERE id=?", (inc,))
    assert row["state"] == "open"
    assert not await a.store.fetchall("SELECT id FROM jobs WHERE stage='notify' AND payload LIKE '%result%'")


async def test_a_report_queued_after_the_closing_never_gets_the_old_result(pg_factory: StoreFactory) -> None:
    # b matches a report received after the fix before a applies the closing queued ahead of it: it joined the
    # still-open incident as a duplicate; the closing must not give it the old result but open its own case.
    a, b = await Instance.start(pg_factory), await Instance.start(pg_factory)
    rid = await _classified(a.store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
    assert await a.worker.run_once() == 1
    inc = (await a.store.get_report(rid)).incident_id  # type: ignore[union-attr]
    async with a.store.transaction() as tx:  # dispatch closed the case (and its reports)
        await tx.execute("UPDATE reports SET status='closed' WHERE id=?", (rid,))
        await tx.enqueue(STAGE, rid, DedupeJob(incident_id=inc, incident_state="closed", closed_as="resolved",
                                               version=1, at=T0 + 100))
    later = await _classified(b.store, "2", T0 + 200, TEXT, topic="drainage", district="quan-5",
                              vector=_vec(2, _vec(1), 0.02))
    (closing,) = await a.store.lease(STAGE, 1, 60)
    assert await b.worker.run_once() == 1
    report = await a.store.get_report(closing.report_id)
    assert report is not None
    assert await a.store.finish(closing, await a.stage.handle(closing, report))
    moved = await a.store.get_report(later)
    assert moved is not None and moved.incident_id not in (None, inc)
    row = await a.store.fetchone("SELECT state, recurrence_of FROM incidents WHERE id=?", (moved.incident_id,))
    assert (row["state"], row["recurrence_of"]) == ("open", inc)
    jobs = await a.store.fetchall("SELECT stage, payload FROM jobs WHERE report_id=? AND stage IN"
                                  " ('notify', 'dispatch') ORDER BY id", (later,))
    assert [j["stage"] for j in jobs][-1] == "dispatch"  # its own case, at its agency
    assert not any("result" in j["payload"] for j in jobs)
    assert (await a.store.fetchone("SELECT state FROM incidents WHERE id=?", (inc,)))["state"] == "closed"


async def test_a_topic_an_operator_changed_reaches_the_other_instances_window(pg_factory: StoreFactory) -> None:
    # Instance b's window holds a report under the model's topic; reviewed on a, it opens an incident under the
    # operator's. The next report of that problem, decided on b, must find it there (not a second case).
    migrations = {"dedupe": schema.MIGRATIONS, "classifier": classifier_schema.MIGRATIONS}
    a, b = [Instance(await pg_factory.open(FakeClock(T0 + 2 * HOUR), migrations)) for _ in range(2)]
    karaoke = "Quán karaoke số 20 Lê Lợi quận 1 hát ồn ào tới 2 giờ sáng"
    held = await _classified(a.store, "1", T0, karaoke, topic="water_supply", district="quan-1",
                             vector=_vec(5), status="review")
    assert await a.worker.run_once() == 1
    await b.blocks.rebuild(b.store)  # b's window: the report, under water_supply
    await decide(a.store, load_directory(), held, actor="op.lan", topic="noise")
    assert await a.worker.run_once() == 1
    opened = (await a.store.get_report(held)).incident_id  # type: ignore[union-attr]
    later = await _classified(b.store, "2", T0 + 600, karaoke, topic="noise", district="quan-1",
                              vector=_vec(6, _vec(5), 0.02))
    assert await b.worker.run_once() == 1
    assert await _incidents(b.store, later) == [opened]


async def _case_closed(instance: Instance) -> tuple[str, int]:
    """A report of quan-5 decided on `instance`, a report of its problem received after its case closed (at
    T0 + 100) with no district and still to be decided, then what dispatch commits when the case closes (its
    report closed, the closing queued): (the incident, the late report)."""
    rid = await _classified(instance.store, "1", T0, TEXT, topic="drainage", district="quan-5", vector=_vec(1))
    assert await instance.worker.run_once() == 1
    inc = (await instance.store.get_report(rid)).incident_id  # type: ignore[union-attr]
    assert inc is not None
    late = await _classified(instance.store, "2", T0 + 200, TEXT, topic="drainage", district=None,
                             vector=_vec(2, _vec(1), 0.02))
    async with instance.store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='closed' WHERE id=?", (rid,))
        await tx.enqueue(STAGE, rid, DedupeJob(incident_id=inc, incident_state="closed", closed_as="resolved",
                                               version=1, at=T0 + 100))
    return inc, late


async def test_a_late_report_without_a_district_is_matched_again_under_every_districts_lock(
        pg_factory: StoreFactory) -> None:
    # A report with no district joined the incident (quan-5) after its case closed; the closing matches it again,
    # and it may join any district's incident. b is deciding a report of the same problem in quan-1 (its incident
    # not committed yet): the closing must wait for that decision, as a no-district decision does, and the late
    # report join b's incident, not open a third one beside it.
    a, b = await Instance.start(pg_factory), await Instance.start(pg_factory)
    inc, late = await _case_closed(a)
    assert await b.worker.run_once() == 1  # the late report joins the incident before the closing is applied
    assert await _incidents(a.store, late) == [inc]
    (closing,) = await a.store.lease(STAGE, 1, 60)
    other = await _classified(b.store, "3", T0 + 300, TEXT, topic="drainage", district="quan-1",
                              vector=_vec(3, _vec(1), 0.02))
    release = asyncio.Event()
    committing, _ = await b.decide_and_hold(release)  # quan-1's incident, not committed yet
    report = await a.store.get_report(closing.report_id)
    assert report is not None
    closing_writes = await a.stage.handle(closing, report)
    closed = asyncio.create_task(a.store.finish(closing, closing_writes))
    await _until_waiting(a.store, closed)
    release.set()
    assert await committing and await closed
    opened = (await a.store.get_report(other)).incident_id  # type: ignore[union-attr]
    assert opened not in (None, inc) and await _incidents(a.store, late) == [opened]


async def test_a_closing_that_finds_a_report_without_a_district_joined_meanwhile_decides_again(
        pg_factory: StoreFactory) -> None:
    # The closing looked for late reports without a district before it locked its district, while b's decision
    # joining one (under every district's lock) had not committed: under its lock it finds that report and is
    # taken again, then with every district's lock; the late report opens its own case, a recurrence.
    a, b = await Instance.start(pg_factory), await Instance.start(pg_factory)
    inc, late = await _case_closed(a)
    release = asyncio.Event()
    committing, _ = await b.decide_and_hold(release)  # the late report joins the incident, not committed yet
    closing = asyncio.create_task(a.worker.run_once())
    await _until_waiting(a.store, closing)
    release.set()
    assert await committing and await closing == 1
    row = await a.store.fetchone("SELECT state, attempts, last_error FROM jobs WHERE stage=? AND id=(SELECT"
                                 " MAX(id) FROM jobs WHERE stage=?)", (STAGE, STAGE))
    assert row["state"] == "ready" and "no district" in row["last_error"]
    a.store.clock.advance(3600)
    assert await a.worker.run_once() == 1
    moved = (await a.store.get_report(late)).incident_id  # type: ignore[union-attr]
    assert moved not in (None, inc)
    assert (await a.store.fetchone("SELECT state FROM incidents WHERE id=?", (inc,)))["state"] == "closed"
