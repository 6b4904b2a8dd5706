"""Limits on what one client can make the HTTP server do: per-client rate limits (IP, API key, device id) answered
429 with Retry-After, a cap on open connections answered 503, and deadlines for a request's head, its body and an
idle keep-alive connection (a slow client cannot hold a connection, and so a file descriptor, for ever).

The token buckets are pure (time passed in); the middleware and the protocol factory are the thin aiohttp side.
Counters of what was refused are kept in `REFUSALS` for /metrics (ops/metrics.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .faults import ThrottledLog

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

# (what, key kind) -> count: ("rate_limited", "ip"), ("connection_refused", ""), ("header_timeout", "")...
REFUSALS: Counter[tuple[str, str]] = Counter()
# Paths where input arrives (the Open311 intake takes its per-device limit from the request there).
INTAKE_PREFIXES = ("/open311/", "/webhooks/", "/report")
# Of those, where anyone may post: the per-client rate limits apply. Webhooks are signed by their platform and
# come from its few addresses at its own rate (Meta retries a 429 and would fall behind), so they are not limited.
PUBLIC_PREFIXES = ("/open311/", "/report")


@dataclass(frozen=True, slots=True)
class Rate:
    per_minute: float  # sustained rate; 0 disables the limit
    burst: int  # requests allowed at once before the rate applies


class TokenBuckets:
    """One token bucket per key, the least recently used keys forgotten past `max_keys` (bounded memory whatever
    the number of clients)."""

    def __init__(self, rate: Rate, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, updated at)

    def take(self, key: str, now: float) -> float:
        """0 when the request may go ahead (a token is taken), else the seconds until one is available."""
        if self.rate.per_minute <= 0:
            return 0.0
        per_second = self.rate.per_minute / 60.0
        tokens, then = self._buckets.pop(key, (float(self.rate.burst), now))
        tokens = min(float(self.rate.burst), tokens + max(0.0, now - then) * per_second)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / per_second
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


@dataclass(frozen=True, slots=True)
class ClientLimits:
    ip: TokenBuckets
    api_key: TokenBuckets
    device: TokenBuckets


# Set on an intake request by the middleware: the Open311 intake takes the device limit from it.
CLIENT_LIMITS = web.RequestKey("client_limits", ClientLimits)


class RateLimited(Exception):
    def __init__(self, kind: str, retry_after: float) -> None:
        super().__init__(f"rate limited by {kind}")
        self.kind = kind
        self.retry_after = retry_after


def too_many(request: web.Request, kind: str, retry_after: float) -> web.Response:
    """429 in the shape the client expects (Open311 error list, else a JSON object), with Retry-After."""
    REFUSALS[("rate_limited", kind)] += 1
    seconds = max(1, math.ceil(retry_after))
    _throttled.log(logging.WARNING, f"429:{kind}", "rate limit (%s) reached: answering 429", kind)
    text = f"too many requests from this {kind.replace('_', ' ')}; retry in {seconds} s"
    body: Any = ([{"code": 429, "description": text}] if request.path.startswith("/open311/")
                 else {"error": text})
    return web.json_response(body, status=429, headers={"Retry-After": str(seconds)})


def client_ip(request: web.Request) -> str:
    # The peer address: X-Forwarded-For is a claim anyone can make, so it is not trusted here.
    return request.remote or "?"


def limits_middleware(limits: ClientLimits, body_timeout: float,
                      now: Callable[[], float]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return await handler(request)
        if request.method == "POST" and request.path.startswith(PUBLIC_PREFIXES):
            t = now()
            wait = limits.ip.take(client_ip(request), t)
            if wait > 0:
                return too_many(request, "ip", wait)
            api_key = request.headers.get("X-Api-Key") or request.query.get("api_key")
            if api_key:
                wait = limits.api_key.take(api_key, t)
                if wait > 0:
                    return too_many(request, "api_key", wait)
        if request.path.startswith(INTAKE_PREFIXES):
            request[CLIENT_LIMITS] = limits  # the Open311 intake applies the device limit once it has parsed the body
        return await _body_in_time(request, handler, body_timeout)

    return middleware


async def _body_in_time(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                        body_timeout: float) -> web.StreamResponse:
    """The handler, cut off with 408 when the body has not fully arrived `body_timeout` seconds after the head.

    Every request with a body, not only intake: a client dribbling a byte a second to the console's login, an
    agency answer or a reporter's rating held its connection (and its slot under the connection cap) for ever.
    Only the body is timed: once it is in, the handler may take as long as its work needs (fetching an agency's
    photo URLs, a slow commit), which a deadline on the whole request would wrongly answer "not received"."""
    loop = asyncio.get_running_loop()
    deadline = asyncio.timeout(None)
    try:
        async with deadline:
            def expire() -> None:
                if not request.content.is_eof():
                    deadline.reschedule(loop.time())
            check = loop.call_later(body_timeout, expire)
            try:
                return await handler(request)
            finally:
                check.cancel()
    except TimeoutError:
        if not deadline.expired():
            raise  # the handler's own timeout (a peer that did not answer), not this deadline
        REFUSALS[("body_timeout", "")] += 1
        # The route's template, not the path: a reporter's lookup path carries their token.
        resource = request.match_info.route.resource
        _throttled.log(logging.WARNING, "408", "request on %s not complete within %g s: 408",
                       resource.canonical if resource is not None else "?", body_timeout)
        return web.json_response({"error": "request not received in time"}, status=408,
                                  headers={"Connection": "close"})


_BUSY_BODY = json.dumps({"error": "too many connections, please retry"}).encode()
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


class _Busy(asyncio.Protocol):
    """Past the connection cap: answer 503 at once and close, without reading the request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY_RESPONSE)
        transport.close()


