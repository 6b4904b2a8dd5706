"""A fake Telegram Bot API on loopback, speaking the documented wire format.

`POST|GET /bot<token>/<method>` with parameters in the query string, as application/x-www-form-urlencoded,
multipart/form-data or JSON; answers `{"ok": true, "result": ...}` or `{"ok": false, "error_code",
"description"[, "parameters": {"retry_after"}]}`. Files at `GET /file/bot<token>/<file_path>`.

getUpdates has the real offset semantics: calling it with `offset` confirms (drops, server-side) every
update whose update_id is lower; unconfirmed updates are returned again. It long-polls up to `timeout`
seconds and is refused (409) while a webhook is set. In webhook mode `deliver()` POSTs pending updates to
the registered URL with the `X-Telegram-Bot-Api-Secret-Token` header and drops those answered 2xx.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


@dataclass
class FakeFile:
    data: bytes
    path: str
    declared_size: int | None = None  # what getFile and PhotoSize claim


@dataclass
class FakeBotApi:
    token: str
    updates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, FakeFile] = field(default_factory=dict)
    get_updates_offsets: list[int | None] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    blocked_chats: set[int] = field(default_factory=set)
    flood_next: int = 0  # answer the next sendMessage with 429 and this retry_after
    download_gate: asyncio.Event | None = None  # when set, downloads wait for it (to crash mid-batch)
    download_started: asyncio.Event = field(default_factory=asyncio.Event)
    # When set, a sendMessage is taken (in `sent`: the chat shows it) and then not answered until the gate opens,
    # as a stop can cut the sender off between the two.
    send_gate: asyncio.Event | None = None
    send_taken: asyncio.Event = field(default_factory=asyncio.Event)
    webhook: dict[str, Any] | None = None
    base: str = ""
    _next_update_id: int = 100_000
    _new: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def bot_id(self) -> int:
        return int(self.token.split(":")[0])

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None)  # a remote server's log, not ours
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.base

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test helpers: what a reporter does in the app -----------------------------------------------
    def push(self, message: dict[str, Any], chat_id: int = 555, first_name: str = "Lan") -> int:
        self._next_update_id += 1
        uid = self._next_update_id
        msg = {"message_id": uid - 100_000, "date": int(time.time()),
               "chat": {"id": chat_id, "type": "private", "first_name": first_name},
               "from": {"id": chat_id, "is_bot": False, "first_name": first_name, "language_code": "vi"},
               **message}
        self.updates.append({"update_id": uid, "message": msg})
        self._new.set()
        return uid

    def push_text(self, text: str, chat_id: int = 555) -> int:
        return self.push({"text": text}, chat_id)

    def push_location(self, lat: float, lon: float, chat_id: int = 555) -> int:
        return self.push({"location": {"latitude": lat, "longitude": lon}}, chat_id)

    def push_contact(self, phone: str, chat_id: int = 555) -> int:
        return self.push({"contact": {"phone_number": phone, "first_name": "Lan", "user_id": chat_id}}, chat_id)

    def push_photo(self, data: bytes, caption: str | None = None, chat_id: int = 555,
                   declared_size: int | None = None) -> int:
        n = len(self.files) // 2 + 1
        small = FakeFile(data[:50], f"photos/file_{n}_s.jpg")
        big = FakeFile(data, f"photos/file_{n}.jpg", declared_size)
        self.files[f"small{n}"], self.files[f"big{n}"] = small, big
        sizes = [
            {"file_id": f"small{n}", "file_unique_id": f"us{n}", "width": 90, "height": 67, "file_size": len(small.data)},
            {"file_id": f"big{n}", "file_unique_id": f"ub{n}", "width": 1280, "height": 960,
             "file_size": declared_size or len(data)},
        ]
        message: dict[str, Any] = {"photo": sizes}
        if caption:
            message["caption"] = caption
        return self.push(message, chat_id)

    async def deliver(self, http: aiohttp.ClientSession) -> list[int]:
        """Webhook mode: POST each pending update; keep the ones not answered 2xx. Returns the statuses."""
        assert self.webhook is not None
        statuses = []
        for update in list(self.updates):
            headers = {"Content-Type": "application/json"}
            if self.webhook.get("secret_token"):
                headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook["secret_token"]
            async with http.post(self.webhook["url"], data=json.dumps(update), headers=headers) as resp:
                statuses.append(resp.status)
                if 200 <= resp.status < 300:
                    self.updates.remove(update)
        return statuses

    # -- the API -------------------------------------------------------------------------------------
    @staticmethod
    def _fail(code: int, description: str, **parameters: Any) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=code)

    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return params

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._fail(401, "Unauthorized")
        method = request.match_info["method"]
        params = await self._params(request)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return self._fail(404, "Not Found")
        return await handler(params)

    async def _m_getMe(self, params: dict[str, Any]) -> web.Response:
        return self._ok({"id": self.bot_id, "is_bot": True, "first_name": "Cổng 1022", "username": "hcmc1022_bot",
                         "can_join_groups": False, "can_read_all_group_messages": False,
                         "supports_inline_queries": False})

    async def _m_getUpdates(self, params: dict[str, Any]) -> web.Response:
        if self.webhook is not None:
            return self._fail(409, "Conflict: can't use getUpdates method while webhook is active; "
                                   "use deleteWebhook to delete the webhook first")
        offset = int(params["offset"]) if params.get("offset") not in (None, "") else None
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        self.get_updates_offsets.append(offset)
        if offset is not None and offset > 0:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]  # confirmed: gone for good
        deadline = time.monotonic() + timeout
        while not self.updates and time.monotonic() < deadline:
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return self._ok(self.updates[:limit])

    async def _m_sendMessage(self, params: dict[str, Any]) -> web.Response:
        chat_id = int(params["chat_id"])
        text = params.get("text")
        if not text:
            return self._fail(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return self._fail(400, "Bad Request: message is too long")
        if self.flood_next:
            retry, self.flood_next = self.flood_next, 0
            return self._fail(429, f"Too Many Requests: retry after {retry}", retry_after=retry)
        if chat_id in self.blocked_chats:
            return self._fail(403, "Forbidden: bot was blocked by the user")
        markup = params.get("reply_markup")
        if isinstance(markup, str):
            markup = json.loads(markup)
        self.sent.append({"chat_id": chat_id, "text": text, "reply_markup": markup})
        if self.send_gate is not None:
            self.send_taken.set()
            await self.send_gate.wait()
        return self._ok({"message_id": len(self.sent), "date": int(time.time()),
                         "chat": {"id": chat_id, "type": "private"}, "text": text,
                         "from": {"id": self.bot_id, "is_bot": True, "first_name": "Cổng 1022"}})

    async def _m_getFile(self, params: dict[str, Any]) -> web.Response:
        item = self.files.get(str(params.get("file_id")))
        if item is None:
            return self._fail(400, "Bad Request: invalid file_id")
        size = item.declared_size or len(item.data)
        if size > 20 * 1024 * 1024:
            return self._fail(400, "Bad Request: file is too big")
        return self._ok({"file_id": params["file_id"], "file_unique_id": "u" + str(params["file_id"]),
                         "file_size": size, "file_path": item.path})

    async def _m_setWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook = {"url": params["url"], "secret_token": params.get("secret_token")}
        return self._ok(True)

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook = None
        return self._ok(True)

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        self.downloads.append(path)
        self.download_started.set()
        if self.download_gate is not None:
            await self.download_gate.wait()
        for item in self.files.values():
            if item.path == path:
                return web.Response(body=item.data, content_type="image/jpeg")
        return web.Response(status=404)
