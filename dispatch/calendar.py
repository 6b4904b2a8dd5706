"""Working days in Viet Nam: weekends, public holidays (Tết included) and make-up Saturdays.

The base is the `holidays` package's calendar for Viet Nam (statutory days, the lunar Tết computed for any year,
observed days); `config/calendar-vn.toml` overlays the Government's yearly decisions (extra days off, make-up
working Saturdays), one table per year. A year without a table has no decision yet: its working days are
counted from the base alone, and `missing_decisions` says so (the daemon logs it at start and daily, exports it
as a metric and in /readyz) rather than silently trusting a calendar nobody confirmed.

Pure: `WorkCalendar.add_working_days` counts only time that falls on working days, so "1 working day" from
Friday 10:00 ends Monday 10:00, and a case forwarded on the eve of Tết waits out the holiday.
"""
from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path

import holidays as holiday_data

from ingest.app import Published
from ingest.clock import VN_TZ
from ingest.errors import ConfigError

log = logging.getLogger(__name__)

BUNDLED = Path(__file__).resolve().parent.parent / "config" / "calendar-vn.toml"
# Years the base calendar is computed for (the package computes any year; this bounds the set kept in memory).
BASE_YEARS = range(2015, 2061)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkCalendar:
    holidays: frozenset[date] = field(default_factory=frozenset)
    working_days: frozenset[date] = field(default_factory=frozenset)  # Saturdays worked to make up a swap
    decided_years: frozenset[int] = field(default_factory=frozenset)  # years the overlay has a decision for

    def missing_decisions(self, today: date) -> list[int]:
        """The current and next year when the overlay has no Government decision for them."""
        return [y for y in (today.year, today.year + 1) if y not in self.decided_years]

    def is_working_day(self, day: date) -> bool:
        if day in self.working_days:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def add_working_days(self, start: float, days: float) -> float:
        """The instant when `days` x 24 h of working-day time have passed since `start` (epoch seconds)."""
        remaining = timedelta(days=days)
        cursor = datetime.fromtimestamp(start, VN_TZ)
        while True:
            day_end = datetime.combine(cursor.date() + timedelta(days=1), time(0), VN_TZ)
            if self.is_working_day(cursor.date()):
                available = day_end - cursor
                if available >= remaining:
                    return (cursor + remaining).timestamp()
                remaining -= available
            cursor = day_end

    def working_days_between(self, start: float, end: float) -> int:
        a = datetime.fromtimestamp(start, VN_TZ).date()
        b = datetime.fromtimestamp(end, VN_TZ).date()
        return sum(1 for i in range((b - a).days) if self.is_working_day(a + timedelta(days=i + 1)))


SUBSTITUTED = re.compile(r"substituted from (\d{2})/(\d{2})/(\d{4})")


def base_calendar(years: Iterable[int] = BASE_YEARS) -> tuple[set[date], set[date]]:
    """Viet Nam's public holidays from the `holidays` package (Tết by the lunar calendar, observed days), and the
    Saturdays worked in exchange for the swapped days off it records ("Day off (substituted from 08/22/2026)")."""
    days = holiday_data.country_holidays("VN", years=list(years), language="en_US")
    worked = set()
    for name in days.values():
        for m in SUBSTITUTED.finditer(str(name)):
            worked.add(date(int(m[3]), int(m[1]), int(m[2])))
    return set(days.keys()), worked


def load_calendar(path: Path | None = None, extra_holidays: Iterable[str] = ()) -> WorkCalendar:
    """The base calendar with the overlay file (default: the bundled one) and `extra_holidays` on top."""
    source = Path(path) if path else BUNDLED
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
        decided = {int(year) for year, table in raw.items() if not table.get("provisional")}
        holidays, working = base_calendar()
        holidays |= {date.fromisoformat(d) for year in raw.values() for d in year.get("holidays", [])}
        holidays -= {date.fromisoformat(d) for year in raw.values() for d in year.get("working_holidays", [])}
        working |= {date.fromisoformat(d) for year in raw.values() for d in year.get("working_days", [])}
        holidays |= {date.fromisoformat(d) for d in extra_holidays}
    except (OSError, ValueError, AttributeError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: holiday calendar unreadable: {type(exc).__name__}: {exc}") from None
    return WorkCalendar(holidays=frozenset(holidays), working_days=frozenset(working), decided_years=frozenset(decided))


def missing_decisions_note(calendar: WorkCalendar, today: date) -> str | None:
    """What to tell operators when the overlay lacks this or next year's decision; None when it is complete."""
    missing = calendar.missing_decisions(today)
    if not missing:
        return None
    years = ", ".join(str(y) for y in missing)
    return (f"calendar: no Government decision on holidays for {years} in the calendar overlay; working days there "
            f"count the statutory holidays (holidays package, Tết by the lunar calendar) and any provisional days listed"
            f" until one is added to the overlay")


class CalendarWatch:
    """Says, at start and then daily, when the overlay lacks this or next year's decision: a log warning, the
    gauge `calendar_missing_decision_years` and a note in /readyz (in the process's Published record, which ops
    reads)."""

    name = "dispatch-calendar"

    def __init__(self, calendar: WorkCalendar, clock: object, published: Published,
                 interval: float = 86400.0) -> None:
        self.calendar = calendar
        self.clock = clock
        self.published = published
        self.interval = interval

    def check(self) -> str | None:
        today = datetime.fromtimestamp(self.clock.now(), VN_TZ).date()  # type: ignore[attr-defined]
        note = missing_decisions_note(self.calendar, today)
        notes, gauges = self.published.status_notes, self.published.gauges
        if note is None:
            notes.pop("calendar", None)
        else:
            notes["calendar"] = note
            log.warning("%s", note)
        gauges["calendar_missing_decision_years"] = (
            "Years (this and next) without a Government holiday decision in the calendar overlay.",
            float(len(self.calendar.missing_decisions(today))))
        return note

    async def run(self) -> None:
        while True:
            self.check()
            await self.clock.sleep(self.interval)  # type: ignore[attr-defined]
