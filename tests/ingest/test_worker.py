"""StageWorker: handler results applied with the finish, transient retries with backoff, permanent dead letters."""
from __future__ import annotations

import asyncio

import pytest

from ingest.clock import FakeClock
from ingest.errors import PermanentError, TransientError
from ingest.records import Job
from ingest.store import Store, StoredReport, Tx
from ingest.worker import JOB_OBSERVERS, StageWorker, WorkerSettings
from tests.stores import cancel_as_it_commits, stop_as_the_lease_commits_gives_back


async def _job(store: Store, report_id: int) -> dict:
    row = await store.fetchone("SELECT id, state, attempts, last_error, available_at FROM jobs"
                               " WHERE report_id=? AND stage='classify'", (report_id,))
    assert row is not None
    return dict(row)


async def test_handler_writes_and_next_stage_are_applied(clocked_store: Store, make_message) -> None:
    rid = (await clocked_store.submit(make_message(), b"r", "text/plain")).report_id
    seen: list[str] = []

    async def handler(job: Job, report: StoredReport):
        seen.append(report.message.text)

        async def writes(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
            await tx.enqueue("dedupe", job.report_id)
        return writes

    worker = StageWorker(clocked_store, "classify", handler)
    assert await worker.run_once() == 1
    assert worker.processed == 1 and seen == ["Ống nước vỡ trước nhà 12 Lê Lợi, Quận 1"]
    assert (await clocked_store.get_report(rid)).status == "routed"
    assert (await _job(clocked_store, rid))["state"] == "done"
    assert len(await clocked_store.lease("dedupe", 5, 60)) == 1


async def test_transient_errors_retry_with_backoff_then_dead_letter(clocked_store: Store, clock: FakeClock,
                                                                    make_message) -> None:
    rid = (await clocked_store.submit(make_message(), b"r", "text/plain")).report_id
    calls = 0

    async def handler(job: Job, report: StoredReport):
        nonlocal calls
        calls += 1
        raise TransientError(f"agency webhook 503 (call {calls})", retry_after=30)

    worker = StageWorker(clocked_store, "classify", handler,
                         WorkerSettings(max_attempts=3, backoff_base=1.0, backoff_cap=10.0))
    for attempt in (1, 2):
        assert await worker.run_once() == 1
        row = await _job(clocked_store, rid)
        assert row["state"] == "ready" and row["attempts"] == attempt
        # Retry-After (30 s) is a floor above the capped jitter (≤ 10 s).
        assert row["available_at"] - clock.now() >= 30
        assert await worker.run_once() == 0  # not due yet
        clock.advance(31)
    assert await worker.run_once() == 1
    row = await _job(clocked_store, rid)
    assert row["state"] == "dead" and row["last_error"] == "TransientError: agency webhook 503 (call 3)"
    assert calls == 3 and worker.processed == 0
    assert (await clocked_store.get_report(rid)).status == "failed"


async def test_unexpected_exception_is_retried_like_a_transient_one(clocked_store: Store, make_message) -> None:
    rid = (await clocked_store.submit(make_message(), b"r", "text/plain")).report_id

    async def handler(job: Job, report: StoredReport):
        raise KeyError("bug")

    worker = StageWorker(clocked_store, "classify", handler, WorkerSettings(max_attempts=2))
    await worker.run_once()
    row = await _job(clocked_store, rid)
    assert row["state"] == "ready" and row["last_error"] == "KeyError: 'bug'"


async def test_permanent_error_dead_letters_at_once(clocked_store: Store, make_message) -> None:
    rid = (await clocked_store.submit(make_message(), b"r", "text/plain")).report_id

    async def handler(job: Job, report: StoredReport):
        raise PermanentError("record cannot be classified")

    worker = StageWorker(clocked_store, "classify", handler, WorkerSettings(max_attempts=5))
    await worker.run_once()
    row = await _job(clocked_store, rid)
    assert row["state"] == "dead" and row["attempts"] == 1
    assert row["last_error"] == "PermanentError: record cannot be classified"
    assert await clocked_store.replay_dead() == 1
    assert (await _job(clocked_store, rid))["state"] == "ready"


async def test_lost_lease_result_is_discarded(clocked_store: Store, clock: FakeClock, make_message) -> None:
    rid = (await clocked_store.submit(make_message(), b"r", "text/plain")).report_id
    stolen = []

    async def slow_handler(job: Job, report: StoredReport):
        # The handler outlives its lease; another worker reclaims the job and takes it.
        clock.advance(120)
        await clocked_store.reclaim_expired()
        stolen.extend(await clocked_store.lease("classify", 1, 60))

        async def writes(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
            await tx.enqueue("dedupe", job.report_id)
        return writes

    worker = StageWorker(clocked_store, "classify", slow_handler, WorkerSettings(lease_seconds=60))
    await worker.run_once()
    assert worker.processed == 0 and len(stolen) == 1
    assert (await clocked_store.get_report(rid)).status == "received"
    assert await clocked_store.lease("dedupe", 5, 60) == []
    assert (await _job(clocked_store, rid))["state"] == "leased"


async def test_cancelled_worker_releases_its_leases(clocked_store: Store, make_message) -> None:
    ids = [(await clocked_store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(3)]
    started = asyncio.Event()

    async def handler(job: Job, report: StoredReport):
        started.set()
        await asyncio.Event().wait()  # stuck until shutdown

    worker = StageWorker(clocked_store, "classify", handler, WorkerSettings(batch=3))
    task = asyncio.create_task(worker.run_once())
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for rid in ids:
        row = await _job(clocked_store, rid)
        assert row["state"] == "ready" and row["attempts"] == 0


async def test_a_worker_cancelled_while_its_lease_commits_gives_those_jobs_back(clocked_store: Store,
                                                                             make_message) -> None:
    """A stop that lands while the lease's transaction commits (the commit runs on the connection's thread and is
    not undone by the cancellation): the jobs it took are given back, not left leased until their leases expire
    (seen in the crash test: 16 notify jobs leased after a clean stop)."""
    for _ in range(3):
        await clocked_store.submit(make_message(), b"r", "text/plain")

    async def handler(job: Job, report: StoredReport):
        raise AssertionError("never reached")

    worker = StageWorker(clocked_store, "classify", handler, WorkerSettings(batch=3))
    await stop_as_the_lease_commits_gives_back(clocked_store, "classify", worker.run_once, 3)


async def test_run_wakes_on_new_work_and_stops(store: Store, make_message) -> None:
    done = asyncio.Event()

    async def handler(job: Job, report: StoredReport):
        done.set()
        return None

    # A long idle poll: the worker must be woken by the enqueue, not by polling.
    worker = StageWorker(store, "classify", handler, WorkerSettings(idle_poll=30))
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.05)
    await store.submit(make_message(), b"r", "text/plain")
    await asyncio.wait_for(done.wait(), 5)
    for _ in range(100):  # the finish commits just after the handler returns
        if worker.processed:
            break
        await asyncio.sleep(0.01)
    worker.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert worker.processed == 1


async def test_group_commit_applies_a_batch_at_once_and_undoes_only_the_failing_job(clocked_store: Store,
                                                                                    make_message) -> None:
    ids = [(await clocked_store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(3)]
    bad = ids[1]

    async def handler(job: Job, report: StoredReport):
        async def writes(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
            await tx.enqueue("dedupe", job.report_id)
            if job.report_id == bad:
                raise ValueError("writes failed half-way")
        return writes

    clocked_store.write_hold = float("inf")  # the group's commits are counted (the lock budget: test_queue)
    worker = StageWorker(clocked_store, "classify", handler,
                         WorkerSettings(batch=3, group_commit=True, max_attempts=3))
    commits = clocked_store.commit_count
    assert await worker.run_once() == 3
    assert worker.processed == 2
    statuses = {rid: (await clocked_store.get_report(rid)).status for rid in ids}
    assert statuses == {ids[0]: "routed", bad: "received", ids[2]: "routed"}  # the bad job's update is undone
    row = await _job(clocked_store, bad)
    assert row["state"] == "ready" and row["last_error"] == "ValueError: writes failed half-way"
    assert sorted(j.report_id for j in await clocked_store.lease("dedupe", 5, 60)) == [ids[0], ids[2]]
    # lease + one commit for the two good jobs + the bad job's retry record + the dedupe lease just above
    assert clocked_store.commit_count - commits == 4


async def test_group_commit_in_groups_of_group_size_jobs(clocked_store: Store, make_message) -> None:
    ids = [(await clocked_store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(5)]

    async def handler(job: Job, report: StoredReport):
        async def writes(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
        return writes

    clocked_store.write_hold = float("inf")  # the group's commits are counted (the lock budget: test_queue)
    worker = StageWorker(clocked_store, "classify", handler, WorkerSettings(batch=5, group_commit=True, group_size=2))
    commits = clocked_store.commit_count
    assert await worker.run_once() == 5
    assert worker.processed == 5
    assert {(await clocked_store.get_report(rid)).status for rid in ids} == {"routed"}
    assert clocked_store.commit_count - commits == 1 + 3  # the lease, then jobs 1-2, 3-4 and 5


async def test_a_group_split_by_the_write_lock_budget_settles_the_committed_jobs_and_retries_the_rest_alone(
        store: Store, make_message) -> None:
    """SQLite: the group's first job is committed alone (budget 0); the second transaction then fails as a whole.
    The first job counts as processed once, the second is finished again on its own."""
    import sqlite3

    ids = [(await store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(2)]
    store.write_hold = 0.0
    broke: list[int] = []

    async def handler(job: Job, report: StoredReport):
        async def writes(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
            if job.report_id == ids[1] and not broke:
                broke.append(job.id)
                await tx.execute("ROLLBACK")  # SQLite dropped the whole transaction (as a full disk makes it)
                raise sqlite3.OperationalError("the transaction is gone")
        return writes

    worker = StageWorker(store, "classify", handler, WorkerSettings(batch=2, group_commit=True, max_attempts=3))
    assert await worker.run_once() == 2
    assert worker.processed == 2
    assert {(await store.get_report(rid)).status for rid in ids} == {"routed"}
    assert [(await _job(store, rid))["state"] for rid in ids] == ["done", "done"]


async def test_a_group_cancelled_in_a_later_transaction_settles_the_jobs_committed_before(
        store: Store, make_message) -> None:
    """SQLite, budget 0: each job of the group commits on its own. The first is done, the second's writes failed (its
    finish undone in its savepoint, the transaction committed), and the worker is cancelled (shutdown) during the
    third. The first two outcomes are committed: the first counts as done, the second's failure is recorded as a
    retry; before, the CancelledError went through finish_many unwrapped, so the first was never counted and the
    second was given back as if never tried (no attempt, no last_error). The third is given back; the cancel goes on."""
    ids = [(await store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(3)]
    store.write_hold = 0.0
    seen: list[tuple[str, str]] = []

    async def handler(job: Job, report: StoredReport):
        async def writes(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
            if job.report_id == ids[1]:
                raise ValueError("writes failed half-way")
            if job.report_id == ids[2]:
                asyncio.current_task().cancel()  # type: ignore[union-attr]  # the daemon stopping now
                await asyncio.sleep(0)
        return writes

    def observe(stage: str, outcome: str, report: StoredReport, seconds: float) -> None:
        seen.append((outcome, report.message.idempotency_key))

    worker = StageWorker(store, "classify", handler, WorkerSettings(batch=3, group_commit=True, max_attempts=3))
    JOB_OBSERVERS.append(observe)
    try:
        task = asyncio.create_task(worker.run_once())
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        JOB_OBSERVERS.remove(observe)
    reports = {rid: await store.get_report(rid) for rid in ids}
    assert worker.processed == 1
    assert [o for o, _ in seen] == ["done", "retry"]
    assert [k for _, k in seen] == [reports[rid].message.idempotency_key for rid in ids[:2]]  # type: ignore[union-attr]
    rows = [await _job(store, rid) for rid in ids]
    assert [(r["state"], r["attempts"], r["last_error"]) for r in rows] == [
        ("done", 1, None), ("ready", 1, "ValueError: writes failed half-way"), ("ready", 0, None)]
    assert [reports[rid].status for rid in ids] == ["routed", "received", "received"]  # type: ignore[union-attr]


async def test_group_commit_discards_a_lost_lease_and_keeps_the_rest(clocked_store: Store, make_message) -> None:
    ids = [(await clocked_store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(2)]

    async def handler(job: Job, report: StoredReport):
        if job.report_id == ids[1]:  # meanwhile its lease expired and another worker took this job
            async with clocked_store.transaction() as tx:
                await tx.execute("UPDATE jobs SET attempts=attempts+1, lease_token=lease_token+1 WHERE id=?",
                                 (job.id,))

        async def writes(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
        return writes

    worker = StageWorker(clocked_store, "classify", handler,
                         WorkerSettings(batch=2, lease_seconds=60, group_commit=True))
    await worker.run_once()
    assert worker.processed == 1
    assert (await clocked_store.get_report(ids[1])).status == "received"
    assert (await _job(clocked_store, ids[1]))["state"] == "leased"  # still the other worker's


async def test_prefetch_prepares_the_next_batch_before_finishing_this_one(store: Store, make_message) -> None:
    ids = [(await store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(4)]
    log: list[str] = []
    second_prepared = asyncio.Event()

    async def prepare(batch: list[tuple[Job, StoredReport]]) -> None:
        log.append("prepare " + ",".join(str(r.id) for _, r in batch))
        if batch[0][1].id == ids[2]:
            second_prepared.set()

    async def handler(job: Job, report: StoredReport):
        if report.id == ids[0]:
            # The first batch is finished only once the second is being prepared.
            await asyncio.wait_for(second_prepared.wait(), 5)
        log.append(f"handle {report.id}")
        return None

    worker = StageWorker(store, "classify", handler, WorkerSettings(batch=2, prefetch=True, idle_poll=30),
                         batch_handler=prepare)
    task = asyncio.create_task(worker.run())
    for _ in range(500):
        if worker.processed == 4:
            break
        await asyncio.sleep(0.01)
    worker.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert worker.processed == 4
    assert log[:2] == [f"prepare {ids[0]},{ids[1]}", f"prepare {ids[2]},{ids[3]}"]
    assert log[2:] == [f"handle {i}" for i in ids]


async def test_prefetching_worker_cancelled_gives_back_both_batches(clocked_store: Store, make_message) -> None:
    ids = [(await clocked_store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(4)]
    started = asyncio.Event()

    async def handler(job: Job, report: StoredReport):
        started.set()
        await asyncio.Event().wait()  # stuck until shutdown

    async def prepare(batch: list[tuple[Job, StoredReport]]) -> None:
        return None

    worker = StageWorker(clocked_store, "classify", handler, WorkerSettings(batch=2, prefetch=True),
                         batch_handler=prepare)
    task = asyncio.create_task(worker.run())
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for rid in ids:
        row = await _job(clocked_store, rid)
        assert row["state"] == "ready" and row["attempts"] == 0


async def test_a_prefetching_worker_stopped_while_it_takes_the_next_batch_gives_this_one_back(clocked_store: Store,
                                                                                            make_message) -> None:
    """A stop while the next batch's lease commits (the prefetch): that batch is given back by the lease, and the
    batch being prepared too, its preparation cancelled and awaited, not left leased until its leases expire with
    its preparation running on."""
    ids = [(await clocked_store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(4)]
    preparing, prepare_stopped = asyncio.Event(), asyncio.Event()

    async def prepare(batch: list[tuple[Job, StoredReport]]) -> None:
        preparing.set()
        try:
            await asyncio.Event().wait()  # an embedder still at work
        except asyncio.CancelledError:
            prepare_stopped.set()
            raise

    async def handler(job: Job, report: StoredReport):
        raise AssertionError("never reached")

    async def both_taken() -> None:
        await preparing.wait()  # the first batch is being prepared while the second is taken
        assert [(await _job(clocked_store, rid))["state"] for rid in ids] == ["leased"] * 4

    worker = StageWorker(clocked_store, "classify", handler, WorkerSettings(batch=2, prefetch=True),
                         batch_handler=prepare)
    await cancel_as_it_commits(clocked_store, worker.run, both_taken, after=1)  # the first lease, then the prefetch
    rows = [await _job(clocked_store, rid) for rid in ids]
    # Before: the first two stayed ('leased', 1).
    assert [(row["state"], row["attempts"]) for row in rows] == [("ready", 0)] * 4
    assert prepare_stopped.is_set()  # before: still running, never awaited


async def test_a_batch_that_outlives_its_lease_keeps_it_while_worked_on(clocked_store: Store, clock: FakeClock,
                                                                        make_message) -> None:
    # Two jobs leased together; the first takes longer than the lease (on the store's clock). The second's lease is
    # renewed meanwhile, so the reclaimer does not hand it to another worker and its result is not discarded.
    rids = [(await clocked_store.submit(make_message(text=f"report {i}"), b"r", "text/plain")).report_id
            for i in range(2)]
    lease = 1.5
    renewed = asyncio.Event()
    reclaimed: list[int] = []

    async def renewed_lease() -> float:
        return (await clocked_store.fetchone("SELECT lease_until FROM jobs WHERE report_id=? AND stage='classify'",
                                             (rids[1],)))["lease_until"]

    async def handler(job: Job, report: StoredReport):
        if job.report_id == rids[0]:
            first = await renewed_lease()
            clock.advance(0.9 * lease)
            while await renewed_lease() == first:  # the renewal runs every lease / 3 seconds of real time
                await asyncio.sleep(0.05)
            renewed.set()
            clock.advance(0.9 * lease)
            reclaimed.append(await clocked_store.reclaim_expired())  # 0: the renewal kept them leased

        async def writes(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
        return writes

    worker = StageWorker(clocked_store, "classify", handler, WorkerSettings(batch=2, lease_seconds=lease))
    running = asyncio.create_task(worker.run())


    async def both_done() -> None:
        while worker.processed < 2:
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(renewed.wait(), 30)  # (never renewed: this times out)
        await asyncio.wait_for(both_done(), 30)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
    assert reclaimed == [0]
    assert [(await _job(clocked_store, rid))["attempts"] for rid in rids] == [1, 1]
    assert [(await clocked_store.get_report(rid)).status for rid in rids] == ["routed", "routed"]


async def test_writes_that_fail_are_the_jobs_failure_not_the_workers(clocked_store: Store, make_message) -> None:
    ids = [(await clocked_store.submit(make_message(), b"r", "text/plain")).report_id for _ in range(2)]

    async def handler(job: Job, report: StoredReport):
        async def writes(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
            if job.report_id == ids[0]:
                raise TransientError("decided against a store that changed meanwhile")
        return writes

    worker = StageWorker(clocked_store, "classify", handler, WorkerSettings(batch=2))
    assert await worker.run_once() == 2
    assert [(await clocked_store.get_report(rid)).status for rid in ids] == ["received", "routed"]
    row = await _job(clocked_store, ids[0])
    assert row["state"] == "ready" and row["last_error"].startswith("TransientError: decided against")
