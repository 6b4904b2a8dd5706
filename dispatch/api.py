"""HTTP routes of the dispatch stage, on the daemon's aiohttp app.

The OpenAPI document of all this and of the webhook payloads: GET /openapi.json (dispatch/openapi.py).
Agencies (bearer token per agency, from `[secrets]`):
  GET  /api/v1/agency/cases                      the cases the agency holds and that are open
  GET  /api/v1/agency/cases/{case_id}            one case
  POST /api/v1/agency/cases/{case_id}/answers    an answer; `Idempotency-Key` makes a repeat harmless
Reporters (the case token in the lookup link is the credential; no personal data is ever shown):
  GET  /api/v1/cases/{token}                     status and timeline as JSON
  POST /api/v1/cases/{token}/rating              {"score": 1..5, "comment": "..."}: once per reporter, after the result
  POST /api/v1/cases/{token}/dispute             {"reason": "..."}: within the dispute window after the result
  GET  /cases/{token}, POST /cases/{token}/rating   the same as an HTML page and form (optional)
"""
from __future__ import annotations

import base64
import binascii
import hmac
import html
import json
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from ingest.clock import VN_TZ, iso
from ingest.http import read_form
from ingest.pii import redact
from ingest.untrusted import BodyError, loads_json, single_line
from ingest.vocabulary import CASE_STATE_TEXTS, LOOKUP_TEXTS

from . import evidence
from .cases import CaseBook, Forbidden, KeyReused, NotFound, ReporterRejected, public_ref
from .bodies import MAX_PHOTOS, AnswerBody, DisputeBody, RatingBody
from .policy import ANSWER_KINDS, CLOSED_STATES, AnswerRejected

log = logging.getLogger(__name__)

# What the reporter's lookup page says of each case state (one catalogue: ingest/vocabulary.py).
STATE_VI = {state: texts["vi"] for state, texts in CASE_STATE_TEXTS.items()}


async def _multipart_answer(request: web.Request) -> tuple[dict[str, Any], list[bytes]]:
    """An answer posted as a form: its fields as AnswerBody takes them, and the bytes of its `photo` parts."""
    form = await read_form(request)
    fields: dict[str, Any] = {}
    uploads: list[bytes] = []
    for name, value in form.items():
        if isinstance(value, web.FileField):
            if name == "photo":
                uploads.append(value.file.read(evidence.MAX_PHOTO_BYTES + 1))
            continue
        if name in ("supporting", "photo_urls"):
            fields.setdefault(name, []).append(value)
        elif name in ("several_agencies", "field_check", "complex"):
            fields[name] = value.lower() in ("1", "true", "on", "yes")
        else:
            fields[name] = value
    if len(uploads) > MAX_PHOTOS:
        raise ValueError(f"at most {MAX_PHOTOS} photos")
    return fields, uploads


async def _json(request: web.Request) -> Any:
    """The body as bounded JSON (ingest/untrusted.py): aiohttp's `request.json()` has no depth cap, so a body nested
    100,000 deep raised RecursionError, a 500 for the client's fault; a BodyError is a ValueError, answered 422."""
    return loads_json(await request.read())


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# A reporter's page and JSON under /cases/<token>: the URL is the credential. Kept by no cache, named to no other
# site, framed by none (its rating form), as the portal's /lookup/<token>.
PRIVATE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                   "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'; "
                                              "base-uri 'none'",
                   "X-Frame-Options": "DENY"}


def _private(resp: web.Response) -> web.Response:
    resp.headers.update(PRIVATE_HEADERS)
    return resp


