"""The durable store on PostgreSQL, for several instances on one database: the same contract as ingest/store.py.

Same guarantees as the SQLite store: intake is acknowledged only after COMMIT (`synchronous_commit=on` on every
session, whatever the server's default); a repeat is found by the unique (channel, idem_key) index; a job is
finished or failed only by the lease that took it (its lease token fences a late worker); dead letters keep their
error. What differs is what several instances need: workers take jobs with `FOR UPDATE SKIP LOCKED`, so two
instances never lease one job and never wait for each other; a commit that queues work sends `NOTIFY`, so every
instance's idle workers wake at once; blobs live in the database (content-addressed bytea) or in a directory
that every instance mounts.

Transactions run on a connection pool at READ COMMITTED, concurrently; what must not interleave is kept apart by
row locks (the queue's fencing UPDATEs), unique indexes, and transaction-scoped advisory locks (migrations,
quarantine caps).
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from .blobs import BlobStore
from .clock import Clock
from .dialect import POSTGRESQL, split_statements, to_postgresql
from .errors import RecordError, StorageError
from .faults import StoreHealth
from .leases import lock_key
from .migrations import INGEST, POSTGRESQL_ONLY, Migration, for_dialect
from .queue import Dialect, SqliteQueue, encode_payload
from .records import InboundMessage
from .store import (QuarantineLimits, Row, StoredReport, StoreShared, SubmitResult, _report_rows, _sha256,
                    quarantine_texts, stored_report)

log = logging.getLogger(__name__)
# How long a rollback or the pool's reset of a returned session may take before the session is dropped instead.
SESSION_CLEANUP_SECONDS = 5.0

NOTIFY_CHANNEL = "hcmc1022_jobs"  # payload: the stage that has new work

SESSION_SETTINGS = {
    "application_name": "hcmc1022",
    # The acknowledgement promise: COMMIT returns only once the WAL is flushed (a server may default to off).
    "synchronous_commit": "on",
}

# Errors that say the database cannot be reached or cannot write now, not that the statement is wrong: the sender
# retries (503 / SMTP 451), workers back off.
_STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError, asyncpg.OperatorInterventionError, asyncpg.ReadOnlySQLTransactionError,
    asyncpg.CannotConnectNowError, asyncpg.DiskFullError, asyncpg.PostgresSystemError,
)


def storage_reason(exc: BaseException) -> str | None:
    """A short reason when `exc` says the database is unavailable, else None (a bug or bad input)."""
    if isinstance(exc, asyncpg.DiskFullError):
        return "disk full"
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return "read-only"  # a standby, or a primary demoted by a failover
    if isinstance(exc, (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncio.TimeoutError,
                        asyncpg.OperatorInterventionError, asyncpg.CannotConnectNowError)):
        return "database unreachable"
    if isinstance(exc, _STORAGE_ERRORS):
        return "database error"
    return None


class PgCursor:
    """What a statement gave back, shaped like the SQLite cursor the stages read: rows and `rowcount`."""

    def __init__(self, rows: list[asyncpg.Record], status: str) -> None:
        self._rows = rows
        parts = status.split()
        self.rowcount = int(parts[-1]) if parts and parts[-1].isdigit() else -1

    @property
    def lastrowid(self) -> int:
        raise NotImplementedError("PostgreSQL has no lastrowid: write `INSERT ... RETURNING id` and read the row")

    async def fetchall(self) -> list[asyncpg.Record]:
        return self._rows

    async def fetchone(self) -> asyncpg.Record | None:
        return self._rows[0] if self._rows else None


class PgTx:
    """A write transaction on one pooled connection; the stages' SQL is written with `?` placeholders."""

    def __init__(self, conn: asyncpg.Connection, store: PgStore) -> None:
        self.conn = conn
        self.store = store
        self._after_commit: list[Callable[[], None]] = []
        self._notify: set[str] = set()

    async def _sql(self, sql: str) -> str:
        return await self.store._statement(self.conn, sql)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        if isinstance(params, dict):
            raise TypeError("named parameters are not portable: use ? placeholders")
        rows, status, _ = await self.conn._execute(await self._sql(sql), tuple(params), 0, None, return_status=True)
        return PgCursor(rows, status.decode() if isinstance(status, bytes) else str(status))

    async def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A statement whose outcome nobody reads (SQLite's Tx sends it with the next one; here it is sent now)."""
        await self.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(await self._sql(sql), [tuple(r) for r in rows])

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        return await self.conn.fetch(await self._sql(sql), *params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> asyncpg.Record | None:
        return await self.conn.fetchrow(await self._sql(sql), *params)

    @property
    def in_transaction(self) -> bool:
        return self.conn.is_in_transaction()

    def held_long(self) -> bool:
        """Never: PostgreSQL locks rows, so a long batch transaction keeps no other writer waiting (SQLite's Tx)."""
        return False

    # One job's writes inside a batch transaction (queue.finish_many): a savepoint each, undone alone.
    async def savepoint(self) -> tuple[int, set[str]]:
        await self.conn.execute("SAVEPOINT job")
        return len(self._after_commit), set(self._notify)

    async def release_savepoint(self) -> None:
        await self.conn.execute("RELEASE SAVEPOINT job")

    async def undo_savepoint(self, mark: tuple[int, set[str]]) -> None:
        await self.conn.execute("ROLLBACK TO SAVEPOINT job")
        await self.conn.execute("RELEASE SAVEPOINT job")
        del self._after_commit[mark[0]:]  # the undone job's wake-ups, cache updates and notifications must not run
        self._notify = mark[1]

    @staticmethod
    def ended_by(exc: BaseException) -> bool:
        """Whether `exc` ended the whole transaction: the session is gone, so nothing of it is kept."""
        return storage_reason(exc) is not None

    async def enqueue(self, stage: str, report_id: int | None, payload: Any = None, delay: float = 0.0, *,
                      deadline: float | None = None, subject: str | None = None, need_id: bool = True) -> int:
        """Queue a job of kind `stage` in this transaction (ingest/queue.py `enqueue`)."""
        return await self.store.queue.enqueue(self, stage, payload, report_id=report_id, delay=delay,
                                              deadline=deadline, subject=subject, need_id=need_id)

    async def event(self, report_id: int | None, kind: str, actor: str, data: dict[str, Any] | None = None) -> None:
        await self.conn.execute(
            "INSERT INTO events(report_id, at, kind, actor, data) VALUES ($1,$2,$3,$4,$5)",
            report_id, self.store.clock.now(), kind, actor, json.dumps(data or {}, ensure_ascii=False))

    async def set_cursor(self, name: str, value: Any) -> None:
        await self.conn.execute(
            "INSERT INTO cursors(name, value, updated_at) VALUES ($1,$2,$3)"
            " ON CONFLICT(name) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
            name, json.dumps(value), self.store.clock.now())

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._after_commit.append(fn)


class DatabaseBlobs:
    """Blobs kept in the database's `blob_data` table, which every instance reads."""

    root = None  # nothing on local disk to watch for free space


class PgStore(StoreShared):
    dialect = POSTGRESQL
    path = None  # no local database file
    _storage_reason = staticmethod(storage_reason)  # asyncpg's ways of saying the database is unavailable

    def __init__(self, url: str, blob_dir: Path | None, clock: Clock | None = None, *,
                 blobs_in_database: bool = True, pool_size: int = 8) -> None:
        self._url = url
        self.blobs: BlobStore | DatabaseBlobs = DatabaseBlobs() if blobs_in_database or blob_dir is None \
            else BlobStore(blob_dir)
        self.clock = clock or Clock()
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None  # write transactions
        # Reads outside a transaction (store.fetchall) have their own sessions: a transaction that reads through the
        # store while it holds a writer session must never wait for a writer session itself (with every writer
        # session held by such transactions, none would ever come back).
        self._read_pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._pending: list[tuple[InboundMessage, bytes, str, asyncio.Future[SubmitResult]]] = []
        # Group commits in flight at once. PostgreSQL could flush two concurrent commits' WAL together, but on
        # 2 cores a second committer measured no more throughput and a worse p99 (bench_intake.py --postgresql,
        # BENCH_PG_COMMITTERS=1 vs 2 alternated in one run: 520/1141 vs 623/1120 reports/s, p99 56/36 vs
        # 397/83 ms): one, as on SQLite, while a commit runs the next batch gathers.
        self._committers: set[asyncio.Task[None]] = set()
        self.max_committers = 1
        self.queue = PgQueue(self)
        self._primary_keys: dict[str, tuple[str, ...]] = {}
        self.commit_count = 0
        self.health = StoreHealth()
        self.quarantine_limits = QuarantineLimits()
        self._quarantine_totals: list[int] | None = None
        self.quarantine_evicted = {"head": 0, "row": 0}
        self.records_refused = 0

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    async def open(cls, url: str, blob_dir: Path | None = None, clock: Clock | None = None,
                   migrations: dict[str, list[Migration]] | None = None, *,
                   blobs_in_database: bool = True, pool_size: int = 8) -> PgStore:
        store = cls(url, blob_dir, clock, blobs_in_database=blobs_in_database, pool_size=pool_size)
        try:
            writers = max(1, pool_size // 2)
            store._read_pool = await asyncpg.create_pool(url, min_size=1, max_size=max(1, pool_size - writers),
                                                         server_settings=SESSION_SETTINGS)
            store._pool = await asyncpg.create_pool(url, min_size=1, max_size=writers,
                                                    server_settings=SESSION_SETTINGS)
            await store._migrate({"ingest": INGEST, "ingest.postgresql": POSTGRESQL_ONLY, **(migrations or {})})
            await store._start_listening()
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self, components: dict[str, list[Migration]]) -> None:
        async with self.transaction() as tx:
            # Instances starting together: one migrates, the others wait here and then find nothing to do.
            await tx.conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key("schema-migrations"))
            await tx.conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations("
                " component TEXT NOT NULL, version BIGINT NOT NULL, applied_at DOUBLE PRECISION NOT NULL,"
                " PRIMARY KEY(component, version))")
            for component, steps in components.items():
                rows = await tx.conn.fetch("SELECT version FROM schema_migrations WHERE component=$1", component)
                done = {r[0] for r in rows}
                for version, sql in sorted(steps, key=lambda step: step[0]):
                    if version in done:
                        continue
                    for statement in split_statements(for_dialect(sql, POSTGRESQL)):
                        await tx.conn.execute(statement)
                    await tx.conn.execute("INSERT INTO schema_migrations VALUES ($1,$2,$3)",
                                          component, version, self.clock.now())
                    log.info("applied migration %s/%d", component, version)

    async def _start_listening(self) -> None:
        # The first session is opened here, so that an open store already hears every commit.
        first = await self._listen_session()
        self._listen_task = asyncio.create_task(self._keep_listening(first), name="store-listen")

    async def _listen_session(self) -> tuple[asyncpg.Connection, asyncio.Event]:
        conn = await asyncpg.connect(self._url, server_settings=SESSION_SETTINGS)
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _c: closed.set())
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._listener = conn
        return conn, closed

    async def _keep_listening(self, session: tuple[asyncpg.Connection, asyncio.Event]) -> None:
        """Keep one session LISTENing; a lost one is reopened (workers poll meanwhile, so nothing waits on it)."""
        conn: asyncpg.Connection | None = session[0]
        closed = session[1]
        try:
            while True:
                if conn is not None:
                    await closed.wait()
                    log.warning("store notifications lost; workers poll until they are back")
                    conn.terminate()
                    conn = self._listener = None
                    await asyncio.sleep(1.0)
                try:
                    conn, closed = await self._listen_session()
                except Exception as exc:
                    log.warning("store notifications unavailable (%s); workers poll meanwhile", type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                # Work queued while nobody listened would wait for the next poll: look now instead.
                self.queue.wake_all()
        finally:
            if self._listener is not None and not self._listener.is_closed():
                self._listener.terminate()
            self._listener = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._wake(payload)

    async def close(self) -> None:
        if self._committers:
            await asyncio.gather(*self._committers, return_exceptions=True)
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.gather(self._listen_task, return_exceptions=True)
            self._listen_task = None
        for pool in (self._pool, self._read_pool):
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), 10)
                except (asyncio.TimeoutError, Exception):
                    pool.terminate()
        self._pool = self._read_pool = None

    # -- transactions ----------------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTx]:
        assert self._pool is not None, "store is closed"
        try:
            conn = await self._pool.acquire()
        except Exception as exc:
            raise self._storage_failure(exc) from exc
        try:
            tx = PgTx(conn, self)
            try:
                await conn.execute("BEGIN")
            except Exception as exc:
                raise self._storage_failure(exc) from exc
            try:
                yield tx
                for stage in sorted(tx._notify):  # delivered by the server at COMMIT, to every instance
                    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, stage)
            except BaseException as exc:
                await asyncio.shield(self._rollback_quietly(conn))
                if storage_reason(exc) is not None:
                    raise self._storage_failure(exc) from exc
                raise
            try:
                await conn.execute("COMMIT")
            except Exception as exc:
                # Unknown whether it committed (the connection died mid-COMMIT): the sender retries, and the
                # idempotency key finds the report if it did.
                await asyncio.shield(self._rollback_quietly(conn))
                raise self._storage_failure(exc) from exc
        finally:
            await asyncio.shield(self._release(conn))
        self.commit_count += 1
        self.health.succeeded(log)
        for fn in tx._after_commit:
            fn()

    async def _release(self, conn: asyncpg.Connection) -> None:
        assert self._pool is not None
        try:
            # Bounded: the pool resets a returned session, which waits for a query cancelled mid-flight (one waiting
            # on a lock, say); a session that does not come back in time is dropped, never waited on for ever.
            await self._pool.release(conn, timeout=SESSION_CLEANUP_SECONDS)
        except Exception:
            conn.terminate()

    @staticmethod
    async def _rollback_quietly(conn: asyncpg.Connection) -> None:
        try:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK", timeout=SESSION_CLEANUP_SECONDS)
        except Exception:
            conn.terminate()  # a session in an unknown state is not given back to the pool

    def _storage_failure(self, exc: BaseException) -> BaseException:
        reason = storage_reason(exc)
        if reason is None:
            return exc
        self.health.failed(reason, log)
        return StorageError(f"store unavailable ({reason})")

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        assert self._read_pool is not None, "store is closed"
        try:
            async with self._read_pool.acquire() as conn:
                return await conn.fetch(await self._statement(conn, sql), *params)
        except Exception as exc:
            raise self._storage_failure(exc) from exc

    async def _statement(self, conn: asyncpg.Connection, sql: str) -> str:
        """The stages' SQLite-dialect statement as PostgreSQL runs it (ingest/dialect.py to_postgresql); an
        `INSERT OR REPLACE` becomes an upsert on the table's primary key, looked up once per table."""
        translated = to_postgresql(sql)
        if translated.replace_into is None:
            return translated.sql
        table, columns = translated.replace_into
        key = self._primary_keys.get(table)
        if key is None:
            rows = await conn.fetch(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = $1::regclass AND i.indisprimary", table)
            key = self._primary_keys[table] = tuple(r[0] for r in rows)
        if not key:
            raise ValueError(f"INSERT OR REPLACE into {table}, which has no primary key")
        updates = [c for c in columns if c not in key]
        action = ("DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in updates)) if updates else "DO NOTHING"
        return f"{translated.sql.rstrip().rstrip(';')} ON CONFLICT ({', '.join(key)}) {action}"

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> asyncpg.Record | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def table_names(self) -> set[str]:
        """The store's tables (Store.table_names): those of the session's schema, the one the migrations wrote."""
        rows = await self.fetchall("SELECT table_name AS name FROM information_schema.tables"
                                   " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
        return {r["name"] for r in rows}

    # -- intake ----------------------------------------------------------------------------------
    async def submit(self, message: InboundMessage, raw: bytes, raw_type: str) -> SubmitResult:
        """Store one inbound report durably and queue it for classification; returns only after COMMIT.
        Concurrent callers share commits, as on SQLite."""
        fut: asyncio.Future[SubmitResult] = asyncio.get_running_loop().create_future()
        self._pending.append((message, raw, raw_type, fut))
        if len(self._committers) < self.max_committers:
            task = asyncio.ensure_future(self._flush_pending())
            self._committers.add(task)
            task.add_done_callback(self._committers.discard)
        return await asyncio.shield(fut)

    async def _commit_reports(self, items: Sequence[tuple[InboundMessage, bytes, str]]
                              ) -> list[SubmitResult | RecordError]:
        async with self.transaction() as tx:
            results = await self._insert_reports_rows(tx, items)
        refused = sum(isinstance(r, RecordError) for r in results)
        if refused:
            self.records_refused += refused
            log.warning("group commit: %d of %d records refused alone (not storable), the others committed",
                        refused, len(results))
        return results

    async def _insert_reports_rows(self, tx: PgTx, items: Sequence[tuple[InboundMessage, bytes, str]]
                                   ) -> list[SubmitResult | RecordError]:
        """Insert reports idempotently and queue the new ones for classification, in two statements whatever
        the batch size. A row PostgreSQL could not take for its content (a NUL in text, text that is not
        Unicode) is refused alone before anything is sent, so the batch goes on with the others."""
        now = self.clock.now()
        rows, _ = _report_rows(items, now)
        checked: list[Row] = [r if isinstance(r, RecordError) else _storable(r) for r in rows]
        fresh: dict[tuple[str, str], tuple[Any, ...]] = {}
        for row in checked:
            if not isinstance(row, RecordError):
                fresh.setdefault((row[0], row[2]), row)  # a key repeated inside the batch is sent once
        ids: dict[tuple[str, str], tuple[int, bool]] = {}
        if fresh:
            cols = list(zip(*fresh.values()))
            inserted = await tx.conn.fetch(_INSERT_REPORTS, list(cols[0]), list(cols[1]), list(cols[2]),
                                           list(cols[3]), list(cols[4]), list(cols[6]), list(cols[7]),
                                           list(cols[8]), list(cols[9]), now)
            queued = False
            for r in inserted:
                ids[(r["channel"], r["idem_key"])] = (r["id"], True)
                queued = queued or r["queued"]
            missing = [key for key in fresh if key not in ids]
            if missing:
                # Already stored (by an earlier commit, or another instance's that this one waited for).
                found = await tx.conn.fetch(
                    "SELECT r.id, r.channel, r.idem_key FROM reports r"
                    " JOIN unnest($1::text[], $2::text[]) AS k(channel, idem_key)"
                    " ON r.channel = k.channel AND r.idem_key = k.idem_key",
                    [k[0] for k in missing], [k[1] for k in missing])
                for r in found:
                    ids[(r["channel"], r["idem_key"])] = (r["id"], False)
            if queued:
                tx._notify.add("classify")
                tx.after_commit(lambda: self._wake("classify"))
        results: list[SubmitResult | RecordError] = []
        answered: set[tuple[str, str]] = set()
        for row in checked:
            if isinstance(row, RecordError):
                results.append(row)
                continue
            key = (row[0], row[2])
            report_id, created = ids[key]
            results.append(SubmitResult(report_id, created and key not in answered))
            answered.add(key)
        return results

    async def submit_batch(self, items: Sequence[tuple[InboundMessage, bytes, str]],
                           cursor: tuple[str, Any] | None = None,
                           then: Callable[[PgTx, list[SubmitResult]], Awaitable[None]] | None = None
                           ) -> list[SubmitResult]:
        """Several reports and a channel cursor in one transaction (see Store.submit_batch)."""
        async with self.transaction() as tx:
            results = await self._insert_reports(tx, items)
            if cursor is not None:
                await tx.set_cursor(*cursor)
            if then is not None:
                await then(tx, results)
        return results

    async def _insert_reports(self, tx: PgTx, items: Sequence[tuple[InboundMessage, bytes, str]]
                              ) -> list[SubmitResult]:
        results = await self._insert_reports_rows(tx, items) if items else []
        for result in results:
            if isinstance(result, RecordError):
                raise result  # a channel's own batch is one transaction: one bad record fails it all
        return [r for r in results if isinstance(r, SubmitResult)]

    async def quarantine(self, channel_instance: str, raw: bytes, reason: str,
                         meta: dict[str, Any] | None = None) -> int:
        """Keep refused input for operators, bounded (see Store.quarantine). The caps' totals are read inside the
        transaction under an advisory lock: other instances quarantine too, so a total kept in memory would drift."""
        limits = self.quarantine_limits
        digest = (await asyncio.to_thread(_sha256, raw)) if len(raw) > 1 << 20 else _sha256(raw)
        head = bytes(raw[:limits.head_bytes])
        reason, meta_text = quarantine_texts(reason, meta, digest, len(raw), len(head) < len(raw))
        now = self.clock.now()
        async with self.transaction() as tx:
            await tx.conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key("quarantine"))
            row = await tx.conn.fetchrow(
                "SELECT id FROM quarantine WHERE channel_instance=$1 AND sha256=$2 AND reason=$3",
                channel_instance, digest, reason)
            if row is not None:
                await tx.conn.execute("UPDATE quarantine SET repeats=repeats+1, last_at=$1 WHERE id=$2", now, row["id"])
                return int(row["id"])
            qid = await tx.conn.fetchval(
                "INSERT INTO quarantine(channel_instance, received_at, reason, raw, meta, sha256, size, last_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING id",
                _text(channel_instance), now, _text(reason), head, _text(meta_text),
                digest, len(raw), now)
            totals_row = await tx.conn.fetchrow(
                "SELECT COUNT(*) AS n, COALESCE(SUM(octet_length(raw)), 0) AS b FROM quarantine")
            totals = [int(totals_row["n"]), int(totals_row["b"])]
            await self._evict_quarantine(tx, totals)
        self._quarantine_totals = totals
        return int(qid)

    async def _evict_quarantine(self, tx: PgTx, totals: list[int]) -> None:
        limits = self.quarantine_limits
        if totals[1] > limits.max_bytes:
            excess, freed = totals[1] - limits.max_bytes, 0
            rows = await tx.conn.fetch("SELECT id, octet_length(raw) AS n FROM quarantine WHERE octet_length(raw) > 0"
                                       " ORDER BY id LIMIT 1000")
            ids = []
            for row in rows:
                if freed >= excess:
                    break
                ids.append(row["id"])
                freed += row["n"]
            if ids:
                await tx.conn.execute(
                    "UPDATE quarantine SET raw='\\x'::bytea,"
                    " meta=(meta::jsonb || '{\"head_evicted\": true}'::jsonb)::text WHERE id = ANY($1::bigint[])", ids)
                totals[1] -= freed
                self.quarantine_evicted["head"] += len(ids)
        if totals[0] > limits.max_rows:
            excess = totals[0] - limits.max_rows
            gone = await tx.conn.fetch(
                "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine ORDER BY id LIMIT $1)"
                " RETURNING octet_length(raw) AS n", excess)
            totals[0] -= len(gone)
            totals[1] -= sum(int(r["n"] or 0) for r in gone)
            self.quarantine_evicted["row"] += len(gone)

    async def probe_write(self) -> None:
        async with self.transaction() as tx:
            await tx.set_cursor("store.write_probe", self.clock.now())

    def quarantine_totals(self) -> tuple[int, int] | None:
        t = self._quarantine_totals
        return (t[0], t[1]) if t is not None else None

    # -- blobs -----------------------------------------------------------------------------------
    async def put_blob(self, data: bytes, content_type: str) -> str:
        if isinstance(self.blobs, BlobStore):
            try:
                digest = await asyncio.to_thread(self.blobs.put, data)
            except OSError as exc:
                raise self._storage_failure(exc) from exc
        else:
            digest = _sha256(data) if len(data) <= 1 << 20 else await asyncio.to_thread(_sha256, data)
        async with self.transaction() as tx:
            if not isinstance(self.blobs, BlobStore):
                await tx.conn.execute("INSERT INTO blob_data(sha256, data) VALUES ($1,$2) ON CONFLICT DO NOTHING",
                                      digest, data)
            await tx.conn.execute("INSERT INTO blobs VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING",
                                  digest, content_type, len(data), self.clock.now())
        return digest

    async def get_blob(self, sha256: str) -> bytes:
        """A blob's bytes; FileNotFoundError when it is not stored (as the directory store raises)."""
        if isinstance(self.blobs, BlobStore):
            return await asyncio.to_thread(self.blobs.get, sha256)
        row = await self.fetchone("SELECT data FROM blob_data WHERE sha256=?", (sha256,))
        if row is None:
            raise FileNotFoundError(sha256)
        return bytes(row["data"])

    # -- reads -----------------------------------------------------------------------------------
    async def get_reports(self, report_ids: Sequence[int]) -> dict[int, StoredReport]:
        if not report_ids:
            return {}
        rows = await self.fetchall("SELECT id, record, status, classification, incident_id FROM reports"
                                   " WHERE id = ANY(?::bigint[])", (list(report_ids),))
        return {row["id"]: stored_report(row) for row in rows}


class PgQueue(SqliteQueue):
    """The one queue (ingest/queue.py) on PostgreSQL: the same statements, with the lease taking rows that no other
    instance is taking (`FOR UPDATE SKIP LOCKED`: never waiting for, never taking, a row another lease holds), and
    new work announced to every instance by NOTIFY at commit. Reclaim and replay wake this instance's workers at
    once and the others' at their next poll (`queue.idle_poll`)."""

    def __init__(self, store: PgStore) -> None:
        super().__init__(store, Dialect(lock=" FOR UPDATE SKIP LOCKED"))

    async def enqueue(self, tx: PgTx, kind: str, payload: Any = None, *, report_id: int | None = None,  # type: ignore[override]
                      delay: float = 0.0, deadline: float | None = None, subject: str | None = None,
                      need_id: bool = True) -> int:
        now = self.store.clock.now()  # the id is always read here: a statement is a trip either way
        row = await tx.fetchone(self.sql.insert + " RETURNING id", (kind, report_id, now + delay, deadline,
                                                                    subject, _text(encode_payload(payload, kind)), now, now))
        tx._notify.add(kind)
        tx.after_commit(lambda: self.wake(kind))
        return int(row["id"])


_INSERT_REPORTS = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::bytea[], $7::text[],
                         $8::text[], $9::text[]) WITH ORDINALITY
        AS t(channel, channel_instance, idem_key, external_id, received_at, raw, raw_type, record, status, ord)
), ins AS (
    INSERT INTO reports(channel, channel_instance, idem_key, external_id, received_at, stored_at, raw, raw_type,
                        record, status, updated_at)
    SELECT channel, channel_instance, idem_key, external_id, received_at, $10, raw, raw_type, record, status, $10
    FROM input ORDER BY ord
    ON CONFLICT (channel, idem_key) DO NOTHING
    RETURNING id, channel, idem_key, status
), queued AS (
    INSERT INTO jobs(stage, report_id, available_at, payload, created_at, updated_at)
    SELECT 'classify', id, $10, '{}', $10, $10 FROM ins WHERE status = 'received'
    RETURNING report_id
)
SELECT ins.id, ins.channel, ins.idem_key, EXISTS (SELECT 1 FROM queued WHERE queued.report_id = ins.id) AS queued
FROM ins
"""


def _text(value: str) -> str:
    """Text PostgreSQL can store: it refuses NUL, which SQLite kept. Shown as U+FFFD instead, for operators."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _storable(row: tuple[Any, ...]) -> tuple[Any, ...] | RecordError:
    """The report row as PostgreSQL can take it, or the record's refusal. Text that is not Unicode is refused, as
    SQLite refuses it; a NUL, which SQLite keeps and PostgreSQL's text cannot hold, is shown as U+FFFD (the raw
    bytes, a bytea, keep it)."""
    out = list(row)
    for i, value in enumerate(row):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return RecordError(f"record not storable ({UnicodeEncodeError.__name__})")
            out[i] = _text(value)
        elif i == 6 and not isinstance(value, (bytes, bytearray, memoryview)):
            return RecordError("record not storable (raw is not bytes)")
    return tuple(out)
