"""Helpers for the end-to-end tests (no tests here): the daemon as a real subprocess on a temporary store and a
free loopback port, loopback fakes of an agency webhook receiver and an SMS gateway, and polling waits.

The daemon uses the default embedder (the converted multilingual-e5-small: offline, knows Vietnamese) and the
repository's `var/models` cache, so the classifier's trained model and training vectors are shared by every test
(the classifier tests' fixtures use the same embedder) and every run.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from tests.net import free_port  # noqa: F401  (re-exported for tests that take every helper from here)

REPO = Path(__file__).resolve().parent.parent
MODEL_CACHE = REPO / "var" / "models"
# First start on a cold cache embeds the seed set; later starts load the cached model in seconds.
START_TIMEOUT = 240.0
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-secret-0123456789ab").decode()
SMS_TOKEN = "sms-e2e-token"

T = TypeVar("T")


def toml_str(value: Any) -> str:
    return json.dumps(str(value), ensure_ascii=False)


def base_config(tmp: Path, port: int, *, log_level: str = "INFO") -> str:
    """Store, HTTP, queue and classifier sections of a test config (channels and dispatch are appended)."""
    return f"""
[store]
path = {toml_str(tmp / 'store.sqlite3')}
blob_dir = {toml_str(tmp / 'blobs')}

[http]
host = "127.0.0.1"
port = {port}
public_base_url = "http://127.0.0.1:{port}"

[queue]
lease_seconds = 20
reclaim_interval = 2
drain_seconds = 4

[classifier]
backend = "e5-converted"
cache_dir = {toml_str(MODEL_CACHE)}

[dispatch.delivery]
poll_seconds = 0.2
backoff_base_seconds = 0.2

[logging]
level = "{log_level}"
"""


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCMC1022__")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


class Daemon:
    """`run_daemon.py serve --config FILE` in a subprocess; its stderr goes to a log file the test can read."""

    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.port, self.log_path = config, port, log
        self.env = daemon_env(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "run_daemon.py"), "serve", "--config", str(self.config)],
            cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until /readyz answers 200 (store writable, model loaded)."""
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                assert self.alive(), f"daemon exited:\n{self.log()[-4000:]}"
                try:
                    async with http.get(f"{self.base}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False
            await wait_for(ready, timeout, f"daemon not ready; log:\n{{log}}", log=self.log)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


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


def drop_transcript(folder: Path, name: str, record: dict[str, object]) -> None:
    """The call centre's hand-off: write in tmp/, rename into new/."""
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    (folder / "new").mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp" / name
    tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, folder / "new" / name)


# -- loopback fakes ------------------------------------------------------------------------------
def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: base64(HMAC-SHA256(key, "id.timestamp.body")) in a space-separated `v1,` list."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [part.split(",", 1)[1] for part in headers.get("webhook-signature", "").split() if part.startswith("v1,")]
    return any(hmac.compare_digest(expected, g) for g in given)


@dataclass
class Sink:
    """A loopback HTTP endpoint recording every POST (headers lower-cased, raw body)."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def bodies(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.requests]


async def start_sink(path: str, *, token: str | None = None) -> tuple[Sink, web.AppRunner]:
    sink = Sink()

    async def handler(request: web.Request) -> web.Response:
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            return web.Response(status=401)
        sink.requests.append({"headers": {k.lower(): v for k, v in request.headers.items()},
                              "body": await request.read()})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sink.url = f"http://127.0.0.1:{runner.addresses[0][1]}{path}"
    return sink, runner
