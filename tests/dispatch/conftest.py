"""Fixtures for the dispatch tests: a store with the dispatch tables on a FakeClock, seeded reports, a loopback
agency receiver that injects faults, and a loopback SMS gateway."""
from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from config.directory import Directory, load_directory
from config.dispatch import DispatchConfig
from dispatch.calendar import load_calendar
from dispatch.cases import CaseBook
from classifier.schema import MIGRATIONS as CLASSIFIER_MIGRATIONS
from dedupe.schema import MIGRATIONS as DEDUPE_MIGRATIONS
from dispatch.schema import MIGRATIONS
from ingest.clock import FakeClock, iso
from ingest.pgstore import PgStore, PgTx
from ingest.records import Candidate, Classification, InboundMessage, Place, Reporter
from ingest.store import Store
from tests import seed
from tests.net import serve_app

SECRET_A = "whsec_" + base64.b64encode(b"first-secret-key-0123456789abcd").decode()
SECRET_B = "whsec_" + base64.b64encode(b"second-secret-key-0123456789abc").decode()
# 2026-09-07 09:00 +07:00, a Monday.
MONDAY_9AM = 1788746400.0


@pytest.fixture
def fclock() -> FakeClock:
    return FakeClock(start=MONDAY_9AM)


@pytest.fixture
async def dstore(tmp_path: Path, fclock: FakeClock) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "db.sqlite3", tmp_path / "blobs", clock=fclock,
                         migrations={"classifier": CLASSIFIER_MIGRATIONS, "dedupe": DEDUPE_MIGRATIONS,
                                     "dispatch": MIGRATIONS})
    yield s
    await s.close()


@pytest.fixture(scope="session")
def directory() -> Directory:
    return load_directory()


def make_book(store: Store, directory: Directory, cfg: DispatchConfig) -> CaseBook:
    return CaseBook(store, directory, cfg, load_calendar(), "https://1022.example.vn")


_seq = iter(range(1, 1_000_000))


async def seed_report(store: Store, *, text: str = "Ống nước bể trên đường Lê Lợi, nước tràn ra đường.",
                      topic: str = "water_supply", category: str = "infrastructure", agency: str | None = "sawaco",
                      district: str | None = "quan-1", channel: str = "email", incident_id: str | None = "INC-000001",
                      reporter: Reporter | None = None, language: str = "vi", status: str = "routed",
                      candidates: tuple[Candidate, ...] = (), attachments: tuple[Any, ...] = (),
                      reason: str | None = None) -> int:
    """A report as classify and dedupe leave it, by their own code (tests/seed.py): classified as the test says
    (`status`: a classify outcome), then, with `incident_id`, grouped into that incident (a new one, the next
    number, when it does not exist yet: seed incidents in the order of their numbers). The first routed report of
    an incident waits for dispatch (`run_dispatch`); a later one joining an incident with a case is a duplicate."""
    assert status in ("routed", "review", "rejected", "out_of_scope"), "a duplicate is what dedupe makes of it"
    n = next(_seq)
    msg = InboundMessage(channel=channel, channel_instance=channel, idempotency_key=f"k{n}",
                         received_at=iso(store.clock.now()), text=text,
                         reporter=reporter or Reporter(name="Nguyễn Văn An", phone="0901234567",
                                                       email="an@example.vn", reply_to="<m1@example.vn>"),
                         attachments=attachments)
    rid = await seed.submit(store, msg)
    cls = Classification(status=status, topic=topic, category=category, agency=agency, confidence=0.9,
                         place=Place(district=district, street="le loi"), candidates=candidates, language=language,
                         reason=reason)
    await seed.classify(store, rid, cls)
    if incident_id is not None and status in ("routed", "review"):
        assert await seed.group(store, rid, incident_id) == incident_id, "seed incidents in the order of their numbers"
    return rid


async def run_dispatch(store: Store, book: CaseBook, report_id: int, incident_id: str) -> None:
    """Run the real dispatch stage over the dispatch job dedupe left for the report's incident."""
    assert (await store.get_report(report_id)).incident_id == incident_id
    assert await seed.dispatch(store, book) == 1


