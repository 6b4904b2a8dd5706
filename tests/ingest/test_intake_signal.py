"""Intake's "waiting for the write lock" flag between the processes of one SQLite file (ingest/intake_signal.py):
a workers process's batch transaction commits at its next job once intake waits, and its next transaction lets
intake's commit go first."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import ingest.intake_signal
import ingest.store
from ingest.intake_signal import IntakeSignal
from ingest.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs")
    yield store
    await store.close()


def test_a_flag_set_through_one_mapping_is_seen_through_another_and_goes_stale(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    intake, workers = IntakeSignal(tmp_path / "db"), IntakeSignal(tmp_path / "db")  # two processes' mappings
    try:
        assert not workers.waiting()
        intake.begin_waiting()
        assert workers.waiting()
        intake.end_waiting()
        assert not workers.waiting()
        intake.begin_waiting()
        # An intake killed while waiting leaves its flag set: past STALE_SECONDS it is no longer believed.
        monkeypatch.setattr(ingest.intake_signal, "STALE_SECONDS", 0.05)
        time.sleep(0.06)
        assert not workers.waiting()
    finally:
        intake.close()
        workers.close()


async def test_a_workers_batch_commits_at_once_when_intake_waits_and_not_before(store: Store, tmp_path: Path) -> None:
    other = IntakeSignal(store.path)  # intake's process
    try:
        store.write_gap = 0.003  # as `serve --role workers` sets it
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO cursors(name, value, updated_at) VALUES ('a', '1', 0)")
            assert not tx.held_long()  # within its budget and nobody waiting: the batch goes on
            other.begin_waiting()
            assert tx.held_long()  # intake waits: commit the jobs done so far now
            other.end_waiting()
            assert not tx.held_long()
        store.write_gap = 0.0  # one process (WriteTurns orders intake there): the flag is not asked
        other.begin_waiting()
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO cursors(name, value, updated_at) VALUES ('b', '1', 0)")
            assert not tx.held_long()
    finally:
        other.end_waiting()
        other.close()


async def test_intakes_waiting_commit_goes_before_a_workers_next_transaction(store: Store,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Intake's commit (another process) waits for the lock a stage holds; when the stage commits, its next
    transaction waits for intake's to be taken rather than taking the lock back before intake's next try. Intake's
    poller here gets a CPU only every 10 ms, as on a loaded machine: the 3 ms gap alone then loses to the stage."""
    store.write_gap = 0.003
    monkeypatch.setattr(ingest.store, "INTAKE_FIRST_SECONDS", 1.0)  # a loaded CI machine's poller may be later
    order: list[str] = []
    holding = threading.Event()

    async with store.transaction() as tx:
        await tx.execute("INSERT INTO cursors(name, value, updated_at) VALUES ('s1', '1', 0)")

        def intake() -> None:
            # The intake process: its own connection and mapping, flagging while it waits, as _commit_rows does.
            conn = sqlite3.connect(store.path, isolation_level=None, timeout=10)
            flag = IntakeSignal(store.path)
            try:
                holding.wait()
                flag.begin_waiting()
                conn.execute("PRAGMA busy_timeout=0")
                while True:  # busy until the stage commits
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        break
                    except sqlite3.OperationalError:
                        time.sleep(0.01)
                flag.end_waiting()
                order.append("intake")
                time.sleep(0.05)  # its inserts and fsync
                conn.execute("INSERT INTO cursors(name, value, updated_at) VALUES ('i', '1', 0)")
                conn.execute("COMMIT")
            finally:
                flag.end_waiting()
                flag.close()
                conn.close()

        thread = threading.Thread(target=intake)
        thread.start()
        holding.set()
        watch = IntakeSignal(store.path)
        try:
            while not watch.waiting():
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.03)  # the stage goes on holding the lock a while, intake polling
        finally:
            watch.close()
    # The stage's next transaction: without the flag it would begin 3 ms after its commit, before intake's try.
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO cursors(name, value, updated_at) VALUES ('s2', '1', 0)")
        order.append("stage")
    await asyncio.to_thread(thread.join)
    assert order == ["intake", "stage"]


def test_a_flag_left_from_before_the_machine_restarted_is_not_believed(tmp_path: Path) -> None:
    import struct

    db = tmp_path / "db"
    Path(f"{db}-intake").write_bytes(struct.pack("d", time.monotonic() + 3 * 86400.0))  # the old boot's clock
    flag = IntakeSignal(db)
    try:
        assert not flag.waiting()
    finally:
        flag.close()


def test_the_flag_is_a_written_block_not_a_hole_and_a_store_opens_without_one(tmp_path: Path) -> None:
    import os

    flag = IntakeSignal(tmp_path / "db")
    try:
        # A hole gets its block at the first store into the mapping: a SIGBUS on a full disk.
        assert os.stat(flag.path).st_blocks > 0
    finally:
        flag.close()
    # One that cannot be set up (here: its folder is gone) is no flag, and no error: it is only a hint.
    assert IntakeSignal.open(tmp_path / "gone" / "db") is None
