"""Public transparency (Art. 8.2, 9): the Open311 GeoReport v2 read API in JSON and XML. The public pages for
people (`/public`, in Vietnamese and English, with a map) are the web portal's (portal/views.py), on this query.

Open311 GeoReport v2 (GET only): `services.{json,xml}`, `requests.{json,xml}` with `service_request_id`,
`service_code`, `start_date`, `end_date`, `status` (comma lists allowed, `jurisdiction_id` accepted and
ignored) plus the common `page`/`page_size` extension, and `requests/{id}.{json,xml}`. The POST of the app
channel (channels/open311.py) shares the prefix.

Nothing here shows personal data: rows pass through ingest.public.public_request, which drops reporter
fields, redacts contacts and the reporter's own name inside the text, and withholds confidential content.
The public handling steps come from a whitelist of event kinds and whitelisted fields of their data only.
"""
from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from aiohttp import web

from dispatch.queries import PUBLIC_SELECT, public_report
from ingest.app import AppContext
from ingest.clock import VN_TZ
from ingest.public import CLOSED_STATES, HIDDEN_STATES, UNDECIDED_STATUSES, public_request, services
from ingest.untrusted import row_id
from ingest.vocabulary import DISCOVERY_TEXTS

PREFIX = "/open311/v2"
DEFAULT_WINDOW_DAYS = 90  # GeoReport v2: without dates, the last 90 days
MAX_PAGE_SIZE = 1000
MAX_PAGE = 1_000_000
# When the endpoints below last changed in a way clients notice (Open311 discovery `changeset`).
DISCOVERY_CHANGESET = "2026-12-07T00:00:00+07:00"

SELECT = PUBLIC_SELECT  # the one query behind every public view of a report
# Lists are rendered (every report redacted, then JSON or XML) on one thread of their own. On the event loop, one
# anonymous GET of page_size=1000 over long descriptions held it 7.7 s (nothing acknowledged meanwhile); on the
# shared default executor, a few at once would queue intake's parsing and blob writes behind them.
_RENDER_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="open311-lists")

class QueryError(Exception):
    pass


def _parse_date(value: str, name: str) -> float:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name} must be a W3C date-time such as 2026-09-01T00:00:00+07:00") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=VN_TZ)).timestamp()


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


_UNDECIDED_MARKS = ",".join("?" * len(UNDECIDED_STATUSES))


def build_query(params: Any, now: float) -> tuple[str, list[Any], int, int]:
    """SQL filter for the Open311 query parameters; raises QueryError with a message the client can act on."""
    where = [f"r.status NOT IN ({','.join('?' * len(HIDDEN_STATES))})"]
    args: list[Any] = sorted(HIDDEN_STATES)
    if params.get("service_request_id"):
        ids = []
        for part in params["service_request_id"].split(","):
            rid = row_id(part.strip())
            if rid is None:
                raise QueryError("service_request_id must be a comma-separated list of ids")
            ids.append(rid)
        if len(ids) > MAX_PAGE_SIZE:
            raise QueryError(f"at most {MAX_PAGE_SIZE} service_request_id values")
        where.append(f"r.id IN ({','.join('?' * len(ids))})")
        args.extend(ids)
    else:
        # The spec: service_request_id overrides every other filter; dates default to the last 90 days.
        end = _parse_date(params["end_date"], "end_date") if params.get("end_date") else now
        start = (_parse_date(params["start_date"], "start_date") if params.get("start_date")
                 else end - DEFAULT_WINDOW_DAYS * 86400)
        if start > end:
            raise QueryError("start_date must not be after end_date")
        where.append("r.received_at BETWEEN ? AND ?")
        args.extend([start, end])
        if params.get("service_code"):
            codes = _list(params["service_code"])
            # An undecided report's topic is the classifier's guess, which is not published (ingest/public.py), so
            # it is not filtered by either: it is listed under the topic its reporter chose, as it is shown.
            marks = ",".join("?" * len(codes))
            where.append(f"((r.status NOT IN ({_UNDECIDED_MARKS}) AND r.topic IN ({marks}))"
                         f" OR (r.status IN ({_UNDECIDED_MARKS})"
                         f" AND json_extract(r.record, '$.service_code') IN ({marks})))")
            args.extend([*UNDECIDED_STATUSES, *codes, *UNDECIDED_STATUSES, *codes])
        statuses = set(_list(params.get("status") or ""))
        if statuses - {"open", "closed"}:
            raise QueryError("status must be open, closed, or both comma-separated")
        if len(statuses) == 1:
            closed = sorted(CLOSED_STATES)
            negate = "" if statuses == {"closed"} else "NOT "
            where.append(f"r.status {negate}IN ({','.join('?' * len(closed))})")
            args.extend(closed)
        if params.get("agency_responsible"):
            where.append(f"COALESCE(c.agency, r.agency) = ? AND (c.agency IS NOT NULL OR r.status NOT IN"
                         f" ({_UNDECIDED_MARKS}))")
            args.extend([params["agency_responsible"], *UNDECIDED_STATUSES])
        if params.get("district"):
            where.append("r.district = ?")
            args.append(params["district"])
        if params.get("ward"):  # the 2025 unit's slug, as in route output
            where.append("json_extract(r.classification, '$.place.unit') = ?")
            args.append(params["ward"])
    try:
        page = int(params.get("page", "1"))
        size = int(params.get("page_size", "100"))
    except ValueError:
        raise QueryError("page and page_size must be integers") from None
    # A page past MAX_PAGE its OFFSET would overflow the database's integer (a 500, for page=99999999999999999999).
    if not 1 <= page <= MAX_PAGE or not 1 <= size <= MAX_PAGE_SIZE:
        raise QueryError(f"page must be from 1 to {MAX_PAGE} and page_size from 1 to {MAX_PAGE_SIZE}")
    return " AND ".join(where), args, page, size


