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

import mmap
import os
import struct
import time
from pathlib import Path

STALE_SECONDS = 1.0
_WORD = struct.Struct("d")


class IntakeSignal:
    def __init__(self, database: Path) -> None:
        self.path = Path(f"{database}-intake")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _WORD.size:
                os.ftruncate(fd, _WORD.size)
            self._map: mmap.mmap | None = mmap.mmap(fd, _WORD.size)
        finally:
            os.close(fd)  # the mapping keeps the file's pages

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
        return since > 0.0 and time.monotonic() - since < STALE_SECONDS

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
