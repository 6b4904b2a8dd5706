"""ingest/heap.py: the daemon's long-lived objects are frozen out of the collector's full passes, and garbage is
collected first, never frozen (frozen objects are never freed)."""
from __future__ import annotations

import asyncio
import gc
import weakref

from ingest import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_garbage_is_collected_before_the_rest_is_frozen() -> None:
    try:
        kept = Node()
        garbage = Node()
        gone = weakref.ref(garbage)
        del garbage
        heap.freeze()
        assert gone() is None  # collected, not frozen for ever
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # frozen: no full pass walks it any more
    finally:
        gc.unfreeze()


async def test_the_heap_is_frozen_again_once_the_model_is_loaded() -> None:
    try:
        gc.unfreeze()
        loaded: list[str | None] = ["classifier: model not loaded yet"]
        task = asyncio.create_task(heap.freeze_when_ready(lambda: loaded[0], interval=0.01))
        await asyncio.sleep(0.05)
        assert not task.done() and gc.get_freeze_count() == 0
        model = [Node() for _ in range(10)]  # what the model's loading made
        loaded[0] = None
        await asyncio.wait_for(task, 5)
        assert gc.get_freeze_count() > 0
        assert not any(o is model[0] for o in gc.get_objects())
    finally:
        gc.unfreeze()
