"""Fixtures for the console tests: a real store with every component's tables on a FakeClock, the daemon's HTTP
app with the console, public and portal routes on a loopback port, console users, and seeding helpers that leave the
rows the classify, dedupe and dispatch stages would leave."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from classifier.schema import MIGRATIONS as CLASSIFIER
from config.directory import load_directory
from config.loader import validate
from console import service as console_service
from console.auth import create_user
from console.schema import MIGRATIONS as CONSOLE
from dedupe.schema import MIGRATIONS as DEDUPE
from dispatch import queries as dispatch_queries
from dispatch.book import make_book
from dispatch.schema import MIGRATIONS as DISPATCH
from ingest.app import AppContext
from ingest.clock import FakeClock, iso
from ingest.http import make_app
from ingest.records import Candidate, Classification, InboundMessage, Place, Reporter
from ingest.store import Store
from portal import service as portal_service
from portal.schema import MIGRATIONS as PORTAL
from tests import seed

MONDAY_9AM = 1788746400.0  # 2026-09-07 09:00 +07:00
PASSWORD = "correct horse battery"


def settings() -> Any:
    email = {"kind": "email", "to": ["x@agency.example.vn"]}
    return validate({
        "http": {"public_base_url": "https://1022.example.vn"},
        "dispatch": {"agencies": {
            "sawaco": {"targets": [email]},
            # Authorised by config to receive confidential reporters' details (Art. 9).
            "thoat-nuoc": {"targets": [email], "receives_confidential": True},
            "van-hanh-1022": {"targets": [email]},
        }},
    }, {})


@dataclass
class Server:
    ctx: AppContext
    url: str

    @property
    def store(self) -> Store:
        return self.ctx.store


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    clock = FakeClock(start=MONDAY_9AM)
    store = await Store.open(tmp_path / "db.sqlite3", tmp_path / "blobs", clock=clock,
                             migrations={"classifier": CLASSIFIER, "dedupe": DEDUPE, "dispatch": DISPATCH,
                                         "console": CONSOLE, "portal": PORTAL})
    ctx = AppContext(settings=settings(), directory=load_directory(), store=store, clock=clock, http=make_app(10_000_000))
    assert console_service.build(ctx) == []
    assert portal_service.build(ctx) == []  # the public pages for people (/public) are the portal's
    runner = web.AppRunner(ctx.http, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    for role, agency in (("operator", None), ("admin", None), ("agency", "sawaco"), ("agency", "thoat-nuoc")):
        await create_user(store, agency or role, role, PASSWORD, agency=agency)
    yield Server(ctx, f"http://127.0.0.1:{runner.addresses[0][1]}")
    await runner.cleanup()
    await store.close()


_seq = iter(range(1, 1_000_000))


def _report(store: Store, *, text: str, status: str = "routed", topic: str = "water_supply",
            agency: str | None = "sawaco", district: str | None = "quan-1", confidence: float = 0.9,
            reporter: Reporter | None = None, candidates: tuple[Candidate, ...] = (), place: Place | None = None,
            lat: float | None = None, lon: float | None = None,
            channel: str = "app", service_code: str | None = None) -> tuple[InboundMessage, Classification]:
    """A report as a channel stores it (`service_code`: the topic its reporter chose in the app), and the
    classification the test gives it."""
    n = next(_seq)
    msg = InboundMessage(channel=channel, channel_instance=channel, idempotency_key=f"k{n}",
                         received_at=iso(store.clock.now()), text=text, reporter=reporter or Reporter(), lat=lat,
                         lon=lon, service_code=service_code)
    cls = Classification(status=status, topic=topic, category="infrastructure", agency=agency,
                         confidence=confidence, place=place or Place(district=district), candidates=candidates)
    return msg, cls


async def seed_report(store: Store, *, text: str, incident: str | None = None, vector: np.ndarray | None = None,
                      **kw: Any) -> int:
    """A report as the classify stage leaves it, by its own writes (tests/seed.py): its `status` is a classify
    outcome (routed, review, rejected, out_of_scope), its embedding `vector` when given, and it waits for the next
    stage's job. With `incident`, dedupe's job is finished too, joining that incident (a new one, the next number,
    when it is not open yet): a routed report joining an incident that has a case becomes a duplicate, the first
    one of an incident is sent to dispatch."""
    msg, cls = _report(store, text=text, **kw)
    rid = await seed.submit(store, msg)
    await seed.classify(store, rid, cls, vector)
    if incident:
        assert await seed.group(store, rid, incident) == incident, "seed incidents in the order of their numbers"
    return rid


async def seed_case(srv: Server, *, text: str, incident: str, agency: str = "sawaco",
                    vector: np.ndarray | None = None, **kw: Any) -> str:
    """A report classified (with its embedding `vector` when given), grouped and dispatched by the stages' own code
    (tests/seed.py): its incident (the next number: seed cases in the order of their incidents), case, outbox rows
    and clocks."""
    msg, cls = _report(srv.store, text=text, agency=agency, **kw)
    rid = await seed.submit(srv.store, msg)
    await seed.classify(srv.store, rid, cls, vector)
    assert await seed.group(srv.store, rid) == incident
    assert await seed.dispatch(srv.store, make_book(srv.ctx)) == 1
    case = await dispatch_queries.case_of_incident(srv.store, incident)
    assert case is not None
    return str(case["id"])


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Browser:
    """A cookie-keeping HTTP client that logs in through the form, like a user's browser would."""

    def __init__(self, base: str, client_address: str = "127.0.0.1") -> None:
        self.base = base
        # The console's cookies are `Secure` (the public URL is https); like a real browser, the client treats
        # the loopback origin as a secure context. `client_address`: another loopback address is another client.
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=base),
            connector=aiohttp.TCPConnector(local_addr=(client_address, 0)))
        self.csrf = ""

    async def login(self, username: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
        async with self.session.get(self.base + "/console/login") as resp:
            token = CSRF.search(await resp.text())
        assert token is not None
        resp = await self.session.post(self.base + "/console/login", allow_redirects=False,
                                       data={"username": username, "password": password, "csrf": token.group(1)})
        if resp.status == 303:
            page = await self.get("/console/search")
            m = CSRF.search(page[1])
            self.csrf = m.group(1) if m else ""
        return resp

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base + path, allow_redirects=False) as resp:
            return resp.status, await resp.text()

    async def post(self, path: str, data: dict[str, Any] | list[tuple[str, str]], *, csrf: bool = True
                   ) -> tuple[int, str, str | None]:
        fields = list(data.items()) if isinstance(data, dict) else list(data)
        if csrf:
            fields.append(("csrf", self.csrf))
        async with self.session.post(self.base + path, data=fields, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp.headers.get("Location")

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def browser(server: Server) -> AsyncIterator[Browser]:
    b = Browser(server.url)
    yield b
    await b.close()
