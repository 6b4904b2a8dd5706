"""The case book a process opens on the store: dispatch's one entry point for the workers, the console and tests.

Building it reads settings and the holiday calendar only (no service, no task), so the console may open its own
without importing the service wiring.
"""
from __future__ import annotations

from config.dispatch import DispatchConfig, dispatch_settings
from ingest.app import AppContext

from .calendar import load_calendar
from .cases import CaseBook


def make_book(ctx: AppContext, cfg: DispatchConfig | None = None) -> CaseBook:
    cfg = cfg or dispatch_settings(ctx.settings)
    calendar = load_calendar(cfg.clocks.calendar, cfg.clocks.extra_holidays)
    return CaseBook(ctx.store, ctx.directory, cfg, calendar, ctx.settings.http.public_base_url,
                    record_only=ctx.route_mode)
