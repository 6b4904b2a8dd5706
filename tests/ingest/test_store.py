"""The durable store's contract, on both backends (SQLite and the machine's PostgreSQL): idempotent intake, group
commit, durability settings, migrations, and storage failures."""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ingest.errors import StorageError
from ingest.migrations import INGEST
from ingest.records import InboundMessage, from_json
from tests.stores import AnyStore, StoreFactory, store_factory  # noqa: F401  (the parametrised fixture)


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[AnyStore]:
    yield await store_factory.open()


async def test_submit_stores_raw_bytes_record_and_queues_classify(store: AnyStore, store_factory: StoreFactory,
        make_message) -> None:
    msg = make_message("k1")
    result = await store.submit(msg, b"raw \xff bytes", "application/octet-stream")
    assert result.created
    rows = await store_factory.committed("SELECT raw, raw_type, status, record FROM reports WHERE id=?", (result.report_id,))
    raw, raw_type, status, record = rows[0]
    assert raw == b"raw \xff bytes" and raw_type == "application/octet-stream" and status == "received"
    assert from_json(InboundMessage, record) == msg
    jobs = await store_factory.committed("SELECT stage, state FROM jobs WHERE report_id=?", (result.report_id,))
    assert jobs == [("classify", "ready")]


async def test_same_key_twice_is_one_row_and_second_is_not_created(store: AnyStore, store_factory: StoreFactory,
        make_message) -> None:
    first = await store.submit(make_message("same"), b"a", "text/plain")
    second = await store.submit(make_message("same", text="khác nội dung"), b"b", "text/plain")
    assert first.created and not second.created
    assert second.report_id == first.report_id
    assert await store_factory.committed("SELECT COUNT(*) FROM reports") == [(1,)]
    assert await store_factory.committed("SELECT COUNT(*) FROM jobs") == [(1,)]
    # The first copy is kept verbatim; the repeat changes nothing.
    assert await store_factory.committed("SELECT raw FROM reports") == [(b"a",)]


