"""The durable store: idempotent intake, group commit, pragmas, migrations, and storage failures."""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from ingest.errors import StorageError
from ingest.records import InboundMessage, from_json
from ingest.store import Store


def _rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    # A separate plain connection sees only what is committed, which is what an acknowledgement promises.
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def test_submit_stores_raw_bytes_record_and_queues_classify(store: Store, make_message) -> None:
    msg = make_message("k1")
    result = await store.submit(msg, b"raw \xff bytes", "application/octet-stream")
    assert result.created
    rows = _rows(store.path, "SELECT raw, raw_type, status, record FROM reports WHERE id=?", (result.report_id,))
    raw, raw_type, status, record = rows[0]
    assert raw == b"raw \xff bytes" and raw_type == "application/octet-stream" and status == "received"
    assert from_json(InboundMessage, record) == msg
    jobs = _rows(store.path, "SELECT stage, state FROM jobs WHERE report_id=?", (result.report_id,))
    assert jobs == [("classify", "ready")]


async def test_same_key_twice_is_one_row_and_second_is_not_created(store: Store, make_message) -> None:
    first = await store.submit(make_message("same"), b"a", "text/plain")
    second = await store.submit(make_message("same", text="khác nội dung"), b"b", "text/plain")
    assert first.created and not second.created
    assert second.report_id == first.report_id
    assert _rows(store.path, "SELECT COUNT(*) FROM reports") == [(1,)]
    assert _rows(store.path, "SELECT COUNT(*) FROM jobs") == [(1,)]
    # The first copy is kept verbatim; the repeat changes nothing.
    assert _rows(store.path, "SELECT raw FROM reports") == [(b"a",)]


