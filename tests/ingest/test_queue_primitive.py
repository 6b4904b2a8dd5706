"""The queue primitive for every kind (ingest/queue.py): jobs without a report, deadlines, Retry-After, fencing,
kind hooks on death and replay, subject filters, and the migration of a store written before it."""
from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingest.clock import FakeClock
from ingest.migrations import INGEST
from ingest.queue import JobKind, RetryPolicy, register_kind, KINDS
from ingest.records import Job
from ingest.queue import Settlement
from ingest.store import Store, Tx, _split_sql
from tests.stores import AnyStore, StoreFactory, store_factory  # noqa: F401  (the parametrised fixture)


@pytest.fixture
async def clocked_store(store_factory: StoreFactory, clock: FakeClock) -> AsyncIterator[AnyStore]:
    yield await store_factory.open(clock=clock)
from tests.stores import AnyStore, StoreFactory, store_factory  # noqa: F401  (the parametrised fixture)


@pytest.fixture
async def clocked_store(store_factory: StoreFactory, clock: FakeClock) -> AsyncIterator[AnyStore]:
    """Both backends: the queue's contract is the same on SQLite and PostgreSQL."""
    yield await store_factory.open(clock=clock)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    chat: str
    text: str


@pytest.fixture
def ping_kind():
    seen: list[tuple[str, int]] = []

    async def on_dead(tx: Tx, job: Job, error: str) -> None:
        seen.append(("dead", job.id))
        await tx.event(None, "ping_dead", "system", {"error": error})

    async def on_replay(tx: Tx, job: Job, _: str) -> None:
        seen.append(("replay", job.id))

    register_kind(JobKind("test.ping", Ping, on_dead=on_dead, on_replay=on_replay, replay_deadline=100.0))
    yield seen
    KINDS.pop("test.ping", None)


async def _enqueue(store: Store, **kw) -> int:
    async with store.transaction() as tx:
        return await store.queue.enqueue(tx, "test.ping", Ping(chat="42", text="xin chào"), **kw)


async def test_a_job_without_report_carries_its_typed_payload(clocked_store: Store, ping_kind) -> None:
    job_id = await _enqueue(clocked_store, subject="bot/42")
    (job,) = await clocked_store.queue.lease("test.ping", 5, 30)
    assert job.id == job_id and job.report_id is None and job.subject == "bot/42"
    assert job.payload == Ping(chat="42", text="xin chào")
    assert await clocked_store.queue.finish(job)
    assert await clocked_store.queue.lease("test.ping", 5, 30) == []


async def test_retry_after_is_a_floor_and_attempts_run_out(clocked_store: Store, clock: FakeClock,
                                                           ping_kind) -> None:
    await _enqueue(clocked_store)
    policy = RetryPolicy(max_attempts=2, base=1.0, cap=2.0)
    (job,) = await clocked_store.queue.lease("test.ping", 1, 30)
    assert await clocked_store.queue.retry_or_dead(job, "HTTP 429", policy, retry_after=120.0) == "retry"
    clock.advance(119)
    assert await clocked_store.queue.lease("test.ping", 1, 30) == []  # the cap (2 s) does not beat Retry-After
    clock.advance(1)
    (again,) = await clocked_store.queue.lease("test.ping", 1, 30)
    assert again.attempts == 2
    assert await clocked_store.queue.retry_or_dead(again, "HTTP 503", policy) == "dead"
    assert ping_kind == [("dead", again.id)]
    (letter,) = await clocked_store.queue.dead_letters("test.ping")
    assert letter.id == again.id and letter.last_error == "HTTP 503" and letter.attempts == 2


