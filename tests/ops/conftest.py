"""Fixtures of the ops tests: a store with the dispatch and ops tables, and a week of cases made by the stages' own
code (tests/seed.py): each report is submitted, classified and grouped as classify and dedupe do, its case is made
by the real dispatch stage and delivered to a loopback agency webhook by the real delivery sender, and the agencies'
answers and the reporters' ratings go through the CaseBook the agency API and the console use, each at the exact
time of the FakeClock the figures need. No figure rests on a row written by hand."""
from __future__ import annotations

import base64
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from classifier.schema import MIGRATIONS as CLASSIFIER_MIGRATIONS
from config.directory import load_directory
from config.loader import validate
from dedupe.schema import MIGRATIONS as DEDUPE_MIGRATIONS
from config.dispatch import dispatch_settings
from dispatch.book import make_book
from dispatch.cases import CaseBook, case_id_for
from dispatch.delivery import DeliverySender
from dispatch.schema import MIGRATIONS as DISPATCH_MIGRATIONS
from ingest.app import AppContext
from ingest.clock import VN_TZ, FakeClock, iso
from ingest.http import make_app
from ingest.records import Candidate, Classification, InboundMessage, Place, Reporter
from ingest.pgstore import PgStore
from ingest.store import Store
from ops.schema import MIGRATIONS as OPS_MIGRATIONS
from tests import seed
from tests.net import serve_app

