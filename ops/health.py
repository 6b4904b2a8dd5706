"""`/healthz` (the process answers) and `/readyz` (it can do its work: the store takes a write transaction, and the
classifier's model is loaded when the classifier runs in this process).

A load balancer or systemd watchdog restarts on /healthz failing and stops sending traffic on /readyz failing; so
/healthz checks nothing that a restart would not fix, and /readyz answers 503 with the reasons as JSON.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ingest.app import AppContext
from ingest.faults import free_bytes


class StoreProbe:
    """Checks that the store takes a write transaction (BEGIN IMMEDIATE, empty COMMIT: nothing is written).

    The probe is never cancelled half-way (a BEGIN cancelled in flight could leave the writer connection inside a
    transaction); a probe still waiting for the write lock is shared by the next requests instead.
    """

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None

    async def _probe(self) -> None:
        store = self.ctx.store
        if store.health.ok:
            async with store.transaction():
                pass
        else:
            # Writes were failing: only a real write tells whether they work again (and clears the outage).
            await store.probe_write()

    async def check(self, timeout: float) -> str | None:
        """None when the store is writable, else why not."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._probe())
            # Retrieve the outcome even if no request is left waiting for it.
            self._task.add_done_callback(lambda t: t.cancelled() or t.exception())
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if not done:
            return f"store: no write lock within {timeout:g} s"
        exc = self._task.exception()
        if exc is not None:  # closed (AssertionError/AttributeError), disk full, read-only, corrupt
            return f"store: not writable ({type(exc).__name__})"
        return None


def storage_state(ctx: AppContext) -> list[str]:
    """Why the store cannot take writes now: too little free space, or writes failing since some time."""
    reasons = []
    minimum = ctx.settings.store.min_free_bytes
    # On PostgreSQL there is no local database file (the server watches its own disk), and blobs in the database
    # have no local folder either: only what lives on this host's disks is checked here.
    store_dir = ctx.store.path.parent if ctx.store.path is not None else None
    for what, path in (("store", store_dir), ("blobs", ctx.store.blobs.root)):
        if path is None:
            continue
        free = free_bytes(path)
        if free is not None and free < minimum:
            reasons.append(f"{what}: disk nearly full ({free // 1024} KiB free, {minimum // 1024} KiB needed)")
    health = ctx.store.health
    if not health.ok and health.failing_since is not None:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(health.failing_since))
        reasons.append(f"store: writes failing since {since} ({health.reason})")
    return reasons


def classifier_loaded(ctx: AppContext) -> str | None:
    """Why the classifier cannot classify yet, as it publishes it; None when it can or when none runs here."""
    not_ready = ctx.published.classifier_not_ready
    return not_ready() if not_ready is not None else None


def workers_state(ctx: AppContext) -> tuple[str | None, list[str]]:
    """Why the stages' child process cannot work, and its notes, when `serve` runs one (else None, [])."""
    children = ctx.published.workers_process
    if children is None:
        return None, []
    return children.not_ready(), list(children.notes)


def state_handler(ctx: AppContext) -> Any:
    """/state of a workers process, for the `serve` that started it: why it cannot work (the model loading, the
    store's health as its own writes found it, a disk nearly full) and its notes, without a store probe of its own
    (that process's /readyz probes the store; the parent probes the same store itself)."""
    async def state(request: web.Request) -> web.Response:
        reasons = [r for r in (*storage_state(ctx), classifier_loaded(ctx)) if r]
        notes = sorted(str(n) for n in ctx.published.status_notes.values() if n)
        return web.json_response({"reasons": reasons, "notes": notes}, headers={"Cache-Control": "no-store"})
    return state


def add_routes(ctx: AppContext, timeout: float) -> Any:
    """/healthz and /readyz on the site; returns the /readyz handler (a listener of its own serves it too)."""
    probe = StoreProbe(ctx)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        probed = await probe.check(timeout)
        workers, workers_notes = workers_state(ctx)
        reasons = [r for r in (probed, *storage_state(ctx), classifier_loaded(ctx), workers) if r]
        body: dict[str, Any] = {"status": "ready" if not reasons else "not ready"}
        # Conditions operators must act on that do not stop the work (a calendar without next year's holidays).
        notes = sorted({*(str(n) for n in ctx.published.status_notes.values() if n), *workers_notes})
        if notes:
            body["notes"] = notes
        if reasons:
            body["reasons"] = reasons
            return web.json_response(body, status=503, headers={"Retry-After": "5", "Cache-Control": "no-store"})
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    ctx.http.router.add_get("/healthz", healthz)
    ctx.http.router.add_get("/readyz", readyz)
    return readyz