async def test_same_key_in_one_group_commit_creates_one_row(store: Store, make_message) -> None:
    results = await asyncio.gather(*(store.submit(make_message("dup"), b"x", "text/plain") for _ in range(5)))
    assert len({r.report_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert _rows(store.path, "SELECT COUNT(*) FROM jobs") == [(1,)]


async def test_same_key_on_two_channels_is_two_reports(store: Store, make_message) -> None:
    a = await store.submit(make_message("k", channel="app"), b"a", "text/plain")
    b = await store.submit(make_message("k", channel="email"), b"a", "text/plain")
    assert a.created and b.created and a.report_id != b.report_id


async def test_group_commit_shares_commits_and_acks_only_after_commit(store: Store, make_message) -> None:
    n = 200
    seen_committed: list[bool] = []

    async def submit_and_check(i: int) -> None:
        result = await store.submit(make_message(f"g{i}"), b"r", "text/plain")
        # At the moment submit returns (when a channel would acknowledge), the row must be committed.
        seen_committed.append(_rows(store.path, "SELECT COUNT(*) FROM reports WHERE id=?", (result.report_id,))
                              == [(1,)])

    before = store.commit_count
    await asyncio.gather(*(submit_and_check(i) for i in range(n)))
    commits = store.commit_count - before
    assert all(seen_committed) and len(seen_committed) == n
    assert commits < n / 4, f"{commits} commits for {n} concurrent submits: no group commit"
    assert _rows(store.path, "SELECT COUNT(*) FROM reports") == [(n,)]


async def test_flagged_message_is_stored_ignored_and_never_queued(store: Store, make_message) -> None:
    result = await store.submit(make_message(flags=("auto_reply",)), b"r", "message/rfc822")
    assert _rows(store.path, "SELECT status FROM reports WHERE id=?", (result.report_id,)) == [("ignored",)]
    assert _rows(store.path, "SELECT COUNT(*) FROM jobs") == [(0,)]


async def test_submit_batch_commits_reports_and_cursor_together(store: Store, make_message) -> None:
    items = [(make_message(f"b{i}"), b"r", "text/plain") for i in range(3)]
    results = await store.submit_batch(items, cursor=("imap:inbox", {"uid": 42}))
    assert [r.created for r in results] == [True, True, True]
    assert await store.get_cursor("imap:inbox") == {"uid": 42}
    again = await store.submit_batch(items, cursor=("imap:inbox", {"uid": 43}))
    assert [r.created for r in again] == [False, False, False]
    assert [r.report_id for r in again] == [r.report_id for r in results]
    assert await store.get_cursor("imap:inbox") == {"uid": 43}


async def test_every_connection_is_wal_with_full_sync(store: Store) -> None:
    for conn in (store._writer, store._reader):
        assert conn is not None
        mode = await (await conn.execute("PRAGMA journal_mode")).fetchone()
        sync = await (await conn.execute("PRAGMA synchronous")).fetchone()
        assert mode[0] == "wal"
        assert sync[0] == 2  # FULL


async def test_migrations_are_recorded_and_reopen_is_idempotent(tmp_path: Path, make_message) -> None:
    extra = {"demo": [(1, "CREATE TABLE demo_things(id INTEGER PRIMARY KEY, name TEXT)"),
                      (2, "ALTER TABLE demo_things ADD COLUMN size INTEGER")]}
    s = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", migrations=extra)
    kept = await s.submit(make_message("kept"), b"r", "text/plain")
    await s.close()
    s = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", migrations=extra)
    try:
        rows = await s.fetchall("SELECT component, version FROM schema_migrations ORDER BY component, version")
        from ingest.migrations import INGEST
        assert [tuple(r) for r in rows] == [("demo", 1), ("demo", 2),
                                           *(("ingest", version) for version, _ in sorted(INGEST))]
        assert (await s.get_report(kept.report_id)) is not None
        await s.fetchall("SELECT id, name, size FROM demo_things")
    finally:
        await s.close()


async def test_a_new_migration_is_applied_on_reopen(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", migrations={"demo": [(1, "CREATE TABLE t(a)")]})
    await s.close()
    s = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs",
                         migrations={"demo": [(1, "CREATE TABLE t(a)"), (2, "CREATE TABLE u(b); CREATE TABLE v(c)")]})
    try:
        rows = await s.fetchall("SELECT version FROM schema_migrations WHERE component='demo' ORDER BY version")
        assert [r[0] for r in rows] == [1, 2]
        await s.fetchall("SELECT * FROM u, v")
    finally:
        await s.close()


async def test_a_failing_migration_leaves_nothing_applied(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.Error):
        await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs",
                         migrations={"demo": [(1, "CREATE TABLE ok(a); CREATE TABLE broken(")]})
    rows = _rows(tmp_path / "s.sqlite3", "SELECT name FROM sqlite_master WHERE name IN ('ok','reports')")
    assert rows == []


async def test_storage_failure_raises_storage_error_for_every_waiter(store: Store, make_message) -> None:
    # Another process (an operator, a full disk) makes inserts fail: every waiter of the batch must be told.
    side = sqlite3.connect(store.path)
    side.execute("CREATE TRIGGER refuse BEFORE INSERT ON reports BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    side.commit()
    outcomes = await asyncio.gather(*(store.submit(make_message(f"f{i}"), b"r", "text/plain") for i in range(20)),
                                    return_exceptions=True)
    assert all(isinstance(o, StorageError) for o in outcomes), outcomes
    assert _rows(store.path, "SELECT COUNT(*) FROM reports") == [(0,)]
    assert _rows(store.path, "SELECT COUNT(*) FROM jobs") == [(0,)]
    side.execute("DROP TRIGGER refuse")
    side.commit()
    side.close()
    # The store recovers: the same keys are accepted afterwards, exactly once.
    results = await asyncio.gather(*(store.submit(make_message(f"f{i}"), b"r", "text/plain") for i in range(20)))
    assert all(r.created for r in results)
    assert _rows(store.path, "SELECT COUNT(*) FROM reports") == [(20,)]


async def test_quarantine_keeps_the_raw_input(store: Store) -> None:
    qid = await store.quarantine("app", b"\x00not json", "malformed JSON body", {"status": 400})
    assert _rows(store.path, "SELECT raw, reason FROM quarantine WHERE id=?", (qid,)) == \
        [(b"\x00not json", "malformed JSON body")]


async def test_blob_is_content_addressed_and_recorded_once(store: Store) -> None:
    data = b"\x89PNG fake image"
    first = await store.put_blob(data, "image/png")
    second = await store.put_blob(data, "image/png")
    assert first == second and len(first) == 64
    assert store.blobs.get(first) == data
    assert _rows(store.path, "SELECT sha256, size FROM blobs") == [(first, len(data))]


async def test_closed_store_then_reopened_keeps_everything(tmp_path: Path, make_message) -> None:
    s = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs")
    ids = [(await s.submit(make_message(f"c{i}"), b"r", "text/plain")).report_id for i in range(3)]
    await s.close()
    s = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs")
    try:
        again = await s.submit(make_message("c1"), b"r", "text/plain")
        assert not again.created and again.report_id == ids[1]
    finally:
        await s.close()
