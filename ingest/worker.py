"""Runs one pipeline stage as a queue worker: lease, handle, finish-and-enqueue, or retry / dead-letter."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from .backoff import backoff_delay
from .errors import PermanentError, StorageError, TransientError
from .faults import ThrottledLog
from .logs import log_context
from .queue import Held, PartlyFinished, RetryPolicy
from .records import Job
from .store import Store, StoredReport, Tx

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

# A handler computes (off the write lock) and returns the writes to apply atomically with finishing the job.
Writes = Callable[[Tx], Awaitable[None]]
Handler = Callable[[Job, StoredReport], Awaitable[Writes | None]]

# Optional observers of job outcomes, for metrics (ops/metrics.py registers one). Called after the outcome is
# committed as observer(stage, outcome, report, handler_seconds), outcome one of "done", "retry", "dead",
# "lost"; an observer must be cheap and must not raise (a failing one is logged and skipped).
JobObserver = Callable[[str, str, StoredReport, float], None]
JOB_OBSERVERS: list[JobObserver] = []


def _observe(stage: str, outcome: str, report: StoredReport, seconds: float) -> None:
    for observer in JOB_OBSERVERS:
        try:
            observer(stage, outcome, report, seconds)
        except Exception:
            log.exception("job observer failed")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    batch: int = 16
    lease_seconds: float = 60.0
    max_attempts: int = 5
    idle_poll: float = 1.0
    backoff_base: float = 2.0
    backoff_cap: float = 600.0
    # For stages whose jobs do not depend on each other's results (classify): lease and prepare the next batch
    # while this one is finished, so the embedder never waits for the store; and finish a batch's jobs in one
    # transaction (a savepoint per job: a job whose writes fail is undone alone and retried) instead of one
    # fsync'd commit per job. Off for stages that must see each earlier job committed (dedupe, dispatch).
    prefetch: bool = False
    group_commit: bool = False
    # With group_commit: jobs per shared transaction (0: the whole batch). The store has one write lock (SQLite's,
    # or this process's for the group commit of intake), held while every job's writes run statement by statement;
    # a batch of 64 classify jobs held it for 60-300 ms, and every report acknowledged meanwhile waited that long.
    # A few jobs a commit bound that wait at the cost of a few more fsyncs a batch.
    group_size: int = 0
    # Jobs that must never die of a transient cause (dedupe's incident-state and case report jobs: one given up
    # leaves an incident open under a closed case, or naming another report as its case's): retried with backoff
    # capped at `backoff_cap` for as long as a transient cause (TransientError, StorageError) lasts; any other
    # error dies after `max_attempts` as other jobs do, and a PermanentError (or a payload that no longer decodes)
    # at once, into the dead letters and the kind's alert.
    keep_trying: Callable[[Job], bool] | None = None


# A batch's leases are renewed while it is worked on, up to this many lease periods after it was taken: a handler
# stuck for longer lets its jobs go to another worker, as a dead instance's would.
RENEW_PERIODS = 10


@dataclass(slots=True)
class _Taken:
    """One leased batch: the jobs not yet finished, their reports, and the batch preparation under way."""

    jobs: list[Job]
    loaded: list[tuple[Job, StoredReport]]
    prepared: asyncio.Task[None] | None
    taken_at: float = 0.0  # time.monotonic() when leased


class StageWorker:
    def __init__(self, store: Store, stage: str, handler: Handler, settings: WorkerSettings | None = None,
                 batch_handler: Callable[[list[tuple[Job, StoredReport]]], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.stage = stage
        self.handler = handler
        self.settings = settings or WorkerSettings()
        self.batch_handler = batch_handler  # lets a stage prepare a whole batch at once (e.g. embed together)
        self._stopping = asyncio.Event()
        self._holding: list[_Taken] = []  # the batches leased and not yet finished or given back (renewed)
        self.processed = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        renewing = asyncio.create_task(self._renew(), name=f"{self.stage}:renew-leases")
        try:
            await self._run()
        finally:
            renewing.cancel()

    async def _renew(self) -> None:
        """Keep the leases of the batches being worked on: a batch that outlives its lease (a loaded machine, a
        slow model, a prefetched batch waiting its turn) would otherwise be reclaimed and done again elsewhere,
        its own results discarded. Fencing keeps that correct either way; this keeps it from being wasted."""
        s = self.settings
        while True:
            await asyncio.sleep(s.lease_seconds / 3)
            horizon = time.monotonic() - RENEW_PERIODS * s.lease_seconds
            jobs = [job for batch in self._holding if batch.taken_at > horizon for job in batch.jobs]
            try:
                await self.store.queue.renew(jobs, s.lease_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the leases may then lapse: fenced, nothing is applied twice
                _throttled.log(logging.WARNING, f"{self.stage}:renew", "stage %s: renewing leases failed (%s)",
                               self.stage, type(exc).__name__)

    async def _run(self) -> None:
        failures = 0
        ahead: _Taken | None = None
        try:
            while not self._stopping.is_set():
                taken: _Taken | None = None
                try:
                    taken, ahead = ahead or await self._take(), None
                    if taken is not None:
                        if self.settings.prefetch:
                            ahead = await self._prefetch(taken)
                        await self._complete(taken)
                except StorageError as exc:
                    # The store cannot write (disk full, I/O): wait it out. Jobs leased in this round come back when
                    # their lease expires; nothing was acknowledged that is not stored.
                    for batch in (taken, ahead):
                        if batch is not None and batch.prepared is not None:
                            batch.prepared.cancel()
                    ahead = None
                    self._holding.clear()  # none is worked on any more: not renewed either
                    failures += 1
                    delay = backoff_delay(failures, base=self.settings.backoff_base / 2, cap=30.0)
                    _throttled.log(logging.WARNING, f"{self.stage}:storage", "stage %s: store unavailable (%s);"
                                   " backing off %.1f s", self.stage, exc, delay)
                    try:
                        await asyncio.wait_for(self._stopping.wait(), delay)
                    except TimeoutError:
                        pass
                    continue
                failures = 0
                if taken is None:
                    await self.store.wait_for_work(self.stage, self.settings.idle_poll)
        except asyncio.CancelledError:
            if ahead is not None:
                await asyncio.shield(self._give_back(ahead))
            raise

    async def _prefetch(self, taken: _Taken) -> _Taken | None:
        """Take the next batch (its preparation runs while `taken` is handled and finished). A stop while it is taken
        gives `taken` back too, its preparation cancelled: `taken` is nobody else's to give back yet (_complete
        has not begun), and it would stay leased until its leases expire, its preparation running on unawaited."""
        try:
            return await self._take()
        except asyncio.CancelledError:
            await asyncio.shield(self._give_back(taken))
            raise

    async def run_once(self) -> int:
        """Lease and handle one batch; returns how many jobs were taken."""
        taken = await self._take()
        if taken is None:
            return 0
        count = len(taken.jobs)
        await self._complete(taken)
        return count

    async def _take(self) -> _Taken | None:
        """Lease a batch, read its reports and start preparing it (the batch handler, as a task of its own)."""
        # A stop while the lease commits gives back what it took (queue.lease), as a stop later in here does.
        jobs = await self.store.lease(self.stage, self.settings.batch, self.settings.lease_seconds)
        if not jobs:
            return None
        taken = _Taken(list(jobs), [], None, time.monotonic())
        self._holding.append(taken)
        try:
            reports = await self.store.get_reports([job.report_id for job in jobs])
            for job in jobs:
                report = reports.get(job.report_id)
                if report is None:
                    await self.store.fail(job, "report row missing", retry_in=0, dead=True)
                    taken.jobs.remove(job)
                    continue
                taken.loaded.append((job, report))
        except asyncio.CancelledError:
            self._let_go(taken)
            await self.store.queue.give_back(taken.jobs)
            raise
        if self.batch_handler is not None and taken.loaded:
            taken.prepared = asyncio.ensure_future(self.batch_handler(taken.loaded))
        return taken

    def _let_go(self, taken: _Taken) -> None:
        if taken in self._holding:
            self._holding.remove(taken)

    async def _give_back(self, taken: _Taken) -> None:
        self._let_go(taken)
        if taken.prepared is not None:
            taken.prepared.cancel()
            await asyncio.gather(taken.prepared, return_exceptions=True)
        await self.store.queue.give_back(taken.jobs)  # a release that fails is logged: the stop goes on

    async def _complete(self, taken: _Taken) -> None:
        """Wait for the batch's preparation, then handle and finish every job of it."""
        try:
            # A stop gives unfinished leases back at once rather than waiting for them to expire (queue.holding),
            # except a job whose send runs in a thread (in_thread): that one is waited for and settled.
            async with self.store.queue.holding(taken.jobs) as held:
                if taken.prepared is not None:
                    try:
                        await taken.prepared
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # the per-job handler will retry alone and record the error per job
                        log.exception("stage %s: batch preparation failed", self.stage)
                if self.settings.group_commit:
                    await self._handle_group(held, taken)
                else:
                    for job, report in taken.loaded:
                        with self._context(job, report):
                            await self._handle(held, job, report)
                        taken.jobs.remove(job)
        except asyncio.CancelledError:
            if taken.prepared is not None:
                taken.prepared.cancel()
                await asyncio.shield(asyncio.gather(taken.prepared, return_exceptions=True))
            raise
        finally:
            self._let_go(taken)

    async def _handle_group(self, held: Held, taken: _Taken) -> None:
        """Handle every job, then finish those that produced writes in shared transactions (group commit), in
        order, `group_size` jobs each."""
        ready: list[tuple[Job, StoredReport, Writes | None, float]] = []
        for job, report in taken.loaded:
            started = time.perf_counter()
            with self._context(job, report):
                writes = await self._compute(held, job, report, started)
            if writes is _FAILED:
                taken.jobs.remove(job)
                continue
            ready.append((job, report, writes, started))  # type: ignore[arg-type]
        size = self.settings.group_size or len(ready)
        for start in range(0, len(ready), size):
            await self._finish_group(taken, ready[start:start + size])

    async def _finish_group(self, taken: _Taken, ready: list[tuple[Job, StoredReport, Writes | None, float]]) -> None:
        """Finish handled jobs in one transaction; should it fail as a whole, one by one."""
        try:
            outcomes = await self.store.finish_many([(job, writes) for job, _, writes, _ in ready])
        except PartlyFinished as partly:
            # The first jobs were committed before a later transaction of the group failed: those are done as any
            # finished job; the rest as if their group had failed (below).
            done = len(partly.outcomes)
            await self._settle_outcomes(taken, ready[:done], partly.outcomes)
            ready = ready[done:]
            if isinstance(partly.error, (asyncio.CancelledError, StorageError)):
                raise partly.error  # shutdown (the rest given back), or an outage the run loop waits out
            await self._finish_one_by_one(taken, ready)
            return
        except (asyncio.CancelledError, StorageError):
            raise  # a store outage: the run loop backs off; the leases come back when they expire
        except Exception:
            # The shared commit failed as a whole (nothing of it applied): finish the jobs one by one, so the
            # fault is met, and recorded, job by job as without grouping.
            await self._finish_one_by_one(taken, ready)
            return
        await self._settle_outcomes(taken, ready, outcomes)

    async def _finish_one_by_one(self, taken: _Taken, ready: list[tuple[Job, StoredReport, Writes | None, float]]
                                 ) -> None:
        log.exception("stage %s: group commit of %d jobs failed; finishing them one by one", self.stage, len(ready))
        for job, report, writes, started in ready:
            with self._context(job, report):
                await self._finish(job, report, writes, started)
            taken.jobs.remove(job)

    async def _settle_outcomes(self, taken: _Taken, ready: list[tuple[Job, StoredReport, Writes | None, float]],
                               outcomes: list[bool | Exception]) -> None:
        for (job, report, _, started), outcome in zip(ready, outcomes):
            taken.jobs.remove(job)
            with self._context(job, report):
                if isinstance(outcome, BaseException):
                    await self._failed(job, report, outcome, started)
                else:
                    self._finished(job, report, outcome, started)

    def _context(self, job: Job, report: StoredReport) -> Any:
        """Log fields of the job being worked on (ingest/logs.py)."""
        return log_context(report_id=job.report_id, job=job.id, stage=self.stage,
                           channel=report.message.channel_instance)

    async def _handle(self, held: Held, job: Job, report: StoredReport) -> None:
        started = time.perf_counter()
        writes = await self._compute(held, job, report, started)
        if writes is not _FAILED:
            await self._finish(job, report, writes, started)  # type: ignore[arg-type]

    async def _compute(self, held: Held, job: Job, report: StoredReport, started: float) -> Writes | None | object:
        """The handler's writes, or _FAILED once the handler's error has been recorded on the job."""

        async def settle(outcome: Writes | None | Exception) -> None:
            # Stopped while the handler's send ran in a thread (in_thread): the job finished or failed here, as
            # it would have been after the handler returned or raised.
            with self._context(job, report):
                if isinstance(outcome, Exception):
                    await self._failed(job, report, outcome, started)
                else:
                    await self._finish(job, report, outcome, started)

        working = _WORKING.set((held, job, settle))
        try:
            return await self.handler(job, report)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(job, report, exc, started)
            return _FAILED
        finally:
            _WORKING.reset(working)

    async def _failed(self, job: Job, report: StoredReport, exc: BaseException, started: float) -> None:
        s = self.settings
        if isinstance(exc, PermanentError):
            log.warning("stage %s job %d: permanent failure: %s", self.stage, job.id, type(exc).__name__)
            await self.store.fail(job, f"{type(exc).__name__}: {exc}", retry_in=0, dead=True)
            _observe(self.stage, "dead", report, time.perf_counter() - started)
            return
        if not isinstance(exc, TransientError):
            log.error("stage %s job %d failed (attempt %d)", self.stage, job.id, job.attempts,
                      exc_info=(type(exc), exc, exc.__traceback__))
        # The queue's one retry rule (ingest/queue.py): backoff, Retry-After a floor, dead when attempts run out.
        # Only for a cause that passes by itself (a busy or unavailable store, a peer's transient refusal): a bug or a
        # bad row fails the same way every time, and retried for ever it would never reach the dead letters or the
        # alert its kind raises there.
        persistent = isinstance(exc, (TransientError, StorageError)) and s.keep_trying is not None \
            and s.keep_trying(job)
        policy = RetryPolicy(max_attempts=None if persistent else s.max_attempts, base=s.backoff_base,
                             cap=s.backoff_cap)
        if persistent and job.attempts == s.max_attempts:
            # Said once, where another job would have died: it goes on being retried (and /metrics counts it,
            # jobs_retrying_past_limit, for as long as it is).
            log.warning("stage %s job %d: still failing after %d attempts (%s); retried until it succeeds",
                        self.stage, job.id, job.attempts, type(exc).__name__)
        plan = self.store.queue.plan_retry(job, f"{type(exc).__name__}: {exc}", policy,
                                           retry_after=exc.retry_after if isinstance(exc, TransientError) else None)
        await self.store.fail(job, plan.error, retry_in=plan.delay, dead=plan.dead)
        _observe(self.stage, "dead" if plan.dead else "retry", report, time.perf_counter() - started)

    async def _finish(self, job: Job, report: StoredReport, writes: Writes | None, started: float) -> None:
        try:
            applied = await self.store.finish(job, writes)
        except (asyncio.CancelledError, StorageError):
            raise
        except Exception as exc:
            # The writes failed, undone with their transaction: the job's failure, recorded as a handler's is (and
            # as a grouped job's is), not the end of the worker.
            await self._failed(job, report, exc, started)
            return
        self._finished(job, report, applied, started)

    def _finished(self, job: Job, report: StoredReport, applied: bool, started: float) -> None:
        if applied:
            self.processed += 1
            _observe(self.stage, "done", report, time.perf_counter() - started)
        else:
            log.warning("stage %s job %d: lease lost, result discarded", self.stage, job.id)
            _observe(self.stage, "lost", report, time.perf_counter() - started)


