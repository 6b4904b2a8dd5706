"""Keeps a long-running service alive through faults that are not its own bug to fix: a storage outage (disk full,
I/O errors) or any unexpected exception restarts the service after a backoff instead of ending the process.

`run_daemon.py` runs every channel and stage under `supervised`; an outage is logged when it starts (then at most
once a minute while it lasts), never once per retry.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from .backoff import backoff_delay
from .errors import AuthError, ConfigError
from .faults import ThrottledLog

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log, interval=60.0)

# A service that ran this long since its last start is healthy again: its next failure starts the backoff anew.
HEALTHY_AFTER_SECONDS = 120.0


class Runnable(Protocol):
    async def run(self) -> None: ...


async def supervised(service: Runnable, name: str, *, base: float = 1.0, cap: float = 60.0) -> None:
    """Run `service.run()` until it returns or is cancelled; restart it with backoff when it raises."""
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await service.run()
            return
        except asyncio.CancelledError:
            raise
        except (AuthError, ConfigError) as exc:
            # Credentials or configuration: retrying in a hot loop cannot fix them; an operator must.
            log.error("%s stopped: %s: %s", name, type(exc).__name__, exc)
            return
        except Exception as exc:
            if time.monotonic() - started > HEALTHY_AFTER_SECONDS:
                failures = 0
            failures += 1
            delay = backoff_delay(failures, base=base, cap=cap)
            _throttled.log(logging.ERROR, f"{name}:{type(exc).__name__}", "%s failed (%s: %s); restarting in %.1f s",
                           name, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
