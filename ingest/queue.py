"""The one durable queue: every unit of work that must happen at least once, whatever its kind.

Stage jobs (classify, dedupe, dispatch, notify...), agency deliveries, escalation digests, channel outboxes
(Telegram sends, Messenger questions) and the email replies dispatch applies are all rows of the `jobs` table,
told apart by their kind (column `stage`), each with one typed payload record (`ingest/jobs.py`). One code path
leases, fences, retries with backoff, dead-letters, reclaims and replays them.

Interface (what a backend implements; `SqliteQueue` is SQLite's; a PostgreSQL one implements the same methods,
taking work with `FOR UPDATE SKIP LOCKED` (`Dialect.lock`) and waking workers with LISTEN/NOTIFY (`wake`/`wait`)):

Inside the caller's transaction, so the job exists exactly when the writes that asked for it committed:

    job_id = await queue.enqueue(tx, kind, payload, report_id=None, delay=0.0, deadline=None, subject=None)

`payload` is the kind's record (`ingest.jobs`), or None for kinds without one; `deadline` (epoch seconds) is when
a job still failing stops being retried (agency deliveries); `subject` names what the job acts on for operators'
filters (an agency endpoint "agency/target", a chat).

Taking and ending work. Every end of an attempt is fenced by (id, state 'leased', lease_token): the job's lease
token counts every lease it was ever given and only grows (a replay gives a fresh set of attempts, never an old
token back). When a lease expired and the job was reclaimed and taken again, however long ago and
whatever happened since, the late worker's outcome changes nothing and answers False / "lost".

    jobs = await queue.lease(kind, limit, lease_seconds)        # due 'ready' jobs, oldest first; attempts += 1,
                                                                 # a new lease token; cancelled as it commits, it
                                                                 # gives back what it took
    ok = await queue.finish(job, writes)                         # done + the caller's writes in one transaction
    oks = await queue.finish_many([(job, writes), ...])          # one transaction, a savepoint per job
    outcome = await queue.retry_or_dead(job, error, policy, retry_after=None, permanent=False)  # "retry"/"dead"/"lost"
    await queue.fail(job, error, retry_in=seconds, dead=bool)    # the same with the delay decided by the caller
    ok = await queue.settle([Settlement(job, "done"|"retry"|"dead", error, retry_in, writes), ...])
                                                                 # a batch's outcomes in one transaction
    plan = queue.plan_retry(job, error, policy, retry_after=None, permanent=False)  # RetryPlan(dead, delay, error)
    n = await queue.release(jobs, delay=0.0)                     # back to 'ready', attempt not counted
    async with queue.holding(jobs) as held: ...                  # work on leased jobs: a stop (cancellation) in
                                                                 # the block gives back those still leased, but
    await held.in_thread(job, send, settle)                      # a send in a thread: a stop waits for it and
                                                                 # settles the job instead
    await queue.give_back(jobs)                                  # that giving back: shielded, logged not raised
    await queue.bury(tx, job_ids, error) / bury_subject(tx, kind, subject, error)
                                                                 # dead-letter waiting jobs in the caller's
                                                                 # transaction (an endpoint that answered 410);
                                                                 # no on_dead hook: the caller records it
    queue.wake(kind); await queue.wait(kind, timeout)            # a worker sleeps until work is committed

Both `finish` and `retry_or_dead`/`fail` accept `writes(tx)`, the caller's own writes in the same transaction
(a delivery's outcome on its `deliveries` row, an alert event).

Housekeeping, for every kind alike:

    n = await queue.reclaim_expired()                            # leases past their end back to 'ready'
    n = await queue.replay(kind=None, ids=(), subject_prefix=None, deadline_seconds=None, subject=None)
                                                                 # dead letters back, attempts reset (the lease
                                                                 # token is not), fresh deadline
    rows = await queue.dead_letters(kind=None, limit=100, subject_prefix=None, subject=None)
                                                                 # for the CLI, console and ops: read by people,
                                                                 # so no chat id, phone or address
    `subject` is one subject exactly; `subject_prefix` one subject or a group of them named up to a "/" (see
    `_filters`).
    ids = await queue.uncarried(tx, kind, subject, waiting_sql, params, field)  # the rows waiting_sql selects
                                                                 # that no unfinished job of the subject carries
                                                                 # (payload `field`), read in one snapshot
    n = await queue.rename_subjects(kind, subject_of)            # unfinished jobs' subjects as the kind now
                                                                 # writes them (a chat's pseudonym)
    depths = await queue.depths()                                # {(kind, state): count} of unfinished jobs
    ages = await queue.oldest_ready()                            # {kind: seconds its oldest due job waited}
    await queue.reschedule(tx, kind, report_id, at)              # hold or release a report's waiting job
    heads = await queue.first_waiting(kind, subjects, exclude=own_ids)  # {subject: (id, due)}: ready or
                                                                 # leased elsewhere; per-subject order

What happens around a death or a replay besides the job row is the kind's (`JobKind.on_dead`, `on_replay`,
registered by the module that owns the kind); a kind without hooks whose job names a report gets the report rule:
a report whose pipeline stopped short becomes `failed`, and a replay restores the status it had. Side kinds (work
about a report that is none of its stages) register `side_job_dead`/`side_job_replayed`: only an event.

States: ready -> leased -> done | ready (retry) | dead; dead -> ready (replay).

The SQL lives in `QueueSql`, written once in the SQL both SQLite and PostgreSQL accept except for the `?`
placeholders (a PostgreSQL backend numbers them) and the lock clause of the lease.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from .backoff import backoff_delay
from .pii import redact_ids
from .records import Job, from_json, to_json

log = logging.getLogger(__name__)


class PartlyFinished(Exception):
    """finish_many committed the first jobs (`outcomes`, in order) before a later transaction failed as a whole
    (`error`): the caller finishes the rest as if the group had failed. `error` may be the task's cancellation
    (asyncio.CancelledError, e.g. at shutdown): the caller settles the committed outcomes, then raises it again."""

    def __init__(self, outcomes: list[bool | Exception], error: BaseException) -> None:
        super().__init__(f"{len(outcomes)} jobs committed before: {error}")
        self.outcomes, self.error = outcomes, error


class Tx(Protocol):
    """What the queue needs of a write transaction (ingest.store.Tx is SQLite's)."""

    _after_commit: list[Callable[[], None]]

    @property
    def in_transaction(self) -> bool: ...
    async def execute(self, sql: str, params: Any = ()) -> Any: ...
    async def write(self, sql: str, params: Any = ()) -> None: ...  # an execute whose outcome is not read
    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]: ...
    async def fetchone(self, sql: str, params: Any = ()) -> Any: ...
    async def event(self, report_id: int | None, kind: str, actor: str, data: dict[str, Any] | None = None
                    ) -> None: ...
    def after_commit(self, fn: Callable[[], None]) -> None: ...
    async def savepoint(self) -> Any: ...  # a mark undo_savepoint rolls back to
    async def release_savepoint(self) -> None: ...
    async def undo_savepoint(self, mark: Any) -> None: ...
    def ended_by(self, exc: BaseException) -> bool: ...
    def held_long(self) -> bool: ...  # held a store-wide write lock past its budget: commit what is done (SQLite)


