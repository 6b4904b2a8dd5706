"""The dedupe stage finishes a leased batch in one commit: every match inside that transaction must see the jobs
before it exactly as job-by-job commits would, and a batch that does not commit must leave nothing in the
matcher's window."""
from __future__ import annotations

import random
from pathlib import Path

from dedupe.matcher import IncidentMatcher
from dedupe.service import STAGE, DedupeStage
from ingest.clock import FakeClock
from ingest.store import Store
from ingest.worker import StageWorker, WorkerSettings
from tests.dedupe.test_stage import HOUR, T0, _classified, _store, _vec

STREETS = ["nguyen huu canh", "dien bien phu", "le van sy", "vo van tan"]
PROBLEMS = [("drainage", "ngap sau xe chet may"), ("trees", "cay do chan ngang duong"),
            ("street_lighting", "den duong tat het toi om"), ("waste", "rac don thanh dong boc mui")]


async def _fill(store: Store) -> None:
    """60 reports of a dozen incidents, told again and again within minutes (so a batch holds several reports
    of one incident), some in review, a few without a district."""
    rnd = random.Random(5)
    bases = [(_vec(100 + i), rnd.choice(STREETS), *rnd.choice(PROBLEMS), rnd.choice(["quan-1", "quan-3"]))
             for i in range(12)]
    for k in range(60):
        base, street, topic, problem, district = rnd.choice(bases)
        await _classified(store, f"k{k}", T0 + k * 0.05 * HOUR, f"duong {street} {problem}", topic=topic,
                          district=district if rnd.random() > 0.1 else None,
                          vector=_vec(1000 + k, base, rnd.choice([0.01, 0.03, 0.5])),
                          status="review" if rnd.random() < 0.15 else "routed", street=street)


async def _outcome(store: Store) -> tuple[object, ...]:
    reports = await store.fetchall("SELECT id, status, incident_id FROM reports ORDER BY id")
    jobs = await store.fetchall("SELECT report_id, stage, payload FROM jobs WHERE stage != 'classify' ORDER BY id")
    events = await store.fetchall("SELECT report_id, kind, data FROM events WHERE actor='dedupe' ORDER BY id")
    incidents = await store.fetchall("SELECT * FROM incidents ORDER BY seq")
    return ([tuple(r) for r in reports], [tuple(r) for r in jobs], [tuple(r) for r in events],
            [tuple(r) for r in incidents])


async def _run(tmp_path: Path, settings: WorkerSettings) -> tuple[tuple[object, ...], int]:
    store = await _store(tmp_path, FakeClock(T0 + 10 * HOUR))
    try:
        await _fill(store)
        store.write_hold = float("inf")  # commits counted here are the group's (the lock budget: tests/ingest)
        worker = StageWorker(store, STAGE, DedupeStage(store, IncidentMatcher(store)).handle, settings)
        before = store.commit_count
        while await worker.run_once():
            pass
        return await _outcome(store), store.commit_count - before
    finally:
        await store.close()


async def test_a_batch_committed_at_once_groups_as_job_by_job_commits(tmp_path: Path) -> None:
    one_by_one, commits_single = await _run(tmp_path / "single", WorkerSettings(batch=16))
    grouped, commits_grouped = await _run(tmp_path / "grouped", WorkerSettings(batch=16, group_commit=True))
    assert grouped == one_by_one
    reports, _, _, incidents = grouped
    assert 5 < len(incidents) < 40  # reports joined incidents, and not all one
    # 60 jobs in 4 leases (and a fifth that finds none): one commit per lease and job, against one per lease and
    # batch.
    assert commits_single == 5 + 60 and commits_grouped == 5 + 4
    # Committed 4 jobs at a time (what bounds the write lock's holds), a later group sees the earlier ones.
    in_fours, commits_in_fours = await _run(tmp_path / "fours", WorkerSettings(batch=16, group_commit=True,
                                                                                  group_size=4))
    assert in_fours == one_by_one and commits_in_fours == 5 + 15


async def test_reports_of_a_batch_that_did_not_commit_leave_the_window(tmp_path: Path) -> None:
    store = await _store(tmp_path, FakeClock(T0 + 10 * HOUR))
    try:
        await _fill(store)
        matcher = IncidentMatcher(store)
        stage = DedupeStage(store, matcher)
        worker = StageWorker(store, STAGE, stage.handle, WorkerSettings(batch=16, group_commit=True))
        assert await worker.run_once() == 16
        assert matcher.index is not None
        indexed, df, n_docs, features = (matcher.index.report_ids(), +matcher._df, matcher._n_docs,
                                         dict(matcher._features))
        # The next reports matched inside a transaction that then fails: they were in the window meanwhile...
        jobs = await store.lease(STAGE, 5, 60)
        reports = await store.get_reports([j.report_id for j in jobs])
        writes = [await stage.handle(job, reports[job.report_id]) for job in jobs]
        try:
            async with store.transaction() as tx:
                for w in writes:
                    await w(tx)
                assert matcher.index.report_ids() == indexed | {j.report_id for j in jobs}
                raise RuntimeError("the commit fails")
        except RuntimeError:
            pass
        # ...and are gone before the next match, which sees the window as the committed batch left it.
        await store.release(jobs)
        rest = await store.lease(STAGE, 1, 60)
        async with store.transaction() as tx:
            matcher.settle(tx)
            assert matcher.index.report_ids() == indexed
            assert +matcher._df == df and matcher._n_docs == n_docs and matcher._features == features
        await store.release(rest)
    finally:
        await store.close()


async def test_a_batch_retried_after_a_failed_commit_groups_as_an_uninterrupted_run(tmp_path: Path) -> None:
    clean, _ = await _run(tmp_path / "clean", WorkerSettings(batch=16, group_commit=True))
    store = await _store(tmp_path / "failed", FakeClock(T0 + 10 * HOUR))
    try:
        await _fill(store)
        matcher = IncidentMatcher(store)
        stage = DedupeStage(store, matcher)
        jobs = await store.lease(STAGE, 16, 60)
        reports = await store.get_reports([j.report_id for j in jobs])
        writes = [await stage.handle(job, reports[job.report_id]) for job in jobs]
        try:
            async with store.transaction() as tx:
                for w in writes:
                    await w(tx)
                raise RuntimeError("the commit fails")
        except RuntimeError:
            pass
        await store.release(jobs)
        worker = StageWorker(store, STAGE, stage.handle, WorkerSettings(batch=16, group_commit=True))
        while await worker.run_once():
            pass
        assert await _outcome(store) == clean
    finally:
        await store.close()