def _xml(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


def to_xml(items: list[dict[str, Any]]) -> bytes:
    root = ET.Element("service_requests")
    for item in items:
        request = ET.SubElement(root, "request")
        for key, value in item.items():
            ET.SubElement(request, key).text = "" if value is None else str(value)
    return _xml(root)


def services_xml(items: list[dict[str, Any]]) -> bytes:
    root = ET.Element("services")
    for item in items:
        service = ET.SubElement(root, "service")
        for key, value in item.items():
            ET.SubElement(service, key).text = str(value).lower() if isinstance(value, bool) else str(value)
    return _xml(root)


def xml_error(code: int, description: str) -> bytes:
    root = ET.Element("errors")
    error = ET.SubElement(root, "error")
    ET.SubElement(error, "code").text = str(code)
    ET.SubElement(error, "description").text = description
    return _xml(root)


class PublicViews:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/open311/discovery.json", self.discovery_json),
            web.get(f"{PREFIX}/services.json", self.services_json),
            web.get(f"{PREFIX}/services.xml", self.services_xml),
            web.get(f"{PREFIX}/requests.json", self.list_json),
            web.get(f"{PREFIX}/requests.xml", self.list_xml),
            web.get(PREFIX + "/requests/{id}.json", self.one_json),
            web.get(PREFIX + "/requests/{id}.xml", self.one_xml),
        ]

    async def _query(self, params: Any) -> tuple[list[Any], int, int]:
        where, args, page, size = build_query(params, self.ctx.clock.now())
        rows = await self.ctx.store.fetchall(
            f"{SELECT} WHERE {where} ORDER BY r.received_at DESC, r.id DESC LIMIT ? OFFSET ?",
            [*args, size + 1, (page - 1) * size])
        return rows, page, size

    def _render(self, row: Any) -> dict[str, Any]:
        return public_request(row, self.ctx.directory, self.ctx.settings.http.public_base_url)

    async def _items(self, params: Any) -> list[dict[str, Any]]:
        rows, _, size = await self._query(params)
        return await self._off_loop(lambda: [self._render(r) for r in rows[:size]])

    async def _off_loop(self, work: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(_RENDER_POOL, work)

    async def _one(self, rid: str) -> Any:
        return await public_report(self.ctx.store, rid)

    async def discovery_json(self, request: web.Request) -> web.Response:
        """Open311 service discovery: where the GeoReport v2 endpoint is and which formats it speaks."""
        base = self.ctx.settings.http.public_base_url.rstrip("/")
        return web.json_response({
            "changeset": DISCOVERY_CHANGESET,
            "contact": DISCOVERY_TEXTS["contact"]["vi"].format(base=base),
            "key_service": DISCOVERY_TEXTS["key_service"]["vi"],
            "endpoints": [{"specification": "http://wiki.open311.org/GeoReport_v2", "url": base + PREFIX,
                           "changeset": DISCOVERY_CHANGESET, "type": "production",
                           "formats": ["application/json", "text/xml"]}],
        })

    async def services_json(self, request: web.Request) -> web.Response:
        return web.json_response(services(self.ctx.directory))

    async def services_xml(self, request: web.Request) -> web.Response:
        return web.Response(body=services_xml(services(self.ctx.directory)), content_type="text/xml",
                            charset="utf-8")

    async def list_json(self, request: web.Request) -> web.Response:
        try:
            items = await self._items(request.query)
        except QueryError as exc:
            return web.json_response([{"code": 400, "description": str(exc)}], status=400)
        return web.Response(body=await self._off_loop(lambda: json.dumps(items).encode()),
                            content_type="application/json", charset="utf-8")

    async def list_xml(self, request: web.Request) -> web.Response:
        try:
            items = await self._items(request.query)
            body = await self._off_loop(lambda: to_xml(items))
        except QueryError as exc:
            return web.Response(body=xml_error(400, str(exc)), status=400, content_type="text/xml")
        return web.Response(body=body, content_type="text/xml", charset="utf-8")

    async def one_json(self, request: web.Request) -> web.Response:
        row = await self._one(request.match_info["id"])
        if row is None:
            return web.json_response([{"code": 404, "description": "no such service request"}], status=404)
        return web.json_response([self._render(row)])

    async def one_xml(self, request: web.Request) -> web.Response:
        row = await self._one(request.match_info["id"])
        if row is None:
            return web.Response(body=xml_error(404, "no such service request"), status=404, content_type="text/xml")
        return web.Response(body=to_xml([self._render(row)]), content_type="text/xml",
                            charset="utf-8")


def add_public_routes(ctx: AppContext) -> None:
    """Add the public routes, skipping any GET the app channel already serves (it registers services.json when
    configured): aiohttp would otherwise keep two handlers and use the first. A report's own page
    (requests/{id}.json) is served here only: it reads the report's case, which a channel may not name."""
    taken = {(r.method, r.resource.canonical) for r in ctx.http.router.routes() if r.resource is not None}
    views = PublicViews(ctx)
    ctx.http.add_routes([r for r in views.routes() if ("GET", r.path) not in taken])
