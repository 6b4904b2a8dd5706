"""A fake Facebook Graph API on loopback: the Send API (`POST /<version>/me/messages`) and attachment URLs.

Speaks the documented wire format: `access_token` query parameter, JSON body with `recipient.id`,
`messaging_type` (RESPONSE / UPDATE / MESSAGE_TAG + `tag`) and `message.text` of at most 2000 characters;
answers `{"recipient_id", "message_id"}` or `{"error": {"message", "type", "code", "fbtrace_id"}}`.
Also a signer for webhook bodies, as Facebook signs them (`X-Hub-Signature-256: sha256=<hex>`).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def sign(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(*events: dict[str, Any], page_id: str = "PAGE1", entries: int = 1) -> bytes:
    """A page webhook with `events` spread round-robin over `entries` entries, as Facebook may batch them."""
    groups: list[list[dict[str, Any]]] = [[] for _ in range(entries)]
    for i, event in enumerate(events):
        groups[i % entries].append(event)
    return json.dumps({
        "object": "page",
        "entry": [{"id": page_id, "time": int(time.time() * 1000), "messaging": g} for g in groups],
    }).encode()


def message_event(mid: str, text: str | None = None, *, sender: str = "PSID1", page_id: str = "PAGE1",
                  attachments: list[dict[str, Any]] | None = None, timestamp: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"mid": mid}
    if text is not None:
        message["text"] = text
    if attachments:
        message["attachments"] = attachments
    return {"sender": {"id": sender}, "recipient": {"id": page_id},
            "timestamp": timestamp or int(time.time() * 1000), "message": message}


@dataclass
class Media:
    data: bytes
    content_type: str
    # Set: the server answers only once the test sets it (a photo that is late however fast the machine is).
    held: asyncio.Event | None = None


@dataclass
class FakeGraphApi:
    page_token: str
    version: str = "v21.0"
    sent: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, Media] = field(default_factory=dict)
    media_hits: dict[str, int] = field(default_factory=dict)
    # Errors to answer to the next Send API calls, in order: (http status, error code, headers).
    fail_next: list[tuple[int, int, dict[str, str]]] = field(default_factory=list)
    base_url: str = ""
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"/{self.version}/me/messages", self._messages)
        app.router.add_get("/media/{name}", self._media)
        return app

    async def start(self) -> str:
        # The fake stands for a remote server: its access log (which shows the token query) is not ours.
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        for item in self.media.values():  # a held answer would keep the runner's cleanup waiting
            if item.held is not None:
                item.held.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def media_url(self, name: str) -> str:
        return f"{self.base_url}/media/{name}?_nc_sig=signed"

    @staticmethod
    def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Afake"}}
        return web.json_response(body, status=status, headers=headers)

    async def _messages(self, request: web.Request) -> web.Response:
        if request.query.get("access_token") != self.page_token:
            return self._error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        if self.fail_next:
            status, code, headers = self.fail_next.pop(0)
            return self._error(status, code, "simulated failure", headers)
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, 100, "(#100) Invalid JSON")
        recipient = body.get("recipient", {}).get("id")
        text = body.get("message", {}).get("text")
        mtype = body.get("messaging_type")
        if not recipient:
            return self._error(400, 100, "(#100) The parameter recipient is required")
        if not isinstance(text, str) or not text or len(text) > 2000:
            return self._error(400, 100, "(#100) Length of param message[text] must be less than or equal to 2000")
        if mtype not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            return self._error(400, 100, "(#100) param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}")
        if mtype == "MESSAGE_TAG" and not body.get("tag"):
            return self._error(400, 100, "(#100) Tag is required for MESSAGE_TAG messaging type")
        self.sent.append(body)
        return web.json_response({"recipient_id": recipient, "message_id": f"m_sent_{len(self.sent)}"})

    async def _media(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.media_hits[name] = self.media_hits.get(name, 0) + 1
        item = self.media.get(name)
        if item is None:
            return web.Response(status=404)
        if item.held is not None:
            await item.held.wait()
        return web.Response(body=item.data, content_type=item.content_type)
