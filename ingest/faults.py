"""Storage faults as the daemon sees them: which errors mean "the store cannot write now", the store's outage
state (for /readyz, and to log an outage once when it starts and once when it ends), free space, and a logger
that says a repeated identical error once per interval.

A full disk, an I/O error or a locked database is an outage to wait out, never a reason to end the process:
intake answers 503 / SMTP 451, workers back off, and everything resumes when a write succeeds again.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

# SQLite primary result codes that describe the storage, not the statement (https://sqlite.org/rescode.html).
_STORAGE_CODES = {5: "busy", 6: "locked", 8: "read-only", 10: "I/O error", 11: "corrupt", 13: "disk full",
                  14: "cannot open", 15: "lock protocol", 26: "not a database"}


def storage_reason(exc: BaseException) -> str | None:
    """A short reason when `exc` is a storage fault (disk full, I/O, locked...), else None (a bug or bad input)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return None
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return _STORAGE_CODES.get(code & 0xFF) if code is not None else None  # SQLITE_ERROR: a bug, not storage
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.ProgrammingError):
        code = getattr(exc, "sqlite_errorcode", None)  # corrupt, not a database
        return _STORAGE_CODES.get(code & 0xFF, "database error") if code is not None else "database error"
    if isinstance(exc, OSError):
        import errno

        return {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota", errno.EROFS: "read-only",
                errno.EIO: "I/O error"}.get(exc.errno or 0, "file system error")
    return None


def free_bytes(path: Path) -> int | None:
    """Bytes available to us on the file system holding `path` (its nearest existing parent); None if unknown."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class ThrottledLog:
    """Logs an error the first time, then at most once per `interval` seconds per key, with the count of
    repeats it held back: a client hammering one bad request, or a disk staying full, cannot flood the log."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 1024) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}  # key -> (time logged, repeats held back since)

    def log(self, level: int, key: str, msg: str, *args: object, now: float | None = None,
            exc_info: bool = False) -> bool:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if last is None and len(self._last) >= self.max_keys:
            # Many distinct keys (crafted to dodge the throttle): forget the stalest, keep memory bounded.
            oldest = min(self._last, key=lambda k: self._last[k][0])
            del self._last[oldest]
        held = last[1] if last is not None else 0
        suffix = f" (and {held} more like it in the last {self.interval:g} s)" if held else ""
        self.logger.log(level, msg + suffix, *args, exc_info=exc_info)
        self._last[key] = (now, 0)
        return True


@dataclass
class StoreHealth:
    """Whether the store's last write worked; an outage is logged once when it starts and once when it ends."""

    failing_since: float | None = None
    reason: str | None = None
    failures: int = 0

    def failed(self, reason: str, logger: logging.Logger) -> None:
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = time.time()
            logger.error("store: writes failing (%s); intake answers 503/451 and workers back off", reason)
        self.reason = reason

    def succeeded(self, logger: logging.Logger) -> None:
        if self.failing_since is not None:
            logger.warning("store: writes work again after %.0f s (%d failed attempts)",
                           time.time() - self.failing_since, self.failures)
            self.failing_since, self.reason, self.failures = None, None, 0

    @property
    def ok(self) -> bool:
        return self.failing_since is None
