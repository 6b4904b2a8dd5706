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


async def test_stop_while_degraded_does_not_claim_the_store_opened(caplog: pytest.LogCaptureFixture) -> None:
    # Before: every exit from the retries logged "store opened after N failed attempt(s)", a stop included, so an
    # admin read that the store had come back when it never did.
    stop = asyncio.Event()
    attempts = 0

    async def never() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            stop.set()
        raise OSError(errno.EIO, "I/O error")

    with caplog.at_level("WARNING", logger="ingest.degraded"):
        assert await open_or_serve_degraded(never, "127.0.0.1", free_port(), stop, cap=0.01) is None
    assert "store opened" not in caplog.text and "never opened" in caplog.text


async def _postgres_starting_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What a PostgreSQL server still in recovery answers every startup message (protocol 3.0): an ErrorResponse
    with SQLSTATE 57P03, then it closes the connection."""
    try:
        length = int.from_bytes(await reader.readexactly(4), "big")
        body = await reader.readexactly(length - 4)
        if body[:4] == (80877103).to_bytes(4, "big"):  # SSLRequest: "N", then the real startup message
            writer.write(b"N")
            await writer.drain()
            length = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(length - 4)
        fields = b"".join(code + text + b"\0" for code, text in (
            (b"S", b"FATAL"), (b"V", b"FATAL"), (b"C", b"57P03"), (b"M", b"the database system is starting up")))
        payload = fields + b"\0"
        writer.write(b"E" + (len(payload) + 4).to_bytes(4, "big") + payload)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_a_postgresql_server_still_starting_is_waited_for_not_a_reason_to_exit(tmp_path) -> None:
    # Before: asyncpg's CannotConnectNowError was judged by SQLite's rules (not a storage fault) and ended `serve`
    # with a stack trace whenever the database restarted at the same moment (a reboot of both, a failover).
    import run_daemon

    server = await asyncio.start_server(_postgres_starting_up, "127.0.0.1", 0)
    pg_port = server.sockets[0].getsockname()[1]
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nurl = "postgresql://u@127.0.0.1:{pg_port}/db"\nblob_dir = "{tmp_path / "blobs"}"\n'
                      f'[http]\nport = {port}\n', encoding="utf-8")
    settings = run_daemon.load_settings(str(config))
    stop = asyncio.Event()
    opening = asyncio.ensure_future(open_or_serve_degraded(
        lambda: run_daemon.open_store(settings), "127.0.0.1", port, stop, cap=0.05,
        reason=run_daemon.store_fault_reason(settings)))
    try:
        async with aiohttp.ClientSession() as http:
            resp = None
            for _ in range(1500):  # gives up waiting after 30 s: the degraded site is up in milliseconds
                assert not opening.done(), opening.exception()
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        body = await resp.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.02)
            assert resp is not None, "the degraded site never answered"
            assert resp.status == 503 and body["reasons"] == ["store: cannot open (database unreachable); retrying"]
    finally:
        stop.set()
        assert await opening is None
        server.close()
        await server.wait_closed()


async def test_a_postgresql_url_asyncpg_refuses_ends_the_start(tmp_path) -> None:
    # Review of db7dca9: asyncpg's ClientConfigurationError is an InterfaceError, so a bad sslmode was waited for
    # forever as "database unreachable"; waiting cannot fix a config.
    import asyncpg

    import run_daemon

    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nurl = "postgresql://u@127.0.0.1:1/db?sslmode=bogus"\nblob_dir = "{tmp_path}"\n',
                      encoding="utf-8")
    settings = run_daemon.load_settings(str(config))
    with pytest.raises(asyncpg.ClientConfigurationError):
        await open_or_serve_degraded(lambda: run_daemon.open_store(settings), "127.0.0.1", free_port(),
                                     asyncio.Event(), cap=0.01, reason=run_daemon.store_fault_reason(settings))
