"""Fixtures for the portal tests: the daemon's HTTP app as run_daemon builds it (the portal, the public Open311 read
API, the real dispatch API for agency answers and ratings) on a loopback port, over a real store on a FakeClock; helpers that make
photos with GPS in their EXIF, and that move a report through classification and dispatch as those stages do."""
from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

import run_daemon
from config.directory import load_directory
from config.loader import validate
from dispatch import queries as dispatch_queries
from dispatch.book import make_book
from ingest.app import AppContext
from ingest.clock import FakeClock
from ingest.records import Classification, Place
from ingest.store import Store
from tests import seed

MONDAY_9AM = 1788746400.0  # 2026-09-07 09:00 +07:00
AGENCY_TOKEN = "chieu-sang-portal-test-token"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
FORM_KEY = re.compile(r'name="form_key" value="([^"]+)"')


def settings(tmp_path: Path, portal: dict[str, Any] | None = None, base_url: str = "http://1022.example.vn") -> Any:
    email = {"kind": "email", "to": ["x@agency.example.vn"]}
    return validate({
        "store": {"path": str(tmp_path / "db.sqlite3"), "blob_dir": str(tmp_path / "blobs")},
        "http": {"public_base_url": base_url},
        "dispatch": {"agencies": {"chieu-sang": {"targets": [email]}}},
        "portal": {"rate_burst": 50, "rate_per_minute": 60.0, **(portal or {})},
        "secrets": {"agency.chieu-sang": AGENCY_TOKEN},
    }, {})


@dataclass
class Server:
    ctx: AppContext
    url: str

    @property
    def store(self) -> Store:
        return self.ctx.store


@asynccontextmanager
async def running_server(tmp_path: Path, portal: dict[str, Any] | None = None,
                         base_url: str = "http://1022.example.vn") -> AsyncIterator[Server]:
    # Wired as run_daemon wires the daemon: every component's tables, then the dispatch component (agency API,
    # rating hook), the console's public API and the portal. Stage workers are built but not run: the tests move
    # reports through the stages themselves.
    cfg = settings(tmp_path, portal, base_url)
    store = await run_daemon.open_store(cfg, FakeClock(start=MONDAY_9AM))
    ctx = run_daemon.make_context(cfg, load_directory(), store)
    run_daemon.build_components(ctx, ("dispatch",))
    run_daemon.build_components(ctx, ("console", "portal"))
    runner = web.AppRunner(ctx.http, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Server(ctx, f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()
        await store.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path) as srv:
        yield srv


def photo_with_gps(width: int = 1200, height: int = 900, color: tuple[int, int, int] = (200, 60, 40)) -> bytes:
    """A JPEG whose EXIF holds a camera model and a GPS position, as phones write them."""
    img = Image.new("RGB", (width, height), color)
    exif = Image.Exif()
    exif[0x010F] = "CanaryPhone Maker"  # Make
    exif[0x0110] = "CanaryPhone 12"  # Model
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (10.0, 46.0, 37.0)
    gps[3], gps[4] = "E", (106.0, 42.0, 3.0)
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif, quality=80)
    return out.getvalue()


def has_metadata(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as img:
        return bool(img.getexif()) or "exif" in img.info or b"CanaryPhone" in data


async def classify_and_dispatch(srv: Server, report_id: int, *, topic: str = "street_lighting",
                                agency: str = "chieu-sang", district: str = "quan-1") -> str:
    """The classify and dedupe stages' writes for a routed report in an incident of its own (tests/seed.py), then
    the real dispatch stage: the case id."""
    await seed.classify(srv.store, report_id, Classification(
        status="routed", topic=topic, category="infrastructure", agency=agency, confidence=0.97,
        place=Place(district=district, street="le loi", source="text")))
    incident = await seed.group(srv.store, report_id)
    assert await seed.dispatch(srv.store, make_book(srv.ctx)) == 1
    case = await dispatch_queries.case_of_incident(srv.store, incident)
    assert case is not None
    return str(case["id"])


class FormClient:
    """A cookie-keeping client that gets the form first (its CSRF cookie and token), as a browser would."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def form(self, path: str = "/") -> tuple[str, str, str]:
        async with self.session.get(self.base + path) as resp:
            page = await resp.text()
        csrf, key = CSRF.search(page), FORM_KEY.search(page)
        assert csrf is not None and key is not None
        return page, csrf.group(1), key.group(1)

    async def post(self, path: str, fields: dict[str, str], files: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
                   ) -> tuple[int, str, str | None]:
        data = aiohttp.FormData()
        for name, value in fields.items():
            data.add_field(name, value)
        for filename, content in files:
            data.add_field("media", content, filename=filename, content_type="image/jpeg")
        async with self.session.post(self.base + path, data=data, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp.headers.get("Location")

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base + path, allow_redirects=False) as resp:
            return resp.status, await resp.text()

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[FormClient]:
    c = FormClient(server.url)
    yield c
    await c.close()
