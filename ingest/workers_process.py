"""`serve` (role all) runs the pipeline stages in a child process, `serve --role workers`, and keeps intake here.

Why: the embedder and the stages' Python shared one interpreter with the event loop that acknowledges reports, so
a backlog starved intake (issue 20: 1,205 accepted/s and a p99 of 198 ms in one process, against 2,255/s and 32 ms
with the roles in two processes, same hour). One command still starts the whole daemon, and one address serves it:

- The child is this program again with `--role workers`, this process's environment and the config text this
  process validated (a private copy, rewritten only when a reload is accepted: a child restarted later never reads
  a file being edited, and never one this process refused). It opens the store this process has open.
- It runs below this process's priority (`[serve] workers_nice`) and dies with it (Linux PR_SET_PDEATHSIG): a
  `kill -9` of `serve` never leaves its workers running beside the next start's (on SQLite every lease is local,
  so two would both run the clocks). It ignores SIGINT (a Ctrl-C reaches the whole process group: this process
  stops it, after intake) and SIGHUP until it can reload.
- It is started after this process has opened (and migrated) the store, stopped after intake (SIGTERM, then
  SIGKILL past the grace time), given every accepted reload, and started again with backoff when it exits.
- Its own listener on loopback answers /metrics and /state (what its classifier and calendar say, without probing
  the store again): this process's /readyz is not ready while the workers cannot work (model loading, restarting,
  not answering for several seconds), and its /metrics adds the child's samples.
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
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from .backoff import backoff_delay
from .supervise import HEALTHY_AFTER_SECONDS

log = logging.getLogger(__name__)

# In the child's environment: the parent's pid (the child dies with it) and the nice value to add.
PARENT_ENV = "HCMC1022_WORKERS_PARENT"
NICE_ENV = "HCMC1022_WORKERS_NICE"
# The child's own listener: its address through the config's environment override, and the socket itself, bound
# and listening in the parent, by its descriptor number.
LISTEN_ENV = "HCMC1022__OPS__METRICS_LISTEN"
LISTEN_FD_ENV = "HCMC1022_WORKERS_LISTEN_FD"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 1.0
# Polls the child may miss (busy at its lower priority) before this process calls it not answering.
MISSED_POLLS = 5
STARTING = "workers process: starting"


def is_workers_child() -> bool:
    return PARENT_ENV in os.environ


def ignore_parents_signals() -> None:
    """In the child, before its imports: SIGINT is the parent's to act on (it stops the child after intake), and a
    SIGHUP arriving before the child's reload handler is installed must not kill it."""
    if is_workers_child():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def bind_to_parent() -> None:
    """In the child, first thing in serve: take the nice value and die with the parent. Nothing when not a child."""
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


