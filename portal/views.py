"""The citizen web portal's HTTP handlers: the report form at `/`, the receipt, the private lookup with rating,
the public list and report pages, address suggestions, photos without metadata, the language switch.

Everything works without JavaScript; portal.js only adds the map, the photo preview and resizing, and address
suggestions. The form posts through the same intake as the Open311 app API (channels/open311_intake.py): the same
parsing, idempotency (the form's hidden key) and acknowledgement after commit. Personal data never reaches a
public page: those rows pass through ingest.public.public_request.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web

from channels.open311_intake import Intake
from channels.open311_parse import Open311Error, Photo, parse_body
from config.portal import PortalConfig
from console.public import SELECT, QueryError, build_query, services
from dispatch import queries as dispatch_queries
from dispatch.evidence import answer_photos
from ingest.app import AppContext
from ingest.clock import VN_TZ
from ingest.pii import is_confidential, redact
from ingest.errors import StorageError
from ingest.http import read_form
from ingest.public import (CONFIDENTIAL_NOTE, HIDDEN_STATES, OUT_OF_SCOPE_NOTE, PENDING_NOTE, UNDECIDED_STATUSES,
                           public_request)
from ingest.records import InboundMessage, from_json
from ingest.untrusted import row_id

from . import abuse, photos
from .catalogue import DEFAULT_LANGUAGE, LANGUAGES, field_error_key, text
from .places import build_places, suggest
from .timeline import agency_name, public_steps, state_text

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
VENDOR = HERE / "vendor" / "node_modules"
LEAFLET = VENDOR / "leaflet" / "dist"
LANG_COOKIE = "lang"
FORM_FIELDS = ("description", "service_code", "address_string", "lat", "long", "first_name", "last_name", "phone",
               "email", "confidential")
FORM_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SHA = re.compile(r"^[0-9a-f]{64}$")
PHONE = re.compile(r"^\+?[0-9 .()-]{8,20}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")
# console.public's report-with-case columns, for a report reached through its private token.
LOOKUP_SELECT = SELECT.replace(
    " FROM reports r ", ", p.token AS lookup_token, p.rated_score, c.token AS case_token, c.closed_at AS case_closed_at,"
    " c.result AS case_result FROM portal_receipts p JOIN reports r ON r.id = p.report_id ", 1)
NOTE_KEYS = {CONFIDENTIAL_NOTE: "confidential_note", PENDING_NOTE: "pending_note", OUT_OF_SCOPE_NOTE: "out_of_scope_note"}

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                          autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)


def _when(value: Any) -> str:
    if value is None or value == "":
        return ""
    dt = (datetime.fromtimestamp(float(value), VN_TZ) if isinstance(value, (int, float))
          else datetime.fromisoformat(str(value)).astimezone(VN_TZ))
    return dt.strftime("%H:%M %d/%m/%Y")


_env.filters["when"] = _when


def _origin_pattern(url: str) -> str:
    """The CSP source of a tile URL template: its scheme and host, `{s}` subdomains as a wildcard."""
    parts = urlsplit(url)
    host = re.sub(r"\{[a-z]\}", "*", parts.netloc)
    return f"{parts.scheme}://{host}" if parts.scheme and host else ""


_NOT_IN_A_PATH = re.compile(r"[\x00-\x1f\x7f\\]")


class Portal:
    def __init__(self, ctx: AppContext, cfg: PortalConfig) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.store = ctx.store
        self.intake = Intake(ctx.store, ctx.clock, self._service_codes, "portal", cfg.max_photos, cfg.max_photo_bytes)
        self.limiter = abuse.RateLimiter(cfg.rate_burst, cfg.rate_per_minute)
        self.places = build_places(ctx.directory)
        self.map_assets = (LEAFLET / "leaflet.js").is_file() and bool(cfg.tile_url)
        if not (LEAFLET / "leaflet.js").is_file():
            log.warning("map assets missing (%s): run `make setup` (npm ci); the portal works without the map", LEAFLET)
        tiles = _origin_pattern(cfg.tile_url) if self.map_assets else ""
        self.csp = (f"default-src 'self'; img-src 'self' data: blob: {tiles}".rstrip()
                    + "; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none';"
                    " form-action 'self'; frame-ancestors 'none'")
        # Cookies never travel in clear once the portal is published over https (or when config says so).
        self.secure = cfg.secure_cookie or ctx.settings.http.public_base_url.startswith("https://")
        self._key: bytes | None = None
        self._key_lock = asyncio.Lock()

    def routes(self) -> list[web.AbstractRouteDef]:
        routes: list[web.AbstractRouteDef] = [
            web.get("/", self.form_page),
            web.post("/report", self.submit),
            web.get("/receipt/{token}", self.receipt),
            web.get("/lookup/{token}", self.lookup),
            web.post("/lookup/{token}/rating", self.rate),
            web.post("/lookup/{token}/dispute", self.dispute),
            web.get("/report", self.form_redirect),
            web.get("/lookup/{token}/photos/{sha}", self.lookup_photo),
            web.get("/public", self.public_list),
            web.get("/public/{id}", self.public_one),
            web.get("/public/{id}/photos/{sha}", self.public_photo),
            web.get("/places", self.place_suggestions),
            web.get("/lang/{lang}", self.switch_language),
            web.static("/static/portal", STATIC),
        ]
        if LEAFLET.is_dir():
            routes.append(web.static("/static/vendor/leaflet", LEAFLET))
        return routes

    # -- helpers ---------------------------------------------------------------------------------
    def _service_codes(self) -> set[str]:
        return {s["service_code"] for s in services(self.ctx.directory)}  # the topics one can report

    def _lang(self, request: web.Request) -> str:
        lang = request.query.get("lang") or request.cookies.get(LANG_COOKIE) or DEFAULT_LANGUAGE
        return lang if lang in LANGUAGES else DEFAULT_LANGUAGE

    def _client(self, request: web.Request) -> str:
        if self.cfg.trust_forwarded_for and request.headers.get("X-Forwarded-For"):
            return request.headers["X-Forwarded-For"].split(",")[0].strip()
        return request.remote or "unknown"

    async def _csrf_key(self) -> bytes:
        if self._key is None:
            async with self._key_lock:
                if self._key is None:
                    async with self.store.transaction() as tx:
                        await tx.execute("INSERT OR IGNORE INTO portal_keys(name, value) VALUES ('csrf', ?)",
                                         (secrets.token_hex(32),))
                        row = await tx.fetchone("SELECT value FROM portal_keys WHERE name='csrf'")
                    assert row is not None
                    self._key = bytes.fromhex(row["value"])
        return self._key

    def render(self, request: web.Request, template: str, lang: str, context: dict[str, Any],
               status: int = 200) -> web.Response:
        def t(key: str, **fields: Any) -> str:
            return text(lang, key, **fields)

        other = "en" if lang == "vi" else "vi"
        html = _env.get_template(template).render(
            t=t, lang=lang, other_lang=other, map_assets=self.map_assets, cfg=self.cfg,
            switch_url="/lang/" + other + "?" + urlencode({"next": request.path_qs}), **context)
        resp = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
        resp.headers["Content-Security-Policy"] = self.csp
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"  # private lookup links must not leak to tile servers
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def _topics(self, lang: str) -> list[dict[str, str]]:
        out = []
        for s in services(self.ctx.directory):
            topic = self.ctx.directory.topics[s["service_code"]]
            name = (topic.description_en if lang == "en" and topic.description_en else topic.description_vi)
            out.append({"id": topic.id, "name": name.split(":")[0]})
        return out

    async def _form(self, request: web.Request, lang: str, values: dict[str, str], errors: dict[str, str],
                    status: int = 200, notice: str | None = None) -> web.Response:
        secret = request.cookies.get(abuse.CSRF_COOKIE)
        fresh = secret is None or not TOKEN.match(secret)
        if fresh:
            secret = abuse.new_browser_secret()
        assert secret is not None
        form_key = values.get("form_key", "")
        if not FORM_KEY.match(form_key):
            form_key = secrets.token_urlsafe(18)
        resp = self.render(request, "form.html", lang, {
            "values": values, "errors": errors, "notice": notice, "topics": self._topics(lang),
            "csrf": abuse.csrf_token(await self._csrf_key(), secret), "form_key": form_key,
            "honeypot": abuse.HONEYPOT_FIELD, "max_photo_mb": self.cfg.max_photo_bytes // (1024 * 1024),
        }, status=status)
        if fresh:
            resp.set_cookie(abuse.CSRF_COOKIE, secret, httponly=True, samesite="Lax", secure=self.secure,
                            path="/")
        return resp

    # -- the form --------------------------------------------------------------------------------
    async def form_page(self, request: web.Request) -> web.Response:
        return await self._form(request, self._lang(request), {}, {})

    async def form_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/")  # a bookmarked or reloaded result page of a post: back to the form

    async def submit(self, request: web.Request) -> web.Response:
        lang = self._lang(request)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            mb = self.ctx.settings.http.max_body_bytes // (1024 * 1024)
            return self.render(request, "message.html", lang, {
                "title": text(lang, "form_title"), "message": text(lang, "form.too_large", mb=mb),
                "back": "/"}, status=413)
        content_type = request.headers.get("Content-Type", "")
        try:
            # Off the event loop: a large multipart body takes a while to split.
            fields, uploads = await asyncio.to_thread(parse_body, raw, content_type)
        except Open311Error as exc:
            await self.store.quarantine("portal", raw, exc.description, {"content_type": content_type})
            return await self._form(request, lang, {}, {"form": text(lang, "form.invalid")}, status=400)
        values = {k: fields.get(k, "") for k in (*FORM_FIELDS, "form_key")}
        reselect = {"media": text(lang, "media.reselect")} if uploads else {}
        wait = self.limiter.take(self._client(request), self.ctx.clock.now())
        if wait > 0:
            resp = await self._form(request, lang, values, reselect, status=429,
                                    notice=text(lang, "rate_limited", seconds=math.ceil(wait)))
            resp.headers["Retry-After"] = str(math.ceil(wait))
            return resp
        if not abuse.csrf_ok(await self._csrf_key(), request.cookies.get(abuse.CSRF_COOKIE),
                             fields.get(abuse.CSRF_FIELD)):
            return await self._form(request, lang, values, reselect, status=403, notice=text(lang, "form.expired"))
        if abuse.honeypot_filled(fields):
            await self.store.quarantine("portal", raw, "honeypot field filled", {"content_type": content_type})
            return await self._form(request, lang, values, {"form": text(lang, "form.invalid")}, status=400)
        errors = self._contact_errors(fields, lang)
        if errors:
            return await self._form(request, lang, values, {**errors, **reselect}, status=400)
        form_key = fields.get("form_key", "")
        try:
            result = await self.intake.accept(
                raw, content_type, idempotency_key=f"portal:{form_key}" if FORM_KEY.match(form_key) else None,
                require_service_code=False, parsed=(fields, uploads))
        except Open311Error as exc:
            if exc.reason == "idempotency_key_reused":
                # Sent before with other content (back, edited, sent again): say so, keep the text, and give the
                # form a new key, so that pressing send files the changed report instead of being refused again.
                fresh = {k: v for k, v in values.items() if k != "form_key"}
                return await self._form(request, lang, fresh, reselect, status=422,
                                        notice=text(lang, "form.already_sent"))
            field = exc.field if exc.field in (*FORM_FIELDS, "media") else "form"
            message = text(lang, field_error_key(exc.field, exc.reason), n=self.cfg.max_photos,
                           mb=self.cfg.max_photo_bytes // (1024 * 1024))
            errs = {**reselect, field: " ".join(filter(None, (message, reselect.get(field))))}
            return await self._form(request, lang, values, errs, status=413 if exc.code == 413 else 400)
        except StorageError:
            resp = await self._form(request, lang, values, reselect, status=503, notice=text(lang, "unavailable"))
            resp.headers["Retry-After"] = "30"
            return resp
        token = await self._receipt_token(result.report_id)
        raise web.HTTPSeeOther(f"/receipt/{token}")

    def _contact_errors(self, fields: dict[str, str], lang: str) -> dict[str, str]:
        errors = {}
        phone = fields.get("phone", "").strip()
        if phone and (not PHONE.match(phone) or not 8 <= sum(c.isdigit() for c in phone) <= 15):
            errors["phone"] = text(lang, "phone.invalid")
        email = fields.get("email", "").strip()
        if email and not EMAIL.match(email):
            errors["email"] = text(lang, "email.invalid")
        for name in ("first_name", "last_name", "phone", "email", "address_string"):
            if any(c in fields.get(name, "") for c in "\r\n\x00"):
                errors[name] = text(lang, "form.invalid")  # single-line fields: nothing may reach a mail header
        return errors

    async def _receipt_token(self, report_id: int) -> str:
        async with self.store.transaction() as tx:
            await tx.execute("INSERT OR IGNORE INTO portal_receipts(report_id, token, created_at) VALUES (?,?,?)",
                             (report_id, secrets.token_urlsafe(24), self.ctx.clock.now()))
            row = await tx.fetchone("SELECT token FROM portal_receipts WHERE report_id=?", (report_id,))
        assert row is not None
        return str(row["token"])

    # -- receipt and lookup ----------------------------------------------------------------------
    async def _by_token(self, token: str) -> Any:
        if not TOKEN.match(token):
            return None
        return await self.store.fetchone(LOOKUP_SELECT + " WHERE p.token=?", (token,))

    def _missing(self, request: web.Request, lang: str) -> web.Response:
        return self.render(request, "message.html", lang, {
            "title": text(lang, "not_found_title"), "message": text(lang, "not_found"), "back": "/"}, status=404)

    async def receipt(self, request: web.Request) -> web.Response:
        lang = self._lang(request)
        row = await self._by_token(request.match_info["token"])
        if row is None:
            return self._missing(request, lang)
        base = self.ctx.settings.http.public_base_url.rstrip("/")
        return self.render(request, "receipt.html", lang, {
            "report_id": row["id"], "link": f"{base}/lookup/{row['lookup_token']}",
            "path": f"/lookup/{row['lookup_token']}"})

    async def _answer_photos(self, case_id: str | None) -> list[str]:
        return await answer_photos(self.store, case_id)

    async def _deadline(self, case_id: str | None) -> float | None:
        if not case_id:
            return None
        return await dispatch_queries.next_due(self.store, case_id)

    def _status(self, row: Any, lang: str) -> str:
        return state_text(lang, row["case_state"] or row["status"])

    async def lookup(self, request: web.Request, errors: dict[str, str] | None = None, status: int = 200,
                     notice: str | None = None) -> web.Response:
        lang = self._lang(request)
        token = request.match_info["token"]
        row = await self._by_token(token)
        if row is None:
            return self._missing(request, lang)
        message = from_json(InboundMessage, row["record"])
        directory = self.ctx.directory
        # Undecided (received, held for review): the classifier's guess is not an answer, to the reporter either
        # ("abusive" before anyone read it). The topic they chose, if any, and no agency until one is decided.
        undecided = row["status"] in UNDECIDED_STATUSES and not row["case_id"]
        topic = directory.topics.get((message.service_code if undecided else row["topic"]) or "")
        agency_id = None if undecided else row["case_agency"] or row["agency"]
        secret = request.cookies.get(abuse.CSRF_COOKIE)
        fresh = secret is None or not TOKEN.match(secret)
        if fresh:
            secret = abuse.new_browser_secret()
        assert secret is not None
        closed = bool(row["case_closed_at"])
        if notice is None and request.query.get("disputed"):
            notice = text(lang, "dispute_sent")
        resp = self.render(request, "lookup.html", lang, {
            "token": token, "report_id": row["id"], "status": self._status(row, lang),
            "received_at": row["received_at"], "text": message.text,
            "photos": [a.sha256 for a in message.attachments if a.content_type.startswith("image/")],
            "topic": (topic.description_en if lang == "en" else topic.description_vi).split(":")[0] if topic else None,
            "agency": agency_name(directory, agency_id, lang) if agency_id else None,
            "deadline": await self._deadline(row["case_id"]), "expected": row["expected_completion"],
            "steps": await public_steps(self.store, directory, row, lang),
            "result": redact(row["case_result"]) if closed and row["case_result"] else None, "closed": closed,
            "answer_photos": await self._answer_photos(row["case_id"]),
            "can_rate": closed and row["rated_score"] is None and self.ctx.published.report_rating is not None,
            "rated": row["rated_score"], "errors": errors or {}, "notice": notice,
            "dispute": closed and self.ctx.published.case_dispute is not None,
            "csrf": abuse.csrf_token(await self._csrf_key(), secret),
        }, status=status)
        if fresh:
            resp.set_cookie(abuse.CSRF_COOKIE, secret, httponly=True, samesite="Lax", secure=self.secure,
                            path="/")
        return resp

    async def _lookup_post(self, request: web.Request) -> tuple[Any, Any, web.Response | None]:
        """The report row and form of a post from the lookup page, or the page to answer instead (missing report,
        rate limit, bad CSRF token)."""
        lang = self._lang(request)
        row = await self._by_token(request.match_info["token"])
        if row is None:
            return None, None, self._missing(request, lang)
        form = await read_form(request)
        wait = self.limiter.take(self._client(request), self.ctx.clock.now())
        if wait > 0:
            resp = await self.lookup(request, status=429, notice=text(lang, "rate_limited", seconds=math.ceil(wait)))
            resp.headers["Retry-After"] = str(math.ceil(wait))
            return row, form, resp
        if not abuse.csrf_ok(await self._csrf_key(), request.cookies.get(abuse.CSRF_COOKIE),
                             str(form.get(abuse.CSRF_FIELD) or "")):
            return row, form, await self.lookup(request, status=403, notice=text(lang, "form.expired"))
        return row, form, None

    async def rate(self, request: web.Request) -> web.Response:
        lang = self._lang(request)
        token = request.match_info["token"]
        row, form, answer = await self._lookup_post(request)
        if answer is not None:
            return answer
        score = str(form.get("score") or "")
        if score not in ("1", "2", "3", "4", "5"):
            return await self.lookup(request, errors={"score": text(lang, "score.required")}, status=400)
        # Published by dispatch: report_rating(report_id, score, comment), one rating per reporter, after the result.
        rating = self.ctx.published.report_rating
        if rating is None or not row["case_closed_at"] or row["rated_score"] is not None:
            return await self.lookup(request, status=409, notice=text(lang, "rating_unavailable"))
        comment = str(form.get("comment") or "").strip()[:2000] or None
        try:
            await rating(int(row["id"]), int(score), comment)
        except (LookupError, ValueError):  # no result yet, or already rated on another page
            return await self.lookup(request, status=409, notice=text(lang, "rating_unavailable"))
        async with self.store.transaction() as tx:
            await tx.execute("UPDATE portal_receipts SET rated_score=?, rated_at=? WHERE report_id=?",
                             (int(score), self.ctx.clock.now(), row["id"]))
        raise web.HTTPSeeOther(f"/lookup/{token}#rating")

    async def dispute(self, request: web.Request) -> web.Response:
        """The reporter disputes the result. The lifecycle component owns what a dispute does; it publishes
        `ctx.published.case_dispute`, an async callable taking report_id, case_id and reason. Without it the
        lookup page shows no dispute button and this route answers 404."""
        lang = self._lang(request)
        token = request.match_info["token"]
        handler = self.ctx.published.case_dispute
        if handler is None:
            return self._missing(request, lang)
        row, form, answer = await self._lookup_post(request)
        if answer is not None:
            return answer
        reason = str(form.get("reason") or "").strip()[:2000]
        if not reason or not row["case_closed_at"]:
            return await self.lookup(request, status=400, notice=text(lang, "dispute_reason_required"))
        try:
            await handler(report_id=int(row["id"]), case_id=str(row["case_id"]), reason=reason)
        except (LookupError, ValueError):  # no result to dispute, or past the days allowed for a dispute
            return await self.lookup(request, status=409, notice=text(lang, "dispute_unavailable"))
        raise web.HTTPSeeOther(f"/lookup/{token}?disputed=1#dispute")

    async def _photo(self, sha: str) -> web.Response:
        """The stored photo `sha` re-encoded without metadata (made once, then served from the blob store)."""
        row = await self.store.fetchone("SELECT stripped FROM portal_photos WHERE original=?", (sha,))
        if row is None:
            try:
                original = await asyncio.to_thread(self.store.blobs.get, sha)
                clean = await asyncio.to_thread(photos.strip_metadata, original)
            except (OSError, photos.NotAnImage):
                raise web.HTTPNotFound() from None
            stripped = await self.store.put_blob(clean, "image/jpeg")
            async with self.store.transaction() as tx:
                await tx.execute("INSERT OR IGNORE INTO portal_photos(original, stripped) VALUES (?,?)",
                                 (sha, stripped))
            data = clean
        else:
            data = await asyncio.to_thread(self.store.blobs.get, str(row["stripped"]))
        resp = web.Response(body=data, content_type="image/jpeg")
        resp.headers["Cache-Control"] = "private, max-age=86400"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    async def lookup_photo(self, request: web.Request) -> web.Response:
        sha = request.match_info["sha"]
        row = await self._by_token(request.match_info["token"])
        if row is None or not SHA.match(sha):
            raise web.HTTPNotFound()
        message = from_json(InboundMessage, row["record"])
        if sha not in {a.sha256 for a in message.attachments} and sha not in await self._answer_photos(row["case_id"]):
            raise web.HTTPNotFound()
        return await self._photo(sha)

    # -- public pages ----------------------------------------------------------------------------
    def _public_item(self, row: Any, lang: str) -> dict[str, Any]:
        item = public_request(row, self.ctx.directory)
        note = NOTE_KEYS.get(item["description"])
        if note:
            item["description"] = text(lang, note)
        item["status_text"] = self._status(row, lang)
        topic = self.ctx.directory.topics.get(item["service_code"] or "")
        if topic is not None and lang == "en":
            item["service_name"] = topic.description_en.split(":")[0]
        agency_id = row["case_agency"] or row["agency"]
        item["agency_name"] = agency_name(self.ctx.directory, agency_id, lang) if agency_id else None
        item["confidential"] = is_confidential(from_json(InboundMessage, row["record"]))
        return item

    async def public_list(self, request: web.Request) -> web.Response:
        lang = self._lang(request)
        q = request.query
        params = {k: q[k] for k in ("status", "service_code", "agency_responsible", "district", "ward", "page")
                  if q.get(k)}
        params["page_size"] = str(self.cfg.page_size)
        directory = self.ctx.directory
        context: dict[str, Any] = {
            "items": [], "error": None, "filters": params, "page": 1, "prev_url": None, "next_url": None,
            "districts": sorted(directory.districts.values(), key=lambda d: d.name_vi),
            # The 2025 map's units with their former districts; empty on the 2023 map (no filter shown).
            "units": sorted(directory.units.values(), key=lambda u: (u.type, u.name)),
            "agencies": sorted(({"id": a.id, "name": agency_name(directory, a.id, lang)}
                                for a in directory.agencies.values()), key=lambda a: a["name"]),
            "topics": self._topics(lang),
        }
        try:
            where, args, page, size = build_query(params, self.ctx.clock.now())
        except QueryError:
            context["error"] = text(lang, "filter_invalid")
            return self.render(request, "public_list.html", lang, context, status=400)
        rows = await self.store.fetchall(
            f"{SELECT} WHERE {where} ORDER BY r.received_at DESC, r.id DESC LIMIT ? OFFSET ?",
            [*args, size + 1, (page - 1) * size])
        context["items"] = [self._public_item(r, lang) for r in rows[:size]]
        context["page"] = page
        keep = {k: v for k, v in params.items() if k != "page_size"}
        if page > 1:
            context["prev_url"] = "/public?" + urlencode({**keep, "page": str(page - 1)})
        if len(rows) > size:
            context["next_url"] = "/public?" + urlencode({**keep, "page": str(page + 1)})
        return self.render(request, "public_list.html", lang, context)

    async def _public_row(self, rid: str) -> Any:
        report_id = row_id(rid)
        if report_id is None:
            return None
        return await self.store.fetchone(
            f"{SELECT} WHERE r.id=? AND r.status NOT IN ({','.join('?' * len(HIDDEN_STATES))})",
            [report_id, *sorted(HIDDEN_STATES)])

    async def _public_photos(self, row: Any) -> list[str]:
        # After-photos of the agency's work; none for a confidential report (a photo can show where it is).
        if is_confidential(from_json(InboundMessage, row["record"])):
            return []
        return await self._answer_photos(row["case_id"])

    async def public_one(self, request: web.Request) -> web.Response:
        lang = self._lang(request)
        row = await self._public_row(request.match_info["id"])
        if row is None:
            return self._missing(request, lang)
        item = self._public_item(row, lang)
        closed = await dispatch_queries.case(self.store, row["case_id"]) if row["case_id"] else None
        result = redact(closed["result"]) if closed and closed["closed_at"] and closed["result"] else None
        return self.render(request, "public_one.html", lang, {
            "item": item, "steps": await public_steps(self.store, self.ctx.directory, row, lang),
            "result": None if item["confidential"] else result, "photos": await self._public_photos(row)})

    async def public_photo(self, request: web.Request) -> web.Response:
        sha = request.match_info["sha"]
        row = await self._public_row(request.match_info["id"])
        if row is None or not SHA.match(sha) or sha not in await self._public_photos(row):
            raise web.HTTPNotFound()
        return await self._photo(sha)

    # -- small endpoints -------------------------------------------------------------------------
    async def place_suggestions(self, request: web.Request) -> web.Response:
        found = suggest(self.places, request.query.get("q", ""))
        return web.json_response([{"label": p.label, "kind": p.kind, "district": p.district} for p in found])

    async def switch_language(self, request: web.Request) -> web.Response:
        lang = request.match_info["lang"]
        target = request.query.get("next", "/")
        # Only a path on this site: never an open redirect. Browsers drop tabs and line breaks from a URL and read a
        # backslash as a slash, so "/\t/evil.example" went to //evil.example: no controls nor backslashes.
        if not target.startswith("/") or target.startswith("//") or _NOT_IN_A_PATH.search(target):
            target = "/"
        resp = web.HTTPSeeOther(target)
        if lang in LANGUAGES:
            resp.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="Lax", path="/",
                            secure=self.secure)
        raise resp