class Database(Protocol):
    """What the queue needs of the store: its clock, write transactions and reads (ingest.store.Store)."""

    @property
    def clock(self) -> Any: ...
    def transaction(self) -> AbstractAsyncContextManager[Any]: ...
    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]: ...


Writes = Callable[[Any], Awaitable[None]]
JobHook = Callable[[Any, Job, str], Awaitable[None]]  # (tx, job, error)

# Report states from which a stage still has to move the report on: a dead job there leaves it `failed`.
UNFINISHED_STATES = ("received", "routed", "review")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing job of a kind is retried: full-jitter exponential backoff between `base` and `cap` seconds,
    a peer's Retry-After as a floor; dead after `max_attempts` attempts (None: only the job's deadline ends it)."""

    max_attempts: int | None = 5
    base: float = 2.0
    cap: float = 600.0


@dataclass(frozen=True, slots=True)
class JobKind:
    """A kind of job: its payload record and what its death and replay mean beyond the job row.

    `on_dead(tx, job, error)` runs in the transaction that dead-letters the job; `on_replay(tx, job, "")` in the
    one that puts it back (e.g. re-enabling an endpoint, a fresh delivery deadline). `on_undecodable(tx, job,
    error)` is what can be done of the death without the payload, when a lease buries a job whose payload no longer
    decodes (`job.payload` is None; its row's report_id and subject are there); a kind without one whose job names
    a report gets the report rule, as on_dead."""

    name: str
    payload: type | None = None
    on_dead: JobHook | None = None
    on_replay: JobHook | None = None
    on_undecodable: JobHook | None = None
    replay_deadline: float | None = None  # seconds from the replay for jobs that carry a deadline


KINDS: dict[str, JobKind] = {}


def register_kind(kind: JobKind) -> JobKind:
    """Declare a kind, or add to its declaration: fields left None keep what an earlier registration gave (the
    payload record comes from ingest/jobs.py, the hooks from the module that owns the kind, in either order)."""
    old = KINDS.get(kind.name)
    if old is not None:
        kind = dataclasses.replace(old, **{f.name: getattr(kind, f.name) for f in dataclasses.fields(kind)
                                           if getattr(kind, f.name) is not None})
    KINDS[kind.name] = kind
    return kind


def kind_spec(name: str) -> JobKind | None:
    """The declaration of a kind; "family:instance" kinds (one queue per channel instance) share their family's."""
    return KINDS.get(name) or KINDS.get(name.partition(":")[0])


@dataclass(frozen=True, slots=True)
class RetryPlan:
    dead: bool
    delay: float
    error: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of one leased job's attempt: "done", "retry" (in `retry_in` seconds) or "dead", and the
    caller's writes to apply with it (skipped when the lease was lost)."""

    job: Job
    result: str
    error: str | None = None
    retry_in: float = 0.0
    writes: Writes | None = None


class Held:
    """What `queue.holding` yields: runs a leased job's blocking send (smtplib) in a worker thread.

    A thread cannot be cancelled. Stopped while one talks to the relay (a shutdown, a SIGHUP reload starting a new
    generation, another instance taking the singleton over), the task would go on while the thread sends on; the
    job given back at once could be leased by the next sender (the new generation's, another PostgreSQL instance's)
    and the same mail sent twice at the same time. So a stop that lands while the thread runs waits for it instead
    (shielded), and then records its outcome as the caller's normal path would (`settle`: done if it was sent,
    retried or dead if not), before the cancellation goes on; the job stays leased meanwhile, and holding never gives
    it back. The wait is bounded by the send's own timeout (an SMTP client's `timeout_seconds`, on every read and
    write of its socket), and costs a stop nothing it would not spend anyway: the process's executor waits for its
    threads before it exits. A second cancellation stops the caller's wait, not the settling; should the settling
    itself fail (the store cannot write, or the send raised a bug's exception), the job's lease expires and it goes
    again then, as a crash mid-send would. Stage workers' handlers reach it through ingest.worker.in_thread (the
    notify stage's replies to email reporters), whose settling finishes or retries the job as the worker would."""

    def __init__(self) -> None:
        self.kept: set[int] = set()  # jobs whose send was in a thread as a stop landed: settled here, not given back
        self._settling: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps only weak ones)

    async def in_thread(self, job: Job, send: Callable[[], Any],
                        settle: Callable[[asyncio.Future[Any]], Awaitable[None]]) -> Any:
        """`send()` for `job` in a worker thread: its result returned, its exception raised. Stopped meanwhile:
        `settle(the thread's finished future)` records the outcome, then the cancellation is raised again."""
        thread = asyncio.ensure_future(asyncio.to_thread(send))
        try:
            return await asyncio.shield(thread)
        except asyncio.CancelledError:
            self.kept.add(job.id)
            log.info("stopped while %s job %d sends in a thread: waiting for it to record its outcome",
                     job.stage, job.id)
            settling = asyncio.ensure_future(self._settle(job, thread, settle))
            self._settling.add(settling)
            settling.add_done_callback(self._settling.discard)
            await asyncio.shield(settling)
            raise

    @staticmethod
    async def _settle(job: Job, thread: asyncio.Future[Any],
                      settle: Callable[[asyncio.Future[Any]], Awaitable[None]]) -> None:
        await asyncio.wait([thread])  # its outcome is the future's own, read by `settle`
        try:
            await settle(thread)
        except Exception as exc:
            log.warning("%s job %d, stopped mid-send, stays leased until its lease expires (%s)",
                        job.stage, job.id, type(exc).__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    kind: str
    report_id: int | None
    subject: str | None
    attempts: int
    last_error: str | None
    updated_at: float
    payload: Any = None


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends' SQL for the queue (placeholders are `?` here; see module docstring)."""

    lock: str = ""  # PostgreSQL: " FOR UPDATE SKIP LOCKED"


class QueueSql:
    """Every statement the queue runs, in one place. Columns of `jobs`: id, stage (the kind), report_id, state,
    attempts, lease_token (the fence), available_at, lease_until, deadline_at, subject, last_error, payload,
    created_at, updated_at."""

    COLUMNS = "id, stage, report_id, attempts, lease_token, payload, deadline_at, subject"

    def __init__(self, dialect: Dialect = Dialect()) -> None:
        self.insert = ("INSERT INTO jobs(stage, report_id, available_at, deadline_at, subject, payload, created_at,"
                       " updated_at) VALUES (?,?,?,?,?,?,?,?)")
        self.lease = (
            "UPDATE jobs SET state='leased', lease_until=?, attempts=attempts+1, lease_token=lease_token+1,"
            " updated_at=?"
            " WHERE id IN (SELECT id FROM jobs WHERE stage=? AND state='ready' AND available_at<=?"
            f" ORDER BY available_at, id LIMIT ?{dialect.lock}) RETURNING {self.COLUMNS}")
        # `attempts` cannot fence: a replay starts it again, so an old holder's attempt number comes back.
        fence = " WHERE id=? AND state='leased' AND lease_token=?"
        self.finish = "UPDATE jobs SET state='done', lease_until=NULL, updated_at=?" + fence
        # Several jobs at once, each fenced by its own lease (row values: SQLite and PostgreSQL alike).
        self.finish_all = ("UPDATE jobs SET state='done', lease_until=NULL, updated_at=? WHERE state='leased'"
                           " AND (id, lease_token) IN (VALUES {pairs}) RETURNING id")
        self.retry = ("UPDATE jobs SET state='ready', available_at=?, last_error=?, lease_until=NULL, updated_at=?"
                      + fence)
        self.dead = "UPDATE jobs SET state='dead', last_error=?, lease_until=NULL, updated_at=?" + fence
        # Fenced like finish_all: a holder whose lease expired must not give back the lease its successor holds.
        # The attempt is given back (waiting its turn is no failure); the lease token is not: it never repeats.
        self.release = ("UPDATE jobs SET state='ready', lease_until=NULL,"
                        " available_at=CASE WHEN available_at < ? THEN ? ELSE available_at END,"
                        " attempts=CASE WHEN attempts > 0 THEN attempts-1 ELSE 0 END"
                        " WHERE state='leased' AND (id, lease_token) IN (VALUES {pairs}) RETURNING id")
        # Fenced like release; a row being finished right now is skipped, not waited for (PostgreSQL: SKIP LOCKED),
        # so a renewal never waits on, or deadlocks with, the transaction finishing its batch.
        self.renew = ("UPDATE jobs SET lease_until=? WHERE id IN (SELECT id FROM jobs WHERE state='leased'"
                      f" AND (id, lease_token) IN (VALUES {{pairs}}){dialect.lock}) RETURNING id")
        self.reclaim = ("UPDATE jobs SET state='ready', available_at=?, lease_until=NULL, updated_at=?,"
                        " last_error=COALESCE(last_error, 'lease expired') WHERE state='leased' AND lease_until < ?"
                        " RETURNING stage")
        self.replay = (f"UPDATE jobs SET state='ready', attempts=0, available_at=?, updated_at=? WHERE state='dead'"
                       "{where} RETURNING " + self.COLUMNS)
        self.dead_letters = ("SELECT id, stage, report_id, subject, attempts, last_error, updated_at, payload FROM jobs"
                             " WHERE state='dead'{where} ORDER BY id DESC LIMIT ?")
        self.depths = "SELECT stage, state, COUNT(*) AS n FROM jobs WHERE state!='done' GROUP BY stage, state"
        self.oldest_ready = ("SELECT stage, MIN(available_at) AS t FROM jobs WHERE state='ready' AND available_at<=?"
                             " GROUP BY stage ORDER BY stage")
        self.reschedule = "UPDATE jobs SET available_at=? WHERE stage=? AND report_id=? AND state='ready'"
        # 'leased' too: a job another worker is still carrying out (a message being sent) goes before later ones.
        self.first_waiting = ("SELECT id, subject, available_at FROM jobs WHERE stage=?"
                              " AND state IN ('ready', 'leased') AND subject IN ({subjects}){exclude} ORDER BY id")
        self.waiting_payloads = ("SELECT id, payload FROM jobs WHERE stage=? AND subject IN ({subjects})"
                                 " AND state IN ('ready', 'leased') ORDER BY id")
        self.set_deadline = "UPDATE jobs SET deadline_at=? WHERE id=?"
        self.unfinished = ("SELECT " + self.COLUMNS + " FROM jobs WHERE stage=? AND state IN ('ready','leased','dead')"
                           " ORDER BY id")
        # A subject's unfinished jobs and, in the same statement (one snapshot), the rows `{waiting}` selects.
        self.uncarried = ("SELECT 'job' AS what, id, payload FROM jobs WHERE stage=? AND subject=?"
                          " AND state IN ('ready','leased','dead') UNION ALL SELECT 'row' AS what, id, NULL"
                          " FROM ({waiting}) w")
        self.set_subject = "UPDATE jobs SET subject=? WHERE id=?"
        self.subject_of = "SELECT subject FROM jobs WHERE id=?"
        self.bury = ("UPDATE jobs SET state='dead', last_error=?, lease_until=NULL, updated_at=?"
                     " WHERE state='ready' AND id IN ({ids}) RETURNING " + self.COLUMNS)
        self.bury_subject = ("UPDATE jobs SET state='dead', last_error=?, lease_until=NULL, updated_at=?"
                             " WHERE stage=? AND subject=? AND state='ready' RETURNING " + self.COLUMNS)


def encode_payload(payload: Any, kind: str | None = None) -> str:
    """The kind's payload record as the JSON stored in `jobs.payload`. A plain dict (an older caller) is read into
    the kind's record first, so what is stored is always the record's shape."""
    spec = kind_spec(kind) if kind is not None else None
    if spec is not None and spec.payload is not None:
        if payload is None or isinstance(payload, dict):
            payload = from_json(spec.payload, payload or {})
        elif not isinstance(payload, spec.payload):
            raise TypeError(f"a {kind} job carries a {spec.payload.__name__}, not a {type(payload).__name__}")
    if payload is None:
        return "{}"
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        return to_json(payload)
    return json.dumps(payload, ensure_ascii=False)


# What decode_payload raises for a stored payload that no longer fits its record (bad JSON, a field missing).
UNDECODABLE = (ValueError, TypeError, KeyError)
UNDECODED_ERROR = "payload does not decode"  # the last error of a job a lease found so


def decode_payload(kind: str, text: str | None) -> Any:
    """The stored payload as the kind's record; a kind without a record type gets the JSON object."""
    spec = kind_spec(kind)
    raw = json.loads(text or "{}")
    if spec is None or spec.payload is None:
        return raw
    return from_json(spec.payload, raw)


class SqliteQueue:
    """The queue on the store's SQLite file (module docstring); one per Store."""

    def __init__(self, store: Database, dialect: Dialect = Dialect()) -> None:
        self.store = store
        self.sql = QueueSql(dialect)
        self._events: dict[str, asyncio.Event] = {}

    # -- enqueue (in the caller's transaction) ------------------------------------------------------
    async def enqueue(self, tx: Tx, kind: str, payload: Any = None, *, report_id: int | None = None,
                      delay: float = 0.0, deadline: float | None = None, subject: str | None = None,
                      need_id: bool = True) -> int:
        """The new job's id; 0 with `need_id=False`, which lets the store send the insert with the transaction's next
        statement (Tx.write) instead of a trip of its own: a stage handing a report on never reads the id."""
        now = self.store.clock.now()
        params = (kind, report_id, now + delay, deadline, subject, encode_payload(payload, kind), now, now)
        if not need_id:
            await tx.write(self.sql.insert, params)
            tx.after_commit(lambda: self.wake(kind))
            return 0
        cur = await tx.execute(self.sql.insert, params)
        tx.after_commit(lambda: self.wake(kind))
        return int(cur.lastrowid or 0)

    # -- waking workers -----------------------------------------------------------------------------
    def wake(self, kind: str) -> None:
        self._events.setdefault(kind, asyncio.Event()).set()

    def wake_all(self) -> None:
        for kind in list(self._events):
            self.wake(kind)

    async def wait(self, kind: str, timeout: float) -> None:
        event = self._events.setdefault(kind, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        event.clear()

    # -- taking work --------------------------------------------------------------------------------
    async def lease(self, kind: str, limit: int, lease_seconds: float) -> list[Job]:
        """Due jobs of the kind, leased to the caller. A cancellation (a stop) that lands while the lease commits does
        not stop the commit (it runs on SQLite's connection thread, on PostgreSQL's server), and the caller would
        never learn what was taken: those jobs are given back, not left leased to nobody until the leases expire.
        The lease's own task sees it through, so a cancelled caller waits for it (one short transaction)."""
        leasing = asyncio.ensure_future(self._lease(kind, limit, lease_seconds))
        try:
            return await asyncio.shield(leasing)
        except asyncio.CancelledError:
            # Shielded too: a second cancellation stops this wait, not the giving back.
            await asyncio.shield(self._give_back_taken(leasing))
            raise

    async def _give_back_taken(self, leasing: asyncio.Future[list[Job]]) -> None:
        try:
            jobs = await leasing
        except (Exception, asyncio.CancelledError):  # nothing committed, or nothing known to give back
            return
        await self._release_on_stop(jobs)

    @asynccontextmanager
    async def holding(self, jobs: Sequence[Job]) -> AsyncIterator[Held]:
        """Work on leased jobs: a stop (the task cancelled) anywhere in the block, a send to a peer included, gives
        back every one of them still leased to the caller (give_back), not left leased to nobody until the leases
        expire. Those the block finished, retried or released already are not touched: the release is fenced by
        state 'leased' and the lease token. Only a cancellation: a job that raised something else keeps its lease
        (it comes back when the lease expires), as an attempt that counts; given back at once, attempt uncounted, a
        bug would spin.

        Given back, a job is due again and done again, though its attempt may have had its effect (a webhook the
        peer received, whose answer we never read): the caller's send must carry the same idempotency key on every
        attempt. A lease left to expire would be done again the same way, only later.

        Except a send that runs in a thread (smtplib): the block runs it by `Held.in_thread`, and a stop then waits
        for it and records its outcome; such a job is never given back here (see Held)."""
        held = Held()
        try:
            yield held
        except asyncio.CancelledError:
            await self.give_back([job for job in jobs if job.id not in held.kept])
            raise

    async def give_back(self, jobs: Iterable[Job]) -> None:
        """Release on a stop: shielded (a second cancellation stops the caller's wait, not the release) and never
        raising (a store that cannot write leaves the leases to expire; the stop goes on, not a storage error)."""
        await asyncio.shield(self._release_on_stop(list(jobs)))

    async def _release_on_stop(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        try:
            await self.release(jobs)
        except Exception as exc:  # the cancellation goes on; these leases come back when they expire
            log.warning("%d %s jobs held as a stop landed stay leased until their leases expire (%s)",
                        len(jobs), jobs[0].stage, type(exc).__name__)

    async def _lease(self, kind: str, limit: int, lease_seconds: float) -> list[Job]:
        now = self.store.clock.now()
        async with self.store.transaction() as tx:
            rows = await tx.fetchall(self.sql.lease, (now + lease_seconds, now, kind, now, limit))
            jobs = self._decodable(rows)
            if len(jobs) < len(rows):
                await self._bury_undecodable(tx, rows, {job.id for job in jobs}, now)
        jobs.sort(key=lambda j: j.id)
        return jobs

    async def _bury_undecodable(self, tx: Tx, rows: Sequence[Any], decoded: set[int], now: float) -> None:
        """Dead-letter the leased rows whose payload does not decode: left leased, they would come back at every
        lease, oldest first, and fail the whole batch taken with them. The kind's on_dead hook reads the payload, so
        its on_undecodable runs instead (a delivery row marked dead, its alert); a report's own stage job still
        marks its report failed, as any death does."""
        for row in rows:
            if row["id"] in decoded:
                continue
            await tx.execute(self.sql.dead, (UNDECODED_ERROR, now, row["id"], row["lease_token"]))
            job = Job(id=row["id"], stage=row["stage"], report_id=row["report_id"], attempts=row["attempts"],
                      payload=None, lease_token=row["lease_token"], deadline_at=row["deadline_at"],
                      subject=row["subject"])
            spec = kind_spec(row["stage"])
            if spec is not None and spec.on_undecodable is not None:
                await spec.on_undecodable(tx, job, UNDECODED_ERROR)
            elif (spec is None or spec.on_dead is None) and job.report_id is not None:
                await _report_dead(tx, job, UNDECODED_ERROR, now)

    @staticmethod
    def _job(row: Any) -> Job:
        return Job(id=row["id"], stage=row["stage"], report_id=row["report_id"], attempts=row["attempts"],
                   lease_token=row["lease_token"], payload=decode_payload(row["stage"], row["payload"]),
                   deadline_at=row["deadline_at"], subject=row["subject"])

    @classmethod
    def _decodable(cls, rows: Sequence[Any]) -> list[Job]:
        """The rows' jobs, leaving out any whose payload no longer decodes (a field missing, written by another
        build): one such job must not stop its kind's channel from starting, nor its workers (a lease dead-letters
        it; anywhere else it stays as it is, for the dead-letter page)."""
        jobs = []
        for row in rows:
            try:
                jobs.append(cls._job(row))
            except UNDECODABLE:
                log.warning("job %d (%s): its payload does not decode", row["id"], row["stage"])
        return jobs

    # -- ending an attempt (fenced) -----------------------------------------------------------------
    async def finish(self, job: Job, writes: Writes | None = None) -> bool:
        """Mark a leased job done and apply the caller's writes (the next stage's enqueue included) atomically.

        Returns False, writing nothing, when the lease was lost (reclaimed after expiry and taken again)."""
        async with self.store.transaction() as tx:
            cur = await tx.execute(self.sql.finish, (self.store.clock.now(), job.id, job.lease_token))
            if cur.rowcount != 1:
                return False
            if writes is not None:
                await writes(tx)
        return True

    async def finish_many(self, items: Sequence[tuple[Job, Writes | None]]) -> list[bool | Exception]:
        """`finish` for several jobs in one transaction (one fsync), each job in a savepoint of its own: per job,
        True when applied, False when its lease was lost, or the exception its writes raised (that job's writes
        are undone, the others' kept). A failure of the transaction itself raises, with nothing applied.

        On SQLite the transaction holds the file's only write lock, which intake's acknowledgements wait for: once
        it has held it for the store's `write_hold` budget, the jobs done so far are committed and the rest go on in
        a new transaction (Tx.held_long; PostgreSQL's row locks never ask). Should a later transaction fail as a
        whole, or the task be cancelled during one, PartlyFinished carries the outcomes of the committed jobs."""
        outcomes: list[bool | Exception] = []
        while len(outcomes) < len(items):
            try:
                outcomes.extend(await self._finish_some(items[len(outcomes):]))
            except (Exception, asyncio.CancelledError) as exc:
                # A cancellation too: the committed jobs' outcomes are the caller's to settle (a job done, another's
                # failure to record), lost with a bare CancelledError.
                if not outcomes:
                    raise
                raise PartlyFinished(outcomes, exc) from exc
        return outcomes

    async def _finish_some(self, items: Sequence[tuple[Job, Writes | None]]) -> list[bool | Exception]:
        """The first jobs of `items` in one transaction: all of them, or as many as the write-lock budget allows
        (at least one)."""
        outcomes: list[bool | Exception] = []
        async with self.store.transaction() as tx:
            for job, writes in items:
                if outcomes and tx.held_long():
                    break
                mark = await tx.savepoint()
                try:
                    cur = await tx.execute(self.sql.finish, (self.store.clock.now(), job.id, job.lease_token))
                    applied = cur.rowcount == 1
                    if applied and writes is not None:
                        await writes(tx)
                    if applied:
                        # Inside the job's try: a store may send a job's writes only now (ingest/store.py Tx),
                        # and one that fails must fail this job alone.
                        await tx.release_savepoint()
                except Exception as exc:
                    if tx.ended_by(exc):
                        raise  # nothing of the transaction is left to keep
                    await tx.undo_savepoint(mark)
                    outcomes.append(exc)
                    continue
                if not applied:
                    await tx.undo_savepoint(mark)
                outcomes.append(applied)
        return outcomes

    def plan_retry(self, job: Job, error: str, policy: RetryPolicy, *, retry_after: float | None = None,
                   permanent: bool = False) -> RetryPlan:
        """Retry after the policy's backoff (Retry-After a floor, never past the job's deadline), or dead when the
        failure is permanent, the attempts are spent or the deadline has passed."""
        now = self.store.clock.now()
        dead = permanent or (policy.max_attempts is not None and job.attempts >= policy.max_attempts)
        delay = backoff_delay(job.attempts, base=policy.base, cap=policy.cap, retry_after=retry_after)
        if job.deadline_at is not None:
            if now >= job.deadline_at and not dead:
                dead = True
                error = f"deadline passed; last error: {error}"
            delay = max(0.0, min(delay, job.deadline_at - now))
        return RetryPlan(dead=dead, delay=delay, error=error)

    async def retry_or_dead(self, job: Job, error: str, policy: RetryPolicy, *, retry_after: float | None = None,
                            permanent: bool = False, writes: Writes | None = None) -> str:
        """`plan_retry`, then record it. Returns "retry", "dead" or "lost" (the lease was lost: nothing written,
        `writes` not applied)."""
        plan = self.plan_retry(job, error, policy, retry_after=retry_after, permanent=permanent)
        applied = await self.fail(job, plan.error, retry_in=plan.delay, dead=plan.dead, writes=writes)
        return "lost" if not applied else "dead" if plan.dead else "retry"

    async def fail(self, job: Job, error: str, *, retry_in: float, dead: bool, writes: Writes | None = None) -> bool:
        """Record a failed attempt: back to 'ready' in `retry_in` seconds, or dead-lettered (the kind's on_dead
        hook, else the report rule, in the same transaction). False when the lease was lost."""
        (applied,) = await self.settle([Settlement(job, "dead" if dead else "retry", error, retry_in, writes)])
        return applied

    async def settle(self, items: Sequence[Settlement]) -> list[bool]:
        """Several attempts' outcomes in one transaction (one fsync), each fenced on its own: False for a job whose
        lease was lost (its writes are not applied). A failure of any writes fails the whole transaction."""
        applied: list[bool] = []
        if not items:
            return applied
        async with self.store.transaction() as tx:
            # The batch's successes are fenced in one statement (a delivery batch is mostly successes), then each
            # item's writes and every other outcome follow in order.
            done = await self._finish_all(tx, [item.job for item in items if item.result == "done"])
            for item in items:
                if item.result != "done":
                    applied.append(await self._settle_one(tx, item))
                    continue
                ok = item.job.id in done
                if ok and item.writes is not None:
                    await item.writes(tx)
                applied.append(ok)
        return applied

    async def _finish_all(self, tx: Tx, jobs: Sequence[Job]) -> set[int]:
        """Mark leased jobs done, each only if still leased by its attempt; the ids that were."""
        done: set[int] = set()
        now = self.store.clock.now()
        for start in range(0, len(jobs), 400):  # well under any backend's limit of bound parameters
            chunk = jobs[start:start + 400]
            params: list[Any] = [now]
            for job in chunk:
                params += [job.id, job.lease_token]
            # Typed, since a VALUES list has no column to take its type from (PostgreSQL would read text).
            pairs = ",".join(["(CAST(? AS BIGINT), CAST(? AS BIGINT))"] * len(chunk))
            rows = await tx.fetchall(self.sql.finish_all.format(pairs=pairs), params)
            done.update(int(r["id"]) for r in rows)
        return done

    async def _settle_one(self, tx: Tx, item: Settlement) -> bool:
        job, now = item.job, self.store.clock.now()
        if item.result == "done":
            cur = await tx.execute(self.sql.finish, (now, job.id, job.lease_token))
        elif item.result == "dead":
            cur = await tx.execute(self.sql.dead, (item.error, now, job.id, job.lease_token))
        elif item.result == "retry":
            cur = await tx.execute(self.sql.retry, (now + item.retry_in, item.error, now, job.id, job.lease_token))
        else:
            raise ValueError(f"unknown outcome {item.result!r}")
        if cur.rowcount != 1:  # lease lost: another worker owns the job now
            return False
        if item.result == "dead":
            await self._on_dead(tx, job, item.error or "", now)
        if item.writes is not None:
            await item.writes(tx)
        return True

    async def _on_dead(self, tx: Tx, job: Job, error: str, now: float) -> None:
        spec = kind_spec(job.stage)
        if spec is not None and spec.on_dead is not None:
            await spec.on_dead(tx, job, error)
        elif job.report_id is not None:
            await _report_dead(tx, job, error, now)

    async def bury(self, tx: Tx, job_ids: Sequence[int], error: str) -> list[Job]:
        """Dead-letter waiting ('ready') jobs in the caller's transaction, for work that can only fail now (its
        endpoint answered 410 Gone), kept replayable. No on_dead hook runs: the caller records what it means.
        Returns the jobs buried; one whose payload no longer decodes is buried all the same but left out (as a
        lease leaves it out): decoding it must not fail the caller's transaction (an endpoint's 410 undone)."""
        if not job_ids:
            return []
        now = self.store.clock.now()
        rows = await tx.fetchall(self.sql.bury.format(ids=",".join("?" * len(job_ids))), [error, now, *job_ids])
        return self._decodable(rows)

    async def bury_subject(self, tx: Tx, kind: str, subject: str, error: str) -> list[Job]:
        """`bury` every waiting job of `kind` about `subject`."""
        now = self.store.clock.now()
        return self._decodable(await tx.fetchall(self.sql.bury_subject, (error, now, kind, subject)))

    async def uncarried(self, tx: Tx, kind: str, subject: str, waiting_sql: str, params: Sequence[Any],
                        field: str) -> list[int]:
        """The ids `waiting_sql` selects (`SELECT id FROM …`: a subject's rows waiting for a job of theirs, e.g. an
        endpoint's outbox rows) that no unfinished job of `kind` about `subject` carries in its payload's `field`,
        in id order: whose job is the one whose payload no longer decodes. Both read by one statement: on PostgreSQL
        (READ COMMITTED) each statement sees what was committed when it began, and read by two, a row and its job
        another instance committed in between showed the row without its job (taken for the undecodable job's)."""
        rows = await tx.fetchall(self.sql.uncarried.format(waiting=waiting_sql), [kind, subject, *params])
        carried: set[Any] = set()
        for row in rows:
            if row["what"] == "job":
                try:
                    carried.add(getattr(decode_payload(kind, row["payload"]), field))
                except UNDECODABLE:  # the undecodable job, or another no build of ours can read: nothing known
                    pass
        return sorted(row["id"] for row in rows if row["what"] == "row" and row["id"] not in carried)

    async def release(self, jobs: Iterable[Job], delay: float = 0.0) -> int:
        """Give leases back without counting the attempt (shutdown; or work that must wait its turn, due again in
        `delay` seconds). Fenced per job: one whose lease was lost meanwhile stays with its new holder. The caller
        must not use a released job afterwards. Returns how many were given back."""
        due = self.store.clock.now() + delay
        return await self._fenced(jobs, self.sql.release, [due, due])

    async def renew(self, jobs: Iterable[Job], lease_seconds: float) -> int:
        """Extend leases still held to `lease_seconds` from now (a batch still being worked on). Fenced per job: one
        whose lease was lost meanwhile is left to its new holder. Returns how many were renewed."""
        return await self._fenced(jobs, self.sql.renew, [self.store.clock.now() + lease_seconds])

    async def _fenced(self, jobs: Iterable[Job], sql: str, params: list[Any]) -> int:
        """Run a statement fenced per job (`{pairs}`: the jobs' (id, lease_token), after `params`) over `jobs` in one
        transaction, 400 jobs a statement (well under any backend's limit of bound parameters); returns how many
        rows it changed."""
        jobs = list(jobs)
        if not jobs:
            return 0
        changed = 0
        async with self.store.transaction() as tx:
            for start in range(0, len(jobs), 400):
                chunk = jobs[start:start + 400]
                fences: list[int] = []
                for job in chunk:
                    fences += [job.id, job.lease_token]
                pairs = ",".join(["(CAST(? AS BIGINT), CAST(? AS BIGINT))"] * len(chunk))
                changed += len(await tx.fetchall(sql.format(pairs=pairs), [*params, *fences]))
        return changed

    # -- housekeeping -------------------------------------------------------------------------------
    async def reclaim_expired(self) -> int:
        now = self.store.clock.now()
        async with self.store.transaction() as tx:
            rows = await tx.fetchall(self.sql.reclaim, (now, now, now))
        if rows:
            log.warning("reclaimed %d expired leases", len(rows))
            for kind in {r["stage"] for r in rows} | set(self._events):
                self.wake(kind)
        return len(rows)

    async def replay(self, kind: str | None = None, ids: Sequence[int] = (), subject_prefix: str | None = None,
                     deadline_seconds: float | None = None, subject: str | None = None) -> int:
        """Put dead letters back ('ready', attempts 0: a fresh set of attempts; the lease token goes on growing, so
        no holder of an old lease can finish the replayed job), each kind's on_replay hook in the same transaction. A job
        with a deadline gets a fresh one, `deadline_seconds` (else its kind's `replay_deadline`) from now."""
        now = self.store.clock.now()
        where, params = _filters(kind, ids, subject_prefix, subject)
        async with self.store.transaction() as tx:
            rows = await tx.fetchall(self.sql.replay.format(where=where), [now, now, *params])
            # One that does not decode is waiting again all the same, without its hooks: its next lease buries it.
            jobs = self._decodable(rows)
            for job in sorted(jobs, key=lambda j: j.id):
                spec = kind_spec(job.stage)
                span = deadline_seconds if deadline_seconds is not None else spec.replay_deadline if spec else None
                if span is not None and job.deadline_at is not None:
                    job = dataclasses.replace(job, deadline_at=now + span)
                    await tx.execute(self.sql.set_deadline, (job.deadline_at, job.id))
                if spec is not None and spec.on_replay is not None:
                    await spec.on_replay(tx, job, "")
                elif job.report_id is not None:
                    await _report_replayed(tx, job, now)
            for name in {j.stage for j in jobs}:
                tx.after_commit(lambda name=name: self.wake(name))
        return len(rows)

    async def dead_letters(self, kind: str | None = None, limit: int = 100, subject_prefix: str | None = None,
                           subject: str | None = None) -> list[DeadLetter]:
        """The dead letters, newest first, as administrators read them (console, CLI): subject and error with any
        chat id, phone number or address removed (a subject written before subjects were pseudonymous, an error
        quoting a peer's answer). The payload is the job's own, for code only."""
        where, params = _filters(kind, (), subject_prefix, subject)
        rows = await self.store.fetchall(self.sql.dead_letters.format(where=where), [*params, limit])
        return [DeadLetter(id=r["id"], kind=r["stage"], report_id=r["report_id"],
                           subject=shown_to_admins(r["subject"]), attempts=r["attempts"],
                           last_error=shown_to_admins(r["last_error"]), updated_at=r["updated_at"],
                           payload=_decoded_or_none(r["stage"], r["payload"]))
                for r in rows]

    async def subject_of(self, job_id: int) -> str | None:
        """A job's subject as written (never shown: it may name a person), to find the others of that subject."""
        row = await self.store.fetchone(self.sql.subject_of, (job_id,))
        return row["subject"] if row else None

    async def rename_subjects(self, kind: str, subject_of: Callable[[Job], str]) -> int:
        """Give the unfinished (waiting, leased, dead) jobs of `kind` the subject `subject_of(job)` where theirs
        differs: a kind that changes how it names its subjects brings the jobs written before along, so one
        subject still means one thing. Returns how many changed."""
        rows = await self.store.fetchall(self.sql.unfinished, (kind,))
        changes = [(new, job.id) for job in self._decodable(rows) if (new := subject_of(job)) != job.subject]
        if changes:
            async with self.store.transaction() as tx:
                for new, job_id in changes:
                    await tx.execute(self.sql.set_subject, (new, job_id))
        return len(changes)

    async def oldest_ready(self) -> dict[str, float]:
        """Per kind, how long its oldest due job has waited (seconds), for metrics."""
        now = self.store.clock.now()
        return {r["stage"]: max(0.0, now - r["t"]) for r in await self.store.fetchall(self.sql.oldest_ready, (now,))}

    async def reschedule(self, tx: Tx, kind: str, report_id: int, at: float) -> None:
        """Move a report's waiting job of `kind` to `at` (a report held while its reporter is asked, then let go)."""
        await tx.execute(self.sql.reschedule, (at, kind, report_id))

    async def first_waiting(self, kind: str, subjects: Sequence[str], exclude: Sequence[int] = ()
                            ) -> dict[str, tuple[int, float]]:
        """Per subject, the oldest job of `kind` not finished yet, waiting ('ready') or still being carried out by
        another worker ('leased'), and when it is due: what must go first (a chat's earlier message waiting for
        its retry, or being sent by another instance). `exclude`: the caller's own leased jobs, which it orders
        itself."""
        if not subjects:
            return {}
        exclude_sql = f" AND id NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        sql = self.sql.first_waiting.format(subjects=",".join("?" * len(subjects)), exclude=exclude_sql)
        first: dict[str, tuple[int, float]] = {}
        for r in await self.store.fetchall(sql, [kind, *subjects, *exclude]):
            first.setdefault(r["subject"], (r["id"], r["available_at"]))
        return first

    async def waiting_payloads(self, kind: str, subjects: Sequence[str]) -> list[tuple[int, Any]]:
        """(id, payload) of the jobs of `kind` with one of `subjects` not finished yet (waiting, or leased: by this
        worker too), oldest first; one whose payload no longer decodes is left out (its lease buries it)."""
        sql = self.sql.waiting_payloads.format(subjects=",".join("?" * len(subjects)))
        rows = await self.store.fetchall(sql, [kind, *subjects])
        return [(r["id"], p) for r in rows if (p := _decoded_or_none(kind, r["payload"])) is not None]

    async def depths(self) -> dict[tuple[str, str], int]:
        rows = await self.store.fetchall(self.sql.depths)
        return {(r["stage"], r["state"]): r["n"] for r in rows}


def shown_to_admins(text: str | None) -> str | None:
    """A dead letter's subject or error as administrators may read it (ingest/pii.py): no contact, no id."""
    return redact_ids(text[:1000]) if text else text


def _decoded_or_none(kind: str, text: str | None) -> Any:
    """A dead letter's payload for listing: one that no longer decodes is shown as absent, not an error."""
    try:
        return decode_payload(kind, text)
    except UNDECODABLE:
        return None


def _filters(kind: str | None, ids: Sequence[int], subject_prefix: str | None,
             subject: str | None = None) -> tuple[str, list[Any]]:
    """The WHERE clause of a dead-letter listing or replay. `subject`: that subject only. `subject_prefix`, typed by
    people (CLI, console): that subject, or every subject under it when it ends with "/" or ":" (`so-gtvt/`: each
    endpoint of an agency; `reopen:`: every incident's reopening); `so-gtvt/hook` is one endpoint and never also takes in `so-gtvt/hook-2`, whose replay would
    re-enable an endpoint that answered 410 Gone (dispatch/delivery.py) without anyone having named it."""
    where, params = "", []  # type: tuple[str, list[Any]]
    if kind:
        where += " AND stage=?"
        params.append(kind)
    if ids:
        where += f" AND id IN ({','.join('?' * len(ids))})"
        params.extend(ids)
    if subject is not None:
        where += " AND subject=?"
        params.append(subject)
    if subject_prefix:
        group = subject_prefix if subject_prefix.endswith(("/", ":")) else subject_prefix + "/"
        # A prefix match without LIKE's wildcards: `subject` values contain `_` and `%` freely.
        where += " AND (subject=? OR substr(subject, 1, ?)=?)"
        params.extend([subject_prefix, len(group), group])
    return where, params


async def _report_dead(tx: Tx, job: Job, error: str, now: float) -> None:
    """Only a report whose pipeline stopped short is `failed`; a dead side job (a reporter message, a late media
    fetch) must not hide that the report itself was dispatched."""
    row = await tx.fetchone("SELECT status FROM reports WHERE id=?", (job.report_id,))
    previous = row["status"] if row else None
    if previous in UNFINISHED_STATES:
        await tx.execute("UPDATE reports SET status='failed', updated_at=? WHERE id=?", (now, job.report_id))
    await tx.event(job.report_id, "dead_letter", "system",
                   {"stage": job.stage, "error": error, "previous_status": previous})


async def report_dead(tx: Tx, job: Job, error: str) -> None:
    """The report rule (`_report_dead`) as a hook, for a kind whose own on_dead adds to it (dedupe's alert)."""
    if job.report_id is not None:
        await _report_dead(tx, job, error, tx.store.clock.now())


async def side_job_dead(tx: Tx, job: Job, error: str) -> None:
    """`on_dead` of a side kind (a question to the reporter, a late media fetch, a reporter's follow-up): the job
    is about a report but is not one of its stages, so its death is only recorded; the report's status stays the
    stages' business (a routed report marked failed would be skipped by dedupe and never reach its agency). Its
    own event kind, so a stage's replay still finds the stage's `dead_letter` and the status it had."""
    if job.report_id is not None:
        await tx.event(job.report_id, "side_job_dead", "system", {"stage": job.stage, "error": error})


async def side_job_replayed(tx: Tx, job: Job, _: str) -> None:
    """`on_replay` of a side kind: recorded only; a report failed by its own stage stays failed."""
    if job.report_id is not None:
        await tx.event(job.report_id, "side_job_replayed", "operator", {"stage": job.stage})


async def _report_replayed(tx: Tx, job: Job, now: float) -> None:
    """A replayed job's report gets back the status it had before it failed: the latest dead letter that found it
    unfinished. A later one found it `failed` already (a job that died again while failed: an undecodable one
    replayed and buried by its next lease), and restoring from that one would leave the report `received`
    whatever its stage, where no stage would take it on."""
    previous = "received"
    for event in await tx.fetchall("SELECT data FROM events WHERE report_id=? AND kind='dead_letter'"
                                   " ORDER BY id DESC", (job.report_id,)):
        status = json.loads(event["data"]).get("previous_status")
        if status in UNFINISHED_STATES:
            previous = status
            break
    await tx.execute("UPDATE reports SET status=?, updated_at=? WHERE id=? AND status='failed'",
                     (previous, now, job.report_id))
    await tx.event(job.report_id, "replayed", "operator", {})
