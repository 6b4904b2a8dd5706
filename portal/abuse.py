"""What keeps the public forms usable for people and costly for robots: CSRF tokens, a honeypot, rate limits.

Pure apart from the clock passed in: the views decide what to answer (always politely, never losing input).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

HONEYPOT_FIELD = "website"  # invisible to people (off-screen, skipped by Tab); robots fill every field
CSRF_FIELD = "csrf"
CSRF_COOKIE = "portal_csrf"


def new_browser_secret() -> str:
    return secrets.token_urlsafe(18)


def csrf_token(key: bytes, browser_secret: str) -> str:
    """The form's token: bound to this browser's cookie by a server key, so another site can neither read nor
    forge it (double-submit cookie, signed)."""
    # surrogateescape: a cookie's bytes that are not UTF-8 (lone surrogates to aiohttp) sign as sent, never a 500.
    return hmac.new(key, browser_secret.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:40]


def csrf_ok(key: bytes, browser_secret: str | None, presented: str | None) -> bool:
    if not browser_secret or not presented:
        return False
    # As bytes: compare_digest refuses two str with anything but ASCII (a TypeError, a 500, for "csrf=é").
    return hmac.compare_digest(csrf_token(key, browser_secret).encode(),
                               presented.encode("utf-8", "surrogateescape"))


def honeypot_filled(fields: dict[str, str]) -> bool:
    return bool(fields.get(HONEYPOT_FIELD, "").strip())


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per client: `burst` posts at once, then one every 60/`per_minute` seconds.

    Bounded memory: the least recently seen clients are forgotten past `max_clients` (a forgotten client starts
    with a full bucket, which only ever errs on the side of letting a person through).
    """

    def __init__(self, burst: int, per_minute: float, max_clients: int = 50_000) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, client: str, now: float) -> float:
        """0 when the client may post now (and one token is used), else the seconds until it may."""
        bucket = self._buckets.pop(client, None) or _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + max(0.0, now - bucket.at) * self.rate)
        bucket.at = now
        self._buckets[client] = bucket
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate
