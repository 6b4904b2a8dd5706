"""No storage error ends the process: a stage worker backs off through a store outage, a failing service restarts."""
from __future__ import annotations

import asyncio

from ingest.errors import AuthError, StorageError
from ingest.store import Store
from ingest.supervise import supervised
from ingest.worker import StageWorker, WorkerSettings


async def test_worker_backs_off_through_a_storage_outage_and_resumes(store: Store, make_message) -> None:
    handled: list[int] = []

    async def handler(job, report):
        handled.append(report.id)
        return None

    real_lease, failures = store.lease, []

    async def flaky_lease(*args, **kw):
        if len(failures) < 3:
            failures.append(1)
            raise StorageError("store unavailable (disk full)")
        return await real_lease(*args, **kw)

    store.lease = flaky_lease  # type: ignore[method-assign]
    result = await store.submit(make_message("k1"), b"r", "text/plain")
    worker = StageWorker(store, "classify", handler, WorkerSettings(idle_poll=0.01, backoff_base=0.02))
    task = asyncio.ensure_future(worker.run())
    for _ in range(500):
        if handled:
            break
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(task, 5)
    assert handled == [result.report_id] and len(failures) == 3


class Flaky:
    def __init__(self, fail: int, exc: Exception) -> None:
        self.fail, self.exc, self.runs = fail, exc, 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.fail:
            raise self.exc


async def test_a_failing_service_is_restarted_not_the_process() -> None:
    service = Flaky(3, StorageError("disk full"))
    await asyncio.wait_for(supervised(service, "flaky", base=0.01, cap=0.02), 5)
    assert service.runs == 4


async def test_credentials_errors_stop_only_that_service() -> None:
    service = Flaky(10, AuthError("bad token"))
    await asyncio.wait_for(supervised(service, "auth", base=0.01, cap=0.02), 5)
    assert service.runs == 1


def test_repeated_identical_errors_are_logged_once_per_interval(caplog) -> None:
    import logging

    from ingest.faults import ThrottledLog

    throttled = ThrottledLog(logging.getLogger("t"), interval=60.0)
    with caplog.at_level(logging.ERROR, logger="t"):
        said = [throttled.log(logging.ERROR, "disk", "disk full", now=float(t)) for t in range(0, 130, 1)]
        throttled.log(logging.ERROR, "other", "another error", now=5.0)
    assert said.count(True) == 3  # at 0, 60 and 120 s
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["disk full", "disk full (and 59 more like it in the last 60 s)",
                        "disk full (and 59 more like it in the last 60 s)", "another error"]
