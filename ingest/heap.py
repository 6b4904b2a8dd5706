"""The daemon's long-lived objects kept out of the garbage collector's full passes.

A full (generation 2) collection walks every object the collector tracks, and once started a daemon process holds
some 220,000 that live as long as it does: the modules' functions and classes, the directory, the gazetteer, the
loaded model's Python parts. Traced under a backlog (bench_roles, SQLite, issue 20), each full collection stopped
the process 90-130 ms in intake and 100-350 ms in the workers (whose embedder threads share its interpreter) and
it came every few seconds; in intake it struck while its group commit held the store's write lock, and every
acknowledgement behind it waited as long (p99 107-222 ms at 500 reports/s). `gc.freeze` moves what exists at that
moment into a generation the collector never walks, so full passes then walk only what was allocated since.

Frozen objects are never collected: garbage is collected first, and a reload (whose old generation's objects
become garbage) or a model loaded later unfreezes, collects and freezes again.
"""
from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def freeze() -> None:
    """Collect what is garbage now, then freeze every object left (after start, after a reload)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.debug("heap: %d objects frozen", gc.get_freeze_count())


async def freeze_when_ready(not_ready: Callable[[], str | None] | None, interval: float = 1.0) -> None:
    """Freeze again once the classifier's model is loaded (it loads on a thread after the process starts)."""
    if not_ready is None:
        return
    while not_ready() is not None:
        await asyncio.sleep(interval)
    freeze()
