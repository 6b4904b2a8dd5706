"""The working-day calendar: Viet Nam's statutory holidays from the `holidays` package (lunar Tết for any year)
as the base, the project's TOML as the overlay of the Government's yearly decisions, and the daemon saying so
(log, metric, /readyz) when this or next year has no decision, at start and daily."""
from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

from dispatch.calendar import load_calendar
from ingest.clock import VN_TZ


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=VN_TZ).timestamp()


def test_years_without_an_overlay_still_skip_tet_by_the_lunar_calendar() -> None:
    cal = load_calendar()
    # Tết Canh Tuất: mùng 1 is Saturday 02/02/2030; the package's days off around it are not working days.
    assert not cal.is_working_day(date(2030, 2, 4)) and not cal.is_working_day(date(2030, 2, 1))
    assert not cal.is_working_day(date(2030, 9, 2))  # National Day
    # Wednesday 30/01/2030 10:00 + 1 working day: 31/01 to 06/02 are off (Tết), so Thursday 07/02 10:00.
    assert cal.add_working_days(ts(2030, 1, 30, 10), 1) == ts(2030, 2, 7, 10)


def test_days_swapped_by_the_government_come_with_their_make_up_saturday() -> None:
    cal = load_calendar()
    # 2026: Monday 31/08 off (a bridge to National Day), worked on Saturday 22/08 instead.
    assert not cal.is_working_day(date(2026, 8, 31)) and cal.is_working_day(date(2026, 8, 22))


def test_the_overlay_adds_days_off_make_up_saturdays_and_worked_holidays(tmp_path: Path) -> None:
    overlay = tmp_path / "calendar.toml"
    overlay.write_text('[2030]\nholidays = ["2030-04-29"]\nworking_days = ["2030-05-04"]\n'
                       'working_holidays = ["2030-02-06"]\n\n[2031]\nprovisional = true\nholidays = []\n',
                       encoding="utf-8")
    cal = load_calendar(overlay)
    assert not cal.is_working_day(date(2030, 4, 29))  # a bridge day the decision gave
    assert cal.is_working_day(date(2030, 5, 4))  # the Saturday worked to make up for it
    assert cal.is_working_day(date(2030, 2, 6))  # a base day that decision kept working
    assert cal.decided_years == {2030}
    assert cal.missing_decisions(date(2030, 6, 1)) == [2031]  # provisional is not a decision
    assert cal.missing_decisions(date(2029, 6, 1)) == [2029]


def test_the_bundled_overlay_has_decisions_for_2025_and_2026_only() -> None:
    cal = load_calendar()
    assert {2025, 2026} <= cal.decided_years
    assert cal.missing_decisions(date(2026, 12, 7)) == [y for y in (2026, 2027) if y not in cal.decided_years]
