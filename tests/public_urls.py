"""The canary tests' sweep of the public URLs (tests/test_public_privacy.py, tests/test_redteam_privacy.py), on a
daemon built in process (tests/inprocess.py): reports classified, grouped and dispatched by the stages' own code
(tests/seed.py); every public URL there is, fetched without credentials; a response read as a person reads it.

The public URLs are not listed by hand: every GET route of the app, each path parameter filled with every report
id, case id and lookup token there is. A new public route is covered the day it is added.
"""
from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import Iterable
from typing import Any

import aiohttp

from dispatch import queries as dispatch_queries
from dispatch.book import make_book
from dispatch.cases import CaseBook
from ingest.app import AppContext
from ingest.records import Classification, Place
from ingest.store import Store
from ingest.text import fold
from tests import seed

# Listing parameters that make every list route show all there is.
LISTING = "page_size=1000&start_date=2000-01-01T00:00:00Z"


async def report_ids(store: Store, count: int) -> list[int]:
    """The stored reports' ids once there are `count` (intake by mail or folder is asynchronous)."""
    for _ in range(200):
        ids = [r["id"] for r in await store.fetchall("SELECT id FROM reports ORDER BY id")]
        if len(ids) == count:
            return ids
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} reports were not taken in")


async def classify(ctx: AppContext, report_id: int, topic: str, agency: str, status: str = "routed") -> None:
    """The report classified (in the order the reports came in) and grouped into an incident of its own, by the
    classify and dedupe stages' own writes: a routed report then waits for dispatch."""
    category = ctx.directory.topics[topic].category
    await seed.route(ctx.store, report_id, Classification(
        status=status, topic=topic, category=category, agency=agency, confidence=0.95,
        place=Place(district="quan-1", street="le loi")))


async def dispatch_all(ctx: AppContext) -> CaseBook:
    """The real dispatch stage over every waiting dispatch job; the case book it used."""
    book = make_book(ctx)
    while await seed.dispatch(ctx.store, book):
        pass
    return book


async def public_urls(ctx: AppContext, report_ids: Iterable[int]) -> set[str]:
    """Every GET route of the app: without parameters as is and listing everything, with parameters once per
    report id, case id and lookup token there is."""
    reports = [str(i) for i in report_ids]
    pool = reports + [r["id"] for r in await ctx.store.fetchall("SELECT id FROM cases")]
    pool += [r["token"] for r in await ctx.store.fetchall("SELECT token FROM cases")]
    urls: set[str] = set()
    for route in ctx.http.router.routes():
        if route.method not in ("GET", "*") or route.resource is None:
            continue
        canonical = route.resource.canonical
        params = re.findall(r"\{(\w+)", canonical)
        if not params:
            urls |= {canonical, f"{canonical}?service_request_id={','.join(reports)}&{LISTING}",
                     f"{canonical}?{LISTING}&status=open,closed"}
            continue
        for value in pool:
            try:
                urls.add(str(route.resource.url_for(**{p: value for p in params})))
            except (KeyError, ValueError, TypeError):
                continue
    return urls


async def fetch(base: str, urls: Iterable[str]) -> dict[str, str]:
    """url -> body, fetched without credentials and without following redirects."""
    bodies = {}
    async with aiohttp.ClientSession() as s:
        for url in sorted(urls):
            async with s.get(base + url, allow_redirects=False) as resp:
                bodies[url] = await resp.text(errors="replace")
    return bodies


def readable(body: str) -> str:
    """A response body as a person reads it: JSON unescaped, HTML entities decoded, diacritics folded."""
    try:
        body = json.dumps(json.loads(body), ensure_ascii=False)
    except ValueError:
        body = html.unescape(body)
    return fold(body)


def digits_joined(text: str) -> str:
    """`text` with the spacing inside numbers removed ("0903 777 111", "(028) 222-9999" read as digits)."""
    return re.sub(r"(?<=\d)[\s.\-()+\u00a0]+(?=\d)", "", text)


async def case_of(ctx: AppContext, report_id: int) -> Any:
    """The case of the report's incident."""
    report = await ctx.store.get_report(report_id)
    assert report is not None and report.incident_id is not None
    return await dispatch_queries.case_of_incident(ctx.store, report.incident_id)
