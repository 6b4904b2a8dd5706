"""Serving while the store cannot even be opened (a full disk at start, an unreadable file system): the daemon
stays up on its HTTP port, answers /healthz 200, /readyz 503 with the reason, and everything else 503 with
Retry-After, and keeps trying to open the store; once it opens, the real server takes the port over.

Restarting cannot fix a full disk, so a process that exits on one only adds a restart loop to the outage.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from .backoff import backoff_delay
from .faults import storage_reason

log = logging.getLogger(__name__)
T = TypeVar("T")


def degraded_app(reason: Callable[[], str]) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def unavailable(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"status": "not ready", "reasons": [reason()]}
        if request.path.startswith("/open311/"):
            body = [{"code": 503, "description": "temporarily unable to store the request, please retry"}]  # type: ignore[assignment]
        return web.json_response(body, status=503, headers={"Retry-After": "30", "Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", unavailable)
    return app


async def open_or_serve_degraded(open_store: Callable[[], Awaitable[T]], host: str, port: int,
                                 stop: asyncio.Event, *, cap: float = 10.0, serve_http: bool = True,
                                 reason: Callable[[BaseException], str | None] = storage_reason) -> T | None:
    """`open_store()`, retried with backoff while it fails for a storage reason, serving degraded meanwhile
    (`serve_http` false: only retried, for a process without a site of its own). Returns None if `stop` is set
    first. Any other failure (a bug, a bad config) is raised as before. `reason` names the backend's storage
    faults (SQLite's and the file system's by default; PostgreSQL's from ingest.pgstore for a `[store] url`)."""
    runner: web.AppRunner | None = None
    state = {"reason": "store: not opened yet"}
    attempt = 0
    opened = False
    try:
        while not stop.is_set():
            try:
                store = await open_store()
                opened = True
                return store
            except Exception as exc:
                why = reason(exc)
                if why is None:
                    raise
                attempt += 1
                state["reason"] = f"store: cannot open ({why}); retrying"
                if runner is None and not serve_http and attempt == 1:
                    log.error("store cannot be opened (%s): retrying", why)
                if runner is None and serve_http:
                    log.error("store cannot be opened (%s): serving degraded on %s:%d and retrying", why, host, port)
                    runner = web.AppRunner(degraded_app(lambda: state["reason"]), handle_signals=False)
                    await runner.setup()
                    await web.TCPSite(runner, host, port, reuse_address=True).start()
            try:
                await asyncio.wait_for(stop.wait(), backoff_delay(attempt, base=1.0, cap=cap))
            except TimeoutError:
                pass
        return None
    finally:
        if runner is not None:
            await runner.cleanup()
            # Also reached when a stop (or a bug's exception) ends the retries: say which, the admin reads this line
            # to know whether the store came back.
            if opened:
                log.warning("store opened after %d failed attempt(s): leaving degraded mode", attempt)
            else:
                log.warning("stopping after %d failed attempt(s) to open the store: it was never opened", attempt)