async def test_a_deadline_ends_retries_and_replay_gives_a_fresh_one(clocked_store: Store, clock: FakeClock,
                                                                    ping_kind) -> None:
    job_id = await _enqueue(clocked_store, deadline=clock.now() + 50)
    policy = RetryPolicy(max_attempts=None, base=1000.0, cap=1000.0)
    (job,) = await clocked_store.queue.lease("test.ping", 1, 30)
    assert await clocked_store.queue.retry_or_dead(job, "timeout", policy) == "retry"
    row = await clocked_store.fetchone("SELECT available_at, deadline_at FROM jobs WHERE id=?", (job_id,))
    assert row["available_at"] <= row["deadline_at"]  # never retried later than the deadline
    clock.advance(50)
    (job,) = await clocked_store.queue.lease("test.ping", 1, 30)
    assert await clocked_store.queue.retry_or_dead(job, "timeout", policy) == "dead"
    assert "deadline passed" in (await clocked_store.queue.dead_letters())[0].last_error
    assert await clocked_store.queue.replay("test.ping") == 1
    assert ping_kind == [("dead", job_id), ("replay", job_id)]
    (back,) = await clocked_store.queue.lease("test.ping", 1, 30)
    assert back.attempts == 1 and back.deadline_at == clock.now() + 100.0


async def test_a_late_worker_changes_nothing(clocked_store: Store, clock: FakeClock, ping_kind) -> None:
    await _enqueue(clocked_store)
    (first,) = await clocked_store.queue.lease("test.ping", 1, 10)
    clock.advance(11)
    assert await clocked_store.queue.reclaim_expired() == 1
    (second,) = await clocked_store.queue.lease("test.ping", 1, 10)
    policy = RetryPolicy(max_attempts=1)
    assert await clocked_store.queue.retry_or_dead(first, "late", policy, permanent=True) == "lost"
    assert not await clocked_store.queue.finish(first)
    assert ping_kind == []
    assert await clocked_store.queue.finish(second)


async def test_a_batch_of_outcomes_commits_together_each_fenced(clocked_store: Store, clock: FakeClock,
                                                                  ping_kind) -> None:
    for _ in range(4):
        await _enqueue(clocked_store)
    old = await clocked_store.queue.lease("test.ping", 10, 10)
    clock.advance(11)
    await clocked_store.queue.reclaim_expired()
    a, b, c, d = await clocked_store.queue.lease("test.ping", 10, 10)  # taken again, by a later attempt
    seen: list[int] = []

    def note(job: Job):
        async def writes(tx: Tx) -> None:
            seen.append(job.id)
        return writes

    # The first attempts' late outcomes are all lost: nothing of them is written.
    late = [Settlement(old[0], "done", writes=note(old[0])), Settlement(old[1], "retry", "HTTP 503", 30.0),
            Settlement(old[2], "dead", "HTTP 400"), Settlement(old[3], "done", writes=note(old[3]))]
    assert await clocked_store.queue.settle(late) == [False] * 4 and seen == [] and ping_kind == []
    outcomes = await clocked_store.queue.settle([
        Settlement(a, "done", writes=note(a)), Settlement(b, "retry", "HTTP 503", 30.0, writes=note(b)),
        Settlement(c, "dead", "HTTP 400"), Settlement(d, "done", writes=note(d))])
    assert outcomes == [True] * 4 and seen == [a.id, b.id, d.id] and ping_kind == [("dead", c.id)]
    states = {r["id"]: r["state"] for r in await clocked_store.fetchall("SELECT id, state FROM jobs")}
    assert [states[j.id] for j in (a, b, c, d)] == ["done", "ready", "dead", "done"]


async def test_replay_by_subject_prefix_takes_only_that_endpoint(clocked_store: Store, ping_kind) -> None:
    for subject in ("so-gtvt/hook", "so-gtvt/mail", "cay-xanh/hook", "so-gtvt_x/hook"):
        await _enqueue(clocked_store, subject=subject)
    for job in await clocked_store.queue.lease("test.ping", 10, 30):
        await clocked_store.queue.fail(job, "410 Gone", retry_in=0, dead=True)
    assert await clocked_store.queue.replay(subject_prefix="so-gtvt/") == 2
    left = {d.subject for d in await clocked_store.queue.dead_letters()}
    assert left == {"cay-xanh/hook", "so-gtvt_x/hook"}


