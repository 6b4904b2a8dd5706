"""migrate-store: a SQLite store with every component's tables moved into PostgreSQL, row for row, blobs included,
verified by counts and checksums; an occupied target is refused, a damaged blob is reported."""
from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

import config.loader as config_loader
from ingest.move_store import MoveError, move_store, row_hash
from ingest.pgstore import PgStore
from ingest.store import Store
from run_daemon import collect_migrations, migrate_store


async def _source(tmp_path: Path, make_message) -> tuple[Path, Path, list[str]]:
    db, blobs = tmp_path / "s.sqlite3", tmp_path / "blobs"
    store = await Store.open(db, blobs, migrations=collect_migrations())
    try:
        results = await asyncio.gather(*(store.submit(make_message(f"m{i}", text=f"Ống nước vỡ số {i}"),
                                                      b"raw \xff\x00 " + bytes([i]), "text/plain")
                                         for i in range(250)))
        await store.submit(make_message("ignored", flags=("auto_reply",)), b"auto", "message/rfc822")
        jobs = await store.lease("classify", 5, 60)
        await store.fail(jobs[0], "PermanentError: bad", retry_in=0, dead=True)
        assert await store.finish(jobs[1], None)
        await store.quarantine("app", b"\x00not json" * 10, "malformed JSON body", {"status": 400})
        digests = [await store.put_blob(bytes([i]) * (1000 + i), "image/jpeg") for i in range(3)]
        async with store.transaction() as tx:
            await tx.set_cursor("imap:inbox:INBOX", {"uidvalidity": 7, "last_uid": 42})
            await tx.event(results[3].report_id, "note", "operator", {"text": "gọi lại"})
            await tx.execute("INSERT INTO users(username, role, agency, password_hash, disabled, created_at)"
                             " VALUES (?,?,?,?,?,?)", ("admin", "admin", None, "$argon2id$x", 0, 1.5))
    finally:
        await store.close()
    return db, blobs, digests


async def test_everything_is_copied_and_verified(tmp_path: Path, pg_url: str, make_message) -> None:
    db, blobs, digests = await _source(tmp_path, make_message)
    tables, blob_result = await move_store(db, blobs, pg_url, collect_migrations())
    by_name = {t.table: t for t in tables}
    assert all(t.ok for t in tables), [t for t in tables if not t.ok]
    assert by_name["reports"].target_rows == 251 and by_name["jobs"].target_rows == 250
    assert by_name["users"].target_rows == 1 and by_name["quarantine"].target_rows == 1
    assert {"cases", "incidents", "deliveries", "events", "cursors", "blobs"} <= set(by_name)
    assert blob_result.ok and blob_result.listed == blob_result.copied == 3

    target = await PgStore.open(pg_url, None, migrations=collect_migrations())
    try:
        assert await target.get_blob(digests[2]) == bytes([2]) * 1002
        assert await target.get_cursor("imap:inbox:INBOX") == {"uidvalidity": 7, "last_uid": 42}
        row = await target.fetchone("SELECT raw FROM reports WHERE idem_key=?", ("m7",))
        assert bytes(row["raw"]) == b"raw \xff\x00 \x07"
        # Repeats are still repeats, new reports continue the numbering, and the queue goes on where it stopped.
        again = await target.submit(make_message("m7"), b"x", "text/plain")
        assert not again.created
        new = await target.submit(make_message("after-move"), b"x", "text/plain")
        assert new.created and new.report_id > 251
        # 250 classify jobs: 5 leased, of which one dead-lettered and one finished; plus the new report's.
        assert await target.queue_depths() == {("classify", "ready"): 246, ("classify", "leased"): 3,
                                               ("classify", "dead"): 1}
    finally:
        await target.close()


async def test_an_occupied_target_is_refused(tmp_path: Path, pg_url: str, make_message) -> None:
    db, blobs, _ = await _source(tmp_path, make_message)
    occupied = await PgStore.open(pg_url, None, migrations=collect_migrations())
    await occupied.submit(make_message("already-here"), b"x", "text/plain")
    await occupied.close()
    with pytest.raises(MoveError, match="already holds rows"):
        await move_store(db, blobs, pg_url, collect_migrations())


async def test_a_damaged_blob_is_reported_not_copied(tmp_path: Path, pg_url: str, make_message) -> None:
    db, blobs, digests = await _source(tmp_path, make_message)
    damaged = blobs / digests[0][:2] / digests[0]
    damaged.write_bytes(b"not what was stored")
    (blobs / digests[1][:2] / digests[1]).unlink()
    tables, blob_result = await move_store(db, blobs, pg_url, collect_migrations())
    assert all(t.ok for t in tables)
    assert not blob_result.ok and blob_result.corrupt == [digests[0]] and blob_result.missing == [digests[1]]
    assert blob_result.copied == 1


