"""The leased queue: lease, finish with the next stage in one transaction, expiry, dead letters, replay, release."""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator

import pytest

from ingest.clock import FakeClock
from ingest.jobs import DedupeJob, MessengerAskJob, MessengerMediaJob, ReporterFollowUpJob
from ingest.queue import Settlement
from ingest.store import Store, Tx
from tests.stores import (AnyStore, StoreFactory, cancel_when, stop_as_the_lease_commits_gives_back,
                          when_logged)
from tests.stores import store_factory  # noqa: F401  (the parametrised fixture)

@pytest.fixture
async def clocked_store(store_factory: StoreFactory, clock: FakeClock) -> AsyncIterator[AnyStore]:
    yield await store_factory.open(clock=clock)


async def _job_row(store: Store, job_id: int) -> dict:
    row = await store.fetchone("SELECT state, attempts, last_error, lease_until FROM jobs WHERE id=?", (job_id,))
    assert row is not None
    return dict(row)


async def _submit(store: Store, make_message) -> int:
    return (await store.submit(make_message(), b"raw", "text/plain")).report_id


async def test_lease_takes_ready_jobs_once(clocked_store: Store, make_message) -> None:
    ids = [await _submit(clocked_store, make_message) for _ in range(3)]
    jobs = await clocked_store.lease("classify", 2, 60)
    assert [j.report_id for j in jobs] == ids[:2] and all(j.attempts == 1 for j in jobs)
    more = await clocked_store.lease("classify", 10, 60)
    assert [j.report_id for j in more] == ids[2:]
    assert await clocked_store.lease("classify", 10, 60) == []
    assert await clocked_store.lease("dedupe", 10, 60) == []


async def test_finish_and_next_stage_commit_together(clocked_store: Store, make_message) -> None:
    report_id = await _submit(clocked_store, make_message)
    (job,) = await clocked_store.lease("classify", 1, 60)

    async def writes(tx: Tx) -> None:
        await tx.execute("UPDATE reports SET status='routed', topic='drainage' WHERE id=?", (job.report_id,))
        await tx.enqueue("dedupe", job.report_id, DedupeJob(after_review=True))

    assert await clocked_store.finish(job, writes)
    assert (await _job_row(clocked_store, job.id))["state"] == "done"
    (nxt,) = await clocked_store.lease("dedupe", 1, 60)
    assert nxt.report_id == report_id and nxt.payload == DedupeJob(after_review=True)
    assert (await clocked_store.get_report(report_id)).status == "routed"


async def test_failing_writes_roll_back_the_finish(clocked_store: Store, make_message) -> None:
    report_id = await _submit(clocked_store, make_message)
    (job,) = await clocked_store.lease("classify", 1, 60)

    async def writes(tx: Tx) -> None:
        await tx.enqueue("dedupe", job.report_id)
        await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (job.report_id,))
        raise RuntimeError("crash in the middle of the stage's writes")

    with pytest.raises(RuntimeError):
        await clocked_store.finish(job, writes)
    # Neither half happened: the job is still leased (to be retried) and no dedupe job exists.
    assert (await _job_row(clocked_store, job.id))["state"] == "leased"
    assert await clocked_store.lease("dedupe", 1, 60) == []
    assert (await clocked_store.get_report(report_id)).status == "received"


async def test_a_failing_last_write_of_a_batch_job_fails_that_job_alone(clocked_store: Store, make_message) -> None:
    # A store may send a job's writes only when the job ends (the SQLite one sends an event with the next
    # statement): a write that fails there must still undo its own job and no other.
    bad, good = [await _submit(clocked_store, make_message) for _ in range(2)]
    jobs = await clocked_store.lease("classify", 2, 60)

    def writes(report_id: int):
        async def apply(tx: Tx) -> None:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (report_id,))
            await tx.event(report_id, None if report_id == bad else "classified", "test")  # kind is NOT NULL
        return apply

    outcomes = await clocked_store.finish_many([(job, writes(job.report_id)) for job in jobs])
    assert isinstance(outcomes[0], Exception) and outcomes[1] is True
    assert (await clocked_store.get_report(bad)).status == "received"
    assert (await clocked_store.get_report(good)).status == "routed"
    kinds = await clocked_store.fetchall("SELECT report_id, kind FROM events WHERE actor='test'")
    assert [(r["report_id"], r["kind"]) for r in kinds] == [(good, "classified")]


