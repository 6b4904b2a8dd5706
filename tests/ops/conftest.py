"""Fixtures of the ops tests: a store with the dispatch and ops tables, and a week of cases written on the dispatch
stage's committed schema (dispatch/schema.py), the way its case and answer code records them."""
from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from config.directory import load_directory
from config.loader import validate
from dedupe.schema import MIGRATIONS as DEDUPE_MIGRATIONS
from dispatch.schema import MIGRATIONS as DISPATCH_MIGRATIONS
from ingest.app import AppContext
from ingest.clock import VN_TZ, FakeClock, iso
from ingest.http import make_app
from ingest.records import InboundMessage, Reporter
from ingest.pgstore import PgStore
from ingest.store import Store
from ops.schema import MIGRATIONS as OPS_MIGRATIONS

HOUR, DAY = 3600.0, 86400.0
# The reported week: Monday 21 to Sunday 27 September 2026, Vietnam time.
WEEK = datetime(2026, 9, 21, tzinfo=VN_TZ).timestamp()
# "Now": Monday 28 September 2026, 08:00, after the weekly send hour (07:00).
NOW = WEEK + 7 * DAY + 8 * HOUR
REPORTER_PHONE = "0903123456"


@dataclass
class World:
    store: Store
    clock: FakeClock
    seq: itertools.count[int]
    week: float = WEEK  # Monday of the reported week, 00:00 Vietnam time

    async def report(self, at: float, *, agency: str | None, topic: str = "public_transport",
                     category: str = "civic", status: str = "dispatched", incident: str | None = None,
                     text: str = "Xe buýt số 19 bỏ trạm, không đón khách ở trạm Bến Thành",
                     channel: str = "app") -> int:
        n = next(self.seq)
        message = InboundMessage(channel=channel, channel_instance=channel, idempotency_key=f"k{n}",
                                 received_at=iso(at), text=text,
                                 reporter=Reporter(name="Trần Thị B", phone=REPORTER_PHONE))
        result = await self.store.submit(message, text.encode(), "text/plain")
        async with self.store.transaction() as tx:
            await tx.execute("UPDATE reports SET status=?, topic=?, category=?, agency=?, incident_id=?, district=?"
                             " WHERE id=?", (status, topic, category, agency, incident, "quan-1", result.report_id))
        return result.report_id

    async def case(self, case_id: str, *, agency: str, forwarded_at: float, report_id: int,
                   category: str = "civic", state: str = "forwarded", topic: str = "public_transport") -> None:
        async with self.store.transaction() as tx:
            await tx.execute(
                "INSERT INTO cases(id, incident_id, report_id, token, topic, category, agency, state, received_at,"
                " forwarded_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (case_id, "INC-" + case_id, report_id, "tok-" + case_id, topic, category, agency, state,
                 forwarded_at - 60, forwarded_at, forwarded_at, forwarded_at))

    async def answer(self, case_id: str, agency: str, kind: str, at: float) -> None:
        async with self.store.transaction() as tx:
            await tx.execute("INSERT INTO answers(case_id, agency, kind, source, at) VALUES (?,?,?,?,?)",
                             (case_id, agency, kind, "api", at))

    async def deadline(self, case_id: str, agency: str, kind: str, *, started: float, due: float, state: str,
                       closed: float | None = None) -> None:
        async with self.store.transaction() as tx:
            await tx.execute("INSERT INTO deadlines(case_id, agency, kind, started_at, due_at, warn_at, state,"
                             " closed_at) VALUES (?,?,?,?,?,?,?,?)",
                             (case_id, agency, kind, started, due, due - 300, state, closed))

    async def rating(self, case_id: str, score: int, at: float) -> None:
        async with self.store.transaction() as tx:
            await tx.execute("INSERT INTO ratings(case_id, score, at) VALUES (?,?,?)", (case_id, score, at))


MIGRATIONS = {"dedupe": DEDUPE_MIGRATIONS, "dispatch": DISPATCH_MIGRATIONS, "ops": OPS_MIGRATIONS}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock(NOW)
    store = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs", clock=clock, migrations=MIGRATIONS)
    yield World(store=store, clock=clock, seq=itertools.count(1))
    await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    """The same world on either backend: the figures' SQL is written once and must mean the same on both."""
    clock = FakeClock(NOW)
    if request.param == "postgresql":
        store = await PgStore.open(request.getfixturevalue("pg_url"), tmp_path / "blobs", clock, MIGRATIONS)
    else:
        store = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs", clock=clock, migrations=MIGRATIONS)
    yield World(store=store, clock=clock, seq=itertools.count(1))  # type: ignore[arg-type]
    await store.close()


@pytest.fixture
async def any_filled(any_world: World) -> World:
    await fill_week(any_world)
    return any_world


