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
