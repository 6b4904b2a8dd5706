"""Public transparency (Art. 8.2, 9): the Open311 GeoReport v2 read API in JSON and XML, and a public page.

Nothing here shows personal data: rows pass through ingest.public.public_request, which drops reporter
fields and redacts contacts and the reporter's own name inside the text.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any

from aiohttp import web

from ingest.app import AppContext
from ingest.clock import VN_TZ, iso
from ingest.public import CLOSED_STATES, HIDDEN_STATES, public_request

from .render import render

PREFIX = "/open311/v2"
DEFAULT_WINDOW_DAYS = 90  # GeoReport v2: without dates, the last 90 days
MAX_PAGE_SIZE = 1000


class QueryError(Exception):
    pass


def _parse_date(value: str, name: str) -> float:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name} must be a W3C date-time such as 2026-09-01T00:00:00+07:00") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=VN_TZ)).timestamp()


def build_query(params: Any, now: float) -> tuple[str, list[Any], int, int]:
    """SQL filter for the Open311 query parameters; raises QueryError with a message the client can act on."""
    where = [f"status NOT IN ({','.join('?' * len(HIDDEN_STATES))})"]
    args: list[Any] = sorted(HIDDEN_STATES)
    if params.get("service_request_id"):
        ids = []
        for part in params["service_request_id"].split(","):
            if not part.strip().isdigit():
                raise QueryError("service_request_id must be a comma-separated list of ids")
            ids.append(int(part))
        where.append(f"id IN ({','.join('?' * len(ids))})")
        args.extend(ids)
    else:
        end = _parse_date(params["end_date"], "end_date") if params.get("end_date") else now
        start = (_parse_date(params["start_date"], "start_date") if params.get("start_date")
                 else end - DEFAULT_WINDOW_DAYS * 86400)
        where.append("received_at BETWEEN ? AND ?")
        args.extend([start, end])
    if params.get("service_code"):
        codes = [c.strip() for c in params["service_code"].split(",") if c.strip()]
        where.append(f"topic IN ({','.join('?' * len(codes))})")
        args.extend(codes)
    status = params.get("status")
    if status:
        closed = sorted(CLOSED_STATES)
        if status == "closed":
            where.append(f"status IN ({','.join('?' * len(closed))})")
        elif status == "open":
            where.append(f"status NOT IN ({','.join('?' * len(closed))})")
        else:
            raise QueryError("status must be open or closed")
        args.extend(closed)
    for name in ("agency_responsible", "district"):
        if params.get(name):
            where.append(f"{'agency' if name == 'agency_responsible' else 'district'} = ?")
            args.append(params[name])
    try:
        page = int(params.get("page", "1"))
        size = int(params.get("page_size", "100"))
    except ValueError:
        raise QueryError("page and page_size must be integers") from None
    if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
        raise QueryError(f"page must be ≥ 1 and page_size between 1 and {MAX_PAGE_SIZE}")
    return " AND ".join(where), args, page, size


def to_xml(items: list[dict[str, Any]]) -> bytes:
    root = ET.Element("service_requests")
    for item in items:
        request = ET.SubElement(root, "request")
        for key, value in item.items():
            ET.SubElement(request, key).text = "" if value is None else str(value)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


def xml_error(code: int, description: str) -> bytes:
    root = ET.Element("errors")
    error = ET.SubElement(root, "error")
    ET.SubElement(error, "code").text = str(code)
    ET.SubElement(error, "description").text = description
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


class PublicViews:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/requests.xml", self.list_xml),
            web.get(f"{PREFIX}/requests/{{id}}.xml", self.one_xml),
            web.get("/public", self.page),
            web.get("/public/{id}", self.page_one),
        ]

    async def _rows(self, params: Any) -> list[dict[str, Any]]:
        where, args, page, size = build_query(params, self.ctx.clock.now())
        rows = await self.ctx.store.fetchall(
            f"SELECT id, status, topic, agency, received_at, updated_at, record FROM reports WHERE {where}"
            " ORDER BY received_at DESC, id DESC LIMIT ? OFFSET ?", [*args, size, (page - 1) * size])
        return [public_request(r, self.ctx.directory) for r in rows]

    async def list_json(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self._rows(request.query))
        except QueryError as exc:
            return web.json_response([{"code": 400, "description": str(exc)}], status=400)

    async def list_xml(self, request: web.Request) -> web.Response:
        try:
            body = to_xml(await self._rows(request.query))
        except QueryError as exc:
            return web.Response(body=xml_error(400, str(exc)), status=400, content_type="text/xml")
        return web.Response(body=body, content_type="text/xml", charset="utf-8")

    async def one_xml(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        items = await self._rows({"service_request_id": rid}) if rid.isdigit() else []
        if not items:
            return web.Response(body=xml_error(404, "no such service request"), status=404, content_type="text/xml")
        return web.Response(body=to_xml(items), content_type="text/xml", charset="utf-8")

    async def _steps(self, report_id: int) -> list[dict[str, Any]]:
        # Only the kind and time of each step: event data may hold notes with personal details.
        rows = await self.ctx.store.fetchall("SELECT kind, at FROM events WHERE report_id=? ORDER BY at, id",
                                             (report_id,))
        return [{"kind": r["kind"], "at": iso(r["at"])} for r in rows]

    async def page(self, request: web.Request) -> web.Response:
        try:
            items = await self._rows(request.query)
        except QueryError as exc:
            return render(request, "public_list.html", {"items": [], "error": str(exc)}, status=400)
        return render(request, "public_list.html", {"items": items, "error": None})

    async def page_one(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        items = await self._rows({"service_request_id": rid}) if rid.isdigit() else []
        if not items:
            return render(request, "public_list.html", {"items": [], "error": "Không tìm thấy phản ánh"}, status=404)
        return render(request, "public_one.html", {"item": items[0], "steps": await self._steps(int(rid))})


def add_public_routes(ctx: AppContext) -> None:
    views = PublicViews(ctx)
    # The JSON list shares its path with the app channel's POST; aiohttp allows one GET beside it.
    ctx.http.add_routes([web.get(f"{PREFIX}/requests.json", views.list_json), *views.routes()])


