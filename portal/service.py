"""Wires the citizen web portal into the daemon: its routes on ctx.http (`/`, `/report`, `/receipt/…`,
`/lookup/…`, `/public…`, `/places`, `/static/…`). It runs no background task: `build` returns no services."""
from __future__ import annotations

from aiohttp import web

from config.portal import portal_settings
from ingest.app import AppContext, Service

from .views import Portal


def build(ctx: AppContext) -> list[Service]:
    cfg = portal_settings(ctx.settings)
    if cfg.enabled and not ctx.route_mode:
        portal = Portal(ctx, cfg)
        # Skip any path another component already serves (aiohttp would keep both and use the first).
        taken = {(r.method, r.resource.canonical) for r in ctx.http.router.routes() if r.resource is not None}
        ctx.http.add_routes([r for r in portal.routes()
                             if not (isinstance(r, web.RouteDef) and (r.method, r.path) in taken)])
    return []
