"""`serve` (role all) runs the pipeline stages in a child process, `serve --role workers`, and keeps intake here.

Why: the embedder and the stages' Python shared one interpreter with the event loop that acknowledges reports, so
a backlog starved intake (issue 20: 1,205 accepted/s and a p99 of 198 ms in one process, against 2,255/s and 32 ms
with the roles in two processes, same hour). One command still starts the whole daemon, and one address serves it:

- The child is this program again with `--role workers` and the same config and environment. It runs below this
  process's priority (`[serve] workers_nice`) and dies with it (Linux PR_SET_PDEATHSIG): a `kill -9` of `serve`
  never leaves its workers running beside the next start's (on SQLite every lease is local, so two would both run
  the clocks).
- It is started after this process has opened (and migrated) the store, stopped after intake (SIGTERM, then
  SIGKILL past the grace time), given every SIGHUP, and started again with backoff when it exits.
- Its own listener (`[ops] metrics_listen`, set for it to a loopback port) answers /readyz and /metrics: this
  process's /readyz is not ready while the child is not (model loading, child restarting), and its /metrics adds
  the child's families (stage latencies, job outcomes, the calendar's gauges).
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from .backoff import backoff_delay
from .supervise import HEALTHY_AFTER_SECONDS

log = logging.getLogger(__name__)

# In the child's environment: the parent's pid (the child dies with it) and the nice value to add.
PARENT_ENV = "HCMC1022_WORKERS_PARENT"
NICE_ENV = "HCMC1022_WORKERS_NICE"
# The child's own listener, set through the config's environment override ([ops] metrics_listen).
LISTEN_ENV = "HCMC1022__OPS__METRICS_LISTEN"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 1.0


def bind_to_parent() -> None:
    """In the child, first thing: take the nice value and die with the parent. Nothing when not a child."""
    parent = os.environ.pop(PARENT_ENV, None)
    nice = os.environ.pop(NICE_ENV, None)
    if parent is None:
        return
    if nice:
        try:
            os.nice(int(nice))
        except (OSError, ValueError) as exc:
            log.warning("workers process: nice %s not applied (%s)", nice, exc)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("workers process: prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    except (OSError, AttributeError) as exc:  # not Linux: the parent's stop still ends it
        log.warning("workers process: cannot die with its parent here (%s)", exc)
    if os.getppid() != int(parent):
        # The parent died before the death signal was armed: nobody would stop this process.
        log.error("workers process: its parent %s is gone; exiting", parent)
        os._exit(1)


def loopback_port() -> int:
    """A loopback port free now, for the child's listener (the child binds it within a second of being told)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exit_text(code: int | None) -> str:
    if code is None:
        return "running"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


class WorkersProcess:
    """The child `serve --role workers` of this `serve`: started, watched, signalled, restarted, stopped."""

    name = "workers-process"

    def __init__(self, argv: Sequence[str], *, nice: int, stop_seconds: float, metrics_token: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = loopback_port()
        self.argv = list(argv)
        self.env = {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid()), NICE_ENV: str(nice),
                    LISTEN_ENV: f"127.0.0.1:{self.port}"}
        self.stop_seconds = stop_seconds
        self.headers = {"Authorization": f"Bearer {metrics_token}"} if metrics_token else {}
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        # What the child's /readyz said last (its reasons and notes), or why it could not be asked.
        self.reasons: list[str] = ["workers process: starting"]
        self.notes: list[str] = []

    @classmethod
    def for_serve(cls, config_path: Path | None, *, nice: int, stop_seconds: float,
                  metrics_token: str | None) -> WorkersProcess:
        # Beside this package, in a checkout and in an installed copy alike (pyproject's py-modules).
        program = Path(__file__).resolve().parent.parent / "run_daemon.py"
        argv = [sys.executable, str(program), "serve", "--role", "workers"]
        if config_path is not None:
            argv += ["--config", str(config_path)]
        return cls(argv, nice=nice, stop_seconds=stop_seconds, metrics_token=metrics_token)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def not_ready(self) -> str | None:
        """Why the workers cannot work (for this process's /readyz), None when they can."""
        return "; ".join(f"workers: {r}" for r in self.reasons) or None

    async def run(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            self.reasons = ["workers process: starting"]
            self.proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env, stdin=subprocess.DEVNULL)
            self.starts += 1
            log.info("workers process started (pid %d)", self.proc.pid)
            watcher = asyncio.create_task(self._watch())
            try:
                code = await self.proc.wait()
            except asyncio.CancelledError:
                await self._terminate()
                raise
            finally:
                watcher.cancel()
            failures = 1 if time.monotonic() - started > HEALTHY_AFTER_SECONDS else failures + 1
            delay = backoff_delay(failures, base=1.0, cap=30.0)
            self.reasons = [f"workers process stopped ({exit_text(code)}); starting again"]
            self.notes = []
            log.error("workers process (pid %d) stopped (%s): starting it again in %.1f s", self.proc.pid,
                      exit_text(code), delay)
            await asyncio.sleep(delay)

    def signal(self, sig: int) -> None:
        if self.pid is not None:
            assert self.proc is not None
            self.proc.send_signal(sig)

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), self.stop_seconds)
        except TimeoutError:
            log.error("workers process (pid %d) did not stop within %.0f s: killed", proc.pid, self.stop_seconds)
            proc.kill()
            await proc.wait()

    async def _watch(self) -> None:
        """Ask the child's /readyz every second; what it says is this process's view of the workers."""
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                        body = json.loads(await resp.read())
                    self.reasons = [str(r) for r in body.get("reasons", [])] if resp.status != 200 else []
                    self.notes = [str(n) for n in body.get("notes", [])]
                except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
                    if self.reasons != ["workers process: starting"]:
                        self.reasons = ["workers process: not answering"]
                await asyncio.sleep(POLL_SECONDS)

    async def metrics_text(self) -> str | None:
        """The child's /metrics exposition, None when it does not answer (the scrape goes on without it)."""
        if self.pid is None:
            return None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3.0)) as http:
                async with http.get(f"http://127.0.0.1:{self.port}/metrics", headers=self.headers) as resp:
                    return (await resp.text()) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None
