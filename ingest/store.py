"""The durable store: SQLite in WAL mode with full fsync, one writer connection, group commit for intake.

Everything the daemon knows lives here; indexes and models elsewhere are caches rebuilt from it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from .blobs import BlobStore
from .clock import Clock, parse_iso
from .errors import RecordError, StorageError
from .faults import StoreHealth, storage_reason
from .dialect import SQLITE
from .migrations import INGEST, Migration, for_dialect
from .wal_checkpoint import WalCheckpointer
from .write_turns import WriteTurns
from . import jobs as _job_kinds  # noqa: F401  (registers every kind's payload record)
from .intake_signal import IntakeSignal
from .queue import UNFINISHED_STATES, QueueSql, SqliteQueue  # noqa: F401  (UNFINISHED_STATES: older importers)
from .records import InboundMessage, Job, to_json

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 10.0  # seconds a write waits for another process's write lock before it fails
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA wal_autocheckpoint=0",  # checkpoints run off every commit's path (ingest/wal_checkpoint.py)
    "PRAGMA journal_size_limit=67108864",  # the log file cut back to 64 MB when it restarts after a burst
)
BUSY_POLL = 0.001  # a write transaction retries a busy write lock about this often (see _begin_immediate)
BEGIN = "BEGIN IMMEDIATE"
# How long a stage's batch transaction may hold the file's one write lock before it commits the jobs done so far and
# goes on in a new one (queue.finish_many). Intake's acknowledgements wait for that lock (issue 20: p99 < 50 ms at
# 500/s): stage batches of 8 jobs held it 20-150 ms, each job's statements a trip through a busy event loop.
WRITE_HOLD = 0.010
# With intake in another process on the same file (`serve --role workers`), the gap a stage's transaction leaves
# after the last one before it begins: intake's commit polls the busy lock about every BUSY_POLL, and a stage
# that begins again at once after committing takes the lock back before intake's next try, transaction after
# transaction (in one process WriteTurns gives intake its turn instead).
WRITE_GAP = 3 * BUSY_POLL
# The longest a stage's transaction in that process waits for intake's waiting commit to go first.
INTAKE_FIRST_SECONDS = 0.020




@dataclass(frozen=True, slots=True)
class QuarantineLimits:
    """Quarantine is for operators to see what was refused, not an archive: each input keeps its first
    `head_bytes` (plus the whole input's sha256 and size); past `max_bytes` of heads the oldest heads are dropped,
    past `max_rows` the oldest rows."""

    head_bytes: int = 64 * 1024
    max_bytes: int = 64 * 1024 * 1024
    max_rows: int = 100_000


@dataclass(frozen=True, slots=True)
class SubmitResult:
    report_id: int
    created: bool  # False when the idempotency key was already known


@dataclass(frozen=True, slots=True)
class StoredReport:
    id: int
    message: InboundMessage
    status: str
    classification: dict[str, Any] | None
    incident_id: str | None


class Tx:
    """A write transaction on the single writer connection.

    Every statement is a trip to the connection's thread (a hand-off, then a wake-up of the event loop: the cost of
    a statement here, not SQLite's work). Statements whose outcome nobody reads -- BEGIN, a job's SAVEPOINT and
    RELEASE, an event -- wait and ride along with the next statement that is sent (or with COMMIT), in order, so a
    job of a batch costs one or two trips instead of five or six. A job's waiting writes are sent before its
    savepoint is released, so a write that fails still fails inside its own job (queue.finish_many).
    """

    def __init__(self, conn: aiosqlite.Connection, store: Store) -> None:
        self.conn = conn
        self.store = store
        self._after_commit: list[Callable[[], None]] = []
        self._waiting: list[_Waiting] = []  # statements to send before the next one, in order
        self._broken = False  # a waiting BEGIN/SAVEPOINT/RELEASE failed: the savepoints are no longer known
        self._locked_at: float | None = None  # when BEGIN IMMEDIATE returned: the write lock is held from then

    async def _trip(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the connection's thread, after the waiting statements, in one trip."""
        if not self._waiting:
            return await self.conn._execute(fn, *args)
        waiting, self._waiting = self._waiting, []
        try:
            out = await self.conn._execute(_after_waiting, self.conn._conn, waiting, fn, args)
            if self._locked_at is None and any(w.sql == BEGIN for w in waiting):
                self._locked_at = time.monotonic()
            return out
        except _WaitingFailed as failed:
            self._broken = self._broken or failed.control
            raise failed.error from None

    def _wait(self, sql: str, params: Sequence[Any] = (), *, control: bool = False) -> None:
        self._waiting.append(_Waiting(sql, params, control))

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> aiosqlite.Cursor:
        return aiosqlite.Cursor(self.conn, await self._trip(self.conn._conn.execute, sql, params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._trip(self.conn._conn.executemany, sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self._trip(_fetch_all, self.conn._conn, sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        return await self._trip(_fetch_one, self.conn._conn, sql, params)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(sqlite3 connection, *args)` on the connection's thread, in this transaction, in one trip."""
        return await self._trip(fn, self.conn._conn, *args)

    async def _commit(self) -> None:
        await self._trip(self.conn._conn.execute, "COMMIT")

    @property
    def in_transaction(self) -> bool:
        """False once the database rolled the whole transaction back by itself (SQLite does on a full disk)."""
        return bool(self.conn.in_transaction)

    def held_long(self) -> bool:
        """Whether this transaction has held the write lock for the store's `write_hold` budget, or, with intake in
        another process (`write_gap` set), at all while intake waits for it (ingest/intake_signal.py)."""
        if self._locked_at is None:
            return False
        store = self.store
        if store.write_gap and store.intake_signal is not None and store.intake_signal.waiting():
            return True
        return time.monotonic() - self._locked_at >= store.write_hold

    # One job's writes inside a batch transaction (queue.finish_many): a savepoint each, undone alone.
    async def savepoint(self) -> int:
        self._wait("SAVEPOINT job", control=True)
        return len(self._after_commit)

    async def release_savepoint(self) -> None:
        self._wait("RELEASE job", control=True)
        if any(not w.control for w in self._waiting):
            await self._trip(_nothing)  # the job's own writes fail inside the job, not in the next one's

    async def undo_savepoint(self, mark: int) -> None:
        del self._after_commit[mark:]  # the undone job's wake-ups and cache updates must not run
        opened = [i for i, w in enumerate(self._waiting) if w.control and w.sql == "SAVEPOINT job"]
        if opened:  # nothing of the job was sent: forget it, with whatever it left waiting
            del self._waiting[opened[-1]:]
            return
        self._waiting.clear()  # sent after the job's SAVEPOINT: the job's own, undone here anyway
        await self._trip(_undo_job, self.conn._conn)

    def ended_by(self, exc: BaseException) -> bool:
        """Whether `exc` ended the whole transaction: a storage fault, or SQLite rolled it all back by itself."""
        if self._broken:
            return True
        return isinstance(exc, sqlite3.Error) and (storage_reason(exc) is not None or not self.in_transaction)

    async def enqueue(self, stage: str, report_id: int | None, payload: Any = None, delay: float = 0.0, *,
                      deadline: float | None = None, subject: str | None = None, need_id: bool = True) -> int:
        """Queue a job of kind `stage` in this transaction (ingest/queue.py `enqueue`)."""
        return await self.store.queue.enqueue(self, stage, payload, report_id=report_id, delay=delay,
                                              deadline=deadline, subject=subject, need_id=need_id)

    async def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A statement whose outcome (rows, count, id) nobody reads: sent with the next statement of the
        transaction. It fails, if it does, where that one is awaited, at the latest when the job's savepoint is
        released or the transaction commits."""
        self._wait(sql, params)

    async def event(self, report_id: int | None, kind: str, actor: str, data: dict[str, Any] | None = None) -> None:
        self._wait("INSERT INTO events(report_id, at, kind, actor, data) VALUES (?,?,?,?,?)",
                   (report_id, self.store.clock.now(), kind, actor, json.dumps(data or {}, ensure_ascii=False)))

    async def set_cursor(self, name: str, value: Any) -> None:
        await self.execute(
            "INSERT INTO cursors(name, value, updated_at) VALUES (?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
            (name, json.dumps(value), self.store.clock.now()),
        )

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._after_commit.append(fn)


@dataclass(frozen=True, slots=True)
class _Waiting:
    sql: str
    params: Sequence[Any]
    control: bool  # BEGIN, SAVEPOINT, RELEASE: if one fails, the transaction's state is unknown


class _WaitingFailed(Exception):
    def __init__(self, error: BaseException, control: bool) -> None:
        super().__init__(str(error))
        self.error, self.control = error, control


def _after_waiting(conn: sqlite3.Connection, waiting: list[_Waiting], fn: Callable[..., Any],
                   args: tuple[Any, ...]) -> Any:
    """On the connection's thread: the waiting statements in order, then `fn`; stops at the first that fails."""
    for w in waiting:
        try:
            if w.sql == BEGIN:
                _begin_immediate(conn)  # the workers' transactions wait for the lock as intake's commit does
            else:
                conn.execute(w.sql, w.params)
        except Exception as exc:
            raise _WaitingFailed(exc, w.control) from exc
    return fn(*args)


def _undo_job(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK TO job")
    conn.execute("RELEASE job")


def _nothing() -> None:
    return None


def _fetch_one(conn: sqlite3.Connection, sql: str, params: Sequence[Any] | dict[str, Any]) -> sqlite3.Row | None:
    return conn.execute(sql, params).fetchone()  # on the connection's thread: one trip for both


def _fetch_all(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()


class StoreShared:
    """What both stores (this SQLite one and ingest/pgstore.py's) share beyond their transactions: the group
    commit's drain, reading reports and cursors, and the queue calls the stage workers and the CLI make, each handed
    to `self.queue` (the one queue, ingest/queue.py). Written once so the two backends cannot drift apart."""

    queue: SqliteQueue  # and, from the store itself: _pending, _commit_reports, health, fetchone and get_reports
    # Which failures mean the database is unavailable (the waiter retries) rather than a bug: per backend.
    _storage_reason = staticmethod(storage_reason)

    async def _flush_pending(self) -> None:
        """The group commit's drain: the submissions waiting, 512 to a commit, each waiter told its own outcome."""
        while self._pending:
            batch, self._pending = self._pending[:512], self._pending[512:]
            try:
                results = await self._commit_reports([(m, r, t) for m, r, t, _ in batch])
            except Exception as exc:  # the commit itself failed: every waiter must retry, none is acked
                reason = self._storage_reason(exc) or type(exc).__name__
                self.health.failed(reason, log)
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(StorageError(f"store unavailable ({reason})"))
                continue
            self.health.succeeded(log)
            # A record refused on its own (RecordError) fails only its own waiter: its neighbours are committed.
            for (*_, fut), result in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def get_cursor(self, name: str) -> Any:
        row = await self.fetchone("SELECT value FROM cursors WHERE name=?", (name,))
        return json.loads(row["value"]) if row else None

    async def get_report(self, report_id: int) -> StoredReport | None:
        return (await self.get_reports([report_id])).get(report_id)

    def _wake(self, stage: str) -> None:
        self.queue.wake(stage)

    async def wait_for_work(self, stage: str, timeout: float) -> None:
        await self.queue.wait(stage, timeout)

    async def lease(self, stage: str, limit: int, lease_seconds: float) -> list[Job]:
        return await self.queue.lease(stage, limit, lease_seconds)

    async def finish(self, job: Job, writes: Callable[[Any], Awaitable[None]] | None = None) -> bool:
        """Mark a leased job done and apply the stage's writes atomically; False when the lease was lost."""
        return await self.queue.finish(job, writes)

    async def finish_many(self, items: Sequence[tuple[Job, Callable[[Any], Awaitable[None]] | None]]
                          ) -> list[bool | Exception]:
        return await self.queue.finish_many(items)

    async def fail(self, job: Job, error: str, *, retry_in: float, dead: bool) -> None:
        # PostgreSQL refuses NUL in text, which SQLite kept: shown as U+FFFD on both, for operators.
        await self.queue.fail(job, error.replace("\x00", "\ufffd"), retry_in=retry_in, dead=dead)

    async def release(self, jobs: Iterable[Job]) -> None:
        await self.queue.release(jobs)

    async def reclaim_expired(self) -> int:
        return await self.queue.reclaim_expired()

    async def replay_dead(self, stage: str | None = None, job_ids: Sequence[int] = ()) -> int:
        return await self.queue.replay(stage, job_ids)

    async def queue_depths(self) -> dict[tuple[str, str], int]:
        return await self.queue.depths()


def stored_report(row: Any) -> StoredReport:
    """A `reports` row (id, record, status, classification, incident_id) as the record the stages read."""
    from .records import from_json

    return StoredReport(id=row["id"], message=from_json(InboundMessage, row["record"]), status=row["status"],
                        classification=json.loads(row["classification"]) if row["classification"] else None,
                        incident_id=row["incident_id"])


class Store(StoreShared):
    dialect = SQLITE  # (ingest/pgstore.py's: POSTGRESQL)

    def __init__(self, path: Path, blob_dir: Path, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.blobs = BlobStore(blob_dir)
        self.clock = clock or Clock()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = WriteTurns()  # intake's group commit first (ingest/write_turns.py)
        self._pending: list[tuple[InboundMessage, bytes, str, asyncio.Future[SubmitResult]]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self.queue = SqliteQueue(self)
        self.commit_count = 0
        self.health = StoreHealth()
        self.quarantine_limits = QuarantineLimits()
        # Running totals of the quarantine table (read once, then kept up to date), for the caps and for metrics.
        self._quarantine_totals: list[int] | None = None  # [rows, head bytes]
        self.quarantine_evicted = {"head": 0, "row": 0}  # heads dropped past max_bytes, rows past max_rows
        self.records_refused = 0
        self._checkpointer: WalCheckpointer | None = None
        self.write_hold = WRITE_HOLD
        self.write_gap = 0.0  # WRITE_GAP when intake runs in another process (run_daemon.serve, role workers)
        self._write_ended = 0.0  # time.monotonic() when this process's last write transaction ended
        self.intake_signal: IntakeSignal | None = None  # intake waiting for the file's write lock (all processes)

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    async def open(cls, path: Path, blob_dir: Path, clock: Clock | None = None,
                   migrations: dict[str, list[Migration]] | None = None) -> Store:
        store = cls(path, blob_dir, clock)
        store.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            store._writer = await store._connect()
            await store._migrate({"ingest": INGEST, **(migrations or {})})
            store._reader = await store._connect()
            store.intake_signal = IntakeSignal.open(store.path)
            store._checkpointer = WalCheckpointer(store.path)
            store._checkpointer.start()
        except BaseException:
            # Close what was opened (a full disk fails here): a leftover connection thread keeps the process alive.
            await store.close()
            raise
        return store

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so that taking work never deadlocks.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            for pragma in PRAGMAS:
                await conn.execute(pragma)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _migrate(self, components: dict[str, list[Migration]]) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations("
                " component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,"
                " PRIMARY KEY(component, version))"
            )
            for component, steps in components.items():
                rows = await tx.fetchall("SELECT version FROM schema_migrations WHERE component=?", (component,))
                done = {r[0] for r in rows}
                for version, sql in sorted(steps):
                    if version in done:
                        continue
                    for statement in _split_sql(for_dialect(sql, SQLITE)):
                        await tx.execute(statement)
                    await tx.execute("INSERT INTO schema_migrations VALUES (?,?,?)",
                                     (component, version, self.clock.now()))
                    log.info("applied migration %s/%d", component, version)

    async def close(self) -> None:
        if self._flush_task is not None:
            await asyncio.gather(self._flush_task, return_exceptions=True)
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None
        if self.intake_signal is not None:
            self.intake_signal.close()
            self.intake_signal = None

    # -- transactions ----------------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        assert self._writer is not None, "store is closed"
        async with self._write_lock.turn():
            if self.write_gap:
                wait = self._write_ended + self.write_gap - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._after_intake()
            tx = Tx(self._writer, self)
            changes = self._writer.total_changes
            # Sent with the body's first statement (or with COMMIT): one trip fewer, and the write lock is taken
            # only when there is something to write. A BEGIN that fails fails that first statement (below).
            tx._wait(BEGIN, control=True)
            try:
                try:
                    yield tx
                except BaseException as exc:
                    # SQLite may already have rolled back by itself (a full disk does): that must not raise anew. A
                    # cancelled statement still runs on the connection's thread: the rollback is queued after it.
                    await asyncio.shield(self._rollback_quietly())
                    # Only SQLite's own faults: the body may raise domain errors of any type (even OSError
                    # subclasses).
                    if isinstance(exc, sqlite3.Error) and storage_reason(exc) is not None:
                        raise self._storage_failure(exc) from exc
                    raise
                try:
                    await tx._commit()
                except Exception as exc:
                    await asyncio.shield(self._rollback_quietly())
                    raise self._storage_failure(exc) from exc
            finally:
                self._write_ended = time.monotonic()
            self.commit_count += 1
            if self._writer.total_changes != changes:  # an empty transaction proves nothing about free space
                self.health.succeeded(log)
        for fn in tx._after_commit:
            fn()

    async def _after_intake(self) -> None:
        """Intake in another process waits for the write lock: its commit goes first, this transaction after it
        (bounded: a stage is never held off longer than INTAKE_FIRST_SECONDS by a steady stream of reports)."""
        signal = self.intake_signal
        deadline = time.monotonic() + INTAKE_FIRST_SECONDS
        while signal is not None and signal.waiting() and time.monotonic() < deadline:
            await asyncio.sleep(BUSY_POLL)

    def _storage_failure(self, exc: Exception) -> Exception:
        """The exception to raise for a failed write: StorageError (retry later) for a storage fault."""
        reason = storage_reason(exc)
        if reason is None:
            return exc
        self.health.failed(reason, log)
        return StorageError(f"store unavailable ({reason})")

    async def _rollback_quietly(self) -> None:
        if self._writer is None:
            return
        try:
            await self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction to undo (the BEGIN failed, or SQLite rolled back on a full disk)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        assert self._reader is not None, "store is closed"
        return list(await self._reader.execute_fetchall(sql, params))  # one trip, as Tx.fetchall

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def table_names(self) -> set[str]:
        """The store's tables: a component reads its own only when its migrations ran here (PgStore has the same)."""
        return {r["name"] for r in await self.fetchall("SELECT name FROM sqlite_master WHERE type='table'")}

    # -- intake ----------------------------------------------------------------------------------
    async def submit(self, message: InboundMessage, raw: bytes, raw_type: str) -> SubmitResult:
        """Store one inbound report durably and queue it for classification.

        Returns only after COMMIT with synchronous=FULL, so the caller may acknowledge. Concurrent
        callers share commits: whoever arrives while a commit is running joins the next batch.
        """
        fut: asyncio.Future[SubmitResult] = asyncio.get_running_loop().create_future()
        self._pending.append((message, raw, raw_type, fut))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.ensure_future(self._flush_pending())
        return await asyncio.shield(fut)

    async def _commit_reports(self, items: Sequence[tuple[InboundMessage, bytes, str]]
                              ) -> list[SubmitResult | RecordError]:
        """BEGIN, insert, COMMIT in a single trip to the writer's thread: the group commit's hot path.

        Every aiosqlite call is a hand-off between threads, and on a busy machine each hand-off waits for a
        CPU; one trip instead of three keeps the commit cycle (and so every waiter's latency) short.
        """
        assert self._writer is not None, "store is closed"
        now = self.clock.now()
        rows, flagged = _report_rows(items, now)
        async with self._write_lock.turn(intake=True):
            results, queued = await self._writer._execute(_commit_rows, self._writer._conn, rows, flagged, now,
                                                          self.intake_signal)
            self.commit_count += 1
        if queued:
            self._wake("classify")
        refused = sum(isinstance(r, RecordError) for r in results)
        if refused:
            self.records_refused += refused
            log.warning("group commit: %d of %d records refused alone (not storable), the others committed",
                        refused, len(results))
        return results

    async def submit_batch(self, items: Sequence[tuple[InboundMessage, bytes, str]],
                           cursor: tuple[str, Any] | None = None,
                           then: Callable[[Tx, list[SubmitResult]], Awaitable[None]] | None = None
                           ) -> list[SubmitResult]:
        """Store several reports and a channel cursor (IMAP UID, Telegram offset) in one transaction; `then`
        adds the channel's own follow-up writes (a job per new report) to that same transaction."""
        async with self.transaction() as tx:
            results = await self._insert_reports(tx, items)
            if cursor is not None:
                await tx.set_cursor(*cursor)
            if then is not None:
                await then(tx, results)
        return results

    async def _insert_reports(self, tx: Tx, items: Sequence[tuple[InboundMessage, bytes, str]]) -> list[SubmitResult]:
        if not items:
            return []
        now = self.clock.now()
        rows, flagged = _report_rows(items, now)
        # One hop to the connection's thread for the whole batch: each aiosqlite call is a thread round trip,
        # and those round trips, not the rows, were most of the group commit's time.
        results, queued = await tx.run(_insert_rows, rows, flagged, now)
        if queued:
            tx.after_commit(lambda: self._wake("classify"))
        # One transaction for a channel's own batch (with its cursor): a record that cannot be stored fails it all,
        # and the channel refuses or quarantines that batch.
        for result in results:
            if isinstance(result, RecordError):
                raise result
        return [r for r in results if isinstance(r, SubmitResult)]

    async def quarantine(self, channel_instance: str, raw: bytes, reason: str,
                         meta: dict[str, Any] | None = None) -> int:
        """Keep input we could not accept, for operators to inspect; never silently dropped, always bounded.

        The row keeps the input's first `head_bytes`, its sha256 and size; the same input refused again for the
        same reason counts `repeats` on its row. Past the caps the oldest heads, then the oldest rows, give way.
        """
        limits = self.quarantine_limits
        digest = (await asyncio.to_thread(_sha256, raw)) if len(raw) > 1 << 20 else _sha256(raw)
        head = bytes(raw[:limits.head_bytes])
        reason, meta_text = quarantine_texts(reason, meta, digest, len(raw), len(head) < len(raw))
        now = self.clock.now()
        async with self.transaction() as tx:
            totals = await self._quarantine_state(tx)
            row = await tx.fetchone("SELECT id FROM quarantine WHERE channel_instance=? AND sha256=? AND reason=?",
                                    (channel_instance, digest, reason))
            if row is not None:
                await tx.execute("UPDATE quarantine SET repeats=repeats+1, last_at=? WHERE id=?", (now, row["id"]))
                return int(row["id"])
            cur = await tx.execute(
                "INSERT INTO quarantine(channel_instance, received_at, reason, raw, meta, sha256, size, last_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (channel_instance, now, reason, head, meta_text, digest, len(raw), now))
            qid = int(cur.lastrowid or 0)
            new_totals = [totals[0] + 1, totals[1] + len(head)]
            await self._evict_quarantine(tx, new_totals)
        self._quarantine_totals = new_totals  # only once committed
        return qid

    async def _quarantine_state(self, tx: Tx) -> list[int]:
        if self._quarantine_totals is None:
            row = await tx.fetchone("SELECT COUNT(*) AS n, COALESCE(SUM(length(raw)), 0) AS b FROM quarantine")
            self._quarantine_totals = [int(row["n"]), int(row["b"])] if row else [0, 0]
        return list(self._quarantine_totals)

    async def _evict_quarantine(self, tx: Tx, totals: list[int]) -> None:
        """Drop the oldest heads past max_bytes (the row, hash and reason stay), the oldest rows past max_rows."""
        limits = self.quarantine_limits
        if totals[1] > limits.max_bytes:
            excess, freed = totals[1] - limits.max_bytes, 0
            rows = await tx.fetchall("SELECT id, length(raw) AS n FROM quarantine WHERE length(raw) > 0"
                                     " ORDER BY id LIMIT 1000")
            ids = []
            for row in rows:
                if freed >= excess:
                    break
                ids.append(row["id"])
                freed += row["n"]
            if ids:
                await tx.execute(f"UPDATE quarantine SET raw=x'', meta=json_set(meta, '$.head_evicted', json('true'))"
                                 f" WHERE id IN ({','.join('?' * len(ids))})", ids)
                totals[1] -= freed
                self.quarantine_evicted["head"] += len(ids)
        if totals[0] > limits.max_rows:
            excess = totals[0] - limits.max_rows
            cur = await tx.execute("DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine ORDER BY id LIMIT ?)"
                                   " RETURNING length(raw) AS n", (excess,))
            gone = list(await cur.fetchall())
            totals[0] -= len(gone)
            totals[1] -= sum(int(r["n"] or 0) for r in gone)
            self.quarantine_evicted["row"] += len(gone)

    async def probe_write(self) -> None:
        """A real (tiny) write: how /readyz finds out that a failing store works again when nothing else writes."""
        async with self.transaction() as tx:
            await tx.set_cursor("store.write_probe", self.clock.now())

    def quarantine_totals(self) -> tuple[int, int] | None:
        """(rows, head bytes) of the quarantine once known to this process, for metrics."""
        t = self._quarantine_totals
        return (t[0], t[1]) if t is not None else None

    async def put_blob(self, data: bytes, content_type: str) -> str:
        try:
            digest = await asyncio.to_thread(self.blobs.put, data)
        except OSError as exc:  # a full disk or an I/O error: the sender retries, the partial file is gone
            raise self._storage_failure(exc) from exc
        async with self.transaction() as tx:
            await tx.execute("INSERT OR IGNORE INTO blobs VALUES (?,?,?,?)",
                             (digest, content_type, len(data), self.clock.now()))
        return digest

    async def get_blob(self, sha256: str) -> bytes:
        """A blob's bytes (FileNotFoundError when not stored); the same call reads PostgreSQL's in-database blobs."""
        return await asyncio.to_thread(self.blobs.get, sha256)

    async def get_reports(self, report_ids: Sequence[int]) -> dict[int, StoredReport]:
        """Several reports in one query (a worker reads its whole leased batch at once); missing ids are absent."""
        if not report_ids:
            return {}
        rows = await self.fetchall(
            "SELECT id, record, status, classification, incident_id FROM reports"
            f" WHERE id IN ({','.join('?' * len(report_ids))})", list(report_ids))
        return {row["id"]: stored_report(row) for row in rows}


_INSERT_JOB = QueueSql().insert  # the queue's own statement, run on the writer's thread by the group commit


def quarantine_texts(reason: str, meta: dict[str, Any] | None, digest: str, size: int,
                     truncated: bool) -> tuple[str, str]:
    """A quarantine row's reason and meta (JSON) as text every store can encode. They quote what the client sent
    (a Content-Type header of bytes that are not UTF-8 reaches us as lone surrogates): such characters become "?"
    (the raw head keeps the bytes), or the row could not be written and the refusal turned into a 500."""
    info = {**(meta or {}), "sha256": digest, "size": size}
    if truncated:
        info["truncated"] = True
    return (reason.encode("utf-8", "replace").decode("utf-8"),
            json.dumps(info, ensure_ascii=False).encode("utf-8", "replace").decode("utf-8"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Row = tuple[Any, ...] | RecordError  # a record that could not even be turned into a row is refused alone


def _report_rows(items: Sequence[tuple[InboundMessage, bytes, str]],
                 now: float) -> tuple[list[Row], list[bool]]:
    rows: list[Row] = []
    for msg, raw, raw_type in items:
        status = "ignored" if msg.flags else "received"
        try:
            rows.append((msg.channel, msg.channel_instance, msg.idempotency_key, msg.external_id,
                         parse_iso(msg.received_at), now, raw, raw_type, to_json(msg), status, now))
        except (ValueError, TypeError) as exc:
            rows.append(RecordError(f"record not storable ({type(exc).__name__})"))
    return rows, [bool(m.flags) for m, _, _ in items]


def _commit_rows(conn: sqlite3.Connection, rows: list[Row], flagged: list[bool], now: float,
                 signal: IntakeSignal | None = None) -> tuple[list[SubmitResult | RecordError], bool]:
    """One whole intake transaction on the writer's thread (the connection is in autocommit mode). While it waits
    for the write lock, `signal` tells a workers process on the same file to let it go first."""
    if signal is not None:
        signal.begin_waiting()
    try:
        _begin_immediate(conn)
    finally:
        if signal is not None:
            signal.end_waiting()
    try:
        out = _insert_rows(conn, rows, flagged, now)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return out


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, tried again about every BUSY_POLL while another process (`serve --role intake` and
    `--role workers` on the same file) holds the write lock, for up to BUSY_TIMEOUT. Every write transaction of
    both roles begins here: intake's group commit and the workers' transactions.

    Why not SQLite's own busy handler: it sleeps 1, 2, 5, 10 ... then 100 ms between tries, so a waiting commit
    wakes up to 100 ms after the lock is free, and the other process, whose next transaction starts at once, mostly
    takes it again first: intake's acknowledgements waited whole seconds behind a busy stage, and with intake
    polling alone the workers could starve to BUSY_TIMEOUT under sustained intake. Both sides polling alike share
    the lock; the jitter keeps two pollers from falling into step, where one would always win. A try costs a lock
    call. Busy is the primary code: SQLite reports a busy lock as extended codes too (SQLITE_BUSY_RECOVERY while
    another connection recovers the WAL), all of them to wait out."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                conn.execute(BEGIN)
                return
            except sqlite3.OperationalError as exc:
                if storage_reason(exc) != "busy" or time.monotonic() >= deadline:
                    raise
            time.sleep(BUSY_POLL * (0.5 + random.random()))
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")


def _insert_rows(conn: sqlite3.Connection, rows: list[Row], flagged: list[bool],
                 now: float) -> tuple[list[SubmitResult | RecordError], bool]:
    """Insert reports idempotently and queue the new ones for classification (runs on the writer's thread).

    A key already stored, or repeated inside the batch, answers with the existing id and `created=False`.
    A row SQLite refuses for its content (text that is not valid Unicode, a constraint) is refused alone: a
    failed statement changes nothing, so the transaction goes on with the others. A storage fault (disk full,
    I/O) is an OperationalError and still fails the whole transaction, for every waiter to retry.
    """
    results: list[SubmitResult | RecordError] = []
    seen: dict[tuple[str, str], int] = {}
    jobs = []
    for row, is_flagged in zip(rows, flagged):
        if isinstance(row, RecordError):
            results.append(row)
            continue
        key = (row[0], row[2])
        if key in seen:
            results.append(SubmitResult(seen[key], False))
            continue
        try:
            inserted = conn.execute(
                "INSERT INTO reports(channel, channel_instance, idem_key, external_id, received_at, stored_at,"
                " raw, raw_type, record, status, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(channel, idem_key) DO NOTHING RETURNING id", row).fetchone()
        except (UnicodeError, ValueError, OverflowError, TypeError, sqlite3.InterfaceError) as exc:
            results.append(RecordError(f"record not storable ({type(exc).__name__})"))
            continue
        if inserted is None:
            existing = conn.execute("SELECT id FROM reports WHERE channel=? AND idem_key=?", key).fetchone()
            seen[key] = existing[0]
            results.append(SubmitResult(existing[0], False))
            continue
        seen[key] = inserted[0]
        results.append(SubmitResult(inserted[0], True))
        if not is_flagged:
            jobs.append(("classify", inserted[0], now, None, None, "{}", now, now))
    if jobs:
        conn.executemany(_INSERT_JOB, jobs)
    return results, bool(jobs)


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script; semicolons inside comments and strings do not split."""
    statements, current = [], ""
    # Cut at every semicolon that ends a complete statement, so two statements on one line also split.
    pieces = script.split(";")
    for i, piece in enumerate(pieces):
        current += piece + (";" if i < len(pieces) - 1 else "")
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip() and not all(l.strip().startswith("--") or not l.strip() for l in current.splitlines()):
        statements.append(current.strip())
    return statements