_FAILED = object()  # _compute's answer when the handler raised (its failure is already recorded)

T = TypeVar("T")
# The job a StageWorker is handling in this task: its batch's Held and how to settle it (StageWorker._handle).
_WORKING: ContextVar[tuple[Held, Job, Callable[[Writes | None | Exception], Awaitable[None]]] | None] = \
    ContextVar("stage_job_working", default=None)


async def in_thread(send: Callable[[], T], then: Callable[[asyncio.Future[T]], Awaitable[Writes | None]]
                    ) -> Writes | None:
    """For a handler whose send blocks (smtplib): `send()` in a worker thread, then `then(its finished future)`,
    which returns the job's writes as the handler would (or raises as it would). Returns what `then` returns.

    Run by a StageWorker, the thread goes through its batch's `Held.in_thread` (ingest/queue.py): a stop (a
    reload, a shutdown) landing while the thread sends does not give the job back to be leased and sent again in
    parallel; it waits for the thread, and `then`'s writes finish the job (or its error retries it) as the
    handler's would have, before the cancellation goes on."""
    working = _WORKING.get()
    thread: asyncio.Future[T]
    if working is None:  # called outside a stage worker (a CLI, a test): nothing is leased, nothing to keep
        thread = asyncio.ensure_future(asyncio.to_thread(send))
        await asyncio.wait([thread])
        return await then(thread)
    held, job, settle = working

    async def settle_stopped(stopped: asyncio.Future[T]) -> None:
        try:
            outcome: Writes | None | Exception = await then(stopped)
        except Exception as exc:
            outcome = exc
        await settle(outcome)

    thread = asyncio.get_running_loop().create_future()
    try:
        thread.set_result(await held.in_thread(job, send, settle_stopped))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        thread.set_exception(exc)
    return await then(thread)
