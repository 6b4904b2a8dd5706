"""The SQLite store's WAL checkpoints run on their own thread, never inside a commit (ingest/wal_checkpoint.py)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from ingest.store import Store
from ingest.wal_checkpoint import WalCheckpointer


def _wal_frames(path: Path) -> int:
    """Frames in the write-ahead log, from its size (32-byte header, then 24-byte frame header + page each)."""
    wal = path.with_name(path.name + "-wal")
    return max(0, (wal.stat().st_size - 32) // (24 + 4096)) if wal.exists() else 0


async def _fill(store: Store, pages: int, prefix: str = "fill") -> None:
    blob = "x" * 3000  # about a page a row
    for start in range(0, pages, 100):
        async with store.transaction() as tx:
            for i in range(100):
                await tx.write("INSERT INTO cursors(name, value, updated_at) VALUES (?,?,0)",
                               (f"{prefix}-{start + i}", blob))


async def test_no_commit_checkpoints_the_log_and_the_thread_does(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs")
    try:
        assert store._checkpointer is not None
        store._checkpointer.stop()  # this test turns the thread's crank itself
        await _fill(store, 1500)
        # SQLite's default would have checkpointed inside the commit that passed 1,000 pages.
        assert _wal_frames(store.path) >= 1500
        db_size = store.path.stat().st_size
        checkpointer = WalCheckpointer(store.path)
        conn = sqlite3.connect(store.path, timeout=0, isolation_level=None)
        try:
            assert checkpointer.step(conn) is True
            assert checkpointer.step(conn) is False  # nothing left to copy
        finally:
            conn.close()
        assert checkpointer.checkpoints == 1
        assert store.path.stat().st_size > db_size + 1000 * 4096  # the rows are in the database file now
        # and the log is reused from its start by the next commit rather than growing
        size = store.path.with_name(store.path.name + "-wal").stat().st_size
        await _fill(store, 100, "more")
        assert store.path.with_name(store.path.name + "-wal").stat().st_size == size
    finally:
        await store.close()


async def test_the_store_starts_and_stops_its_checkpointer(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs")
    checkpointer = store._checkpointer
    assert checkpointer is not None and checkpointer._thread is not None and checkpointer._thread.is_alive()
    checkpointer.interval = 0.01
    await _fill(store, 300)
    thread = checkpointer._thread
    await store.close()
    assert not thread.is_alive()


async def test_the_log_stays_bounded_under_a_steady_stream_of_commits(tmp_path: Path) -> None:
    """Back-to-back commits land during every PASSIVE checkpoint, so the log was never wholly copied, never started
    over, and grew ~10 MB a second (review of f57548c). Past `restart_frames` the checkpointer asks for RESTART."""
    import time

    store = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs")
    assert store._checkpointer is not None
    store._checkpointer.stop()
    checkpointer = WalCheckpointer(store.path, interval=0.05, restart_frames=512)
    checkpointer.start()
    wal = store.path.with_name(store.path.name + "-wal")
    try:
        blob = "x" * 1500
        # A count of commits, not a span of time (a slow machine commits less in one): 5,000 leave a ~62 MB log
        # when nothing starts it over. The clock only gives up waiting for the checkpointer's first RESTART.
        started, i = time.monotonic(), 0
        while (i < 5000 or checkpointer.restarts < 1) and time.monotonic() - started < 120:
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO cursors(name, value, updated_at) VALUES (?,?,?) ON CONFLICT(name)"
                                 " DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                                 (f"k{i % 5000}", blob, i))
            i += 1
        assert checkpointer.restarts >= 1
        # Unbounded, these commits leave a ~62 MB log. Bounded, it is a few MB on a quiet machine, and grows with
        # how long the checkpointer's thread waits for a core (9 MB seen while the suite ran beside benchmarks).
        assert wal.stat().st_size < 24 * 1024 * 1024, f"{i} commits left a {wal.stat().st_size >> 20} MB log"
    finally:
        checkpointer.stop()
        await store.close()


def test_a_vanished_store_file_is_not_created_again_by_the_checkpointer(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(sqlite3.Error):
        WalCheckpointer(tmp_path / "gone.sqlite3").connect()
    assert not (tmp_path / "gone.sqlite3").exists()
