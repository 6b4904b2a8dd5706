"""The SQLite store's WAL checkpoints, off every commit's path.

By default SQLite checkpoints inside the commit that grows the write-ahead log past 1,000 pages: that commit copies
the log into the database file and fsyncs it before it returns. Whichever commit crosses the line pays, and under
a busy backlog it is often intake's group commit, so a citizen's POST waits tens of milliseconds for pages that
the stages wrote (issue 20: the p99 at 500/s). The store's connections therefore checkpoint never
(`wal_autocheckpoint=0`), and this thread does it on its own connection every `interval` seconds: a PASSIVE
checkpoint, which waits for no reader or writer and blocks none. Two processes on one file (intake and workers) may each run one: a checkpoint that finds the
other's under way is told "busy" at once (busy_timeout=0) and tries again on its next turn.

A PASSIVE checkpoint copies the frames that were there when it began; a commit landing meanwhile (under a
steady stream, one nearly always does) leaves the log not wholly copied, and SQLite starts the log over from its
beginning only once it is: the file grew by ~10 MB a second under back-to-back commits. So once the log holds more
than `restart_frames`, the turn asks for RESTART instead: what is left to copy is then a few frames, and for that
moment (at most `busy_ms` waited for) writers wait, so the next one starts the log from its beginning. The store's
connections also truncate the file past ingest.store's journal_size_limit when it restarts.

If the thread falls behind, the log only grows; nothing is lost, and the last connection to close checkpoints it.
A checkpoint that keeps failing is logged as a warning (its first failure, then every `WARN_EVERY`).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)


WARN_EVERY = 240  # failed turns between two warnings (a minute at the default interval)


class WalCheckpointer:
    def __init__(self, path: Path, interval: float = 0.25, restart_frames: int = 4096, busy_ms: int = 20) -> None:
        self.path = Path(path)
        self.interval = interval
        self.restart_frames = restart_frames  # 16 MB of 4 KB pages
        self.busy_ms = busy_ms
        self.failures = 0  # turns failed in a row
        self.restarts = 0  # RESTART checkpoints that completed
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
                        conn = self.connect()
                    self.step(conn)
                    self.failures = 0
                except sqlite3.Error as exc:
                    # A full disk or a vanished file: the commits report those too; here try again later, and say
                    # so now and then (a checkpointer that stopped working lets the log grow).
                    if self.failures % WARN_EVERY == 0:
                        log.warning("WAL checkpoint failed (%d turn(s) in a row): %s", self.failures + 1,
                                    type(exc).__name__)
                    self.failures += 1
                    if conn is not None:
                        conn.close()
                        conn = None
        finally:
            if conn is not None:
                conn.close()

    def connect(self) -> sqlite3.Connection:
        # mode=rw: a store file that vanished is an error here, not a new empty database.
        conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=self.busy_ms / 1000,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def step(self, conn: sqlite3.Connection) -> bool:
        """One turn: a PASSIVE checkpoint (over a log already copied it does nothing, not even an fsync), or RESTART
        once the log is longer than `restart_frames`. True when it copied frames."""
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames > self.restart_frames:
            # Most of it is copied now: RESTART copies the rest with writers held off (a writer busy for longer
            # than busy_ms: it does what PASSIVE does), so the next commit starts the log from its beginning.
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.restarts += 0 if busy else 1
        # (frames in the log, frames copied so far) count from the log's last restart: the same pair again means
        # nothing new was copied.
        last, self._last = self._last, (frames, copied)
        if busy or copied <= 0 or (frames, copied) == last:
            return False
        self.checkpoints += 1
        return True
