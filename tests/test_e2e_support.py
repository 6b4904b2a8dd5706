"""Helpers for the end-to-end tests (no tests here): the daemon as a real subprocess on a temporary store and a
free loopback port, loopback fakes of an agency webhook receiver and an SMS gateway, and polling waits.

The daemon uses the default embedder (the converted multilingual-e5-small: offline, knows Vietnamese) and the
repository's `var/models` cache, so the classifier's trained model and training vectors are shared by every test
(the classifier tests' fixtures use the same embedder) and every run.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.daemon import MODEL_CACHE, toml_str

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-secret-0123456789ab").decode()
SMS_TOKEN = "sms-e2e-token"


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
