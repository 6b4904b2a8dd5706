"""Login throttling keyed by (username, client address), with exponential backoff. Pure: the caller gives `now`.

Keyed by the pair, not the username alone: a stranger guessing a known operator's password from elsewhere slows
down only their own attempts, and never locks the operator out. After `free` failures a pair must wait
`base * 2**(failures - free)` seconds (capped) before the next attempt; a success or `forget_after` seconds
without a failure clears it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoginThrottle:
    free: int = 5
    base: float = 2.0
    cap: float = 900.0
    forget_after: float = 900.0
    max_pairs: int = 10_000  # bounded memory when someone tries many usernames or addresses
    _pairs: dict[tuple[str, str], tuple[int, float, float]] = field(default_factory=dict)  # failures, until, last

    def wait(self, username: str, client: str, now: float) -> float:
        """Seconds this pair must still wait before an attempt is even checked (0: go ahead)."""
        entry = self._pairs.get((username, client))
        if entry is None:
            return 0.0
        failures, until, last = entry
        if now - last > max(self.forget_after, until - last):
            del self._pairs[(username, client)]
            return 0.0
        return max(0.0, until - now)

    def failed(self, username: str, client: str, now: float) -> None:
        if len(self._pairs) >= self.max_pairs:
            self._pairs = {k: v for k, v in self._pairs.items() if now - v[2] <= max(self.forget_after, v[1] - v[2])}
            if len(self._pairs) >= self.max_pairs:
                self._pairs.pop(next(iter(self._pairs)))  # the oldest entry
        failures = self._pairs.get((username, client), (0, 0.0, now))[0] + 1
        delay = 0.0 if failures < self.free else min(self.cap, self.base * 2 ** (failures - self.free))
        self._pairs[(username, client)] = (failures, now + delay, now)

    def succeeded(self, username: str, client: str) -> None:
        self._pairs.pop((username, client), None)
