"""A store that cannot be opened at start (full disk): the daemon serves degraded on its port and keeps trying."""
from __future__ import annotations

import asyncio
import errno
import socket

import aiohttp
import pytest

from ingest.degraded import open_or_serve_degraded
from tests.net import free_port


async def test_serves_degraded_until_the_store_opens() -> None:
    port = free_port()
    allowed = asyncio.Event()
    attempts = 0

    async def open_store() -> str:
        nonlocal attempts
        attempts += 1
        if not allowed.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return "store"

    opening = asyncio.ensure_future(open_or_serve_degraded(open_store, "127.0.0.1", port, asyncio.Event(), cap=0.05))
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    assert resp.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["reasons"] == ["store: cannot open (disk full); retrying"]
        async with http.post(f"http://127.0.0.1:{port}/open311/v2/requests.json", data={"a": "b"}) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"]
            assert (await resp.json())[0]["code"] == 503
        allowed.set()
        assert await opening == "store"
    assert attempts >= 2
    with socket.socket() as s:  # the degraded server gave the port back for the real one (which reuses it)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


async def test_a_bug_is_not_mistaken_for_an_outage() -> None:
    async def broken() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await open_or_serve_degraded(broken, "127.0.0.1", free_port(), asyncio.Event())


async def test_stop_while_degraded_returns_none() -> None:
    stop = asyncio.Event()

    async def never() -> None:
        stop.set()
        raise OSError(errno.EIO, "I/O error")

    assert await open_or_serve_degraded(never, "127.0.0.1", free_port(), stop) is None
