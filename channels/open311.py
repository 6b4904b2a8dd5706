"""The mobile-app channel: an Open311 GeoReport v2 endpoint on the daemon's HTTP server.

A request is acknowledged (201, or 200 for a repeat of a known Idempotency-Key) only after the raw body
and its photos are committed.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from config.channels import ChannelEntry, Open311Options
from ingest.app import AppContext, Service
from ingest.public import services
from ingest.store import Store
from ingest.limits import CLIENT_LIMITS, RateLimited, too_many
from ingest.untrusted import BodyError, single_line
from ingest.vocabulary import RECEIVED_NOTICE

from .open311_intake import Intake
from .open311_parse import Open311Error, error_body

log = logging.getLogger(__name__)
PREFIX = "/open311/v2"


class Open311Channel:
    def __init__(self, ctx: AppContext, entry: ChannelEntry, options: Open311Options) -> None:
        self.ctx = ctx
        self.name = entry.name
        self.options = options
        self.store: Store = ctx.store
        self.accepting = True
        self.intake = Intake(ctx.store, ctx.clock, self._service_codes, entry.name, options.max_photos)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{PREFIX}/requests.json", self.post_request),
            web.get(f"{PREFIX}/services.json", self.services),
        ]

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self.accepting = False

    def _fail(self, code: int, description: str) -> web.Response:
        return web.json_response(error_body(code, description), status=code)

    async def post_request(self, request: web.Request) -> web.Response:
        if not self.accepting:
            return self._fail(503, "shutting down, please retry")
        if self.options.api_keys:
            given = request.headers.get("X-Api-Key") or request.query.get("api_key", "")
            if not any(_equal(given, k.get_secret_value()) for k in self.options.api_keys):
                return self._fail(403, "invalid api_key")
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "")
        key = request.headers.get("Idempotency-Key")
        if len(request.headers.getall("Idempotency-Key", [])) > 1:
            # Which one is meant? A proxy may pick the other or join them: refused like a form field given twice.
            return self._fail(400, "Idempotency-Key is given more than once")
        if key is not None and not (0 < len(key) <= 255):
            return self._fail(400, "Idempotency-Key must be 1 to 255 characters")
        if key is not None:
            try:
                single_line(key, "Idempotency-Key")
            except BodyError as exc:
                return self._fail(400, exc.reason)
        try:
            limits = request.get(CLIENT_LIMITS)
            result = await self.intake.accept(
                raw, content_type, idempotency_key=key,
                device_limit=(lambda d: limits.device.take(d, time.monotonic())) if limits is not None else None)
        except Open311Error as exc:
            return self._fail(exc.code, exc.description)
        except RateLimited as exc:
            return too_many(request, exc.kind, exc.retry_after)
        body = [{"service_request_id": str(result.report_id), "service_notice": RECEIVED_NOTICE["vi"],
                 "account_id": None}]
        return web.json_response(body, status=201 if result.created else 200)

    def _service_codes(self) -> set[str]:
        return {t.id for t in self.ctx.directory.topics.values() if t.agency is not None}

    async def services(self, request: web.Request) -> web.Response:
        return web.json_response(services(self.ctx.directory))


def _equal(given: str, key: str) -> bool:
    """Constant-time; a header's bytes that are not UTF-8 (lone surrogates to aiohttp) are a wrong key, not a 500."""
    import hmac
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode())


def build(ctx: AppContext, entry: ChannelEntry, options: Open311Options) -> list[Service]:
    channel = Open311Channel(ctx, entry, options)
    ctx.http.add_routes(channel.routes())
    return [channel]
