"""Turns at the SQLite store's one writer connection, intake's group commit first.

With one lock taken in arrival order, a group commit of acknowledgements queued behind every stage's waiting
transaction (lease, finish, settle: half a dozen stages in one process), and each report's acknowledgement waited
for all of them. Here, when a turn ends, a waiting group commit goes next, except right after a group commit when a
stage is waiting: the two then alternate, so the acknowledgements wait for at most the transaction in progress and
one more, and the stages are never starved by a steady stream of reports.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class WriteTurns:
    def __init__(self) -> None:
        self._held = False
        self._waiting: dict[bool, deque[asyncio.Future[None]]] = {True: deque(), False: deque()}  # by "intake"

    @asynccontextmanager
    async def turn(self, intake: bool = False) -> AsyncIterator[None]:
        await self._acquire(intake)
        try:
            yield
        finally:
            self._release(intake)

    async def _acquire(self, intake: bool) -> None:
        if not self._held and not any(self._waiting.values()):
            self._held = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[intake].append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(intake)  # the turn was given just as the waiter was cancelled: pass it on
            elif fut in self._waiting[intake]:  # a turn ending meanwhile may have dropped it already
                self._waiting[intake].remove(fut)
            raise

    def _release(self, intake: bool) -> None:
        # After a stage's turn, intake's group commit first; after intake's, the stages first (alternation).
        for queue in (self._waiting[False], self._waiting[True]) if intake else (self._waiting[True],
                                                                                  self._waiting[False]):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)  # the turn passes on: still held
                    return
        self._held = False
