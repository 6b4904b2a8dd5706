"""The one backoff rule used everywhere: exponential with full jitter, capped, honouring Retry-After."""
from __future__ import annotations

import random


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1).

    Full jitter spreads retries from many workers so a recovering peer is not hit in lockstep; a peer's
    Retry-After is a floor, since retrying sooner only earns another refusal.
    """
    # The exponent is bounded so a very high attempt count caps instead of overflowing float conversion.
    ceiling = min(cap, base * (2 ** min(max(0, attempt - 1), 64)))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
