"""The machine's PostgreSQL (127.0.0.1:5432, trust auth) for tests: one database per test run, one schema per test.

A run creates `hcmc1022_test_<pid>_<random>` and drops it at its end; each test gets a fresh schema in it (named in
the URL's `search_path`, which asyncpg passes to the server), so tests never see each other's rows and no test
pays for a CREATE DATABASE. No server answering: the tests that need one are skipped on a developer's machine and
fail under CI (`CI` set), where the machine always runs PostgreSQL.
"""
from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import quote

import asyncpg

HOST = os.environ.get("HCMC1022_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("HCMC1022_TEST_PG_PORT", "5432"))
USERS = ("postgres", "root")  # the trust-auth roles a machine of this kind has

T = TypeVar("T")


def run_sync(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, even while an event loop runs in this thread (a sync
    fixture asked for by an async one): on a thread of its own, with a loop of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()  # type: ignore[arg-type]


def admin_url(database: str = "postgres") -> str | None:
    """A URL a superuser can use, or None when no server answers (or it refuses every known role)."""
    async def probe() -> str | None:
        for user in USERS:
            url = f"postgresql://{user}@{HOST}:{PORT}/{database}"
            try:
                conn = await asyncpg.connect(url, timeout=5)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError):
                continue
            await conn.close()
            return url
        return None

    return run_sync(probe)


def create_database(admin: str) -> tuple[str, str]:
    """Create this run's database; returns (its name, its URL)."""
    name = f"hcmc1022_test_{os.getpid()}_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    run_sync(create)
    return name, admin.rsplit("/", 1)[0] + "/" + name


def drop_database(admin: str, name: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(admin)
        try:
            # FORCE: a connection a failed test left open must not keep the database alive.
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_sync(drop)


def create_schema(database_url: str) -> tuple[str, str]:
    """A fresh schema in the run's database; returns (its name, a URL whose connections use it)."""
    schema = f"t_{secrets.token_hex(6)}"

    async def create() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()

    run_sync(create)
    return schema, f"{database_url}?search_path={quote(schema)}"


def drop_schema(database_url: str, schema: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    run_sync(drop)