HOUR, DAY = 3600.0, 86400.0
# The reported week: Monday 21 to Sunday 27 September 2026, Vietnam time.
WEEK = datetime(2026, 9, 21, tzinfo=VN_TZ).timestamp()
# "Now": Monday 28 September 2026, 08:00, after the weekly send hour (07:00).
NOW = WEEK + 7 * DAY + 8 * HOUR
REPORTER_PHONE = "0903123456"
# The agencies of the week, each with one webhook target: the loopback receiver below.
AGENCIES = ("so-gtvt", "cay-xanh", "vp-ubnd", "van-hanh-1022")
SECRET = "whsec_" + base64.b64encode(b"ops-test-webhook-secret-0123456").decode()
# A photo of the site: an infrastructure case is resolved with one (dispatch's evidence rule).
PHOTO = {"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}


def dispatch_config(url: str) -> dict[str, Any]:
    target = {"kind": "webhook", "name": "main", "url": url, "secrets": [SECRET], "allow_private": True,
              "timeout_seconds": 5.0}
    return {"agencies": {agency: {"targets": [target]} for agency in AGENCIES}}


@dataclass
class World:
    """The store and its clock, with the stages' own code to fill it: every step moves the FakeClock to the time
    it happens at, so each row carries the time the stage itself writes."""

    store: Store
    clock: FakeClock
    ctx: AppContext
    book: CaseBook
    sender: DeliverySender
    webhook: AgencyWebhook
    seq: itertools.count[int]
    week: float = WEEK  # Monday of the reported week, 00:00 Vietnam time
    now: float = NOW  # where the clock stands once the week is filled
    incidents: dict[str, str] = field(default_factory=dict)  # the test's name -> dedupe's incident
    reports: dict[str, int] = field(default_factory=dict)  # the test's name -> the case's first report

    def at(self, t: float) -> None:
        self.clock.advance(t - self.clock.now())

    def case_id(self, name: str) -> str:
        return case_id_for(self.incidents[name])

    async def report(self, at: float, *, agency: str | None, topic: str = "public_transport",
                     category: str = "civic", status: str = "routed", incident: str | None = None,
                     text: str = "Xe buýt số 19 bỏ trạm, không đón khách ở trạm Bến Thành",
                     channel: str = "app", candidates: tuple[Candidate, ...] = ()) -> int:
        """A report received at `at`, classified as `status` says (a classify outcome) and, routed or held for
        review, grouped by dedupe into the incident named `incident` (a new one when not seen yet)."""
        self.at(at)
        n = next(self.seq)
        message = InboundMessage(channel=channel, channel_instance=channel, idempotency_key=f"k{n}",
                                 received_at=iso(at), text=text,
                                 reporter=Reporter(name="Trần Thị B", phone=REPORTER_PHONE))
        rid = await seed.submit(self.store, message)
        await seed.classify(self.store, rid, Classification(
            status=status, topic=topic, category=category, agency=agency, confidence=0.9,
            place=Place(district="quan-1"), candidates=candidates))
        if status in ("routed", "review"):
            joined = await seed.group(self.store, rid, self.incidents.get(incident) if incident else None)
            if incident is not None:
                self.incidents.setdefault(incident, joined)
                self.reports.setdefault(incident, rid)
        return rid

    async def deliver(self) -> None:
        """The delivery sender takes what is due now: the agency has the case (the forwarding clock stops)."""
        while await self.sender.run_once():
            pass

    async def deliver_retries(self) -> None:
        """The delivery sender again once every retry waiting now is due (its backoff is capped)."""
        self.at(self.clock.now() + dispatch_settings(self.ctx.settings).delivery.backoff_cap_seconds)
        await self.deliver()

    async def dispatch(self, name: str, at: float) -> str:
        """The real dispatch stage makes the case of incident `name` at `at`, delivered at once."""
        self.at(at)
        assert await seed.dispatch(self.store, self.book) == 1
        await self.deliver()
        return self.case_id(name)

    async def answer(self, name: str, agency: str, kind: str, at: float, data: dict[str, Any] | None = None,
                     *, staff: bool = False) -> str:
        """An agency's answer through the CaseBook (as the agency API records it); returns the case's state."""
        self.at(at)
        result = await self.book.apply_answer(agency, self.case_id(name), kind, data or {}, source="api", staff=staff)
        await self.deliver()  # a re-route delivers the case to its next holder
        return result.state

    async def rating(self, name: str, score: int, at: float) -> None:
        """The reporter of the case's first report rates its result (the lookup page's rating)."""
        self.at(at)
        await self.book.rate_report(self.reports[name], score, None)


MIGRATIONS = {"classifier": CLASSIFIER_MIGRATIONS, "dedupe": DEDUPE_MIGRATIONS, "dispatch": DISPATCH_MIGRATIONS,
              "ops": OPS_MIGRATIONS}


@dataclass
class AgencyWebhook:
    """The loopback endpoint of every agency: it accepts each delivery, except that it answers 503 to the next
    `failures` requests (an agency's server down, for the delivery sender to record and retry a minute later at
    the earliest)."""

    url: str = ""
    failures: int = 0


@pytest.fixture
async def agency_webhook() -> AsyncIterator[AgencyWebhook]:
    hook = AgencyWebhook()
    app = web.Application()

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        if hook.failures > 0:
            hook.failures -= 1
            # A minute's Retry-After floors the sender's jittered backoff: the retry is never due at once.
            return web.Response(status=503, headers={"Retry-After": "60"})
        return web.json_response({"ok": True})

    app.router.add_post("/hook", accept)
    async with serve_app(app) as base:
        hook.url = f"{base}/hook"
        yield hook


async def make_world(store: Store, clock: FakeClock, webhook: AgencyWebhook) -> World:
    ctx = make_context(store, clock, dispatch=dispatch_config(webhook.url))
    return World(store=store, clock=clock, ctx=ctx, book=make_book(ctx), webhook=webhook,
                 sender=DeliverySender(store, dispatch_settings(ctx.settings)), seq=itertools.count(1))


@pytest.fixture
async def world(tmp_path: Path, agency_webhook: AgencyWebhook) -> AsyncIterator[World]:
    clock = FakeClock(NOW)
    store = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs", clock=clock, migrations=MIGRATIONS)
    w = await make_world(store, clock, agency_webhook)
    yield w
    await w.sender.close()
    await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_world(request: pytest.FixtureRequest, tmp_path: Path,
                    agency_webhook: AgencyWebhook) -> AsyncIterator[World]:
    """The same world on either backend: the figures' SQL is written once and must mean the same on both."""
    clock = FakeClock(NOW)
    if request.param == "postgresql":
        store = await PgStore.open(request.getfixturevalue("pg_url"), tmp_path / "blobs", clock, MIGRATIONS)
    else:
        store = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs", clock=clock, migrations=MIGRATIONS)
    w = await make_world(store, clock, agency_webhook)  # type: ignore[arg-type]
    yield w
    await w.sender.close()
    await store.close()


@pytest.fixture
async def any_filled(any_world: World) -> World:
    await fill_week(any_world)
    return any_world


async def fill_week(w: World) -> None:
    """The reported week, in the order it happened, with the expected figures in the docstrings of the tests.

    so-gtvt: reports 5, received 4 (C1 C2 C3 C5), handled 3 (C1 C2 C4), answered 2 (C1 C4), returned 1 (C3);
    deadlines on time: answer 1 (C1), return_misroute 1 (C3); late 4: C5's three infrastructure clocks
    (subordinate_forward, site_check, fix: open past due, nobody answered) and C3's subordinate_forward (met by
    the return, 50 minutes after the case arrived); ratings 5 and 2.
    cay-xanh: received 1 (C3 re-routed to it), handled 1, answered 1; late: its subordinate_forward, site_check
    and fix clocks (met late, by the result 5 h after it got the case).
    van-hanh-1022: on time: forward 5 (the portal's 5-minute clock, met when each case was delivered: C1 C2 C3
    twice, C5; C4's was the week before), recorded with the receiving agency.
    """
    W = WEEK
    # Forwarded the week before, resolved this week: handled and answered now, its late clock belongs to last week.
    await w.report(W - 9 * DAY - 60, agency="so-gtvt", incident="C4")
    await w.dispatch("C4", W - 9 * DAY)

    await w.report(W + DAY - 120, agency="so-gtvt", incident="C1")
    await w.dispatch("C1", W + DAY - 60)
    # Misrouted: so-gtvt returns it within its hour, the case goes to the next candidate (cay-xanh), which answers
    # 5 h later: late on its 2-hour clocks.
    await w.report(W + DAY - 30, agency="so-gtvt", incident="C3", topic="fallen_tree", category="infrastructure",
                   text="Cây đổ chắn ngang đường Lê Lợi",
                   candidates=(Candidate(topic="fallen_tree", agency="cay-xanh", score=0.8),))
    await w.dispatch("C3", W + DAY)
    assert await w.answer("C4", "so-gtvt", "resolved", W + DAY) == "resolved"
    t3 = W + DAY + 50 * 60
    assert await w.answer("C3", "so-gtvt", "returned", t3, {"reason": "không thuộc thẩm quyền"}) == "forwarded"
    assert (await w.store.fetchone("SELECT agency FROM cases WHERE id=?", (w.case_id("C3"),)))["agency"] == "cay-xanh"
    await w.report(W + DAY + 600, agency="so-gtvt", incident="C1")  # a duplicate of C1
    assert await w.answer("C1", "so-gtvt", "acknowledged", W + DAY + HOUR) == "acknowledged"
    assert await w.answer("C3", "cay-xanh", "resolved", t3 + 5 * HOUR, {"photos": [PHOTO]}) == "resolved"

    await w.report(W + 2 * DAY - 60, agency="so-gtvt", incident="C2")
    await w.dispatch("C2", W + 2 * DAY)
    assert await w.answer("C1", "so-gtvt", "resolved", W + 2 * DAY) == "resolved"
    await w.rating("C4", 2, W + 2 * DAY)
    # Acknowledged only: its 5-working-day answer clock runs on into next week.
    assert await w.answer("C2", "so-gtvt", "acknowledged", W + 3 * DAY) == "acknowledged"
    await w.rating("C1", 5, W + 3 * DAY)

    # Not routed: never counted for anyone.
    await w.report(W + 3 * DAY, agency=None, topic="abusive", category="rejected", status="rejected")

    # Sunday: delivered at once (the forwarding clock met), then nobody answers: its clocks run out.
    await w.report(W + 6 * DAY - 60, agency="so-gtvt", incident="C5", topic="road_damage",
                   category="infrastructure", text="Ổ gà lớn giữa đường Nguyễn Huệ")
    await w.dispatch("C5", W + 6 * DAY)
    w.at(NOW)


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