@dataclass
class Receiver:
    """A loopback agency webhook. `script` holds one behaviour per request, then it answers 200."""

    url: str = ""
    script: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook-id -> body, 2xx only
    in_flight: int = 0
    max_in_flight: int = 0
    delay: float = 0.0


async def _receiver_handler(rx: Receiver, request: web.Request) -> web.StreamResponse:
    rx.in_flight += 1
    rx.max_in_flight = max(rx.max_in_flight, rx.in_flight)
    try:
        body = await request.read()
        rx.requests.append({"headers": dict(request.headers), "body": body})
        step = rx.script.pop(0) if rx.script else "ok"
        if rx.delay:
            await asyncio.sleep(rx.delay)
        if step == "503":
            return web.Response(status=503, headers={"Retry-After": "120"})
        if step == "429":
            return web.Response(status=429, headers={"Retry-After": "30"})
        if step in ("410", "400", "500"):
            return web.Response(status=int(step))
        if step == "redirect":
            raise web.HTTPFound("/elsewhere")
        if step == "timeout":
            await asyncio.sleep(5)
        if step == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)
        if step == "slow_body":
            resp = web.StreamResponse(status=200)
            await resp.prepare(request)
            await resp.write(b"{")
            await asyncio.sleep(5)
            await resp.write(b"}")
            return resp
        rx.accepted.setdefault(request.headers["webhook-id"], json.loads(body))
        return web.json_response({"ok": True})
    finally:
        rx.in_flight -= 1


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await _receiver_handler(rx, request)

    app.router.add_post("/hook", handler)
    async with serve_app(app) as base:
        rx.url = f"{base}/hook"
        yield rx


@dataclass
class SmsSink:
    url: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
async def sms_gateway() -> AsyncIterator[SmsSink]:
    sink = SmsSink()
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer sms-token":
            return web.Response(status=401)
        sink.messages.append(await request.json())
        return web.json_response({"queued": True}, status=sink.status)

    app.router.add_post("/send", handler)
    async with serve_app(app) as base:
        sink.url = f"{base}/send"
        yield sink


def webhook_cfg(url: str, *, agency: str = "sawaco", secrets: list[str] | None = None, **extra: Any
                ) -> dict[str, Any]:
    target = {"kind": "webhook", "name": "main", "url": url, "secrets": secrets or [SECRET_A],
              "allow_private": True, "timeout_seconds": 1.0}
    target.update(extra)
    return {agency: {"targets": [target]}}


# -- two instances on one PostgreSQL database -----------------------------------------------------
@pytest.fixture
async def two(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[PgStore, PgStore]]:
    """Two instances' stores on one PostgreSQL database, b's clock a minute ahead of a's."""
    migrations = {"dedupe": DEDUPE_MIGRATIONS, "dispatch": MIGRATIONS}
    a = await PgStore.open(pg_url, tmp_path / "a", FakeClock(1_788_000_000.0), migrations)
    b = await PgStore.open(pg_url, tmp_path / "b", FakeClock(1_788_000_060.0), migrations)
    yield a, b
    await b.close()
    await a.close()


@pytest.fixture
def after_subject_read(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[int]]:
    """`(reader, write)`: right after `reader` reads a subject's jobs (a burying lease's first read), `write()`
    commits on the other instance, as a race between two reads would have it; returns the list the id of the row
    it wrote (the first of what it returns) goes in.
    Undone by `monkeypatch.undo()` or at the test's end."""
    def install(reader: PgStore, write: Callable[[], Awaitable[tuple[int, ...]]]) -> list[int]:
        written: list[int] = []
        fetchall = PgTx.fetchall

        async def then_write(self: PgTx, sql: str, params: Sequence[Any] = ()) -> Any:
            rows = await fetchall(self, sql, params)
            if self.store is reader and "subject=?" in sql and not written:
                written.append((await write())[0])
            return rows

        monkeypatch.setattr(PgTx, "fetchall", then_write)
        return written
    return install