async def test_a_subject_prefix_without_a_slash_is_that_subject_only(clocked_store: Store, ping_kind) -> None:
    """'so-gtvt/hook' names one endpoint: it never takes in 'so-gtvt/hook-2' (whose replay would re-enable it)."""
    for subject in ("so-gtvt/hook", "so-gtvt/hook-2", "so-gtvt/hook/x"):
        await _enqueue(clocked_store, subject=subject)
    for job in await clocked_store.queue.lease("test.ping", 10, 30):
        await clocked_store.queue.fail(job, "410 Gone", retry_in=0, dead=True)
    assert [d.subject for d in await clocked_store.queue.dead_letters(subject="so-gtvt/hook")] == ["so-gtvt/hook"]
    assert await clocked_store.queue.replay(subject_prefix="so-gtvt/hook") == 2
    assert [d.subject for d in await clocked_store.queue.dead_letters()] == ["so-gtvt/hook-2"]


async def test_a_subject_prefix_ending_in_a_colon_takes_every_subject_under_it(clocked_store: Store,
                                                                                 ping_kind) -> None:
    """'reopen:' (dedupe's incident-state subjects are 'reopen:INC-…' and 'close:INC-…') names all reopenings."""
    for subject in ("reopen:INC-000001", "reopen:INC-000002", "close:INC-000001"):
        await _enqueue(clocked_store, subject=subject)
    for job in await clocked_store.queue.lease("test.ping", 10, 30):
        await clocked_store.queue.fail(job, "boom", retry_in=0, dead=True)
    assert await clocked_store.queue.replay(subject_prefix="reopen:") == 2
    assert [d.subject for d in await clocked_store.queue.dead_letters()] == ["close:INC-000001"]


async def test_a_job_whose_payload_no_longer_decodes_is_dead_lettered_by_its_lease(clocked_store: Store,
                                                                                    ping_kind) -> None:
    """A waiting job whose payload lacks a field (another build's, edited by hand) failed every lease of its kind:
    leased first, oldest, it took the jobs leased with it down each time. Its lease dead-letters it (no kind hook:
    it would read the payload) and hands out the others; replayed, it is buried again at its next lease."""
    broken, *good = [await _enqueue(clocked_store) for _ in range(3)]
    async with clocked_store.transaction() as tx:
        await tx.execute("UPDATE jobs SET payload=? WHERE id=?", ('{"chat": "42"}', broken))
    assert [job.id for job in await clocked_store.queue.lease("test.ping", 5, 30)] == good
    (dead,) = await clocked_store.queue.dead_letters("test.ping")
    assert (dead.id, dead.payload, dead.last_error) == (broken, None, "payload does not decode")
    assert ping_kind == []
    assert await clocked_store.queue.replay(ids=[broken]) == 1
    assert await clocked_store.queue.lease("test.ping", 5, 30) == []
    assert [d.id for d in await clocked_store.queue.dead_letters("test.ping")] == [broken]


async def test_bury_dead_letters_a_job_whose_payload_no_longer_decodes_with_the_others(clocked_store: Store,
                                                                                        ping_kind) -> None:
    """An endpoint's 410 buries its waiting jobs in the delivery's transaction: one job whose payload lacks a field
    made bury raise, undoing the whole 410 (the endpoint stayed on, its jobs kept failing). It is buried with the
    others and left out of what bury returns, by id as by subject; no kind hook runs."""
    broken, *good = [await _enqueue(clocked_store, subject="so-gtvt/hook") for _ in range(3)]
    broken_too, other = [await _enqueue(clocked_store, subject="cay-xanh/hook") for _ in range(2)]
    async with clocked_store.transaction() as tx:
        await tx.execute("UPDATE jobs SET payload=? WHERE id IN (?, ?)", ('{"chat": "42"}', broken, broken_too))
    async with clocked_store.transaction() as tx:
        by_subject = await clocked_store.queue.bury_subject(tx, "test.ping", "so-gtvt/hook", "410 Gone")
        by_id = await clocked_store.queue.bury(tx, [broken_too, other], "410 Gone")
    assert [job.id for job in by_subject] == good and [job.id for job in by_id] == [other]
    dead = {d.id: d.payload for d in await clocked_store.queue.dead_letters("test.ping")}
    assert set(dead) == {broken, *good, broken_too, other} and dead[broken] is None and dead[broken_too] is None
    assert ping_kind == []


