"""The daemon says when the holiday calendar's overlay has no Government decision for this or next year: a log
warning, the gauge on /metrics and a note in /readyz (which stays ready), at start and daily."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path

import aiohttp

from dispatch.calendar import CalendarWatch, load_calendar
from ingest.clock import VN_TZ, FakeClock


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=VN_TZ).timestamp()


async def test_the_daemon_says_so_at_start_and_daily(tmp_path: Path, caplog, world, context_for,
                                                    serve_ops) -> None:
    overlay = tmp_path / "calendar.toml"
    overlay.write_text("[2026]\nholidays = []\n\n[2027]\nholidays = []\n", encoding="utf-8")
    clock = FakeClock(ts(2026, 12, 31, 12))
    ctx = context_for(world.store, clock)
    served = await serve_ops(ctx)
    watch = CalendarWatch(load_calendar(overlay), clock, ctx.published)
    caplog.set_level(logging.WARNING, logger="dispatch.calendar")
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{served.url}/readyz") as resp:
                body = await resp.json()
            assert "notes" not in body  # 2026 and 2027 decided
            async with http.get(f"{served.url}/metrics") as resp:
                assert "hcmc1022_calendar_missing_decision_years 0" in await resp.text()
            assert not caplog.records
            clock.advance(86400)  # 1 January 2027: next year (2028) has no decision; the daily check says so
            for _ in range(5):
                await asyncio.sleep(0)
            async with http.get(f"{served.url}/readyz") as resp:
                body = await resp.json()
            assert resp.status == 200 and any("2028" in n for n in body["notes"])
            async with http.get(f"{served.url}/metrics") as resp:
                assert "hcmc1022_calendar_missing_decision_years 1" in await resp.text()
            assert any("no Government decision on holidays for 2028" in r.getMessage() for r in caplog.records)
    finally:
        task.cancel()
