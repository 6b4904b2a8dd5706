"""A daemon's processes as the benchmarks count them: `serve` and the workers child it starts
(ingest/workers_process.py), read from Linux /proc."""
from __future__ import annotations

import os
from pathlib import Path


def tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            todo.extend(int(p) for p in Path(f"/proc/{current}/task/{current}/children").read_text().split())
        except OSError:
            pass
    return found


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) used so far by the process and its children still running, every thread counted
    (a child that exited and was reaped is counted in its parent's cutime, which this leaves out)."""
    if pid is None:
        return None
    total, seen = 0.0, False
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen = True
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total if seen else None


def peak_rss_mb(pid: int | None) -> float | None:
    """The sum of each process's peak resident memory (VmHWM): an upper bound of the daemon's joint peak."""
    if pid is None:
        return None
    total, seen = 0.0, False
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
                    seen = True
        except OSError:
            continue
    return total if seen else None
