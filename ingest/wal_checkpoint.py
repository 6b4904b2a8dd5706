"""The SQLite store's WAL checkpoints, off every commit's path.

By default SQLite checkpoints inside the commit that grows the write-ahead log past 1,000 pages: that commit copies
the log into the database file and fsyncs it before it returns. Whichever commit crosses the line pays, and under
a busy backlog it is often intake's group commit, so a citizen's POST waits tens of milliseconds for pages that
the stages wrote (issue 20: the p99 at 500/s). The store's connections therefore checkpoint never
(`wal_autocheckpoint=0`), and this thread does it on its own connection every `interval` seconds: a PASSIVE
checkpoint, which waits for no reader or writer and blocks none. Two processes on one file (intake and workers) may each run one: a checkpoint that finds the
other's under way is told "busy" at once (busy_timeout=0) and tries again on its next turn.

If the thread falls behind, the log only grows; nothing is lost, and the last connection to close checkpoints it.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class WalCheckpointer:
    def __init__(self, path: Path, interval: float = 0.25) -> None:
        self.path = Path(path)
        self.interval = interval
        self.checkpoints = 0  # completed checkpoint calls that copied frames (for tests and metrics)
        self._last: tuple[int, int] = (0, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.interval):
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
                        conn.execute("PRAGMA wal_autocheckpoint=0")
                    self.step(conn)
                except sqlite3.Error as exc:
                    # A full disk or a vanished file: the commits report those; here only try again later.
                    log.debug("WAL checkpoint skipped: %s", exc)
                    if conn is not None:
                        conn.close()
                        conn = None
        finally:
            if conn is not None:
                conn.close()

    def step(self, conn: sqlite3.Connection) -> bool:
        """One turn: a PASSIVE checkpoint (over a log already copied it does nothing, not even an fsync). True
        when it copied frames."""
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        # (frames in the log, frames copied so far) count from the log's last restart: the same pair again means
        # nothing new was copied.
        last, self._last = self._last, (frames, copied)
        if busy or copied <= 0 or (frames, copied) == last:
            return False
        self.checkpoints += 1
        return True