async def test_the_checksum_sees_a_changed_value_and_type() -> None:
    assert row_hash([1, "a", b"x"]) != row_hash([1, "a", b"y"])
    assert row_hash([1]) != row_hash([1.0]) != row_hash(["1"])
    assert row_hash([None, "a"]) != row_hash(["a", None])


async def test_the_command_prints_the_verification_and_exits_zero(tmp_path: Path, pg_url: str, make_message,
                                                                    capsys) -> None:
    db, blobs, _ = await _source(tmp_path, make_message)
    settings = config_loader.load(None, env={"HCMC1022__STORE__PATH": str(db),
                                             "HCMC1022__STORE__BLOB_DIR": str(blobs)})
    assert await migrate_store(settings, "mysql://nope", "database") == 2
    assert await migrate_store(settings, "env:HCMC1022_TEST_TARGET", "database") == 2  # not set
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HCMC1022_TEST_TARGET", pg_url)
        assert await migrate_store(settings, "env:HCMC1022_TEST_TARGET", "database") == 0
    out = capsys.readouterr()
    assert "reports" in out.out and "251" in out.out and "3 copied into the database" in out.out
    assert "verified: every row and blob copied" in out.err
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT COUNT(*) FROM reports") == 251
    finally:
        await conn.close()


async def test_a_store_with_cases_answers_incidents_and_sessions_moves(tmp_path: Path, pg_url: str,
                                                                       make_message) -> None:
    """Before: tables were copied in name order, and the target checks each foreign key as rows arrive, so
    `answers` before `cases`, `incident_reports` before `incidents`, `sessions` before `users` failed the move of
    any store that had run (seen moving a store `make run` had filled: "violates foreign key constraint")."""
    db, blobs = tmp_path / "s.sqlite3", tmp_path / "blobs"
    store = await Store.open(db, blobs, migrations=collect_migrations())
    try:
        report = (await store.submit(make_message("r1", text="Cây đổ giữa đường"), b"raw", "text/plain")).report_id
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO incidents(id, seq, first_report_id, topic, district, created_at,"
                             " last_report_at) VALUES ('INC-000001', 1, ?, 'trees', 'quan-1', 1.0, 1.0)", (report,))
            await tx.execute("INSERT INTO incident_reports(report_id, incident_id, joined_at) VALUES (?,"
                             " 'INC-000001', 1.0)", (report,))
            await tx.execute("INSERT INTO cases(id, incident_id, report_id, token, topic, category, agency, state,"
                             " received_at, forwarded_at, created_at, updated_at) VALUES ('CASE-000001',"
                             " 'INC-000001', ?, 'tok', 'trees', 'infrastructure', 'cay-xanh', 'forwarded', 1.0, 1.0,"
                             " 1.0, 1.0)", (report,))
            await tx.execute("INSERT INTO answers(case_id, agency, kind, source, note, at) VALUES ('CASE-000001',"
                             " 'cay-xanh', 'acknowledged', 'webhook', 'đã nhận', 2.0)")
            await tx.execute("INSERT INTO users(username, role, agency, password_hash, disabled, created_at)"
                             " VALUES ('op', 'operator', NULL, '$argon2id$x', 0, 1.0)")
            await tx.execute("INSERT INTO sessions(token_hash, user_id, csrf, created_at, expires_at) SELECT 'h', id,"
                             " 'c', 1.0, 9.0 FROM users WHERE username='op'")
    finally:
        await store.close()
    tables, blob_result = await move_store(db, blobs, pg_url, collect_migrations())
    by_name = {t.table: t for t in tables}
    assert all(t.ok for t in tables), [t for t in tables if not t.ok]
    for name in ("incidents", "incident_reports", "cases", "answers", "users", "sessions"):
        assert by_name[name].target_rows == 1, name
    assert [t.table for t in tables] == sorted(by_name)


def test_parents_are_copied_before_the_tables_that_reference_them() -> None:
    from ingest.move_store import parents_first

    refs = [("answers", "cases"), ("cases", "incidents"), ("sessions", "users"), ("events", "events")]
    order = parents_first(["answers", "cases", "events", "incidents", "sessions", "users"], refs)
    assert order.index("incidents") < order.index("cases") < order.index("answers")
    assert order.index("users") < order.index("sessions") and sorted(order) == sorted(set(order))
    with pytest.raises(MoveError):
        parents_first(["a", "b"], [("a", "b"), ("b", "a")])