class GuardedFactory:
    """The listening socket's protocol factory around aiohttp's Server: past `max_connections` open connections a
    new one gets 503, and so does one past `max_per_ip` open from its address (0: no such cap); a connection that
    has not sent a complete request head within `header_timeout` is closed."""

    def __init__(self, server: web.Server, max_connections: int, header_timeout: float, max_per_ip: int = 0) -> None:
        self.server = server
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.max_per_ip = max_per_ip
        self.per_ip: Counter[str] = Counter()  # open connections by peer address

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) >= self.max_connections:
            REFUSALS[("connection_refused", "")] += 1
            _throttled.log(logging.WARNING, "503:connections", "%d HTTP connections open: answering 503",
                           len(self.server.connections))
            return _Busy()
        handler = self.server()
        loop = asyncio.get_running_loop()
        loop.call_later(self.header_timeout, _close_if_no_request, handler)
        return _PerPeer(handler, self) if self.max_per_ip > 0 else handler


class _PerPeer(asyncio.Protocol):
    """aiohttp's connection handler, counted under its peer's address. One client opening connections by the
    hundred (each sending its head or body as slowly as the deadlines allow, and reconnecting) would otherwise fill
    the whole server's cap, and every other client would get 503: past its own cap it alone does.

    A wrapper, since aiohttp's handler has __slots__ and the peer is known only once the connection is made; it
    passes every protocol call on (flow control too, which asyncio's sendfile fallback relies on)."""

    def __init__(self, inner: Any, factory: GuardedFactory) -> None:
        self.inner = inner
        self.factory = factory
        self.peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        if self.factory.per_ip[peer] >= self.factory.max_per_ip:
            REFUSALS[("connection_refused", "ip")] += 1
            _throttled.log(logging.WARNING, "503:connections:ip", "one client address has %d HTTP connections open:"
                           " answering its next ones 503", self.factory.per_ip[peer])
            _Busy().connection_made(transport)
            return
        self.peer = peer
        self.factory.per_ip[peer] += 1
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is None:
            return
        counts = self.factory.per_ip
        counts[self.peer] -= 1
        if counts[self.peer] <= 0:
            del counts[self.peer]  # bounded: only addresses with a connection open are kept
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.peer is not None else None

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.inner.resume_writing()


def _close_if_no_request(handler: Any) -> None:
    # aiohttp counts a request once its head is parsed; none yet after the deadline: a slow or idle client.
    if getattr(handler, "_request_count", 1) == 0 and handler.transport is not None:
        REFUSALS[("header_timeout", "")] += 1
        handler.force_close()
        handler.transport.close()


class GuardedSite(web.TCPSite):
    """A TCPSite whose listening socket uses GuardedFactory."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int,
                 header_timeout: float, max_per_ip: int = 0, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._max_per_ip = max_per_ip

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        factory = GuardedFactory(server, self._max_connections, self._header_timeout, self._max_per_ip)
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