class DispatchApi:
    def __init__(self, book: CaseBook, tokens: dict[str, str], serve_lookup_page: bool) -> None:
        self.book = book
        self.tokens = tokens  # agency id -> token
        self.serve_lookup_page = serve_lookup_page
        self._openapi: dict[str, Any] | None = None

    def register(self, app: web.Application) -> None:
        routes = [web.get("/openapi.json", self.openapi),
                  web.get("/api/v1/agency/cases", self.list_cases),
                  web.get("/api/v1/agency/cases/{case_id}", self.get_case),
                  web.post("/api/v1/agency/cases/{case_id}/answers", self.post_answer),
                  web.get("/api/v1/cases/{token}", self.public_case),
                  web.post("/api/v1/cases/{token}/rating", self.post_rating),
                  web.post("/api/v1/cases/{token}/dispute", self.post_dispute)]
        if self.serve_lookup_page:
            routes += [web.get("/cases/{token}", self.lookup_page),
                       web.post("/cases/{token}/rating", self.rating_form)]
        # Another component may already serve a path (aiohttp would keep both and use the first): skip it, loudly.
        taken = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
        for route in routes:
            if (route.method, route.path) in taken:
                log.warning("route %s %s already served by another component; dispatch skips it",
                            route.method, route.path)
        app.add_routes([r for r in routes if (r.method, r.path) not in taken])

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI document of this API and of the webhooks agencies receive (dispatch/openapi.py)."""
        from .openapi import openapi_document

        if self._openapi is None:
            self._openapi = openapi_document(self.book.base_url)
        return web.json_response(self._openapi)

    def _agency(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return None
        found = None
        # Header bytes that are not UTF-8 reach us as lone surrogates: the bytes sent, compared as sent (a plain
        # encode() raised, a 500 for a wrong token).
        given = presented.encode("utf-8", "surrogateescape")
        for agency, token in self.tokens.items():
            # Compare against every token so the time taken does not reveal which agency almost matched.
            if hmac.compare_digest(given, token.encode()):
                found = agency
        return found

    async def list_cases(self, request: web.Request) -> web.Response:
        agency = self._agency(request)
        if agency is None:
            return _error(401, "missing or invalid token")
        rows = await self.book.store.fetchall(
            "SELECT id, incident_id, topic, category, district, state, forwarded_at, expected_completion, 'lead' AS role"
            f" FROM cases WHERE agency=? AND state NOT IN ({','.join('?' * len(CLOSED_STATES))})"
            " UNION ALL SELECT c.id, c.incident_id, c.topic, c.category, c.district, c.state, s.forwarded_at,"
            " c.expected_completion, 'supporting' AS role FROM case_supporters s JOIN cases c ON c.id=s.case_id"
            f" WHERE s.agency=? AND s.state NOT IN ('done','withdrawn') AND c.state NOT IN"
            f" ({','.join('?' * len(CLOSED_STATES))}) ORDER BY forwarded_at",
            (agency, *CLOSED_STATES, agency, *CLOSED_STATES))
        return web.json_response({"cases": [dict(self._summary(r), role=r["role"]) for r in rows]})

    async def get_case(self, request: web.Request) -> web.Response:
        agency = self._agency(request)
        if agency is None:
            return _error(401, "missing or invalid token")
        case = await self.book.store.fetchone("SELECT * FROM cases WHERE id=?", (request.match_info["case_id"],))
        supporting = case is not None and case["agency"] != agency and await self.book.store.fetchone(
            "SELECT 1 FROM case_supporters WHERE case_id=? AND agency=?", (case["id"], agency)) is not None
        if case is None or (case["agency"] != agency and not supporting):
            return _error(404, "no such case")  # another agency's case looks exactly like a missing one
        delivery = await self.book.store.fetchone("SELECT payload FROM deliveries WHERE case_id=? AND agency=?"
                                                  " ORDER BY id DESC LIMIT 1", (case["id"], agency))
        body = self._summary(case)
        if delivery is not None:
            body["detail"] = json.loads(delivery["payload"])["data"]
        return web.json_response(body)

    async def post_answer(self, request: web.Request) -> web.Response:
        agency = self._agency(request)
        if agency is None:
            return _error(401, "missing or invalid token")
        # The key is stored: bounded like Open311's, and header bytes that are not UTF-8 (lone surrogates to
        # aiohttp; the store cannot encode them, a 500) are refused before anything is read.
        idem = request.headers.get("Idempotency-Key")
        if len(request.headers.getall("Idempotency-Key", [])) > 1:
            return _error(400, "Idempotency-Key is given more than once")  # which one is meant?
        if idem is not None:
            if not 0 < len(idem) <= 255:
                return _error(400, "Idempotency-Key must be 1 to 255 characters")
            try:
                single_line(idem, "Idempotency-Key")
            except BodyError as exc:
                return _error(400, exc.reason)
        uploads: list[bytes] = []
        try:
            if request.content_type == "multipart/form-data":
                fields, uploads = await _multipart_answer(request)
                body = AnswerBody.model_validate(fields)
            else:
                body = AnswerBody.model_validate(await _json(request))
        except (ValueError, ValidationError) as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()) \
                if isinstance(exc, ValidationError) else getattr(exc, "reason", "body is not JSON")
            return _error(422, detail)
        if body.kind not in ANSWER_KINDS:
            return _error(422, f"kind must be one of {', '.join(ANSWER_KINDS)}")
        data: dict[str, Any] = {}
        if body.expected_completion is not None:
            when = body.expected_completion
            data["expected_completion"] = (when if when.tzinfo else when.replace(tzinfo=VN_TZ)).timestamp()
        for name in ("reason", "agency"):
            if getattr(body, name):
                data[name] = getattr(body, name)
        if body.several_agencies:
            data["several_agencies"] = True
        if body.field_check:
            data["field_check"] = True
        if body.complex:
            data["complex"] = True
        if body.supporting:
            data["supporting"] = list(dict.fromkeys(body.supporting))
        if body.kind == "returned" and not (body.reason or body.note):
            return _error(422, "a returned case needs a reason")
        photos = []
        try:
            blobs = [evidence.checked(raw) for raw in uploads]
            for photo in body.photos:
                try:
                    raw = base64.b64decode(photo.data, validate=True)
                except (binascii.Error, ValueError):
                    return _error(422, "photos: data is not base64")
                # Sniffed like uploads and URLs: the declared type is a claim (a page declared image/png counted
                # as the site photo a resolved infrastructure case needs, and was kept under that type).
                blobs.append(evidence.checked(raw))
            for url in body.photo_urls:
                blobs.append(await evidence.fetch_photo(url, self.book.cfg))
        except evidence.PhotoRejected as exc:
            # Well-formed, but what it names is not a usable photo (not an image, unreachable, refused).
            return _error(409, f"photos: {exc}")
        for raw, content_type in blobs:
            photos.append(await self.book.store.put_blob(raw, content_type))
        if photos:
            data["photos"] = photos
        try:
            result = await self.book.apply_answer(agency, request.match_info["case_id"], body.kind, data,
                                                  source="api", idem_key=f"api:{agency}:{idem}" if idem else None,
                                                  note=body.note or body.reason)
        except NotFound:
            return _error(404, "no such case")
        except Forbidden as exc:
            return _error(403, str(exc))
        except KeyReused as exc:
            return _error(422, str(exc))  # IETF httpapi Idempotency-Key draft, as Open311's
        except AnswerRejected as exc:
            return _error(409, str(exc))
        return web.json_response({"case_id": result.case_id, "state": result.state, "agency": result.agency,
                                  "duplicate": result.duplicate}, status=200 if result.duplicate else 201)

    def _summary(self, r: Any) -> dict[str, Any]:
        return {"case_id": r["id"], "incident_id": r["incident_id"], "topic": r["topic"], "category": r["category"],
                "district": r["district"], "state": r["state"], "forwarded_at": iso(r["forwarded_at"]),
                "expected_completion": iso(r["expected_completion"]) if r["expected_completion"] else None}

    # -- public, for reporters -------------------------------------------------------------------
    async def _public(self, token: str) -> dict[str, Any] | None:
        case = await self.book.case_by_token(token)
        if case is None:
            return None
        answers = await self.book.store.fetchall("SELECT kind, at FROM answers WHERE case_id=? ORDER BY id",
                                                 (case["id"],))
        agency = self.book.directory.agencies.get(case["agency"])
        topic = self.book.directory.topics.get(case["topic"])
        # Art. 9: the public view has no reporter data and no free text an agency might have put a name in,
        # except the closing result.
        # The reference reporters read, never the sequential internal id.
        return {"reference": public_ref(case["token"]), "state": case["state"], "topic": topic.description_vi if topic else case["topic"],
                "agency": agency.name_vi if agency else case["agency"], "received_at": iso(case["received_at"]),
                "closed_at": iso(case["closed_at"]) if case["closed_at"] else None,
                "result": redact(case["result"]) if case["closed_at"] and case["result"] else None,
                "timeline": [{"kind": a["kind"], "at": iso(a["at"])} for a in answers]}

    async def public_case(self, request: web.Request) -> web.Response:
        data = await self._public(request.match_info["token"])
        return _private(web.json_response(data) if data else _error(404, "no such case"))

    async def post_rating(self, request: web.Request) -> web.Response:
        try:
            body = RatingBody.model_validate(await _json(request))
        except (ValueError, ValidationError):
            return _error(422, "score must be an integer from 1 to 5")
        try:
            case_id = await self.book.rate(request.match_info["token"], body.score, body.comment)
        except NotFound:
            return _error(404, "no such case")
        except ReporterRejected as exc:
            return _error(409, str(exc))
        case = await self.book.store.fetchone("SELECT token FROM cases WHERE id=?", (case_id,))
        return web.json_response({"reference": public_ref(case["token"]), "score": body.score}, status=201)

    async def post_dispute(self, request: web.Request) -> web.Response:
        try:
            body = DisputeBody.model_validate(await _json(request))
        except (ValueError, ValidationError):
            return _error(422, "reason is required (up to 4000 characters)")
        try:
            report_id = await self.book.reporter_of(request.match_info["token"])
            case_id = await self.book.dispute(report_id, body.reason, source="lookup")
        except NotFound:
            return _error(404, "no such case")
        except ReporterRejected as exc:
            return _error(409, str(exc))
        case = await self.book.store.fetchone("SELECT token FROM cases WHERE id=?", (case_id,))
        return web.json_response({"reference": public_ref(case["token"]), "state": "forwarded"}, status=201)

    async def lookup_page(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        data = await self._public(token)
        if data is None:
            return _private(web.Response(status=404, text=LOOKUP_TEXTS["not_found"]["vi"], content_type="text/plain"))
        e = html.escape
        rows = "".join(f"<li>{e(a['at'])}: {e(a['kind'])}</li>" for a in data["timeline"])
        stars = "".join(f'<label><input type="radio" name="score" value="{i}" required> {i}</label> '
                        for i in range(1, 6))
        say = {key: e(texts["vi"]) for key, texts in LOOKUP_TEXTS.items()}
        page = (f"<!doctype html><html lang='vi'><head><meta charset='utf-8'><title>{e(data['reference'])}</title>"
                f"</head><body><h1>{say['report']} {e(data['reference'])}</h1><p>{say['topic']} {e(data['topic'])}</p>"
                f"<p>{say['agency']} {e(data['agency'])}</p>"
                f"<p>{say['state']} {e(STATE_VI.get(data['state'], data['state']))}"
                f"</p><p>{e(data['result'] or '')}</p><ul>{rows}</ul>"
                f"<form method='post' action='/cases/{e(token)}/rating'><p>{say['rating']}</p>{stars}"
                f"<p><textarea name='comment' maxlength='2000'></textarea></p><button>{say['send_rating']}</button>"
                f"</form></body></html>")
        return _private(web.Response(text=page, content_type="text/html"))

    async def rating_form(self, request: web.Request) -> web.Response:
        form = await read_form(request)
        try:
            body = RatingBody(score=int(str(form.get("score", ""))), comment=str(form.get("comment") or "") or None)
            await self.book.rate(request.match_info["token"], body.score, body.comment)
        except ReporterRejected:
            return web.Response(status=409, text=LOOKUP_TEXTS["not_rateable"]["vi"],
                                content_type="text/plain")
        except (ValueError, ValidationError):
            return web.Response(status=422, text=LOOKUP_TEXTS["pick_stars"]["vi"], content_type="text/plain")
        except NotFound:
            return web.Response(status=404, text=LOOKUP_TEXTS["not_found"]["vi"], content_type="text/plain")
        return web.Response(text=LOOKUP_TEXTS["thanks"]["vi"], content_type="text/plain")
