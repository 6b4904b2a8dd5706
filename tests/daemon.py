"""The one harness for tests that run the daemon as a real subprocess (`run_daemon.py serve --config FILE`) on a
temporary store and a free loopback port (tests.net.free_port): start, wait until it answers, signal, kill -9,
stop, read its log and its store. Imported as `tests.daemon` by the end-to-end, reload, full-disk and crash tests.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp

REPO = Path(__file__).resolve().parent.parent
MODEL_CACHE = REPO / "var" / "models"
# First start on a cold cache embeds the seed set; later starts load the cached model in seconds.
START_TIMEOUT = 240.0

T = TypeVar("T")


def toml_str(value: Any) -> str:
    return json.dumps(str(value), ensure_ascii=False)


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without configuration overrides (HCMC1022__*), offline, one math thread unless
    `extra` says otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCMC1022__")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


class Daemon:
    """`run_daemon.py serve --config FILE` in a subprocess; its output goes to a log file the test can read.
    Started again after a kill -9 or a stop, on the same config, store and log."""

    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.port, self.log_path = config, port, log
        self.env = daemon_env(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{port}"
        self.starts = 0
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._close_log()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "run_daemon.py"), "serve", "--config", str(self.config)],
            cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        self.starts += 1

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ok(self, path: str, timeout: float = START_TIMEOUT, what: str = "daemon not answering") -> None:
        """Until GET `path` answers 200; fails at once, with the log, if the process exits."""
        async with aiohttp.ClientSession() as http:
            async def ok() -> bool:
                assert self.alive(), f"daemon exited:\n{self.tail()}"
                try:
                    async with http.get(f"{self.base}{path}") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False
            await wait_for(ok, timeout, f"{what}; log:\n{{log}}", log=self.log)

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until /readyz answers 200 (store writable, model loaded)."""
        await self.wait_ok("/readyz", timeout, "daemon not ready")

    async def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        """Until intake answers (the Open311 services list), before the model may be loaded."""
        await self.wait_ok("/open311/v2/services.json", timeout, "daemon did not start")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close_log()

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and the exit code; killed (and its negative code returned) if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


async def wait_for(probe: Callable[[], Awaitable[T]], timeout: float, message: str = "condition not met",
                   *, interval: float = 0.1, log: Callable[[], str] | None = None) -> T:
    """Poll `probe` until it returns something truthy; fail with `message` (and the daemon log) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message.replace("{log}", log()[-4000:] if log else ""))
        await asyncio.sleep(interval)


def query(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Read the daemon's store from the test process (WAL: readers never block the writer)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
