"""End to end with the dispatch stage's own code: cases created by its dispatch worker, answers, a return and a
rating through its CaseBook, clocks marked missed by its ticker; the weekly CSV must tell the same story."""
from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from config.directory import load_directory
from config.dispatch import DispatchConfig
from config.loader import validate
from dispatch.calendar import load_calendar
from dispatch.cases import CaseBook
from dispatch.clocks import tick
from dedupe.schema import MIGRATIONS as DEDUPE_MIGRATIONS
from dispatch.schema import MIGRATIONS as DISPATCH_MIGRATIONS
from ingest.clock import VN_TZ, FakeClock, iso
from ingest.records import Classification, InboundMessage, Place, Reporter
from ingest.store import Store
from ingest.worker import StageWorker
from ops.schema import MIGRATIONS as OPS_MIGRATIONS
from ops.service import report_cli
from tests import seed

HOUR, DAY = 3600.0, 86400.0


async def test_weekly_figures_follow_the_dispatch_stage(tmp_path: Path, capsys) -> None:
    week = datetime(2026, 9, 21, tzinfo=VN_TZ).timestamp()
    clock = FakeClock(week + 9 * HOUR)
    store = await Store.open(tmp_path / "db.sqlite3", tmp_path / "blobs", clock=clock,
                             migrations={"dedupe": DEDUPE_MIGRATIONS, "dispatch": DISPATCH_MIGRATIONS, "ops": OPS_MIGRATIONS})
    try:
        book = CaseBook(store, load_directory(), DispatchConfig(), load_calendar(), "https://1022.example.vn")
        dispatcher = StageWorker(store, "dispatch", book.handle_dispatch)

        async def new_case(n: int) -> str:
            incident = f"INC-{n:06d}"
            msg = InboundMessage(channel="email", channel_instance="mailbox-1", idempotency_key=f"k{n}",
                                 received_at=iso(clock.now()), text="Ống nước bể, nước tràn ra đường",
                                 reporter=Reporter(name="Nguyễn Văn An", phone="0901234567"))
            rid = (await store.submit(msg, b"raw", "text/plain")).report_id
            cls = Classification(status="routed", topic="water_supply", category="infrastructure", agency="sawaco",
                                 confidence=0.9, place=Place(district="quan-1"))
            assert await seed.route(store, rid, cls) == incident  # the classify and dedupe stages' own writes
            assert await dispatcher.run_once() == 1
            return "CASE-" + incident.removeprefix("INC-")

        fixed = await new_case(1)
        returned = await new_case(2)
        await new_case(3)  # nobody answers this one
        clock.advance(HOUR)
        await book.apply_answer("sawaco", fixed, "verified", {}, source="api")  # site check on time
        await book.apply_answer("sawaco", returned, "returned", {"reason": "đường ống của đơn vị khác"},
                                source="api")  # within the hour: goes to the operator unit
        clock.advance(HOUR / 2)
        await book.apply_answer("sawaco", fixed, "resolved", {"photos": ["a" * 64]}, source="api",
                                note="Đã thay ống")  # fix on time
        token = (await store.fetchone("SELECT token FROM cases WHERE id=?", (fixed,)))["token"]
        await book.rate(token, 4, None)
        clock.advance(2 * HOUR)
        await tick(store)  # the third case: site check and fix missed
        assert (await store.fetchone("SELECT agency FROM cases WHERE id=?", (returned,)))["agency"] == "van-hanh-1022"

        clock.advance(7 * DAY - 3.5 * HOUR - 1 * HOUR)  # the next Monday, 08:00
        code = await report_cli(store, validate({}, env={}),
                                ["weekly", "--since", "2026-09-21", "--output", str(tmp_path / "out")])
        assert code == 0
        with open(tmp_path / "out" / "weekly-2026-09-21-all.csv", encoding="utf-8-sig", newline="") as fh:
            rows = {r["agency"]: r for r in csv.DictReader(fh)}
        sawaco = rows["sawaco"]
        assert {k: sawaco[k] for k in ("reports", "received", "handled", "answered", "returned_misrouted")} == \
            {"reports": "3", "received": "3", "handled": "1", "answered": "1", "returned_misrouted": "1"}
        assert {k: sawaco[k] for k in ("on_time_site_check", "on_time_fix", "on_time_return_misroute",
                                       "late_site_check", "late_fix")} == \
            {"on_time_site_check": "1", "on_time_fix": "1", "on_time_return_misroute": "1",
             "late_site_check": "1", "late_fix": "1"}
        # 7.1a: none of the three cases was passed to the unit on the ground within 5 minutes (answers after 1 h).
        assert (sawaco["on_time_subordinate_forward"], sawaco["late_subordinate_forward"]) == ("0", "3")
        assert (sawaco["on_time"], sawaco["late"], sawaco["ratings"], sawaco["rating_4"]) == ("3", "5", "1", "1")
        # The returned case reached the operator unit, whose 1-hour guidance clock ran out unanswered.
        operator = rows["van-hanh-1022"]
        assert (operator["received"], operator["late_operator_guidance"]) == ("1", "1")
    finally:
        await store.close()
