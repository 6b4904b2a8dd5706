"""Intake's group commit on a SQLite file another process writes too (`serve --role workers` beside
`--role intake`): it waits for that process's write lock, acknowledges only once committed, and after
store.BUSY_TIMEOUT answers a storage error (503 upstream) instead of waiting for ever."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import ingest.store
from ingest.errors import StorageError
from ingest.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs")
    yield store
    await store.close()


class OtherWriter:
    """Another connection to the same file holding its write lock (BEGIN IMMEDIATE) until released, as the
    workers process does while it finishes a batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.taken = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE cursors SET value=value")  # a write of its own, committed below
            self.taken.set()
            self.release.wait()
            conn.execute("COMMIT")
        finally:
            conn.close()

    async def __aenter__(self) -> OtherWriter:
        self.thread.start()
        await asyncio.to_thread(self.taken.wait)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await asyncio.to_thread(self.thread.join)


async def test_intake_waits_for_another_writer_and_acks_after_its_own_commit(store: Store, make_message) -> None:
    async with OtherWriter(store.path) as other:
        submit = asyncio.ensure_future(store.submit(make_message("k1"), b"raw", "text/plain"))
        await asyncio.sleep(0.3)  # time for the group commit to try (and find the lock taken) many times
        assert not submit.done()  # no acknowledgement while the report cannot be committed
        other.release.set()
        result = await submit
    assert result.created
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM reports WHERE id=?", (result.report_id,)).fetchone() == (1,)
    finally:
        conn.close()
    assert store.health.ok


async def test_a_lock_held_past_the_busy_timeout_is_a_storage_error_and_intake_recovers(
        store: Store, make_message, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest.store, "BUSY_TIMEOUT", 0.2)
    async with OtherWriter(store.path):
        with pytest.raises(StorageError):
            await store.submit(make_message("k1"), b"raw", "text/plain")
        assert not store.health.ok
    result = await store.submit(make_message("k1"), b"raw", "text/plain")  # the same key, accepted once now
    assert result.created and store.health.ok


async def test_a_workers_transaction_waits_for_the_lock_by_short_tries_as_intake_does(store: Store) -> None:
    """The workers' transactions (store.transaction) wait for the other process's write lock as intake's group commit
    does: trying again about every millisecond. In SQLite's busy handler (one statement, its tries inside it) they
    slept up to 100 ms between tries, woke after the lock was taken again, and under sustained intake ran out of
    their BUSY_TIMEOUT. The lock here stays taken until the transaction has tried for it three times."""
    begins = threading.Semaphore(0)
    await store._writer.set_trace_callback(lambda sql: begins.release() if sql == "BEGIN IMMEDIATE" else None)

    async def write() -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO cursors(name, value, updated_at) VALUES ('w', '1', 0)")

    async with OtherWriter(store.path) as other:
        task = asyncio.ensure_future(write())
        retried = await asyncio.to_thread(lambda: all(begins.acquire(timeout=5) for _ in range(3)))
        other.release.set()
        await task
    assert retried
    assert (await store.fetchone("SELECT value FROM cursors WHERE name='w'"))["value"] == "1"


class Recovering(sqlite3.Connection):
    """A connection to a file another connection is recovering (its WAL, after a crash): SQLite answers its BEGIN
    with SQLITE_BUSY_RECOVERY, an extended code of SQLITE_BUSY. Recovery lasts milliseconds and cannot be held
    open from a test, so the first `busy` answers stand in for it; all else is the real connection."""

    busy = 2
    code = sqlite3.SQLITE_BUSY_RECOVERY

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
        if sql == "BEGIN IMMEDIATE" and self.busy:
            self.busy -= 1
            exc = sqlite3.OperationalError("database is locked")
            exc.sqlite_errorcode = self.code
            raise exc
        return super().execute(sql, *args)


def test_a_busy_lock_reported_with_an_extended_code_is_waited_out_and_other_faults_are_not(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "store.sqlite3", isolation_level=None, factory=Recovering)
    try:
        ingest.store._begin_immediate(conn)
        assert conn.in_transaction and conn.busy == 0
        conn.execute("ROLLBACK")
        conn.busy, conn.code = 1, sqlite3.SQLITE_IOERR_WRITE  # a storage fault: failed at once, not retried
        with pytest.raises(sqlite3.OperationalError):
            ingest.store._begin_immediate(conn)
        assert conn.busy == 0 and not conn.in_transaction
    finally:
        conn.close()


async def test_with_intake_in_another_process_a_stage_leaves_the_lock_free_between_its_transactions(
        store: Store) -> None:
    """`serve --role workers` (ingest.store.WRITE_GAP): intake's commit in the other process tries for the lock
    every ~millisecond, and a stage that begins its next transaction right after committing takes it back first,
    again and again. With the gap, a stage's BEGIN comes at least `write_gap` after its last COMMIT, time for
    intake's next try; a process without intake beside it (the default, gap 0) goes on at once."""
    import time

    marks: list[tuple[str, float]] = []
    await store._writer.set_trace_callback(
        lambda sql: marks.append((sql, time.monotonic())) if sql in ("BEGIN IMMEDIATE", "COMMIT") else None)

    async def write(name: str) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO cursors(name, value, updated_at) VALUES (?, '1', 0)", (name,))

    store.write_gap = 0.05
    await write("a")
    await write("b")
    (b1, _), (c1, committed), (b2, begun) = marks[:3]
    assert (b1, c1, b2) == ("BEGIN IMMEDIATE", "COMMIT", "BEGIN IMMEDIATE")
    assert begun - committed >= 0.05  # (COMMIT is traced as it starts: the gap counts from its end)
