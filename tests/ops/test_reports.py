"""The weekly and quarterly reports, produced through `run_daemon.py report` (report_cli) from a real store."""
from __future__ import annotations

import base64
import csv
import re
from pathlib import Path

import pytest

from config.loader import validate
from ops.report_render import sms_encoding, sms_segments
from ops.reports import AgencyFigures, rank
from ops.service import report_cli

REPORTER_PHONE = "0903123456"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


async def run(store, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = await report_cli(store, validate({}, env={}), argv)
    return code, capsys.readouterr().out


async def test_weekly_csv_holds_the_regulation_figures_per_agency(any_filled, tmp_path: Path, capsys) -> None:
    filled = any_filled  # on both backends: the figures' SQL is written once
    code, _ = await run(filled.store, ["weekly", "--since", "2026-09-21", "--output", str(tmp_path)], capsys)
    assert code == 0
    rows = {r["agency"]: r for r in read_csv(tmp_path / "weekly-2026-09-21-all.csv")}
    gtvt = rows["so-gtvt"]
    assert (gtvt["period_start"], gtvt["period_end"]) == ("2026-09-21", "2026-09-27")
    assert {k: int(gtvt[k]) for k in ("reports", "received", "handled", "answered", "returned_misrouted")} == \
        {"reports": 5, "received": 4, "handled": 3, "answered": 2, "returned_misrouted": 1}
    assert (int(gtvt["on_time"]), int(gtvt["late"])) == (2, 4)
    assert (int(gtvt["on_time_answer"]), int(gtvt["late_answer"])) == (1, 0)  # C4's late clock was last week's
    assert (int(gtvt["on_time_return_misroute"]), int(gtvt["late_fix"]), int(gtvt["late_site_check"])) == (1, 1, 1)
    # C5's, never answered, and C3's, met only by the return 50 minutes after the case arrived.
    assert int(gtvt["late_subordinate_forward"]) == 2
    assert int(gtvt["on_time_forward"]) == 0  # the 5-minute clock is the portal's, not the agency's
    assert (int(gtvt["ratings"]), gtvt["rating_mean"], gtvt["rating_2"], gtvt["rating_5"]) == (2, "3.50", "1", "1")

    trees = rows["cay-xanh"]
    assert (int(trees["received"]), int(trees["handled"]), int(trees["answered"])) == (1, 1, 1)
    assert (int(trees["late_site_check"]), int(trees["late_fix"]), int(trees["on_time"])) == (1, 1, 0)
    assert (int(trees["late_subordinate_forward"]), int(trees["late"])) == (1, 3)
    # Each delivery in the week met the portal's forwarding clock: C1, C2, C3 (to so-gtvt, then to cay-xanh), C5.
    assert (int(rows["van-hanh-1022"]["on_time_forward"]), int(rows["van-hanh-1022"]["late"])) == (5, 0)
    # Agencies with nothing in the week get no report.
    assert "sawaco" not in rows and not (tmp_path / "weekly-2026-09-21-sawaco.html").exists()


async def test_an_open_clock_not_yet_due_counts_neither_way(filled, tmp_path: Path, capsys) -> None:
    # C2's answer clock is due on 30/09: in the week of 28/09 it is still running on 29/09...
    filled.clock.advance(1 * 86400)
    await run(filled.store, ["weekly", "--since", "2026-09-28", "--agency", "so-gtvt", "--output", str(tmp_path)],
              capsys)
    (row,) = read_csv(tmp_path / "weekly-2026-09-28-so-gtvt.csv")
    assert (int(row["on_time"]), int(row["late"])) == (0, 0)
    # ...and late once its due time has passed unanswered.
    filled.clock.advance(3 * 86400)
    await run(filled.store, ["weekly", "--since", "2026-09-28", "--agency", "so-gtvt", "--output", str(tmp_path)],
              capsys)
    (row,) = read_csv(tmp_path / "weekly-2026-09-28-so-gtvt.csv")
    assert (int(row["late_answer"]), int(row["late"])) == (1, 1)


async def test_weekly_html_embeds_the_png_charts_and_the_sms_fits_one_segment(filled, tmp_path: Path, capsys) -> None:
    code, out = await run(filled.store, ["weekly", "--since", "2026-09-21", "--agency", "so-gtvt",
                                         "--output", str(tmp_path)], capsys)
    assert code == 0
    html = (tmp_path / "weekly-2026-09-21-so-gtvt.html").read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 2  # volume and deadlines
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    assert (tmp_path / "weekly-2026-09-21-so-gtvt-volume.png").read_bytes().startswith(b"\x89PNG")
    assert "Sở Giao thông vận tải" in html and "3.5/5" in html
    assert REPORTER_PHONE not in html

    (sms,) = [line for line in out.splitlines() if line.strip()]
    assert "so-gtvt" in sms and "tiep nhan 4" in sms and "tre han 4" in sms and "hai long 3.5/5" in sms
    assert sms_encoding(sms) == "GSM-7" and len(sms_segments(sms)) == 1 and len(sms) <= 160


async def test_quarterly_ranks_agencies_and_lists_suggestions_without_reporters(any_filled, tmp_path: Path,
                                                                               capsys) -> None:
    filled = any_filled  # on both backends: the figures' SQL is written once
    w, day = filled, 86400.0
    idea = "Đề xuất trồng thêm cây xanh dọc kênh Nhiêu Lộc"
    # Forwarded to the City Office by the dispatch stage, not answered yet (its review clock ran out).
    await w.report(w.week + 2 * day, agency="vp-ubnd", topic="suggestion", category="suggestion", incident="S1",
                   text=idea)
    await w.dispatch("S1", w.week + 2 * day + 60)
    await w.report(w.week + 4 * day, agency="vp-ubnd", topic="suggestion", category="suggestion", status="review",
                   text="Nên có thêm làn xe đạp trên đường Võ Văn Kiệt")
    await w.report(w.week + 4 * day, agency=None, topic="suggestion", category="suggestion", status="rejected",
                   text="nội dung bị từ chối")
    await w.report(w.week - 100 * day, agency="vp-ubnd", topic="suggestion", category="suggestion",
                   text="hiến kế của quý trước")
    w.at(w.now)

    code, out = await run(w.store, ["quarterly", "--since", "2026-07-01", "--output", str(tmp_path)], capsys)
    assert code == 0
    ranking = read_csv(tmp_path / "quarterly-2026-07-01-ranking.csv")
    ranked = [(r["rank"], r["agency"]) for r in ranking if r["rank"]]
    assert ranked == [("1", "van-hanh-1022"), ("2", "so-gtvt"), ("3", "cay-xanh"), ("4", "vp-ubnd")]
    gtvt = next(r for r in ranking if r["agency"] == "so-gtvt")
    # Over the quarter C4 counts too: 5 received, 2 answered, 2 on time and 5 late clocks, ratings 3.5:
    # 100 * (0.6 * 2/7 + 0.25 * 2/5 + 0.15 * (3.5 - 1)/4) = 36.5.
    assert (gtvt["received"], gtvt["on_time"], gtvt["late"], gtvt["score"]) == ("5", "2", "5", "36.5")
    assert next(r for r in ranking if r["agency"] == "sawaco")["rank"] == ""  # no case: not ranked

    found = read_csv(tmp_path / "quarterly-2026-07-01-suggestions.csv")
    assert [r["excerpt"] for r in found] == [idea, "Nên có thêm làn xe đạp trên đường Võ Văn Kiệt"]
    assert (found[0]["case_id"], found[0]["case_state"], found[1]["status"]) == (w.case_id("S1"), "forwarded",
                                                                                 "review")

    html = (tmp_path / "quarterly-2026-07-01.html").read_text(encoding="utf-8")
    assert "Q3/2026" in html and idea in html and "data:image/png;base64," in html
    assert REPORTER_PHONE not in html and "Trần Thị B" not in html
    assert not any(REPORTER_PHONE in p.read_text(encoding="utf-8-sig") for p in tmp_path.glob("*.csv"))
    assert "1. van-hanh-1022" in out and "2 hien ke" in out


async def test_report_cli_refuses_an_unknown_agency(filled, tmp_path: Path, capsys) -> None:
    code = await report_cli(filled.store, validate({}, env={}), ["weekly", "--agency", "so-khong-co"])
    assert code == 2 and "so-khong-co" in capsys.readouterr().err


def test_sms_segments_follow_gsm7_and_ucs2_limits() -> None:
    assert sms_segments("a" * 160) == ["a" * 160]
    parts = sms_segments("a" * 161)
    assert [len(p) for p in parts] == [153, 8]
    # Extension characters cost two septets.
    assert len(sms_segments("[" * 80)) == 1 and len(sms_segments("[" * 81)) == 2
    vi = "Báo cáo tuần: tiếp nhận 12, xử lý 10, trả lời 8, đúng hạn 15, trễ hạn 3, hài lòng 4.2/5 (5 đánh giá)"
    assert sms_encoding(vi) == "UCS-2"
    parts = sms_segments(vi)
    assert len(vi) > 70 and all(len(p) <= 67 for p in parts) and "".join(parts) == vi
    assert sms_segments("x" * 70) == ["x" * 70] and sms_encoding("đ") == "UCS-2"


def test_equal_scores_share_a_rank_and_idle_agencies_are_not_ranked() -> None:
    def agency(name: str, received: int, answered: int) -> AgencyFigures:
        return AgencyFigures(agency=name, name=name, received=received, answered=answered)

    ranked = rank([agency("c", 4, 1), agency("a", 2, 2), agency("b", 4, 4), agency("idle", 0, 0)])
    assert [(r.rank, r.figures.agency) for r in ranked] == [(1, "b"), (1, "a"), (3, "c"), (None, "idle")]
