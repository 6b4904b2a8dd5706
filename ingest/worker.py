"""Runs one pipeline stage as a queue worker: lease, handle, finish-and-enqueue, or retry / dead-letter."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .backoff import backoff_delay
from .errors import PermanentError, StorageError, TransientError
from .faults import ThrottledLog
from .logs import log_context
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


class StageWorker:
    def __init__(self, store: Store, stage: str, handler: Handler, settings: WorkerSettings | None = None,
                 batch_handler: Callable[[list[tuple[Job, StoredReport]]], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.stage = stage
        self.handler = handler
        self.settings = settings or WorkerSettings()
        self.batch_handler = batch_handler  # lets a stage prepare a whole batch at once (e.g. embed together)
        self._stopping = asyncio.Event()
        self.processed = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                taken = await self.run_once()
            except StorageError as exc:
                # The store cannot write (disk full, I/O): wait it out. Jobs leased in this round come back when
                # their lease expires; nothing was acknowledged that is not stored.
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
            if not taken:
                await self.store.wait_for_work(self.stage, self.settings.idle_poll)

    async def run_once(self) -> int:
        """Lease and handle one batch; returns how many jobs were taken."""
        jobs = await self.store.lease(self.stage, self.settings.batch, self.settings.lease_seconds)
        if not jobs:
            return 0
        pending = list(jobs)
        try:
            loaded: list[tuple[Job, StoredReport]] = []
            for job in jobs:
                report = await self.store.get_report(job.report_id)
                if report is None:
                    await self.store.fail(job, "report row missing", retry_in=0, dead=True)
                    pending.remove(job)
                    continue
                loaded.append((job, report))
            if self.batch_handler is not None and loaded:
                try:
                    await self.batch_handler(loaded)
                except Exception:  # the per-job handler will retry alone and record the error per job
                    log.exception("stage %s: batch preparation failed", self.stage)
            for job, report in loaded:
                with log_context(report_id=job.report_id, job=job.id, stage=self.stage,
                                 channel=report.message.channel_instance):
                    await self._handle(job, report)
                pending.remove(job)
        except asyncio.CancelledError:
            # Shutdown: give unfinished leases back at once rather than waiting for them to expire.
            await asyncio.shield(self.store.release(pending))
            raise
        return len(jobs)

    async def _handle(self, job: Job, report: StoredReport) -> None:
        s = self.settings
        started = time.perf_counter()
        try:
            writes = await self.handler(job, report)
        except PermanentError as exc:
            log.warning("stage %s job %d: permanent failure: %s", self.stage, job.id, type(exc).__name__)
            await self.store.fail(job, f"{type(exc).__name__}: {exc}", retry_in=0, dead=True)
            _observe(self.stage, "dead", report, time.perf_counter() - started)
            return
        except TransientError as exc:
            dead = job.attempts >= s.max_attempts
            delay = backoff_delay(job.attempts, base=s.backoff_base, cap=s.backoff_cap, retry_after=exc.retry_after)
            await self.store.fail(job, f"{type(exc).__name__}: {exc}", retry_in=delay, dead=dead)
            _observe(self.stage, "dead" if dead else "retry", report, time.perf_counter() - started)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("stage %s job %d failed (attempt %d)", self.stage, job.id, job.attempts)
            dead = job.attempts >= s.max_attempts
            delay = backoff_delay(job.attempts, base=s.backoff_base, cap=s.backoff_cap)
            await self.store.fail(job, f"{type(exc).__name__}: {exc}", retry_in=delay, dead=dead)
            _observe(self.stage, "dead" if dead else "retry", report, time.perf_counter() - started)
            return
        if await self.store.finish(job, writes):
            self.processed += 1
            _observe(self.stage, "done", report, time.perf_counter() - started)
        else:
            log.warning("stage %s job %d: lease lost, result discarded", self.stage, job.id)
            _observe(self.stage, "lost", report, time.perf_counter() - started)
