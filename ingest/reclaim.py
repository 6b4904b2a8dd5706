"""The service that gives expired leases back to the queue: a worker that died mid-job leaves its job leased, and
another worker may take it once the lease is put back. The store does it once at start; this repeats it."""
from __future__ import annotations

import asyncio

from .errors import StorageError
from .store import Store


class Reclaimer:
    """Puts jobs whose lease expired (a worker died) back in the queue, every `interval` seconds."""

    name = "lease-reclaimer"

    def __init__(self, store: Store, interval: float) -> None:
        self.store, self.interval = store, interval

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.store.reclaim_expired()
            except StorageError:
                pass  # the store's outage is logged by the store; try again next interval