async def test_expired_lease_is_reclaimed_and_the_old_result_discarded(clocked_store: Store, clock: FakeClock,
                                                                       make_message) -> None:
    report_id = await _submit(clocked_store, make_message)
    (old,) = await clocked_store.lease("classify", 1, 30)
    clock.advance(10)
    assert await clocked_store.reclaim_expired() == 0  # not expired yet
    clock.advance(25)
    assert await clocked_store.reclaim_expired() == 1
    assert (await _job_row(clocked_store, old.id))["last_error"] == "lease expired"
    (new,) = await clocked_store.lease("classify", 1, 30)
    assert new.id == old.id and new.attempts == 2

    async def stale_writes(tx: Tx) -> None:
        await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (report_id,))

    # The first worker comes back late: its result must not be applied.
    assert not await clocked_store.finish(old, stale_writes)
    assert (await clocked_store.get_report(report_id)).status == "received"
    assert await clocked_store.finish(new, None)
    assert (await _job_row(clocked_store, new.id))["state"] == "done"


async def test_late_failure_of_a_lost_lease_changes_nothing(clocked_store: Store, clock: FakeClock,
                                                            make_message) -> None:
    report_id = await _submit(clocked_store, make_message)
    (old,) = await clocked_store.lease("classify", 1, 30)
    clock.advance(31)
    await clocked_store.reclaim_expired()
    (new,) = await clocked_store.lease("classify", 1, 30)
    await clocked_store.fail(old, "PermanentError: stale", retry_in=0, dead=True)
    assert (await _job_row(clocked_store, new.id))["state"] == "leased"
    assert (await clocked_store.get_report(report_id)).status == "received"
    assert await clocked_store.finish(new, None)


async def test_retry_waits_for_its_delay(clocked_store: Store, clock: FakeClock, make_message) -> None:
    await _submit(clocked_store, make_message)
    (job,) = await clocked_store.lease("classify", 1, 60)
    await clocked_store.fail(job, "TransientError: peer down", retry_in=100, dead=False)
    row = await _job_row(clocked_store, job.id)
    assert row["state"] == "ready" and row["last_error"] == "TransientError: peer down"
    clock.advance(99)
    assert await clocked_store.lease("classify", 1, 60) == []
    clock.advance(2)
    (again,) = await clocked_store.lease("classify", 1, 60)
    assert again.id == job.id and again.attempts == 2


async def test_dead_letter_is_visible_and_replay_puts_it_back(clocked_store: Store, make_message) -> None:
    report_id = await _submit(clocked_store, make_message)
    (job,) = await clocked_store.lease("classify", 1, 60)
    await clocked_store.fail(job, "PermanentError: bad record", retry_in=0, dead=True)
    row = await _job_row(clocked_store, job.id)
    assert row["state"] == "dead" and row["last_error"] == "PermanentError: bad record"
    assert (await clocked_store.get_report(report_id)).status == "failed"
    events = await clocked_store.fetchall("SELECT kind FROM events WHERE report_id=?", (report_id,))
    assert [e["kind"] for e in events] == ["dead_letter"]
    assert await clocked_store.queue_depths() == {("classify", "dead"): 1}

    assert await clocked_store.replay_dead(stage="dedupe") == 0  # other stage: untouched
    assert await clocked_store.replay_dead(stage="classify") == 1
    assert (await clocked_store.get_report(report_id)).status == "received"
    (again,) = await clocked_store.lease("classify", 1, 60)
    assert again.id == job.id and again.attempts == 1  # a fresh set of attempts
    assert await clocked_store.replay_dead() == 0


