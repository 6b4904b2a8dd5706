"""The operator console under /console: login, review queue, incidents, cases and their timelines, overdue
list, search, operator alerts, report detail with the personal-data rules of Art. 9.

A UI layer like run_daemon.py: every decision calls the owning stage's public function
(classifier.review.decisions.decide, dedupe.operations.merge/split, dispatch CaseBook.apply_answer,
dispatch.clocks.overdue); nothing here changes reports, incidents or cases by itself. Every POST carries the
session's CSRF token; the session cookie is HttpOnly and SameSite=Strict.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from config.console import ConsoleConfig
from classifier.review.decisions import AlreadyDecided, decide, review_queue, show
from classifier.training.examples import reject_reasons
from config.dispatch import dispatch_settings
from dedupe import incidents
from dedupe.operations import IncidentError, merge, split
from dispatch import clocks
from dispatch import queries as dispatch_queries
from dispatch.book import make_book
from dispatch.cases import Forbidden, NotFound, recurrence
from dispatch.evidence import answer_photos, image_type
# The City Office's staff also forward to a named agency (Art. 7.3).
from dispatch.policy import CASE_STATES, CITY_OFFICE, OPERATOR_UNIT, AnswerRejected
from ingest.app import AppContext
from ingest.clock import VN_TZ, iso
from ingest.http import read_form
from ingest.pii import is_confidential, redact
from ingest.queue import shown_to_admins
from ingest.public import redact_text
from ingest.records import REPORT_STATES, InboundMessage, from_json
from ingest.untrusted import row_id
from ingest.vocabulary import console_text as say

from . import auth
from .lockout import LoginThrottle
from .queries import alerts, case_timeline, search
from .render import render

log = logging.getLogger(__name__)

LOGIN_CSRF_COOKIE = "hcmc1022_login_csrf"
USER = web.RequestKey("console_user", auth.User)
FORM = web.RequestKey("console_form", Any)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What agency staff may answer from the console: the dispatch answer kinds except the operator unit's own.
AGENCY_ANSWERS = ("acknowledged", "verified", "safety_measures", "in_progress", "progress_report", "resolved",
                  "false_report", "returned", "not_incident", "coordination")
MAX_PHOTO_BYTES = 10 * 1024 * 1024


def answer_kinds(user: auth.User) -> tuple[str, ...]:
    """What this console user may answer: agency staff their unit's kinds; the City Office's staff also forward
    to a named agency; operators (acting as the operator unit) also re-assign."""
    if user.is_staff or user.agency == CITY_OFFICE:
        return (*AGENCY_ANSWERS, "reassigned")
    return AGENCY_ANSWERS


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _page(request: web.Request) -> int:
    # At most a million pages: a larger number's OFFSET overflows the database's integer (a 500, not a page).
    return min(max(1, row_id(request.query.get("page", "1")) or 1), 1_000_000)


def _report_id(text: str) -> int:
    """A report number from a URL or a form; ValueError (answered 404 or 400) unless it can be a row id."""
    rid = row_id(text)
    if rid is None:
        raise ValueError(f"not a report id: {text[:40]!r}")
    return rid


class Console:
    def __init__(self, ctx: AppContext, cfg: ConsoleConfig) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.cfg = cfg
        self.dispatch_cfg = dispatch_settings(ctx.settings)
        self.throttle = LoginThrottle(free=cfg.login_max_failures, base=cfg.login_backoff_seconds,
                                      cap=cfg.login_backoff_cap_seconds, forget_after=cfg.login_window_seconds)
        # The session cookie is never sent in clear when the public address is https (or config says so).
        self.secure_cookie = cfg.secure_cookie or ctx.settings.http.public_base_url.lower().startswith("https://")
        self._book: Any = None

    # -- plumbing --------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        g, p, op, any_ = web.get, web.post, self._staff, self._any
        return [
            g("/console", self.home), g("/console/", self.home),
            g("/console/login", self.login_form), p("/console/login", self.login_post),
            p("/console/logout", any_(self.logout)),
            g("/console/review", op(self.review_list)), g("/console/review/{id}", op(self.review_one)),
            p("/console/review/{id}/decide", op(self.review_decide)),
            g("/console/incidents", op(self.incidents)), g("/console/incidents/{id}", op(self.incident_one)),
            p("/console/incidents/merge", op(self.incident_merge)),
            p("/console/incidents/{id}/split", op(self.incident_split)),
            g("/console/cases", any_(self.cases)), g("/console/cases/{id}", any_(self.case_one)),
            g("/console/cases/{id}/photos/{sha}", any_(self.case_photo)),
            p("/console/cases/{id}/answer", any_(self.case_answer)),
            g("/console/reports/{id}", any_(self.report_one)),
            g("/console/overdue", any_(self.overdue)),
            g("/console/search", any_(self.search)),
            g("/console/alerts", op(self.alerts)),
            g("/console/pii-log", self._role(("admin",), self.pii_log)),
            g("/console/dead-letters", self._role(("admin",), self.dead_letters)),
            p("/console/dead-letters/replay", self._role(("admin",), self.dead_letters_replay)),
        ]

    def page(self, request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
        user: auth.User | None = request.get(USER)
        resp = render(request, template, {"user": user, "csrf": user.csrf if user else "",
                                          "directory": self.ctx.directory, "iso": iso, **context}, status=status)
        # Pages may hold personal data: never kept by a browser or proxy cache.
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def error(self, request: web.Request, status: int, message: str) -> web.Response:
        return self.page(request, "console_error.html", {"status": status, "message": message}, status=status)

    def _role(self, roles: tuple[str, ...], handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            user = await auth.session_user(self.store, request.cookies.get(auth.COOKIE))
            if user is None:
                if request.method == "GET":
                    return _redirect("/console/login?next=" + quote(request.path_qs, safe=""))
                return web.Response(status=401, text=say("session_expired"), content_type="text/plain")
            request[USER] = user
            if request.method == "POST":
                form = await read_form(request)
                request[FORM] = form
                if not auth.csrf_ok(user, str(form.get("csrf") or "")):
                    log.warning("CSRF token mismatch on %s by %s", request.path, user.username)
                    return self.error(request, 403, say("bad_csrf"))
            if user.role not in roles:
                return self.error(request, 403, say("forbidden_page"))
            return await handler(request)
        return wrapped

    def _staff(self, handler: Handler) -> Handler:
        return self._role(("operator", "admin"), handler)

    def _any(self, handler: Handler) -> Handler:
        return self._role(auth.ROLES, handler)

    def book(self) -> Any:
        if self._book is None:
            self._book = make_book(self.ctx, self.dispatch_cfg)
        return self._book

    def sees_confidential(self, user: auth.User) -> bool:
        """Operators and admins may see a confidential reporter (logged); agency staff only when config
        authorises their agency, the same rule that decides what the dispatch payload carries."""
        if user.is_staff:
            return True
        agency = self.dispatch_cfg.agencies.get(user.agency or "")
        return bool(agency and agency.receives_confidential)

    # -- login -----------------------------------------------------------------------------------
    async def home(self, request: web.Request) -> web.StreamResponse:
        user = await auth.session_user(self.store, request.cookies.get(auth.COOKIE))
        if user is None:
            return _redirect("/console/login")
        return _redirect("/console/review" if user.is_staff else "/console/cases")

    def _login_page(self, request: web.Request, error: str | None, status: int = 200) -> web.Response:
        token = secrets.token_urlsafe(24)
        resp = self.page(request, "login.html", {"error": error, "login_csrf": token,
                                                 "next": request.query.get("next", "")}, status=status)
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=self.secure_cookie,
                        path="/console/login", max_age=3600)
        return resp

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        return self._login_page(request, None)

    async def login_post(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(request)
        # Before a session exists, CSRF is a double-submit: the form's token must equal the cookie's.
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        submitted = str(form.get("csrf") or "")
        # surrogateescape: a cookie's bytes that are not UTF-8 are a mismatch (403), not an encoding error (500).
        if not cookie or not secrets.compare_digest(cookie.encode("utf-8", "surrogateescape"),
                                                    submitted.encode("utf-8", "surrogateescape")):
            return self._login_page(request, say("bad_login_session"), status=403)
        username = str(form.get("username") or "").strip()
        client = request.remote or "-"
        now = self.store.clock.now()
        wait = self.throttle.wait(username, client, now)
        if wait > 0:
            resp = self._login_page(request, say("login_throttled"), status=429)
            resp.headers["Retry-After"] = str(max(1, round(wait)))
            return resp
        try:
            result = await auth.login(self.store, username, str(form.get("password") or ""),
                                      ttl=self.cfg.session_hours * 3600)
        except auth.LoginBusy:
            resp = self._login_page(request, say("login_busy"), status=503)
            resp.headers["Retry-After"] = "5"
            return resp
        if result is None:
            self.throttle.failed(username, client, now)
            return self._login_page(request, say("bad_login"), status=401)
        self.throttle.succeeded(username, client)
        token, user = result
        target = str(form.get("next") or "")
        # Only a path inside the console: never an open redirect to another site.
        if not target.startswith("/console/") or target.startswith("//"):
            target = "/console/review" if user.is_staff else "/console/cases"
        resp = _redirect(target)
        resp.set_cookie(auth.COOKIE, token, httponly=True, samesite="Strict", secure=self.secure_cookie,
                        path="/console", max_age=int(self.cfg.session_hours * 3600))
        resp.del_cookie(LOGIN_CSRF_COOKIE, path="/console/login")
        log.info("console login: %s (%s)", user.username, user.role)
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        await auth.logout(self.store, request.cookies.get(auth.COOKIE, ""))
        resp = _redirect("/console/login")
        resp.del_cookie(auth.COOKIE, path="/console")
        return resp

    # -- review ----------------------------------------------------------------------------------
    async def review_list(self, request: web.Request) -> web.StreamResponse:
        items = await review_queue(self.store, limit=self.cfg.page_size)
        classifications: dict[int, dict[str, Any]] = {}
        excerpts: dict[int, str] = {}
        if items:
            ids = [it.report_id for it in items]
            for r in await self.store.fetchall(f"SELECT id, record, classification FROM reports WHERE id IN"
                                               f" ({','.join('?' * len(ids))})", ids):
                classifications[r["id"]] = json.loads(r["classification"]) if r["classification"] else {}
                # Lists never show personal data: contacts and the reporter's own name are redacted.
                excerpts[r["id"]] = " ".join(redact_text(from_json(InboundMessage, r["record"])).split())[:160]
        rows = [{"item": it, "excerpt": excerpts.get(it.report_id, redact(it.excerpt)),
                 "candidates": (classifications.get(it.report_id) or {}).get("candidates", [])[:3],
                 "place": (classifications.get(it.report_id) or {}).get("place") or {}} for it in items]
        return self.page(request, "review_list.html", {"rows": rows, "flash": request.query.get("done")})

    async def review_one(self, request: web.Request) -> web.StreamResponse:
        try:
            info = await show(self.store, _report_id(request.match_info["id"]))
        except (LookupError, ValueError):
            return self.error(request, 404, say("no_report"))
        topics = sorted((t for t in self.ctx.directory.topics.values()), key=lambda t: t.id)
        row = await self.store.fetchone("SELECT record FROM reports WHERE id=?", (info["report_id"],))
        # The reporter's details are on the report page, where confidential views are logged.
        text = redact_text(from_json(InboundMessage, row["record"])) if row else ""
        return self.page(request, "review_one.html", {"info": info, "topics": topics, "text": text})

    async def review_decide(self, request: web.Request) -> web.StreamResponse:
        user: auth.User = request[USER]
        form = request[FORM]
        try:
            report_id = _report_id(request.match_info["id"])
        except ValueError:
            return self.error(request, 404, say("no_report"))
        reject = str(form.get("reject") or "") or None
        topic = str(form.get("topic") or "") or None
        agency = str(form.get("agency") or "") or None
        if reject not in (None, "abusive", "out_of_scope"):
            return self.error(request, 400, say("bad_reject_reason"))
        if reject is None and topic is None and agency is None:
            return self.error(request, 400, say("choose_topic_or_agency"))
        try:
            result = await decide(self.store, self.ctx.directory, report_id, actor=user.username, topic=topic,
                                  agency=agency, reject=reject, reasons=reject_reasons(self.ctx.settings.data.agencies))
        except LookupError:
            return self.error(request, 404, say("no_report"))
        except AlreadyDecided:
            # A second click, or another operator was quicker: nothing is decided twice.
            return self.error(request, 409, say("already_decided", report_id=report_id))
        except ValueError as exc:
            return self.error(request, 400, say("cannot_decide", exc=exc))
        log.info("review decision on report %d by %s: %s", report_id, user.username, result.status)
        return _redirect(f"/console/review?done={report_id}")

    # -- incidents -------------------------------------------------------------------------------
    async def incidents(self, request: web.Request) -> web.StreamResponse:
        page = _page(request)
        size = self.cfg.page_size
        found = await incidents.open_page(self.store, size + 1, (page - 1) * size)
        cases = await dispatch_queries.cases_of_incidents(self.store, [i["id"] for i in found])
        rows = [{**dict(i), "case_id": case["id"] if case else None, "case_agency": case["agency"] if case else None,
                 "case_state": case["state"] if case else None} for i in found for case in [cases.get(i["id"])]]
        return self.page(request, "incidents.html", {"rows": rows[:size], "page": page, "more": len(rows) > size,
                                                     "flash": request.query.get("done")})

    async def incident_one(self, request: web.Request) -> web.StreamResponse:
        incident_id = request.match_info["id"]
        inc = await incidents.get(self.store, incident_id)
        if inc is None:
            return self.error(request, 404, say("no_incident"))
        reports = await incidents.member_reports(self.store, incident_id)
        members = [{"row": r, "excerpt": redact(" ".join((json.loads(r["record"]).get("text") or "").split()))[:200]}
                   for r in reports]
        decisions = await incidents.decisions_about(self.store, incident_id)
        case = await dispatch_queries.case_of_incident(self.store, incident_id)
        repeats = await recurrence(self.store, inc["recurrence_of"], float(inc["created_at"]))
        recurrences = await incidents.recurrences_of(self.store, incident_id)
        return self.page(request, "incident_one.html", {"inc": inc, "members": members, "decisions": decisions,
                                                        "case": case, "place": json.loads(inc["place"] or "{}"),
                                                        "recurrence": repeats, "recurrences": recurrences})

    async def incident_merge(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        keep, absorb = str(form.get("keep") or "").strip(), str(form.get("absorb") or "").strip()
        try:
            await merge(self.store, keep, absorb, actor=request[USER].username)
        except IncidentError as exc:
            return self.error(request, 400, say("cannot_merge", exc=exc))
        return _redirect(f"/console/incidents/{quote(keep)}")

    async def incident_split(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        try:
            ids = [_report_id(str(v)) for v in form.getall("report", [])]
        except ValueError:
            return self.error(request, 400, say("bad_report_id"))
        try:
            new_id = await split(self.store, request.match_info["id"], ids, actor=request[USER].username)
        except IncidentError as exc:
            return self.error(request, 400, say("cannot_split", exc=exc))
        return _redirect(f"/console/incidents/{quote(new_id)}")

    # -- cases -----------------------------------------------------------------------------------
    async def _case_for(self, request: web.Request) -> Any:
        """The case, if this user may see it; agency staff get the same 404 for others' cases as for none."""
        user: auth.User = request[USER]
        case = await dispatch_queries.case(self.store, request.match_info["id"])
        if case is None or not user.can_see_case_of(case["agency"]):
            return None
        return case

    async def cases(self, request: web.Request) -> web.StreamResponse:
        user: auth.User = request[USER]
        q = request.query
        agency = user.agency if not user.is_staff else q.get("agency", "")
        page, size = _page(request), self.cfg.page_size
        rows = await dispatch_queries.list_cases(self.store, agency=agency or "", state=q.get("state", ""),
                                                 district=q.get("district", ""), open_only=q.get("open") == "1",
                                                 limit=size + 1, offset=(page - 1) * size)
        filters = {k: q.get(k, "") for k in ("agency", "state", "district", "open")}
        return self.page(request, "cases.html", {"rows": rows[:size], "page": page, "more": len(rows) > size,
                                                 "filters": filters, "states": CASE_STATES,
                                                 "query": urlencode({k: v for k, v in filters.items() if v})})

    async def case_one(self, request: web.Request) -> web.StreamResponse:
        user: auth.User = request[USER]
        case = await self._case_for(request)
        if case is None:
            return self.error(request, 404, say("no_case_here"))
        timeline = await case_timeline(self.store, case)
        deadlines = await dispatch_queries.deadlines_of_case(self.store, case["id"])
        report = await self.store.fetchone("SELECT record, classification FROM reports WHERE id=?",
                                           (case["report_id"],))
        text = ""
        unit_label = None  # the 2025 map: "Phường Bình Tiên (P.7, Q.6 cũ)"
        if report is not None and report["classification"]:
            unit_label = (json.loads(report["classification"]).get("place") or {}).get("unit_label")
        if report is not None:
            message = from_json(InboundMessage, report["record"])
            # A confidential reporter's text may name them: in full only on the report page, where it is logged.
            text = redact_text(message) if is_confidential(message) else message.text
        answers = answer_kinds(user)
        agencies = sorted(self.ctx.directory.agencies.values(), key=lambda a: a.name_vi)
        photos = await answer_photos(self.store, case["id"])
        return self.page(request, "case_one.html", {
            "photos": photos,
            "case": case, "timeline": timeline, "deadlines": deadlines, "text": text, "answers": answers,
            "agencies": agencies, "tried": json.loads(case["tried"] or "[]"), "now": self.store.clock.now(),
            "flash": request.query.get("done"), "unit_label": unit_label})

    async def case_photo(self, request: web.Request) -> web.StreamResponse:
        """A photo of the case's answers, for those who may see the case: as stored (operators judge the evidence,
        metadata included; the public pages show it stripped). Only a photo of this case's answers is served."""
        case = await self._case_for(request)
        sha = request.match_info["sha"]
        if case is None or sha not in await answer_photos(self.store, case["id"]):
            return self.error(request, 404, say("no_photo"))
        try:
            raw = await asyncio.to_thread(self.store.blobs.get, sha)
        except OSError:
            return self.error(request, 404, say("no_photo"))
        resp = web.Response(body=raw, content_type=image_type(raw) or "application/octet-stream")
        resp.headers["Cache-Control"] = "private, no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    async def case_answer(self, request: web.Request) -> web.StreamResponse:
        """An answer from the console goes through the same CaseBook.apply_answer as the agency API."""
        user: auth.User = request[USER]
        case = await self._case_for(request)
        if case is None:
            return self.error(request, 404, say("no_case_here"))
        form = request[FORM]
        kind = str(form.get("kind") or "")
        allowed = answer_kinds(user)
        if kind not in allowed:
            return self.error(request, 400, say("bad_answer_kind"))
        note = str(form.get("note") or "").strip()[:8000] or None
        data: dict[str, Any] = {}
        if form.get("expected_completion"):
            try:
                when = datetime.fromisoformat(str(form["expected_completion"]))
            except ValueError:
                return self.error(request, 400, say("bad_expected_time"))
            data["expected_completion"] = (when if when.tzinfo else when.replace(tzinfo=VN_TZ)).timestamp()
        if kind == "returned":
            if not note:
                return self.error(request, 400, say("return_needs_reason"))
            data["reason"] = note
        if kind == "reassigned":
            target = str(form.get("agency") or "")
            if target not in self.ctx.directory.agencies:
                return self.error(request, 400, say("choose_agency"))
            data["agency"] = target
        if form.get("complex"):
            data["complex"] = True
        if form.get("several_agencies"):
            data["several_agencies"] = True
        # Photos of the site (Art. 7.1: the result with photos): uploaded files, kept in the blob store.
        photos = []
        for item in form.getall("photo", []):
            if not isinstance(item, web.FileField) or not item.filename:
                continue
            raw = item.file.read(MAX_PHOTO_BYTES + 1)
            if len(raw) > MAX_PHOTO_BYTES or not raw:
                return self.error(request, 413, say("photo_too_large"))
            content_type = image_type(raw)
            if content_type is None:
                return self.error(request, 400, say("not_a_photo"))
            photos.append(await self.store.put_blob(raw, content_type))
        if photos:
            data["photos"] = photos
        # Logged-in operators act as the operator unit on any case (Art. 6 guidance); agency staff (the City
        # Office's included) on their own.
        acting = OPERATOR_UNIT if user.is_staff else str(user.agency)
        try:
            await self.book().apply_answer(acting, case["id"], kind, data, source=f"console:{user.username}",
                                           note=note, staff=user.is_staff)
        except NotFound:
            return self.error(request, 404, say("no_case"))
        except Forbidden as exc:
            return self.error(request, 403, say("not_allowed", exc=exc))
        except AnswerRejected as exc:
            return self.error(request, 409, say("cannot_apply", exc=exc))
        return _redirect(f"/console/cases/{quote(case['id'])}?done={kind}")

    # -- reports ---------------------------------------------------------------------------------
    async def report_one(self, request: web.Request) -> web.StreamResponse:
        user: auth.User = request[USER]
        try:
            report_id = _report_id(request.match_info["id"])
        except ValueError:
            return self.error(request, 404, say("no_report"))
        row = await self.store.fetchone("SELECT * FROM reports WHERE id=?", (report_id,))
        case = await dispatch_queries.case_of_incident(self.store, row["incident_id"]) if row and row["incident_id"] \
            else None
        if row is None or not (user.is_staff or (case is not None and user.can_see_case_of(case["agency"]))):
            return self.error(request, 404, say("no_report_here"))
        row = {**dict(row), "case_id": case["id"] if case is not None else None}
        message = from_json(InboundMessage, row["record"])
        confidential = is_confidential(message)
        show_reporter = not confidential or self.sees_confidential(user)
        if confidential and show_reporter:
            # Art. 9: every view of a confidential reporter's personal data, by whom and when.
            await auth.log_pii_view(self.store, user, report_id, "reporter")
        events = await self.store.fetchall("SELECT at, kind, actor, data FROM events WHERE report_id=? ORDER BY at, id",
                                           (report_id,))
        cls = json.loads(row["classification"]) if row["classification"] else None
        return self.page(request, "report_one.html", {
            "row": row, "message": message, "confidential": confidential, "show_reporter": show_reporter,
            "text": message.text if show_reporter else redact_text(message), "events": events, "cls": cls})

    # -- dead letters of every queue kind (ingest/queue.py) ---------------------------------------
    async def dead_letters(self, request: web.Request) -> web.StreamResponse:
        """Work that failed for good, of every kind (stage jobs, agency deliveries, bot messages, email replies):
        kind, what it was about, attempts and last error; never the payload, which may carry a reporter's words."""
        kind = request.query.get("kind") or None
        # What the jobs are about (an endpoint, a chat's pseudonym): every dead letter of one chat, to replay together.
        subject, named = await self._dead_letter_subject(request.query)
        letters = [] if named and subject is None else await self.store.queue.dead_letters(
            kind, limit=500, **_by_subject(subject, named))
        depths = await self.store.queue.depths()
        kinds = sorted({k for k, state in depths if state == "dead"})
        return self.page(request, "dead_letters.html", {"letters": letters, "kinds": kinds, "kind": kind or "",
                                                        "subject": shown_to_admins(subject) if named else "",
                                                        "named": named, "replayed": request.query.get("replayed")})

    async def dead_letters_replay(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        kind = str(form.get("kind") or "") or None
        subject, named = await self._dead_letter_subject(form)
        try:
            ids = [int(v) for v in form.getall("job", [])]
        except ValueError:
            return self.error(request, 400, say("bad_replay"))
        if not ids and kind is None and not named:
            return self.error(request, 400, say("bad_replay"))  # replaying everything at once takes the CLI
        count = 0 if named and subject is None else await self.store.queue.replay(kind, ids,
                                                                                   **_by_subject(subject, named))
        user: auth.User = request[USER]
        log.info("console: %s replayed %d dead letter(s) (kind %s)", user.username, count, kind or "any")
        shown = {"kind": kind} if kind else {}
        return _redirect("/console/dead-letters?" + urlencode({"replayed": count, **shown, **named}))

    async def _dead_letter_subject(self, values: Any) -> tuple[str | None, dict[str, str]]:
        """The subject to filter dead letters by (None: no such subject), and the parameters that name it again (for
        the replay form and the redirect; empty: no filter). A row's link names its subject by `like`, the id of a
        dead letter of that subject, read here: a subject may be personal data (an endpoint named by an e-mail
        address), shown on the page only redacted, so neither it nor its redacted form can stand in a link; it
        takes that subject exactly (`_by_subject`). `subject` is typed by hand, as the CLI takes it: one subject,
        or every one under it when it ends with "/" (`so-gtvt/`: every endpoint of an agency)."""
        like = str(values.get("like") or "")
        if like.isdigit():
            job = row_id(like)
            return (await self.store.queue.subject_of(job) if job is not None else None), {"like": like}
        subject = str(values.get("subject") or "") or None
        return subject, {"subject": subject} if subject else {}

    # -- overdue, search, audit ------------------------------------------------------------------
    async def overdue(self, request: web.Request) -> web.StreamResponse:
        user: auth.User = request[USER]
        agency = (request.query.get("agency") or None) if user.is_staff else user.agency
        items = await clocks.overdue(self.store, agency=agency, include_warnings=True)
        return self.page(request, "overdue.html", {"items": items, "agency": agency or ""})

    async def search(self, request: web.Request) -> web.StreamResponse:
        user: auth.User = request[USER]
        q = request.query
        filters = {k: q.get(k, "").strip() for k in ("q", "phone", "agency", "district", "status")}
        page, size = _page(request), self.cfg.page_size
        hits = []
        if any(filters.values()):
            hits = await search(
                self.store, text=filters["q"], phone=filters["phone"], agency=filters["agency"],
                district=filters["district"], status=filters["status"],
                only_case_agency=None if user.is_staff else str(user.agency),
                hide_confidential_phone=not self.sees_confidential(user), limit=size + 1, offset=(page - 1) * size)
            for hit in hits[:size]:
                if hit.phone_match and hit.confidential:
                    # Finding a confidential reporter by their number reveals who they are: logged like a view.
                    await auth.log_pii_view(self.store, user, hit.report_id, "search:phone")
        query = urlencode({k: v for k, v in filters.items() if v})
        return self.page(request, "search.html", {
            "filters": filters, "hits": hits[:size], "page": page, "more": len(hits) > size, "query": query,
            "states": sorted(set(REPORT_STATES) | set(CASE_STATES))})

    async def alerts(self, request: web.Request) -> web.StreamResponse:
        """Every operator alert, newest first: those of a case are on its timeline too, but one attached to no report
        (a dead delivery or digest without a case) is shown only here. Operators and admins only: an alert's details
        name other agencies' endpoints."""
        page, size = _page(request), self.cfg.page_size
        rows = await alerts(self.store, limit=size + 1, offset=(page - 1) * size)
        return self.page(request, "alerts.html", {"rows": rows[:size], "page": page, "more": len(rows) > size})

    async def pii_log(self, request: web.Request) -> web.StreamResponse:
        rows = await self.store.fetchall("SELECT * FROM pii_access_log ORDER BY id DESC LIMIT 500")
        return self.page(request, "pii_log.html", {"rows": rows})


def _by_subject(subject: str | None, named: dict[str, str]) -> dict[str, str | None]:
    """The queue's filter for a subject `_dead_letter_subject` read: a row's link (`like`) means its own subject
    only, a typed one may name a group (ingest/queue.py `_filters`)."""
    return {"subject": subject} if "like" in named else {"subject_prefix": subject}