async def fill_week(w: World) -> None:
    """The reported week, with the expected figures in the docstrings of the tests that use it.

    so-gtvt: reports 5, received 4 (C1 C2 C3 C5), handled 3 (C1 C2 C4), answered 2 (C1 C4), returned 1 (C3);
    deadlines on time: answer 1 (C1), return_misroute 1 (C3); late: fix 1 (C5 open past due); ratings 5 and 2.
    cay-xanh: received 1 (C3 re-routed), handled 1, answered 1; late: site_check 1 (missed), fix 1 (met late).
    van-hanh-1022: on time: forward 1 (the portal's clock on C5, recorded with agency so-gtvt).
    """
    W = WEEK
    r1 = await w.report(W + DAY - 120, agency="so-gtvt", incident="INC-C1")
    await w.report(W + DAY + 600, agency="so-gtvt", incident="INC-C1", status="duplicate")
    await w.case("C1", agency="so-gtvt", forwarded_at=W + DAY, report_id=r1, state="resolved")
    await w.answer("C1", "so-gtvt", "acknowledged", W + DAY + HOUR)
    await w.answer("C1", "so-gtvt", "resolved", W + 2 * DAY)
    await w.deadline("C1", "so-gtvt", "answer", started=W + DAY, due=W + 8 * DAY, state="met", closed=W + 2 * DAY)
    await w.rating("C1", 5, W + 3 * DAY)

    r2 = await w.report(W + 2 * DAY - 60, agency="so-gtvt", incident="INC-C2")
    await w.case("C2", agency="so-gtvt", forwarded_at=W + 2 * DAY, report_id=r2, state="in_progress")
    await w.answer("C2", "so-gtvt", "in_progress", W + 3 * DAY)
    await w.deadline("C2", "so-gtvt", "answer", started=W + 2 * DAY, due=W + 9 * DAY, state="open")

    # Misrouted: so-gtvt returns it in 2 h, the operator re-routes it to cay-xanh, which is late on both clocks.
    r3 = await w.report(W + DAY - 60, agency="so-gtvt", incident="INC-C3", topic="fallen_tree",
                        category="infrastructure")
    t3 = W + DAY + 3 * HOUR
    await w.case("C3", agency="cay-xanh", forwarded_at=t3, report_id=r3, category="infrastructure", state="resolved")
    await w.deadline("C3", "so-gtvt", "answer", started=W + DAY, due=W + 8 * DAY, state="cancelled",
                     closed=W + DAY + 2 * HOUR)
    await w.answer("C3", "so-gtvt", "returned", W + DAY + 2 * HOUR)
    await w.deadline("C3", "so-gtvt", "return_misroute", started=W + DAY, due=W + DAY + 24 * HOUR, state="met",
                     closed=W + DAY + 2 * HOUR)
    await w.deadline("C3", "cay-xanh", "site_check", started=t3, due=t3 + 2 * HOUR, state="missed")
    await w.deadline("C3", "cay-xanh", "fix", started=t3, due=t3 + 2 * HOUR, state="met_late", closed=t3 + 5 * HOUR)
    await w.answer("C3", "cay-xanh", "resolved", t3 + 5 * HOUR)

    # Forwarded the week before, resolved this week: handled and answered now, its late clock belongs to last week.
    r4 = await w.report(W - 2 * DAY - 60, agency="so-gtvt", incident="INC-C4")
    await w.case("C4", agency="so-gtvt", forwarded_at=W - 2 * DAY, report_id=r4, state="resolved")
    await w.deadline("C4", "so-gtvt", "answer", started=W - 2 * DAY, due=W - DAY, state="met_late", closed=W + DAY)
    await w.answer("C4", "so-gtvt", "resolved", W + DAY)
    await w.rating("C4", 2, W + 2 * DAY)

    # Sunday: the fix clock ran out and nobody has answered (open past due), the forward clock was met.
    r5 = await w.report(W + 6 * DAY - 60, agency="so-gtvt", incident="INC-C5", topic="road_damage",
                        category="infrastructure")
    await w.case("C5", agency="so-gtvt", forwarded_at=W + 6 * DAY, report_id=r5, category="infrastructure")
    await w.deadline("C5", "so-gtvt", "forward", started=W + 6 * DAY - 60, due=W + 6 * DAY + 240, state="met",
                     closed=W + 6 * DAY)
    await w.deadline("C5", "so-gtvt", "fix", started=W + 6 * DAY, due=W + 6 * DAY + 2 * HOUR, state="open")

    # Not routed: never counted for anyone.
    await w.report(W + 3 * DAY, agency=None, topic="abusive", category="rejected", status="rejected")


def make_context(store: Store, clock: FakeClock, ops: dict | None = None, dispatch: dict | None = None) -> AppContext:
    raw: dict = {"ops": ops or {}, "dispatch": dispatch or {}}
    settings = validate(raw, env={})
    return AppContext(settings=settings, directory=load_directory(None), store=store, clock=clock,
                      http=make_app(1 << 20))


@pytest.fixture
async def filled(world: World) -> World:
    await fill_week(world)
    return world


@pytest.fixture
def context_for() -> object:
    return make_context


@dataclass
class Served:
    ctx: AppContext
    url: str
    service: object


@pytest.fixture
async def serve_ops():
    """Start build(ctx)'s routes on a real loopback HTTP server (port 0); returns a factory taking the context."""
    from aiohttp import web

    from ops.service import build

    runners: list[web.AppRunner] = []
    services: list[object] = []

    async def start(ctx: AppContext) -> Served:
        (service,) = build(ctx)
        services.append(service)
        runner = web.AppRunner(ctx.http)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return Served(ctx=ctx, url=f"http://127.0.0.1:{port}", service=service)

    yield start
    for runner in runners:
        await runner.cleanup()
    for service in services:
        service.close()  # type: ignore[attr-defined]
