"""Leader leases: what must run once across instances (clocks, the periodic sender, Telegram and IMAP polling).

On PostgreSQL a lease is a session-level advisory lock (`pg_try_advisory_lock`) held on one dedicated connection
per instance, never a pooled one: the lock lives exactly as long as that server session. When the holder dies
(kill -9, a lost host) its session ends and the lock is free; the others try every `interval` seconds, so one of
them takes over within seconds. A holder that stops answering without its socket closing (frozen, partitioned)
is ended by the server itself: the session runs with `idle_session_timeout` and TCP keepalives, and a healthy
holder sends a heartbeat well inside them. A holder learns that it lost its session from the heartbeat or
asyncpg's termination callback, and stops its singletons at once (`Lease.lost`).

Between the old holder's session ending and it noticing, both may run for up to one interval: the singletons
are idempotent under the store's keys (a clock step, a sent report, an IMAP cursor), so that overlap repeats no
effect; the lease keeps the steady state to one runner, it is not a fence for every write. A singleton that
needed one (a write that is not idempotent) would have to check the lease inside the write's own transaction and
make a new holder wait for the writes checked under the old one: none does now (dedupe orders its decisions by
district locks instead, dedupe/blocks.py), so there is no such fence.

On SQLite there is one instance per store file, so every lease is held from the start (`LocalLeadership`).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncpg

log = logging.getLogger(__name__)

# asyncpg's ways of saying the session is gone (closed socket, terminated backend, a server going down).
_CONNECTION_LOST = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                    asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError, asyncpg.IdleSessionTimeoutError)


def lock_key(name: str) -> int:
    """The advisory lock's 64-bit key for a lease name: stable across instances and versions, namespaced so that
    another application's advisory locks in the same database do not collide with ours."""
    return int.from_bytes(hashlib.sha256(b"hcmc1022-lease:" + name.encode()).digest()[:8], "big", signed=True)


class Lease:
    """One named lease as this instance sees it: `held` now, `acquired` set while held, `lost` set while not."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = lock_key(name)
        self.acquired = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost.set()

    @property
    def held(self) -> bool:
        return self.acquired.is_set()

    def _set(self, held: bool, *, released: bool = False) -> None:
        if held == self.held:
            return
        if held:
            self.lost.clear()
            self.acquired.set()
            log.info("lease %s taken: this instance runs it", self.name)
        else:
            self.acquired.clear()
            self.lost.set()
            if released:  # a stop gives it up: nothing went wrong, so no warning on every clean stop
                log.info("lease %s released: this instance stops", self.name)
            else:
                log.warning("lease %s lost: this instance stops running it", self.name)


class Leadership(Protocol):
    def lease(self, name: str) -> Lease: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class LocalLeadership:
    """One instance per store (SQLite): every lease is this instance's from the start."""

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}

    def lease(self, name: str) -> Lease:
        if name not in self._leases:
            self._leases[name] = Lease(name)
            self._leases[name]._set(True)
        return self._leases[name]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for lease in self._leases.values():
            lease._set(False, released=True)


class PgLeadership:
    """Advisory-lock leases on one dedicated PostgreSQL session of this instance."""

    def __init__(self, url: str, *, interval: float = 1.0, session_timeout: float = 10.0,
                 connect: Callable[..., Awaitable[asyncpg.Connection]] = asyncpg.connect) -> None:
        if session_timeout <= 2 * interval:
            raise ValueError("session_timeout must leave room for heartbeats (more than twice the interval)")
        self._url = url
        self.interval = interval
        self.session_timeout = session_timeout
        self._connect = connect
        self._leases: dict[str, Lease] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()
        self._closing = False

    @property
    def backend_pid(self) -> int | None:
        """The server process holding this instance's leases (for operators, and the takeover test)."""
        return self._conn.get_server_pid() if self._conn is not None and not self._conn.is_closed() else None

    def lease(self, name: str) -> Lease:
        if name not in self._leases:
            self._leases[name] = Lease(name)
            self._poke.set()  # try for it now, not at the next tick
        return self._leases[name]

    async def start(self) -> None:
        if self._task is None:
            self._closing = False  # started again after a close (a reload, the takeover test)
            self._task = asyncio.create_task(self._run(), name="leases")

    async def close(self) -> None:
        self._closing = True  # the loop also ends by itself: a cancellation can be lost (below)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for lease in self._leases.values():
            lease._set(False, released=True)
        await self._drop_session()  # closing the session frees every lock it holds, for the others at once

    async def _run(self) -> None:
        # Not `while True`: on Python 3.11 a cancellation that lands as `wait_for`'s inner wait completes (the poke,
        # the heartbeat's own timeout) is swallowed, and close() then waited for this loop forever (seen once in
        # CI: a stop hung 300 s).
        while not self._closing:
            try:
                await self._tick()
            except _CONNECTION_LOST as exc:
                log.warning("lease session lost (%s); trying again", type(exc).__name__)
                await self._drop_session()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.interval)
            self._poke.clear()

    async def _tick(self) -> None:
        if self._conn is None or self._conn.is_closed():
            await self._drop_session()
            self._conn = await self._open_session()
        conn = self._conn
        # The heartbeat: proves the session (and so every lock on it) is still ours, and keeps it from idling out.
        await conn.fetchval("SELECT 1", timeout=self.session_timeout / 2)
        for lease in list(self._leases.values()):
            if lease.held:
                continue
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lease.key, timeout=self.session_timeout / 2):
                continue
            lease._set(True)

    async def _open_session(self) -> asyncpg.Connection:
        idle_ms = str(int(self.session_timeout * 1000))
        keepalive = str(max(1, int(self.session_timeout / 3)))
        conn = await self._connect(self._url, timeout=self.session_timeout, server_settings={
            "application_name": "hcmc1022-leases",
            # A holder that stops sending heartbeats (frozen, cut off) loses its session, hence its locks.
            "idle_session_timeout": idle_ms,
            "tcp_keepalives_idle": keepalive, "tcp_keepalives_interval": "1", "tcp_keepalives_count": "3",
        })
        conn.add_termination_listener(self._on_terminated)
        return conn

    def _on_terminated(self, conn: asyncpg.Connection) -> None:
        # Called by asyncpg when the server ends the session (pg_terminate_backend, a restart): the locks are gone.
        if conn is self._conn:
            self._mark_all_lost()
            self._poke.set()

    def _mark_all_lost(self) -> None:
        for lease in self._leases.values():
            lease._set(False)

    async def _drop_session(self) -> None:
        self._mark_all_lost()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), self.interval)
            except Exception:
                conn.terminate()


async def run_while_held(lease: Lease, body: Callable[[], Awaitable[None]], *,
                         on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run `body` whenever this instance holds `lease`; cancel it the moment the lease is lost, then wait to hold
    it again. For a singleton written as a long-running coroutine (a poller, a clock loop)."""
    while True:
        await lease.acquired.wait()
        task = asyncio.create_task(body(), name=f"lease:{lease.name}")
        lost = asyncio.create_task(lease.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
            try:
                await task  # the singleton's own fault propagates, for its supervisor to see
            except asyncio.CancelledError:
                pass
            if on_stop is not None:
                await on_stop()
        if lease.held:
            return  # the body finished by itself while still leader: its job is done