async def test_a_worker_stalled_since_before_a_replay_cannot_finish_the_replayed_job(
        clocked_store: Store, clock: FakeClock, make_message) -> None:
    """The fence never repeats for a job: a replay gives a fresh set of attempts, not an old lease back."""
    report_id = await _submit(clocked_store, make_message)
    (stalled,) = await clocked_store.lease("classify", 1, 30)  # its first lease; the worker then hangs
    clock.advance(31)
    assert await clocked_store.reclaim_expired() == 1
    (second,) = await clocked_store.lease("classify", 1, 30)
    await clocked_store.fail(second, "PermanentError: bad record", retry_in=0, dead=True)
    assert await clocked_store.replay_dead(stage="classify") == 1
    (fresh,) = await clocked_store.lease("classify", 1, 30)
    assert fresh.id == stalled.id and fresh.attempts == stalled.attempts == 1  # a fresh set of attempts...

    async def stale_writes(tx: Tx) -> None:
        await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (report_id,))

    # ...but the stalled worker's result (alone, in a batch, in a settlement), failure or release changes nothing.
    queue = clocked_store.queue
    assert not await queue.finish(stalled, stale_writes)
    assert await queue.finish_many([(stalled, stale_writes)]) == [False]
    assert await queue.settle([Settlement(stalled, "done", writes=stale_writes)]) == [False]
    assert not await queue.fail(stalled, "PermanentError: stale", retry_in=0, dead=True)
    assert await queue.release([stalled]) == 0
    assert (await clocked_store.get_report(report_id)).status == "received"
    assert (await _job_row(clocked_store, fresh.id))["state"] == "leased"
    assert await clocked_store.finish(fresh, None)
    assert (await _job_row(clocked_store, fresh.id))["state"] == "done"


async def test_replay_by_job_id_only_replays_those(clocked_store: Store, make_message) -> None:
    for _ in range(2):
        await _submit(clocked_store, make_message)
    jobs = await clocked_store.lease("classify", 2, 60)
    for job in jobs:
        await clocked_store.fail(job, "PermanentError: x", retry_in=0, dead=True)
    assert await clocked_store.replay_dead(job_ids=[jobs[1].id]) == 1
    assert (await _job_row(clocked_store, jobs[0].id))["state"] == "dead"
    assert (await _job_row(clocked_store, jobs[1].id))["state"] == "ready"


async def test_release_on_shutdown_does_not_count_an_attempt(clocked_store: Store, make_message) -> None:
    await _submit(clocked_store, make_message)
    (job,) = await clocked_store.lease("classify", 1, 60)
    await clocked_store.release([job])
    row = await _job_row(clocked_store, job.id)
    assert row["state"] == "ready" and row["attempts"] == 0 and row["lease_until"] is None
    (again,) = await clocked_store.lease("classify", 1, 60)
    assert again.attempts == 1


async def test_a_lease_cancelled_while_it_commits_gives_its_jobs_back(clocked_store: AnyStore, make_message) -> None:
    """A stop that lands while the lease commits (on SQLite's connection thread, on PostgreSQL's server: the commit
    goes on whatever the cancellation does) gives back what it took, attempts not counted, for every caller of the
    queue alike: left leased, nobody would work on them until their leases expire."""
    for _ in range(2):
        await _submit(clocked_store, make_message)

    await stop_as_the_lease_commits_gives_back(clocked_store, "classify",
                                               lambda: clocked_store.queue.lease("classify", 5, 60), 2)


async def test_a_stop_in_a_holding_block_gives_back_only_what_is_still_leased(clocked_store: AnyStore,
                                                                             make_message) -> None:
    """queue.holding: a cancellation in the block (a stop mid-send) gives back the jobs still leased to the caller,
    attempts not counted; one it finished before is left done."""
    for _ in range(3):
        await _submit(clocked_store, make_message)
    jobs = await clocked_store.queue.lease("classify", 5, 60)
    inside = asyncio.Event()

    async def work() -> None:
        async with clocked_store.queue.holding(jobs):
            assert await clocked_store.queue.finish(jobs[0])
            inside.set()
            await asyncio.Event().wait()  # the peer that never answers

    await cancel_when(work, inside)
    assert [(await _job_row(clocked_store, j.id))["state"] for j in jobs] == ["done", "ready", "ready"]
    assert [(await _job_row(clocked_store, j.id))["attempts"] for j in jobs] == [1, 0, 0]


