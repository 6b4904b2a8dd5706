"""Working days in Viet Nam: weekends, public holidays (Tết included) and make-up Saturdays, from data.

Pure: `WorkCalendar.add_working_days` counts only time that falls on working days, so "1 working day" from
Friday 10:00 ends Monday 10:00, and a case forwarded on the eve of Tết waits out the holiday.
"""
from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path

from ingest.clock import VN_TZ
from ingest.errors import ConfigError

BUNDLED = Path(__file__).resolve().parent.parent / "config" / "calendar-vn.toml"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkCalendar:
    holidays: frozenset[date] = field(default_factory=frozenset)
    working_days: frozenset[date] = field(default_factory=frozenset)  # Saturdays worked to make up a swap

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


def load_calendar(path: Path | None = None, extra_holidays: Iterable[str] = ()) -> WorkCalendar:
    source = Path(path) if path else BUNDLED
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
        holidays = {date.fromisoformat(d) for year in raw.values() for d in year.get("holidays", [])}
        working = {date.fromisoformat(d) for year in raw.values() for d in year.get("working_days", [])}
        holidays |= {date.fromisoformat(d) for d in extra_holidays}
    except (OSError, ValueError, AttributeError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: holiday calendar unreadable: {type(exc).__name__}: {exc}") from None
    return WorkCalendar(holidays=frozenset(holidays), working_days=frozenset(working))