async def test_same_key_in_one_group_commit_creates_one_row(store: AnyStore, store_factory: StoreFactory,
        make_message) -> None:
    results = await asyncio.gather(*(store.submit(make_message("dup"), b"x", "text/plain") for _ in range(5)))
    assert len({r.report_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await store_factory.committed("SELECT COUNT(*) FROM jobs") == [(1,)]


async def test_same_key_on_two_channels_is_two_reports(store: AnyStore, store_factory: StoreFactory,
        make_message) -> None:
    a = await store.submit(make_message("k", channel="app"), b"a", "text/plain")
    b = await store.submit(make_message("k", channel="email"), b"a", "text/plain")
    assert a.created and b.created and a.report_id != b.report_id


async def test_group_commit_shares_commits_and_acks_only_after_commit(store: AnyStore, store_factory: StoreFactory,
        make_message) -> None:
    n = 200
    seen_committed: list[bool] = []

    async def submit_and_check(i: int) -> None:
        result = await store.submit(make_message(f"g{i}"), b"r", "text/plain")
        # At the moment submit returns (when a channel would acknowledge), the row must be committed.
        seen_committed.append(await store_factory.committed("SELECT COUNT(*) FROM reports WHERE id=?", (result.report_id,))
                              == [(1,)])

    before = store.commit_count
    await asyncio.gather(*(submit_and_check(i) for i in range(n)))
    commits = store.commit_count - before
    assert all(seen_committed) and len(seen_committed) == n
    assert commits < n / 4, f"{commits} commits for {n} concurrent submits: no group commit"
    assert await store_factory.committed("SELECT COUNT(*) FROM reports") == [(n,)]


async def test_flagged_message_is_stored_ignored_and_never_queued(store: AnyStore, store_factory: StoreFactory,
        make_message) -> None:
    result = await store.submit(make_message(flags=("auto_reply",)), b"r", "message/rfc822")
    assert await store_factory.committed("SELECT status FROM reports WHERE id=?", (result.report_id,)) == [("ignored",)]
    assert await store_factory.committed("SELECT COUNT(*) FROM jobs") == [(0,)]


async def test_submit_batch_commits_reports_and_cursor_together(store: AnyStore, store_factory: StoreFactory,
        make_message) -> None:
    items = [(make_message(f"b{i}"), b"r", "text/plain") for i in range(3)]
    results = await store.submit_batch(items, cursor=("imap:inbox", {"uid": 42}))
    assert [r.created for r in results] == [True, True, True]
    assert await store.get_cursor("imap:inbox") == {"uid": 42}
    again = await store.submit_batch(items, cursor=("imap:inbox", {"uid": 43}))
    assert [r.created for r in again] == [False, False, False]
    assert [r.report_id for r in again] == [r.report_id for r in results]
    assert await store.get_cursor("imap:inbox") == {"uid": 43}


async def test_every_connection_is_wal_with_full_sync(store: AnyStore, store_factory: StoreFactory) -> None:
    if store_factory.backend == "postgresql":
        # Acknowledge after commit means after the WAL flush, whatever the server's own default.
        for _ in range(3):  # several pooled sessions, not just the first
            async with store.transaction() as tx:
                assert (await tx.fetchone("SELECT current_setting('synchronous_commit') AS s"))["s"] == "on"
        return
    for conn in (store._writer, store._reader):
        assert conn is not None
        mode = await (await conn.execute("PRAGMA journal_mode")).fetchone()
        sync = await (await conn.execute("PRAGMA synchronous")).fetchone()
        assert mode[0] == "wal"
        assert sync[0] == 2  # FULL


async def test_migrations_are_recorded_and_reopen_is_idempotent(store_factory: StoreFactory, make_message) -> None:
    extra = {"demo": [(1, "CREATE TABLE demo_things(id INTEGER PRIMARY KEY, name TEXT)"),
                      (2, "ALTER TABLE demo_things ADD COLUMN size INTEGER")]}
    s = await store_factory.open(migrations=extra)
    kept = await s.submit(make_message("kept"), b"r", "text/plain")
    await s.close()
    s = await store_factory.open(migrations=extra)
    rows = await s.fetchall("SELECT component, version FROM schema_migrations ORDER BY component, version")
    expected = [("demo", 1), ("demo", 2), *(("ingest", version) for version, _ in sorted(INGEST, key=lambda m: m[0]))]
    if store_factory.backend == "postgresql":
        expected.append(("ingest.postgresql", 1))
    assert [tuple(r) for r in rows] == expected
    assert (await s.get_report(kept.report_id)) is not None
    # A rowid alias assigns ids on both backends.
    async with s.transaction() as tx:
        await tx.execute("INSERT INTO demo_things(name, size) VALUES (?, ?)", ("a", 1))
        await tx.execute("INSERT INTO demo_things(name, size) VALUES (?, ?)", ("b", 2))
    assert [tuple(r) for r in await s.fetchall("SELECT id, name, size FROM demo_things ORDER BY id")] == \
        [(1, "a", 1), (2, "b", 2)]


async def test_a_new_migration_is_applied_on_reopen(store_factory: StoreFactory) -> None:
    s = await store_factory.open(migrations={"demo": [(1, "CREATE TABLE t(a TEXT)")]})
    await s.close()
    s = await store_factory.open(migrations={"demo": [(1, "CREATE TABLE t(a TEXT)"),
                                                      (2, "CREATE TABLE u(b TEXT); CREATE TABLE v(c TEXT)")]})
    rows = await s.fetchall("SELECT version FROM schema_migrations WHERE component='demo' ORDER BY version")
    assert [r[0] for r in rows] == [1, 2]
    await s.fetchall("SELECT * FROM u, v")


async def test_a_migration_may_give_each_dialect_its_own_text(store_factory: StoreFactory) -> None:
    s = await store_factory.open(migrations={"demo": [(1, {
        "sqlite": "CREATE TABLE w(a TEXT, via TEXT DEFAULT 'sqlite')",
        "postgresql": "CREATE TABLE w(a TEXT, via TEXT DEFAULT 'postgresql')"})]})
    async with s.transaction() as tx:
        await tx.execute("INSERT INTO w(a) VALUES (?)", ("x",))
    assert (await s.fetchone("SELECT via FROM w"))["via"] == store_factory.backend


async def test_a_failing_migration_leaves_nothing_applied(store_factory: StoreFactory) -> None:
    with pytest.raises((sqlite3.Error, asyncpg.PostgresError)):
        await store_factory.open(migrations={"demo": [(1, "CREATE TABLE ok(a TEXT); CREATE TABLE broken(")]})
    if store_factory.backend == "sqlite":
        rows = await store_factory.committed("SELECT name FROM sqlite_master WHERE name IN ('ok','reports')")
    else:
        rows = await store_factory.committed(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name IN ('ok', 'reports')")
    assert rows == []


async def _refuse_inserts(store_factory: StoreFactory) -> tuple[object, object]:
    """Another session makes inserts fail as a full disk would; returns how to undo it."""
    if store_factory.backend == "sqlite":
        side = sqlite3.connect(store_factory.tmp_path / "store.sqlite3")
        side.execute("CREATE TRIGGER refuse BEFORE INSERT ON reports BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        side.commit()

        async def undo_sqlite() -> None:
            side.execute("DROP TRIGGER refuse")
            side.commit()
            side.close()

        return side, undo_sqlite
    assert store_factory.url is not None
    pg = await asyncpg.connect(store_factory.url)
    await pg.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END$$;"
                     " CREATE TRIGGER refuse BEFORE INSERT ON reports FOR EACH ROW EXECUTE FUNCTION refuse();")

    async def undo_pg() -> None:
        await pg.execute("DROP TRIGGER refuse ON reports; DROP FUNCTION refuse()")
        await pg.close()

    return pg, undo_pg


async def test_storage_failure_raises_storage_error_for_every_waiter(store: AnyStore, store_factory: StoreFactory,
                                                                     make_message) -> None:
    _, undo = await _refuse_inserts(store_factory)
    outcomes = await asyncio.gather(*(store.submit(make_message(f"f{i}"), b"r", "text/plain") for i in range(20)),
                                    return_exceptions=True)
    assert all(isinstance(o, StorageError) for o in outcomes), outcomes
    assert await store_factory.committed("SELECT COUNT(*) FROM reports") == [(0,)]
    assert await store_factory.committed("SELECT COUNT(*) FROM jobs") == [(0,)]
    assert not store.health.ok
    await undo()  # type: ignore[operator]
    # The store recovers: the same keys are accepted afterwards, exactly once.
    results = await asyncio.gather(*(store.submit(make_message(f"f{i}"), b"r", "text/plain") for i in range(20)))
    assert all(r.created for r in results)
    assert await store_factory.committed("SELECT COUNT(*) FROM reports") == [(20,)]


async def test_quarantine_keeps_the_raw_input(store: AnyStore, store_factory: StoreFactory) -> None:
    qid = await store.quarantine("app", b"\x00not json", "malformed JSON body", {"status": 400})
    assert await store_factory.committed("SELECT raw, reason FROM quarantine WHERE id=?", (qid,)) == \
        [(b"\x00not json", "malformed JSON body")]


async def test_blob_is_content_addressed_and_recorded_once(store: AnyStore, store_factory: StoreFactory) -> None:
    data = b"\x89PNG fake image"
    first = await store.put_blob(data, "image/png")
    second = await store.put_blob(data, "image/png")
    assert first == second and len(first) == 64
    assert await store.get_blob(first) == data
    assert await store_factory.committed("SELECT sha256, size FROM blobs") == [(first, len(data))]
    with pytest.raises(FileNotFoundError):
        await store.get_blob("0" * 64)


async def test_closed_store_then_reopened_keeps_everything(store_factory: StoreFactory, make_message) -> None:
    s = await store_factory.open()
    ids = [(await s.submit(make_message(f"c{i}"), b"r", "text/plain")).report_id for i in range(3)]
    await s.close()
    s = await store_factory.open()
    again = await s.submit(make_message("c1"), b"r", "text/plain")
    assert not again.created and again.report_id == ids[1]