async def test_a_stop_while_a_send_runs_in_a_thread_keeps_that_job_leased_and_settles_it_when_the_thread_ends(
        clocked_store: AnyStore, make_message) -> None:
    """Held.in_thread: a thread cannot be cancelled, so a stop that lands while one sends does not give its job back
    (another sender could lease it and send it at the same time). Even a second cancellation, which stops the
    caller's wait, leaves it leased while the others are given back; once the thread ends, `settle` records it."""
    for _ in range(2):
        await _submit(clocked_store, make_message)
    jobs = await clocked_store.queue.lease("classify", 5, 60)
    sending, answer = threading.Event(), threading.Event()
    settled = asyncio.Event()

    def send() -> str:  # a relay that took the mail and has not answered yet
        sending.set()
        answer.wait()
        return "sent"

    async def settle(sent: asyncio.Future[str]) -> None:
        assert sent.result() == "sent"
        assert await clocked_store.queue.finish(jobs[0])
        settled.set()

    async def work() -> None:
        async with clocked_store.queue.holding(jobs) as held:
            await held.in_thread(jobs[0], send, settle)

    try:
        with when_logged("ingest.queue", "sends in a thread") as waiting:
            task = asyncio.ensure_future(work())
            await asyncio.to_thread(sending.wait)
            task.cancel()
            await waiting.wait()
        task.cancel()  # a second stop: the wait ends, the settling does not
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [(await _job_row(clocked_store, j.id))["state"] for j in jobs] == ["leased", "ready"]
        assert [job.id for job in await clocked_store.queue.lease("classify", 5, 60)] == [jobs[1].id]
    finally:
        answer.set()
    await settled.wait()
    assert (await _job_row(clocked_store, jobs[0].id))["state"] == "done"


async def test_a_job_stopped_mid_send_whose_settling_fails_stays_leased_and_is_logged(
        clocked_store: AnyStore, make_message, caplog: pytest.LogCaptureFixture) -> None:
    """Settling fails (the store cannot write, a bug): the job is left to its lease, said in the log; never given
    back while its outcome is unknown to the store."""
    await _submit(clocked_store, make_message)
    jobs = await clocked_store.queue.lease("classify", 5, 60)
    sending, answer = threading.Event(), threading.Event()

    def send() -> None:
        sending.set()
        answer.wait()

    async def settle(sent: asyncio.Future[None]) -> None:
        raise RuntimeError("cannot record")

    async def work() -> None:
        async with clocked_store.queue.holding(jobs) as held:
            await held.in_thread(jobs[0], send, settle)

    task = asyncio.ensure_future(work())
    try:
        await asyncio.to_thread(sending.wait)
        task.cancel()
    finally:
        answer.set()
    with caplog.at_level(logging.WARNING, logger="ingest.queue"), pytest.raises(asyncio.CancelledError):
        await task
    assert (await _job_row(clocked_store, jobs[0].id))["state"] == "leased"
    assert "stays leased until its lease expires (RuntimeError)" in caplog.text


