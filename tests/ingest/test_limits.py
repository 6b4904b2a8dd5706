"""Per-client limits on a real aiohttp server on loopback: 429 with Retry-After per IP, API key and device id; a
connection cap answered 503; a slow request head closed; a dribbled body answered 408."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from channels.open311 import build
from config.channels import ChannelEntry, Open311Options
from config.directory import load_directory
from config.schema import HttpLimits, Settings
from ingest.app import AppContext
from ingest.http import make_app
from ingest.limits import REFUSALS, GuardedSite, Rate, TokenBuckets
from ingest.store import Store
from ops import health

# A bound on waiting for what must happen, never a measured duration.
BOUND = 30.0
REPORT = {"service_code": "drainage", "description": "Cống bị rác bít kín", "lat": "10.76", "long": "106.66"}


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    buckets = TokenBuckets(Rate(per_minute=60, burst=3), max_keys=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == pytest.approx(1.0)  # one token a second
    assert buckets.take("a", 1.0) == 0.0
    assert buckets.take("b", 1.0) == 0.0  # another client has its own bucket
    buckets.take("c", 1.0)
    assert len(buckets._buckets) == 2  # bounded: the least recently used key is forgotten
    assert TokenBuckets(Rate(0, 1)).take("x", 0.0) == 0.0  # 0 turns the limit off


@dataclass
class Served:
    url: str
    port: int
    session: aiohttp.ClientSession


@pytest.fixture
async def serve(store: Store):
    runners = []

    async def start(limits: HttpLimits, routes: tuple[web.RouteDef, ...] = ()) -> Served:
        ctx = AppContext(settings=Settings(), directory=load_directory(None), store=store, clock=store.clock,
                         http=make_app(1 << 20, limits))
        build(ctx, ChannelEntry(kind="open311", name="app"), Open311Options())
        ctx.http.add_routes(routes)
        health.add_routes(ctx, timeout=2.0)
        runner = web.AppRunner(ctx.http, keepalive_timeout=limits.keepalive_timeout_seconds)
        await runner.setup()
        runners.append(runner)
        site = GuardedSite(runner, "127.0.0.1", 0, max_connections=limits.max_connections,
                           header_timeout=limits.header_timeout_seconds, max_per_ip=limits.max_connections_per_ip)
        await site.start()
        return Served(f"http://127.0.0.1:{site.port}", site.port, session)

    async with aiohttp.ClientSession() as session:
        yield start
    for runner in runners:
        await runner.cleanup()


async def _post(served: Served, data: dict, headers: dict | None = None) -> tuple[int, dict, str]:
    async with served.session.post(served.url + "/open311/v2/requests.json", data=data, headers=headers or {}) as r:
        return r.status, dict(r.headers), await r.text()


async def test_per_ip_limit_answers_429_with_retry_after(serve) -> None:
    served = await serve(HttpLimits(per_ip_per_minute=6, per_ip_burst=3))
    statuses = [(await _post(served, dict(REPORT, description=f"Cống số {i}")))[0] for i in range(5)]
    assert statuses == [201, 201, 201, 429, 429]
    status, headers, text = await _post(served, REPORT)
    assert status == 429 and int(headers["Retry-After"]) >= 1 and "too many requests" in text
    async with served.session.get(served.url + "/healthz") as resp:  # reading is not limited
        assert resp.status == 200


async def test_per_api_key_and_per_device_limits(serve) -> None:
    served = await serve(HttpLimits(per_api_key_per_minute=1, per_api_key_burst=2,
                                    per_device_per_minute=1, per_device_burst=1))
    keyed = [(await _post(served, dict(REPORT, description=f"k{i}"), {"X-Api-Key": "k1"}))[0] for i in range(3)]
    assert keyed == [201, 201, 429]
    assert (await _post(served, dict(REPORT, description="other key"), {"X-Api-Key": "k2"}))[0] == 201
    assert (await _post(served, dict(REPORT, description="d1", device_id="phone-1")))[0] == 201
    assert (await _post(served, dict(REPORT, description="d2", device_id="phone-1")))[0] == 429
    assert (await _post(served, dict(REPORT, description="d3", device_id="phone-2")))[0] == 201
    assert REFUSALS[("rate_limited", "device")] >= 1


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


async def test_connection_cap_answers_503(serve) -> None:
    served = await serve(HttpLimits(max_connections=2, header_timeout_seconds=30))
    held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    answer = await _read_all(reader)
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in answer
    writer.close()
    for _, w in held:
        w.close()


async def test_one_address_cannot_take_every_connection(serve) -> None:
    # The server's cap is 50; one client address opens 60 connections (on loopback every test client is 127.0.0.1,
    # so the other client comes from 127.0.0.2). Before: the first 50 took the whole cap and the other got 503.
    # The 50 past its own 10 are answered 503 and closed; its 10 stay open, waiting for a request (no header timeout
    # ends one during the test). Before, each connection was given 0.05 s to answer: a busy machine could miss one.
    served = await serve(HttpLimits(max_connections=50, max_connections_per_ip=10, header_timeout_seconds=3600))
    held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(60)]
    reads = {asyncio.create_task(reader.read()): (reader, writer) for reader, writer in held}
    answered: list[bytes] = []
    waiting = set(reads)
    while len(answered) < 50:
        done, waiting = await asyncio.wait(waiting, timeout=BOUND, return_when=asyncio.FIRST_COMPLETED)
        assert done, f"{len(answered)} connections refused, and no other in {BOUND} s"
        answered += [task.result() for task in done]
    assert len(answered) == 50 and all(a.startswith(b"HTTP/1.1 503") and b"Retry-After" in a for a in answered)
    for task in waiting:  # their reads are given up first: a reader takes one waiting read at a time
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for task in waiting:  # the 10 left are served: each answers a request
        reader, writer = reads[task]
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 200")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as other:
        async with other.get(served.url + "/healthz") as resp:
            assert resp.status == 200
    for _, writer in held:
        writer.close()
    # Its slots come back when its connections close.
    await asyncio.sleep(0.1)
    async with served.session.get(served.url + "/healthz") as resp:
        assert resp.status == 200


async def test_a_request_head_that_never_completes_is_closed(serve) -> None:
    served = await serve(HttpLimits(header_timeout_seconds=0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"POST /open311/v2/requests.json HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    assert await _read_all(reader) == b""  # closed by the server, not by this test's timeout
    writer.close()


async def test_a_dribbled_body_gets_408(serve) -> None:
    served = await serve(HttpLimits(body_timeout_seconds=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"POST /open311/v2/requests.json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"service_code\":")
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 408")
    writer.close()


async def _rating(request: web.Request) -> web.Response:
    # Stands for the routes outside intake that read a body: the console's login, agency answers, ratings.
    return web.json_response({"read": len(await request.read())})


async def _slow_intake(request: web.Request) -> web.Response:
    await request.read()
    await asyncio.sleep(0.6)  # work after the body is in (a slow commit, photo URLs fetched): not the client's delay
    return web.json_response({"ok": True}, status=201)


@pytest.mark.parametrize("path", ["/api/v1/cases/tok/rating", "/console/login", "/lookup/tok/dispute"])
async def test_a_dribbled_body_gets_408_on_every_route_not_only_intake(serve, path: str) -> None:
    served = await serve(HttpLimits(body_timeout_seconds=0.3), (web.post(path, _rating),))
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 1000\r\n\r\n{".encode())
    status_line = await asyncio.wait_for(reader.readline(), 10)  # before: held open, a byte a second, for ever
    assert status_line.startswith(b"HTTP/1.1 408")
    writer.close()
    async with served.session.post(served.url + path, data=b"{}") as resp:  # a whole body in time is served
        assert resp.status == 200 and (await resp.json()) == {"read": 2}


async def test_only_the_body_is_timed_not_the_work_after_it(serve) -> None:
    served = await serve(HttpLimits(body_timeout_seconds=0.3), (web.post("/open311/v2/slow.json", _slow_intake),))
    async with served.session.post(served.url + "/open311/v2/slow.json", data=b"{}") as resp:
        assert resp.status == 201, await resp.text()


async def test_signed_webhooks_are_not_rate_limited_per_ip(store: Store) -> None:
    from ingest.limits import ClientLimits, limits_middleware

    buckets = ClientLimits(ip=TokenBuckets(Rate(1, 1)), api_key=TokenBuckets(Rate(1, 1)),
                           device=TokenBuckets(Rate(1, 1)))
    seen = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="ok")

    app = web.Application(middlewares=[limits_middleware(buckets, 5.0, lambda: 0.0)])
    app.router.add_post("/webhooks/messenger/page", handler)
    app.router.add_post("/open311/v2/requests.json", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession() as http:
            hooks = [(await http.post(f"http://127.0.0.1:{site.port}/webhooks/messenger/page", data=b"{}")).status
                     for _ in range(3)]
            public = [(await http.post(f"http://127.0.0.1:{site.port}/open311/v2/requests.json", data=b"")).status
                      for _ in range(2)]
    finally:
        await runner.cleanup()
    assert hooks == [200, 200, 200] and public == [200, 429]