def _old_store(tmp_path: Path, version: int, jobs: list[tuple[object, ...]]) -> Path:
    """A store as an earlier daemon left it: ingest migrations up to `version`, report 7 and its `jobs`
    (id, stage, report_id, state, attempts, available_at, lease_until, last_error, payload)."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations(component TEXT NOT NULL, version INTEGER NOT NULL,"
                 " applied_at REAL NOT NULL, PRIMARY KEY(component, version))")
    for number, sql in sorted(INGEST):
        if number > version:
            break
        for statement in _split_sql(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES ('ingest', ?, 0)", (number,))
    conn.execute("INSERT INTO reports(id, channel, channel_instance, idem_key, received_at, stored_at, raw, raw_type,"
                 " record, status, updated_at) VALUES (7, 'app', 'app', 'k', 0, 0, x'00', 'text/plain', '{}',"
                 " 'routed', 0)")
    conn.executemany("INSERT INTO jobs(id, stage, report_id, state, attempts, available_at, lease_until, last_error,"
                     " payload, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,0,0)", jobs)
    conn.commit()
    conn.close()
    return path


async def test_a_store_written_before_the_one_queue_migrates_with_its_jobs(tmp_path: Path) -> None:
    # The schema as the previous daemon left it: ingest migrations 1-3, a job leased, one dead, one ready.
    path = _old_store(tmp_path, 3, [(1, "classify", 7, "done", 1, 0, None, None, "{}"),
                                    (2, "dedupe", 7, "dead", 5, 0, None, "boom", '{"after_review": true}'),
                                    (3, "notify", 7, "leased", 1, 0, 5.0, None, '{"template": "ack"}')])
    store = await Store.open(path, tmp_path / "blobs", clock=FakeClock(100.0))
    try:
        rows = [dict(r) for r in await store.fetchall("SELECT id, stage, report_id, state, attempts, last_error,"
                                                       " payload, deadline_at, subject FROM jobs ORDER BY id")]
        assert [(r["id"], r["stage"], r["state"], r["attempts"]) for r in rows] == [
            (1, "classify", "done", 1), (2, "dedupe", "dead", 5), (3, "notify", "leased", 1)]
        assert rows[1]["last_error"] == "boom" and all(r["deadline_at"] is None for r in rows)
        assert await store.queue.reclaim_expired() == 1  # the old lease expired at t=5
        (notify,) = await store.queue.lease("notify", 5, 30)
        assert notify.report_id == 7 and notify.attempts == 2
        assert await store.queue.replay("dedupe") == 1
        (dedupe,) = await store.queue.lease("dedupe", 5, 30)
        assert dedupe.id == 2
    finally:
        await store.close()


async def test_the_fence_migration_writes_only_jobs_still_waiting_or_leased(tmp_path: Path) -> None:
    """Done jobs are never purged, so the migration that added the lease token (ingest 5) must not rewrite every
    row under the write lock: waiting and leased jobs start their token from their attempts, done and dead ones
    keep the default. A replayed dead letter is still fenced: each lease of it gets a token above any before."""
    path = _old_store(tmp_path, 4, [(1, "classify", 7, "done", 1, 0, None, None, "{}"),
                                    (2, "dedupe", 7, "dead", 5, 0, None, "boom", '{"after_review": true}'),
                                    (3, "notify", 7, "leased", 3, 0, 5.0, None, '{"template": "ack"}'),
                                    (4, "notify", 7, "ready", 2, 0, None, "timeout", '{"template": "ack"}')])
    clock = FakeClock(100.0)
    store = await Store.open(path, tmp_path / "blobs", clock=clock)
    try:
        tokens = {r["id"]: r["lease_token"] for r in await store.fetchall("SELECT id, lease_token FROM jobs")}
        assert tokens == {1: 0, 2: 0, 3: 3, 4: 2}
        assert await store.queue.replay("dedupe") == 1
        (stalled,) = await store.queue.lease("dedupe", 5, 30)
        clock.advance(60)
        assert await store.queue.reclaim_expired() == 2  # the stalled holder's lease, and the old one of job 3
        (holder,) = await store.queue.lease("dedupe", 5, 30)
        assert holder.lease_token > stalled.lease_token
        assert not await store.queue.finish(stalled) and await store.queue.finish(holder)
    finally:
        await store.close()


async def _two_leased_one_lost(store: Store, clock: FakeClock) -> tuple[Job, Job, Job]:
    """Two jobs leased together for 10 s; the second's lease expires alone and another worker takes it:
    (held, lost, the new holder's lease of the lost one)."""
    await _enqueue(store)
    lost_id = await _enqueue(store)
    held, lost = await store.queue.lease("test.ping", 2, 10)
    async with store.transaction() as tx:
        await tx.execute("UPDATE jobs SET lease_until=? WHERE id=?", (clock.now() - 1, lost_id))
    assert await store.queue.reclaim_expired() == 1
    (retaken,) = await store.queue.lease("test.ping", 1, 10)
    return held, lost, retaken


async def test_a_late_release_leaves_the_new_holders_lease_alone(clocked_store: Store, clock: FakeClock,
                                                                 ping_kind) -> None:
    # Worker A's lease expires mid-batch; B takes the job. A's late give-back must not undo B's lease, else a
    # third worker would lease it again under B's very attempt number and the work would be done twice.
    job_id = await _enqueue(clocked_store)
    (late,) = await clocked_store.queue.lease("test.ping", 1, 10)
    clock.advance(11)
    assert await clocked_store.queue.reclaim_expired() == 1
    (live,) = await clocked_store.queue.lease("test.ping", 1, 10)
    await clocked_store.queue.release([late])
    (row,) = await clocked_store.fetchall("SELECT state, attempts FROM jobs WHERE id=?", (job_id,))
    assert (row["state"], row["attempts"]) == ("leased", live.attempts)
    assert await clocked_store.queue.lease("test.ping", 1, 10) == []
    assert await clocked_store.queue.finish(live)


async def test_a_release_fences_each_job_by_its_own_attempt(clocked_store: Store, clock: FakeClock,
                                                            ping_kind) -> None:
    # In one give-back, the job still held is released and the one lost meanwhile is left to its new holder.
    held, lost, retaken = await _two_leased_one_lost(clocked_store, clock)
    held_id, lost_id = held.id, lost.id
    await clocked_store.queue.release([held, lost])
    rows = {r["id"]: (r["state"], r["attempts"])
            for r in await clocked_store.fetchall("SELECT id, state, attempts FROM jobs")}
    assert rows == {held_id: ("ready", 0), lost_id: ("leased", retaken.attempts)}


async def test_a_renewal_extends_the_leases_still_held_and_no_other(clocked_store: Store, clock: FakeClock,
                                                                     ping_kind) -> None:
    held, lost, retaken = await _two_leased_one_lost(clocked_store, clock)
    held_id, lost_id = held.id, lost.id
    start = clock.now()
    clock.advance(8)
    assert await clocked_store.queue.renew([held, lost], 10) == 1
    rows = {r["id"]: r["lease_until"] for r in await clocked_store.fetchall("SELECT id, lease_until FROM jobs")}
    assert rows == {held_id: start + 18, lost_id: start + 10}  # the new holder's lease is its own
    clock.advance(8)  # past the first lease, inside the renewed one: only the new holder's lease has run out
    assert await clocked_store.queue.reclaim_expired() == 1
    assert await clocked_store.queue.finish(held) and not await clocked_store.queue.finish(retaken)


async def test_first_waiting_counts_a_job_another_worker_holds(clocked_store: Store, ping_kind) -> None:
    first = await _enqueue(clocked_store, subject="bot/555")
    second = await _enqueue(clocked_store, subject="bot/555")
    (elsewhere,) = await clocked_store.queue.lease("test.ping", 1, 30)  # another instance is sending the first
    (mine,) = await clocked_store.queue.lease("test.ping", 1, 30)
    assert (elsewhere.id, mine.id) == (first, second)
    heads = await clocked_store.queue.first_waiting("test.ping", ["bot/555"], exclude=[mine.id])
    assert heads["bot/555"][0] == first
    # The caller's own leased jobs are its to order: alone, nothing is ahead of them.
    assert await clocked_store.queue.finish(elsewhere)
    assert await clocked_store.queue.first_waiting("test.ping", ["bot/555"], exclude=[mine.id]) == {}
