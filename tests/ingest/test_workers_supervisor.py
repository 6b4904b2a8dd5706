"""ingest/workers_process.WorkersProcess restarting its child whatever ends it: a signal without a name, a program
that cannot be started. Neither may end the supervisor (its task's error would stop `serve`, intake included)."""
from __future__ import annotations

import asyncio
import sys

from ingest.workers_process import WorkersProcess


async def _runs_on(wp: WorkersProcess, seconds: float) -> None:
    task = asyncio.create_task(wp.run())
    try:
        await asyncio.sleep(seconds)
        assert not task.done(), task.exception()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_child_killed_by_a_realtime_signal_is_started_again() -> None:
    wp = WorkersProcess([sys.executable, "-c", "import os; os.kill(os.getpid(), 40)"], nice=0, stop_seconds=1.0)
    await _runs_on(wp, 2.5)
    assert wp.starts >= 2
    assert "killed by signal 40" in wp.not_ready()


async def test_a_program_that_cannot_be_started_is_tried_again() -> None:
    wp = WorkersProcess(["/nonexistent/python", "run_daemon.py"], nice=0, stop_seconds=1.0)
    await _runs_on(wp, 1.0)
    assert "could not start" in wp.not_ready()