async def test_a_stop_whose_giving_back_fails_is_logged_and_stays_a_stop(store: Store, make_message,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A store that cannot write as the stop lands (SQLite read-only, as a lost mount makes it): the jobs stay leased
    until their leases expire, said in the log; the cancellation goes on as itself, not as a storage error."""
    await _submit(store, make_message)
    jobs = await store.queue.lease("classify", 5, 60)
    inside = asyncio.Event()

    async def work() -> None:
        async with store.queue.holding(jobs):
            inside.set()
            await asyncio.Event().wait()

    await store._writer.execute("PRAGMA query_only=ON")  # type: ignore[union-attr]  # every write fails (read-only)
    try:
        with caplog.at_level(logging.WARNING, logger="ingest.queue"):
            await cancel_when(work, inside)
    finally:
        await store._writer.execute("PRAGMA query_only=OFF")  # type: ignore[union-attr]
    assert "1 classify jobs held as a stop landed stay leased until their leases expire" in caplog.text
    assert (await _job_row(store, jobs[0].id))["state"] == "leased"


async def test_release_does_not_touch_finished_jobs(clocked_store: Store, make_message) -> None:
    await _submit(clocked_store, make_message)
    (job,) = await clocked_store.lease("classify", 1, 60)
    assert await clocked_store.finish(job, None)
    await clocked_store.release([job])
    assert (await _job_row(clocked_store, job.id))["state"] == "done"


@pytest.mark.parametrize("kind, payload", [
    ("messenger_ask:page", MessengerAskJob()),
    ("messenger_media:page", MessengerMediaJob()),
    ("reporter_follow_up", ReporterFollowUpJob(text="Vẫn chưa sửa", channel="email")),
])
async def test_a_dead_side_job_leaves_the_reports_status_to_its_stages(clocked_store: Store, make_message,
                                                                       kind: str, payload: object) -> None:
    # A routed report whose reporter could not be asked (or whose late media could not be fetched): the report
    # itself is still on its way. Marking it failed would make dedupe skip it and hide it from its agency.
    report_id = await _submit(clocked_store, make_message)
    async with clocked_store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (report_id,))
        await clocked_store.queue.enqueue(tx, kind, payload, report_id=report_id)
    (job,) = await clocked_store.lease(kind, 1, 60)
    await clocked_store.fail(job, "PermanentError: chat closed", retry_in=0, dead=True)
    assert (await _job_row(clocked_store, job.id))["state"] == "dead"
    assert (await clocked_store.get_report(report_id)).status == "routed"
    events = await clocked_store.fetchall("SELECT kind, data FROM events WHERE report_id=? ORDER BY id", (report_id,))
    assert [e["kind"] for e in events] == ["side_job_dead"]
    assert json.loads(events[0]["data"]) == {"stage": kind, "error": "PermanentError: chat closed"}
    # A report failed by its own stage meanwhile stays failed when the side job is replayed.
    async with clocked_store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='failed' WHERE id=?", (report_id,))
    assert await clocked_store.queue.replay(kind) == 1
    assert (await clocked_store.get_report(report_id)).status == "failed"
    kinds = [e["kind"] for e in await clocked_store.fetchall("SELECT kind FROM events WHERE report_id=? ORDER BY id",
                                                             (report_id,))]
    assert kinds == ["side_job_dead", "side_job_replayed"]


async def test_a_batch_past_its_write_lock_budget_commits_the_jobs_done_and_goes_on(store: Store, make_message
                                                                                    ) -> None:
    """SQLite: intake's acknowledgements wait for the file's one write lock, so a stage's batch that has held it for
    the budget commits what it has done and goes on in a new transaction (another process sees the first jobs'
    writes while the next job runs); within the budget the batch is one transaction."""
    import sqlite3

    seen: dict[str, list[str]] = {}

    async def run(budget: float, label: str) -> None:
        ids = [await _submit(store, make_message) for _ in range(3)]
        jobs = await store.lease("classify", 3, 60)
        store.write_hold = budget
        commits = store.commit_count

        def writes(report_id: int):
            async def apply(tx: Tx) -> None:
                await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (report_id,))
                other = sqlite3.connect(store.path)  # another process's view: only what is committed
                try:
                    row = other.execute("SELECT status FROM reports WHERE id=?", (ids[0],)).fetchone()
                finally:
                    other.close()
                seen.setdefault(label, []).append(row[0])
            return apply

        assert await store.finish_many([(job, writes(job.report_id)) for job in jobs]) == [True, True, True]
        seen[label + " commits"] = [str(store.commit_count - commits)]
        for job in jobs:
            assert (await _job_row(store, job.id))["state"] == "done"

    await run(3600.0, "long")
    await run(0.0, "zero")
    assert seen["long"] == ["received", "received", "received"] and seen["long commits"] == ["1"]
    assert seen["zero"] == ["received", "routed", "routed"] and seen["zero commits"] == ["3"]


async def test_a_later_transaction_of_a_batch_failing_keeps_the_jobs_already_committed(store: Store, make_message
                                                                                       ) -> None:
    import sqlite3

    from ingest.queue import PartlyFinished

    for _ in range(2):
        await _submit(store, make_message)
    first, second = await store.lease("classify", 2, 60)
    store.write_hold = 0.0

    async def ok(tx: Tx) -> None:
        await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (first.report_id,))

    async def ends_the_transaction(tx: Tx) -> None:
        await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (second.report_id,))
        await tx.execute("ROLLBACK")  # SQLite rolled the whole transaction back (as a full disk makes it do)
        raise sqlite3.OperationalError("the transaction is gone")

    with pytest.raises(PartlyFinished) as caught:
        await store.finish_many([(first, ok), (second, ends_the_transaction)])
    assert caught.value.outcomes == [True]
    assert (await _job_row(store, first.id))["state"] == "done"
    assert (await store.get_report(first.report_id)).status == "routed"
    assert (await _job_row(store, second.id))["state"] == "leased"
    assert (await store.get_report(second.report_id)).status == "received"
