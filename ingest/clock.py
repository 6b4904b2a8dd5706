"""Time as a dependency, so deadlines and retries can be tested with a controllable clock."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

VN_TZ = timezone(timedelta(hours=7), "ICT")


class Clock:
    def now(self) -> float:
        return time.time()

    def now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.now(), VN_TZ)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock(Clock):
    """A clock that moves only when told to; sleepers wake when the time they wait for is reached."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._now = start
        self._changed = asyncio.Event()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._changed.set()

    async def sleep(self, seconds: float) -> None:
        until = self._now + seconds
        while self._now < until:
            self._changed.clear()
            await self._changed.wait()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, VN_TZ).isoformat(timespec="seconds")


def parse_iso(value: str) -> float:
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=VN_TZ)
    return dt.timestamp()
