"""Both store backends for the store's contract tests: a factory opening SQLite or PostgreSQL on one location,
and reading what is committed through a connection of its own (what an acknowledgement promises)."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ingest.clock import Clock
from ingest.dialect import placeholders
from ingest.migrations import Migration
from ingest.pgstore import PgStore
from ingest.store import Store

BACKENDS = ["sqlite", "postgresql"]

AnyStore = Store | PgStore


class StoreFactory:
    """Opens (and reopens) a store of one backend at one place, closing whatever it opened at the end."""

    def __init__(self, backend: str, tmp_path: Path, url: str | None) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.url = url
        self._opened: list[AnyStore] = []
        # One side session for every read (the server's connections are shared by the whole machine), in turn.
        self._side: asyncpg.Connection | None = None
        self._side_lock = asyncio.Lock()

    async def open(self, clock: Clock | None = None,
                   migrations: dict[str, list[Migration]] | None = None) -> AnyStore:
        store: AnyStore
        if self.backend == "postgresql":
            assert self.url is not None
            store = await PgStore.open(self.url, self.tmp_path / "blobs", clock, migrations)
        else:
            store = await Store.open(self.tmp_path / "store.sqlite3", self.tmp_path / "blobs", clock=clock,
                                     migrations=migrations)
        self._opened.append(store)
        return store

    async def committed(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows as another connection sees them: only what is committed. SQL written with `?` placeholders."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.tmp_path / "store.sqlite3")
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        assert self.url is not None
        async with self._side_lock:
            if self._side is None:
                self._side = await asyncpg.connect(self.url)
            return [tuple(r) for r in await self._side.fetch(placeholders(sql), *params)]

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()
        if self._side is not None:
            await self._side.close()


@pytest.fixture(params=BACKENDS)
async def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    factory = StoreFactory(request.param, tmp_path, url)
    yield factory
    await factory.close_all()


async def cancel_as_it_commits(store: AnyStore, run: Callable[[], Awaitable[Any]],
                               at_commit: Callable[[], Awaitable[None]], after: int = 0) -> None:
    """Start `run()` and cancel it while the store's next transaction (its first; with `after`, the one after that
    many others) commits, the commit done and the caller not yet told: as a stop lands while SQLite's connection
    thread, or PostgreSQL's server, commits (the commit goes on whatever the cancellation does). `at_commit()` runs
    there first (to see what the commit did); returns once `run()` has ended, cancelled."""
    committed, proceed = asyncio.Event(), asyncio.Event()
    real = store.transaction
    passed = 0

    @asynccontextmanager
    async def transaction() -> AsyncIterator[Any]:
        nonlocal passed
        async with real() as tx:
            yield tx
        passed += 1
        if passed == after + 1:
            committed.set()
            await proceed.wait()

    store.transaction = transaction  # type: ignore[method-assign]
    paused = asyncio.ensure_future(committed.wait())
    try:
        task = asyncio.ensure_future(run())
        await asyncio.wait({task, paused}, return_when=asyncio.FIRST_COMPLETED)
        assert committed.is_set(), "run() ended without a transaction"
        await at_commit()
        task.cancel()
        proceed.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        paused.cancel()
        del store.transaction  # the class's again


async def cancel_when(run: Callable[[], Awaitable[Any]], reached: asyncio.Event) -> None:
    """Start `run()` and cancel it once `reached` is set: a peer that took the request and holds its answer sets it,
    so the stop lands mid-send, the peer having what was sent and the caller not its answer. Returns once `run()`
    has ended, cancelled."""
    task = asyncio.ensure_future(run())
    waiting = asyncio.ensure_future(reached.wait())
    try:
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        assert reached.is_set(), f"run() ended before it reached the peer: {task.result()!r}"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        waiting.cancel()


@contextmanager
def when_logged(logger: str, fragment: str) -> Iterator[asyncio.Event]:
    """An event set once `logger` logs a line containing `fragment` (INFO and up, enabled for the while)."""
    seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if fragment in record.getMessage():
                seen.set()

    target, watch = logging.getLogger(logger), Watch(logging.INFO)
    level = target.level
    target.setLevel(logging.INFO)
    target.addHandler(watch)
    try:
        yield seen
    finally:
        target.removeHandler(watch)
        target.setLevel(level)


async def cancel_mid_thread(run: Callable[[], Awaitable[Any]], reached: asyncio.Event) -> asyncio.Task[Any]:
    """Start `run()` and cancel it once `reached` is set, a send in a worker thread (smtplib) held by the peer; return
    its task as soon as the stop has reached that send (queue.Held says so in its log: the stop now waits for the
    thread), or the task ended (a sender that does not wait). The caller lets the peer answer and awaits the task."""
    task = asyncio.ensure_future(run())
    with when_logged("ingest.queue", "sends in a thread") as waiting_for_thread:
        seen = asyncio.ensure_future(reached.wait())
        try:
            await asyncio.wait({task, seen}, return_when=asyncio.FIRST_COMPLETED)
            assert reached.is_set(), f"run() ended before it reached the peer: {task.result()!r}"
            task.cancel()
            waiting = asyncio.ensure_future(waiting_for_thread.wait())
            try:
                await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
        finally:
            seen.cancel()
    return task


async def stop_keeps_the_send_in_its_thread(store: Any, stage: str, run: Callable[[], Awaitable[Any]],
                                            other: Callable[[], Awaitable[Any]], sink: Any) -> None:
    """The check every sender of mail in a thread passes: `run()` (its `stage` job's send held by the loopback relay
    `sink`) is stopped mid-send; the job stays leased while the thread sends, `other()` (the next generation's
    sender, or another instance's) finds nothing to take, and once the relay answers the stop ends and the job is
    done. Before Held.in_thread the job was given back at once, ('ready', 0), and sent again in parallel."""
    async def jobs() -> list[tuple[str, int]]:
        return await job_states(store, stage)

    sink.gate = asyncio.Event()
    try:
        task = await cancel_mid_thread(run, sink.taken)
        assert not task.done(), "the stop did not wait for the SMTP thread"
        assert await jobs() == [("leased", 1)]
        assert await other() == 0
    finally:
        sink.gate.set()  # the relay answers (a failing test ends at once, not at the relay timeout)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await jobs() == [("done", 1)]


async def job_states(store: Any, stage: str) -> list[tuple[str, int]]:
    """(state, attempts) of the stage's jobs, in the order they were queued."""
    rows = await store.fetchall("SELECT state, attempts FROM jobs WHERE stage=? ORDER BY id", (stage,))
    return [(r["state"], r["attempts"]) for r in rows]


async def stop_as_the_lease_commits_gives_back(store: Any, stage: str, run: Callable[[], Awaitable[Any]],
                                              count: int) -> None:
    """The check every caller of queue.lease passes: `run()` is cancelled just after its lease of the stage's
    `count` jobs commits; they are then due again at once, attempts not counted, not leased to nobody until their
    leases expire."""
    async def taken() -> None:
        assert await job_states(store, stage) == [("leased", 1)] * count

    await cancel_as_it_commits(store, run, taken)
    assert await job_states(store, stage) == [("ready", 0)] * count
