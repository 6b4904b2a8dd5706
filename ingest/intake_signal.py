"""Intake's "I am waiting for the write lock", shared between the processes of one SQLite file.

With `serve --role intake` and `--role workers` (and so `serve`, which runs the two) on one file, intake's group
commit polls the file's one write lock while a stage's transaction holds it. Traced on a slow disk (bench_roles,
SQLite split, fsync p90 5-9 ms): the stages' transactions held the lock 18 ms at p90 and 36-50 ms at worst (their
10 ms budget, then their own commit's fsync), and intake's acknowledgements waited 18 ms at p90 and 50-86 ms at
worst. With this flag the stages' batch transaction commits at its next job boundary once intake waits, and a
stage's next transaction lets intake's go first, so intake waits for one job and one fsync, not a whole budget.

The flag is a shared memory word in a file beside the database (`<db>-intake`): the monotonic time (CLOCK_MONOTONIC,
the same in every process of the machine) at which intake began waiting, 0.0 when it is not. A hint, never a
lock: a flag left set by a killed intake goes stale after `STALE_SECONDS` and is ignored.
"""
from __future__ import annotations

import logging
import mmap
import os
import struct
import time
from pathlib import Path

log = logging.getLogger(__name__)

STALE_SECONDS = 1.0
_WORD = struct.Struct("d")


class IntakeSignal:
    def __init__(self, database: Path) -> None:
        self.path = Path(f"{database}-intake")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _WORD.size:
                # Written, not sized with ftruncate: a hole would be given its block at the first store into the
                # mapping, and on a full disk that is a SIGBUS that kills the process instead of an error here.
                os.pwrite(fd, bytes(_WORD.size), 0)
                os.fsync(fd)
            _match_owner(fd, database)
            self._map: mmap.mmap | None = mmap.mmap(fd, _WORD.size)
        finally:
            os.close(fd)  # the mapping keeps the file's pages

    @classmethod
    def open(cls, database: Path) -> IntakeSignal | None:
        """The flag beside `database`, or None when it cannot be set up (a full disk, a read-only folder): it is
        only a hint, and the store works without it."""
        try:
            return cls(database)
        except OSError as exc:
            log.warning("store: no intake flag beside the database (%s); intake's turn at the lock is not signalled",
                        exc.strerror or exc)
            return None

    def begin_waiting(self) -> None:
        if self._map is not None:
            _WORD.pack_into(self._map, 0, time.monotonic())

    def end_waiting(self) -> None:
        if self._map is not None:
            _WORD.pack_into(self._map, 0, 0.0)

    def waiting(self) -> bool:
        """Whether intake waits for the write lock now (a flag older than STALE_SECONDS is a dead intake's)."""
        if self._map is None:
            return False
        since = _WORD.unpack_from(self._map, 0)[0]
        # A time ahead of now is a flag left from before the machine restarted (the clock counts from boot).
        return since > 0.0 and 0.0 <= time.monotonic() - since < STALE_SECONDS

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def _match_owner(fd: int, database: Path) -> None:
    """Created by root (an admin's CLI command), the flag would be unwritable to the daemon's user: give it the
    database file's owner, as SQLite does its -wal and -shm files."""
    if os.geteuid() != 0:
        return
    try:
        owner = os.stat(database)
    except FileNotFoundError:
        return
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
        os.fchown(fd, owner.st_uid, owner.st_gid)
