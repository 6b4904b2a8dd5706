"""The event loop every command of the daemon runs on.

uvloop (libuv) instead of asyncio's pure-Python selector loop: profiled under load (issue 21), the daemon's
loop thread spent most of its non-application time in asyncio's own scheduling, socket writes and the self-pipe
wake-ups of thread hand-offs (aiosqlite, executors); uvloop does that work in C. It is a drop-in: the same
asyncio API, so nothing else changes.
"""
from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a uvloop loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