def loopback_listener() -> socket.socket:
    """The child's listening socket, bound here once and handed to every child started: between two children no
    other local program can take the port (and hear the metrics token), and it is never found taken."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def inherited_listener() -> int | None:
    """In the child: the descriptor of the listening socket its parent handed over, None elsewhere."""
    fd = os.environ.get(LISTEN_FD_ENV)
    return int(fd) if fd and fd.isdigit() else None


def exit_text(code: int | None) -> str:
    if code is None:
        return "running"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-code}"


class WorkersProcess:
    """The child `serve --role workers` of this `serve`: started, watched, signalled, restarted, stopped."""

    name = "workers-process"

    def __init__(self, argv: Sequence[str], *, nice: int, stop_seconds: float, metrics_token: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.listener = loopback_listener()
        self.port = int(self.listener.getsockname()[1])
        self.argv = list(argv)
        self.env = {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid()), NICE_ENV: str(nice),
                    LISTEN_ENV: f"127.0.0.1:{self.port}", LISTEN_FD_ENV: str(self.listener.fileno())}
        self.stop_seconds = stop_seconds
        self.headers: dict[str, str] = {}
        self.set_token(metrics_token)
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._config: Path | None = None
        self._answered = False  # the running child has answered /state: its signal handlers are installed
        self._held: list[int] = []  # signals for the child until then
        # What the child's /state said last (its reasons and notes), or why it could not be asked.
        self.reasons: list[str] = [STARTING]
        self.notes: list[str] = []

    @classmethod
    def for_serve(cls, config_text: str, store: Mapping[str, str], *, nice: int, stop_seconds: float,
                  metrics_token: str | None) -> WorkersProcess:
        """The child of `serve`: this program, the config text this process validated, the store it opened
        (`store`: HCMC1022__STORE__* overrides, so a reload that changed [store] moves neither process)."""
        # Beside this package, in a checkout and in an installed copy alike (pyproject's py-modules).
        program = Path(__file__).resolve().parent.parent / "run_daemon.py"
        folder = Path(tempfile.mkdtemp(prefix="hcmc1022-workers-"))  # 0700: the config may hold secrets
        config = folder / "config.toml"
        argv = [sys.executable, str(program), "serve", "--role", "workers", "--config", str(config)]
        children = cls(argv, nice=nice, stop_seconds=stop_seconds, metrics_token=metrics_token,
                       env={**os.environ, **store})
        children._config = config
        children.write_config(config_text)
        return children

    def write_config(self, text: str) -> None:
        """The config the child reads at its next start or reload (replaced whole, never half written)."""
        if self._config is None:
            return
        partial = self._config.with_suffix(".new")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(partial, self._config)

    def set_token(self, token: str | None) -> None:
        """The child's /metrics bearer token, as the current config sets it (a reload may change it)."""
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def close(self) -> None:
        self.listener.close()
        if self._config is not None:
            for path in (self._config, self._config.with_suffix(".new")):
                path.unlink(missing_ok=True)
            try:
                self._config.parent.rmdir()
            except OSError:
                pass

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
            self.reasons = [STARTING]
            try:
                code = await self._run_once()
                why = exit_text(code)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # it could not even be started (no memory, the program gone mid-upgrade)
                why = f"could not start: {type(exc).__name__}: {exc}"
            failures = 1 if time.monotonic() - started > HEALTHY_AFTER_SECONDS else failures + 1
            delay = backoff_delay(failures, base=1.0, cap=30.0)
            self.reasons = [f"workers process stopped ({why}); starting again"]
            self.notes = []
            log.error("workers process stopped (%s): starting it again in %.1f s", why, delay)
            await asyncio.sleep(delay)

    async def _run_once(self) -> int:
        self._answered, self._held = False, []
        self.proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                                         pass_fds=(self.listener.fileno(),))
        self.starts += 1
        log.info("workers process started (pid %d)", self.proc.pid)
        watcher = asyncio.create_task(self._watch())
        try:
            return await self.proc.wait()
        except asyncio.CancelledError:
            await self._terminate()
            raise
        finally:
            watcher.cancel()

    def signal(self, sig: int) -> None:
        """Send `sig` to the child; one that has not answered yet since it started (its handlers are not installed
        before its imports) gets it once it answers: a reload then is not lost, and does not kill it."""
        if self.pid is None:
            return
        if not self._answered:
            self._held.append(sig)
            return
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
        """Ask the child's /state every second; what it says is this process's view of the workers. A child at its
        lower priority under a backlog may miss a poll or two: only MISSED_POLLS in a row are "not answering"."""
        timeout = aiohttp.ClientTimeout(total=2.0)
        missed = 0
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/state") as resp:
                        body = json.loads(await resp.read())
                    self.reasons = [str(r) for r in body.get("reasons", [])]
                    self.notes = [str(n) for n in body.get("notes", [])]
                    missed = 0
                    if not self._answered:
                        self._answered = True
                        for sig in self._held:
                            self.signal(sig)
                        self._held.clear()
                except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
                    missed += 1
                    if missed >= MISSED_POLLS and self.reasons != [STARTING]:
                        self.reasons = ["workers process: not answering"]
                await asyncio.sleep(POLL_SECONDS)

    async def metrics_text(self) -> str | None:
        """The child's /metrics exposition, None when it does not answer (the scrape goes on without it)."""
        if self.pid is None:
            return None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3.0)) as http:
                async with http.get(f"http://127.0.0.1:{self.port}/metrics", headers=self.headers) as resp:
                    if resp.status != 200:
                        log.warning("workers process: /metrics answered %d; its samples are left out", resp.status)
                        return None
                    return await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
