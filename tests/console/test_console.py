"""The operator console over real HTTP on loopback: login and sessions, CSRF, roles (agency staff see only their
own agency's cases), the personal-data access log, review decisions, incident merge/split, agency answers
through the dispatch case book, the case timeline, the overdue list, search, and the `user` CLI."""
from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import numpy as np
import pytest

from console import auth
from config.loader import validate
from console.service import user_cli
from dispatch.delivery import enqueue_delivery
from ingest.jobs import TelegramSendJob
from ingest.pii import pseudonym
from ingest.records import Candidate, Place, Reporter

from .conftest import PASSWORD, Browser, Server, seed_case, seed_report

SECRET_REPORTER = Reporter(name="Trần Thị Bảo Mật", phone="0912345678", email="baomat@example.vn",
                           address="12 Hẻm Kín, Phường 5", confidential=True)


async def test_login_sets_a_strict_httponly_cookie_and_wrong_passwords_are_refused(server: Server) -> None:
    b = Browser(server.url)
    try:
        status, _ = await b.get("/console/review")
        assert status == 303  # not logged in: to the login page
        resp = await b.login("operator", "wrong password!")
        assert resp.status == 401
        resp = await b.login("nobody", PASSWORD)
        assert resp.status == 401
        resp = await b.login("operator")
        assert resp.status == 303
        cookie = resp.headers.getall("Set-Cookie")
        session = next(c for c in cookie if c.startswith(auth.COOKIE + "="))
        assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/console" in session
        assert "Secure" in session  # the configured public URL is https: never sent in clear
        status, page = await b.get("/console/review")
        assert status == 200 and "operator" in page
        # Logging out ends the session on the server, not only in the browser.
        token = b.session.cookie_jar.filter_cookies(server.url + "/console")[auth.COOKIE].value
        status, _, _ = await b.post("/console/logout", {})
        assert status == 303
        assert await auth.session_user(server.store, token) is None
    finally:
        await b.close()


async def test_repeated_failures_slow_that_client_down_not_the_user_elsewhere(server: Server) -> None:
    clock = server.store.clock
    attacker, operator = Browser(server.url, "127.0.0.2"), Browser(server.url)
    try:
        for _ in range(5):
            assert (await attacker.login("operator", "not the password")).status == 401
        locked = await attacker.login("operator")
        assert locked.status == 429 and locked.headers["Retry-After"] == "2"  # even the right password
        # The operator, from their own machine, is not locked out by the stranger.
        assert (await operator.login("operator")).status == 303
        # Exponential backoff for the stranger: each failure doubles the wait (2, 4, 8, 16 s ...).
        waits = [2]
        for _ in range(4):
            clock.advance(waits[-1])  # the wait is over: one more attempt is checked (and fails)
            assert (await attacker.login("operator", "still not it")).status == 401
            waits.append(int((await attacker.login("operator", "x")).headers["Retry-After"]))
        assert waits == [2, 4, 8, 16, 32]
        # Forgotten after the window without failures: the right password works again from there.
        clock.advance(3600)
        assert (await attacker.login("operator")).status == 303
    finally:
        await attacker.close()
        await operator.close()


async def test_cookie_is_secure_only_when_the_public_url_is_https(tmp_path) -> None:
    from config.console import ConsoleConfig
    from console.views import Console

    for url, secure in (("https://1022.tphcm.gov.vn", True), ("http://127.0.0.1:8022", False)):
        ctx = type("Ctx", (), {"store": None, "settings": validate({"http": {"public_base_url": url}}, {})})()
        assert Console(ctx, ConsoleConfig()).secure_cookie is secure  # type: ignore[arg-type]
    ctx = type("Ctx", (), {"store": None, "settings": validate({"http": {"public_base_url": "http://x"}}, {})})()
    assert Console(ctx, ConsoleConfig(secure_cookie=True)).secure_cookie is True  # type: ignore[arg-type]


async def test_posts_without_the_session_csrf_token_are_rejected(server: Server, browser: Browser) -> None:
    rid = await seed_report(server.store, text="Nước ngập đường", status="review",
                            candidates=(Candidate(topic="drainage", agency="thoat-nuoc", score=0.5),))
    await browser.login("operator")
    status, page, _ = await browser.post(f"/console/review/{rid}/decide", {"topic": "drainage"}, csrf=False)
    assert status == 403 and "CSRF" in page
    browser.csrf = "forged-token-from-another-site"
    status, _, _ = await browser.post(f"/console/review/{rid}/decide", {"topic": "drainage"})
    assert status == 403
    row = await server.store.fetchone("SELECT status FROM reports WHERE id=?", (rid,))
    assert row["status"] == "review"  # nothing decided
    # The login form has its own double-submit token.
    async with browser.session.post(server.url + "/console/login", allow_redirects=False,
                                    data={"username": "operator", "password": PASSWORD, "csrf": "x"}) as resp:
        assert resp.status == 403


async def test_review_decision_records_who_and_when_and_sends_the_report_on(server: Server,
                                                                            browser: Browser) -> None:
    rid = await seed_report(server.store, text="Cống nghẹt, nước ngập đường Lê Lợi", status="review",
                            topic="water_supply", agency="sawaco", confidence=0.41,
                            candidates=(Candidate(topic="water_supply", agency="sawaco", score=0.41),
                                        Candidate(topic="drainage", agency="thoat-nuoc", score=0.38)))
    await browser.login("operator")
    status, page = await browser.get("/console/review")
    # People's names of topics and agencies, not the ids the records keep.
    assert f"report-{rid}" in page and "Thoát nước → Công ty TNHH MTV Thoát nước đô thị TP.HCM" in page
    assert "drainage → thoat-nuoc" not in page
    status, page = await browser.get(f"/console/review/{rid}")
    assert status == 200 and "Cống nghẹt" in page
    status, _, location = await browser.post(f"/console/review/{rid}/decide",
                                             {"topic": "drainage", "agency": "thoat-nuoc"})
    assert status == 303 and location == f"/console/review?done={rid}"
    row = await server.store.fetchone("SELECT status, topic, agency FROM reports WHERE id=?", (rid,))
    assert (row["status"], row["topic"], row["agency"]) == ("routed", "drainage", "thoat-nuoc")
    decision = await server.store.fetchone("SELECT actor, at FROM review_decisions WHERE report_id=?", (rid,))
    assert decision["actor"] == "operator" and decision["at"] == server.store.clock.now()
    # Sent back to dedupe (after the job the classify stage queued for a report in review).
    job = await server.store.fetchone("SELECT payload FROM jobs WHERE report_id=? AND stage='dedupe'"
                                      " ORDER BY id DESC LIMIT 1", (rid,))
    assert job is not None and json.loads(job["payload"])["after_review"] is True
    # A second click finds it decided and changes nothing.
    status, _, _ = await browser.post(f"/console/review/{rid}/decide", {"topic": "water_supply"})
    assert status == 409
    # Agency staff have no review queue.
    agency = Browser(server.url)
    try:
        await agency.login("sawaco")
        assert (await agency.get("/console/review"))[0] == 403
    finally:
        await agency.close()


async def test_review_page_shows_the_classifier_reasons_and_escapes_report_text(server: Server,
                                                                               browser: Browser) -> None:
    vec = np.ones(4, np.float32) / 2.0  # both embedded alike: the known case is the nearest example
    await seed_case(server, text="Cống thoát nước bị nghẹt rác ở Bình Thạnh", incident="INC-000001",
                    topic="drainage", agency="thoat-nuoc", vector=vec)
    rid = await seed_report(server.store, text="Nước ngập <script>alert('x')</script> gọi 0901234567",
                            status="review", vector=vec,
                            place=Place(district="binh-thanh", ward="phuong-25", street="dien bien phu",
                                        house_number="83/16/4", source="text"),
                            candidates=(Candidate(topic="drainage", agency="thoat-nuoc", score=0.47),))
    await browser.login("operator")
    status, page = await browser.get(f"/console/review/{rid}")
    assert status == 200
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "0901234567" not in page  # contacts stay off review pages; the report page shows them
    assert "83/16/4" in page and "dien bien phu" in page and "Quận Bình Thạnh" in page  # the place found
    nearest = page.split("Phản ánh tương tự")[1]
    assert "Cống thoát nước bị nghẹt rác" in nearest and "1.0" in nearest


async def test_agency_staff_see_and_answer_only_their_own_cases(server: Server) -> None:
    own = await seed_case(server, text="Bể ống nước đường Hai Bà Trưng", incident="INC-000001", agency="sawaco")
    other = await seed_case(server, text="Cống nghẹt đường Pasteur", incident="INC-000002", agency="thoat-nuoc",
                            topic="drainage")
    other_report = (await server.store.fetchone("SELECT report_id FROM cases WHERE id=?", (other,)))["report_id"]
    b = Browser(server.url)
    try:
        await b.login("sawaco")
        status, page = await b.get("/console/cases")
        assert own in page and other not in page
        assert (await b.get(f"/console/cases/{other}"))[0] == 404
        assert (await b.get(f"/console/reports/{other_report}"))[0] == 404
        status, _, _ = await b.post(f"/console/cases/{other}/answer", {"kind": "acknowledged"})
        assert status == 404
        status, page = await b.get("/console/search?q=Pasteur")
        hits = page.split('id="hits"')[1]
        assert other not in hits and "Pasteur" not in hits and "Không tìm thấy" in hits
        # Their own case: the answer goes through the dispatch case book, as if posted to the answers API.
        status, _, location = await b.post(f"/console/cases/{own}/answer",
                                           {"kind": "in_progress", "expected_completion": "2026-09-07T15:00",
                                            "note": "Đang thay ống"})
        assert status == 303, location
        case = await server.store.fetchone("SELECT state, expected_completion FROM cases WHERE id=?", (own,))
        assert case["state"] == "in_progress" and case["expected_completion"] == 1788768000.0
        answer = await server.store.fetchone("SELECT agency, kind, source FROM answers WHERE case_id=?", (own,))
        assert dict(answer) == {"agency": "sawaco", "kind": "in_progress", "source": "console:sawaco"}
        # The operator unit's re-assignment is not theirs to make.
        assert (await b.post(f"/console/cases/{own}/answer", {"kind": "reassigned", "agency": "cay-xanh"}))[0] == 400
        status, page = await b.get(f"/console/cases/{own}")
        assert "answer: in_progress" in page and "sawaco (console:sawaco)" in page
    finally:
        await b.close()


async def test_confidential_reporter_views_are_logged_and_hidden_from_unauthorised_agencies(server: Server) -> None:
    case_a = await seed_case(server, text="Tôi là Trần Thị Bảo Mật, gọi 0912345678: nước bẩn đường Nguyễn Trãi",
                             incident="INC-000001", agency="sawaco", reporter=SECRET_REPORTER)
    case_b = await seed_case(server, text="Ngập sâu đường Cống Quỳnh", incident="INC-000002", agency="thoat-nuoc",
                             topic="drainage", reporter=SECRET_REPORTER)
    rid_a = (await server.store.fetchone("SELECT report_id FROM cases WHERE id=?", (case_a,)))["report_id"]
    rid_b = (await server.store.fetchone("SELECT report_id FROM cases WHERE id=?", (case_b,)))["report_id"]
    sawaco, tn, op = Browser(server.url), Browser(server.url), Browser(server.url)
    try:
        await sawaco.login("sawaco")
        for path in (f"/console/reports/{rid_a}", f"/console/cases/{case_a}"):
            status, page = await sawaco.get(path)
            assert status == 200
            for secret in ("Bảo Mật", "0912345678", "baomat@example.vn", "Hẻm Kín"):
                assert secret not in page, (path, secret)
        # Searching the reporter's number must not reveal them either.
        status, page = await sawaco.get("/console/search?phone=0912%20345%20678")
        assert f"/console/reports/{rid_a}" not in page
        logged = await server.store.fetchall("SELECT * FROM pii_access_log")
        assert logged == []
        # thoat-nuoc is authorised by config: it sees the reporter of its own case, and the view is logged.
        await tn.login("thoat-nuoc")
        status, page = await tn.get(f"/console/reports/{rid_b}")
        assert "0912345678" in page and "baomat@example.vn" in page
        await op.login("operator")
        status, page = await op.get(f"/console/reports/{rid_a}")
        assert "Trần Thị Bảo Mật" in page
        status, page = await op.get("/console/search?phone=%2B84912345678")
        assert f"/console/reports/{rid_a}" in page and f"/console/reports/{rid_b}" in page
        rows = await server.store.fetchall("SELECT username, report_id, what, at FROM pii_access_log ORDER BY id")
        assert [(r["username"], r["report_id"], r["what"]) for r in rows] == [
            ("thoat-nuoc", rid_b, "reporter"), ("operator", rid_a, "reporter"),
            ("operator", rid_b, "search:phone"), ("operator", rid_a, "search:phone")]
        assert all(r["at"] == server.store.clock.now() for r in rows)
        # The admin reads the log; an operator may not.
        assert (await op.get("/console/pii-log"))[0] == 403
    finally:
        for b in (sawaco, tn, op):
            await b.close()


async def test_incident_merge_and_split_from_the_console(server: Server, browser: Browser) -> None:
    await seed_case(server, text="Đèn đường tắt đường Lý Tự Trọng", incident="INC-000001", topic="street_lighting",
                    agency="sawaco")
    # Two reports of a second incident, as dedupe leaves them: the first sent on to dispatch, the second a duplicate.
    r2 = await seed_report(server.store, text="Đèn đường Lý Tự Trọng không sáng", incident="INC-000002",
                           topic="street_lighting")
    r3 = await seed_report(server.store, text="Cây đổ trên đường Lý Tự Trọng", incident="INC-000002",
                           topic="street_lighting")
    assert (await server.store.get_report(r3)).status == "duplicate"
    await browser.login("operator")
    status, _, location = await browser.post("/console/incidents/merge", {"keep": "INC-000001",
                                                                          "absorb": "INC-000002"})
    assert status == 303 and location == "/console/incidents/INC-000001"
    status, page = await browser.get("/console/incidents/INC-000001")
    assert f"/console/reports/{r2}" in page and f"/console/reports/{r3}" in page
    assert "operator: merge INC-000002 → INC-000001" in page
    decision = await server.store.fetchone("SELECT kind, actor FROM incident_decisions")
    assert (decision["kind"], decision["actor"]) == ("merge", "operator")
    status, _, location = await browser.post("/console/incidents/INC-000001/split", [("report", str(r3))])
    assert status == 303
    new_id = location.rsplit("/", 1)[1]
    row = await server.store.fetchone("SELECT incident_id FROM reports WHERE id=?", (r3,))
    assert row["incident_id"] == new_id != "INC-000001"
    # A request the incident stage refuses is shown, not applied.
    status, page, _ = await browser.post("/console/incidents/merge", {"keep": "INC-000001", "absorb": "INC-000001"})
    assert status == 400


async def test_case_timeline_shows_every_step_with_who_and_when(server: Server, browser: Browser) -> None:
    case = await seed_case(server, text="Bể ống nước đường Hai Bà Trưng", incident="INC-000001")
    server.ctx.clock.advance(600)
    sawaco = Browser(server.url)
    try:
        await sawaco.login("sawaco")
        await sawaco.post(f"/console/cases/{case}/answer", {"kind": "acknowledged"})
    finally:
        await sawaco.close()
    await browser.login("operator")
    status, page = await browser.get(f"/console/cases/{case}")
    timeline = page.split('id="timeline"')[1]
    steps = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)", timeline)
    whats = [s[2].strip() for s in steps]
    assert whats.index("received") < whats.index("classified") < whats.index("case_created") \
        < whats.index("answer: acknowledged")
    assert "outbox: case.created" in whats
    who = dict((s[2].strip(), s[1]) for s in steps)
    assert who["answer: acknowledged"] == "sawaco (console:sawaco)" and who["case_created"] == "dispatch"
    assert any(s[0].startswith("2026-09-07T09:10") for s in steps if s[2].strip() == "answer: acknowledged")


async def test_a_failed_deliverys_error_on_the_case_timeline_hides_phones_emails_and_ids(server: Server,
                                                                                          browser: Browser) -> None:
    """An agency endpoint's answer quoted in a delivery's last error can name the reporter: the case timeline shows
    it to staff as the dead-letter page does (ingest.pii.redact_ids); the status and the endpoint's words stay."""
    case = await seed_case(server, text="Bể ống nước đường Hai Bà Trưng", incident="INC-000001")
    error = "HTTP 422: rejected report of 0901234567 (an@example.vn), chat 12345678"
    async with server.store.transaction() as tx:
        await tx.execute("UPDATE deliveries SET state='retry', attempts=2, last_status=422, last_error=?"
                         " WHERE case_id=?", (error, case))
    await browser.login("operator")
    status, page = await browser.get(f"/console/cases/{case}")
    timeline = page.split('id="timeline"')[1]
    assert status == 200 and "delivery retry" in timeline and "HTTP 422: rejected report of" in timeline
    for personal in ("0901234567", "an@example.vn", "12345678"):
        assert personal not in page


async def test_overdue_list_and_search(server: Server, browser: Browser) -> None:
    case = await seed_case(server, text="Mất nước cả khu phố đường Trần Hưng Đạo", incident="INC-000001",
                           reporter=Reporter(name="Lê Văn C", phone="0987 654 321"))
    await seed_report(server.store, text="Rác thải đầy hẻm 45", topic="waste", agency="ubnd-quan-3",
                      district="quan-3")
    await browser.login("operator")
    status, page = await browser.get("/console/overdue")
    assert case not in page  # nothing is due yet
    server.ctx.clock.advance(3 * 3600)
    status, page = await browser.get("/console/overdue")
    assert case in page and "site_check" in page
    status, page = await browser.get("/console/search?q=tran+hung+dao")  # no diacritics typed
    assert case in page
    status, page = await browser.get("/console/search?phone=%2B84987654321")
    assert case in page and "Rác thải" not in page
    status, page = await browser.get("/console/search?district=quan-3")
    assert "Rác thải" in page and case not in page
    status, page = await browser.get("/console/search?agency=sawaco&status=forwarded")
    assert case in page and "Rác thải" not in page


async def test_user_cli(server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store, settings = server.store, server.ctx.settings
    monkeypatch.setenv("NEW_PW", "a long enough password")
    assert await user_cli(store, settings, ["add", "lan", "--role", "agency", "--agency", "cay-xanh",
                                            "--password-env", "NEW_PW"]) == 0
    assert await user_cli(store, settings, ["add", "x", "--role", "agency", "--agency", "nope",
                                            "--password-env", "NEW_PW"]) == 2
    assert await user_cli(store, settings, ["add", "y", "--role", "operator", "--password-env", "UNSET_PW"]) == 2
    assert await user_cli(store, settings, ["add", "lan", "--role", "operator", "--password-env", "NEW_PW"]) == 1
    assert await user_cli(store, settings, ["list"]) == 0
    out = capsys.readouterr().out
    assert "lan\tagency\tcay-xanh\tactive" in out and "a long enough password" not in out
    b = Browser(server.url)
    try:
        assert (await b.login("lan", "a long enough password")).status == 303
        assert await user_cli(store, settings, ["disable", "lan"]) == 0
        assert (await b.get("/console/cases"))[0] == 303  # its session ended at once
        assert (await b.login("lan", "a long enough password")).status == 401
    finally:
        await b.close()


async def test_dead_letters_show_no_chat_id_phone_or_address_and_a_chats_pseudonym_finds_its_jobs(
        server: Server, browser: Browser) -> None:
    store = server.store
    kind = "telegram_send:bot"
    chat = pseudonym("6012345678", "the bot's token", "chat")
    async with store.transaction() as tx:
        # The first as a bot wrote its subjects before they were pseudonyms (a channel removed since renames
        # nothing), with an error that quotes a peer's answer; the other two as the bot writes them now.
        await tx.enqueue(kind, None, TelegramSendJob(instance="bot", chat_id=6012345678, text="Ở đâu?"),
                         subject="bot/6012345678")
        for text in ("Ở đâu?", "Số điện thoại?"):
            await tx.enqueue(kind, None, TelegramSendJob(instance="bot", chat_id=6012345678, text=text),
                             subject=f"bot/{chat}")
    old, *new = await store.queue.lease(kind, 5, 60)
    await store.queue.fail(old, "BadRequest: chat 6012345678 of 0901234567, an@example.vn", retry_in=0, dead=True)
    for job in new:
        await store.queue.fail(job, "Forbidden: bot was blocked by the user", retry_in=0, dead=True)
    await browser.login("admin")
    status, page = await browser.get("/console/dead-letters")
    assert status == 200 and "BadRequest" in page and "Forbidden" in page
    for personal in ("6012345678", "0901234567", "an@example.vn"):
        assert personal not in page
    # The chat's pseudonym links to every dead letter of that chat, to replay them together.
    link = f"/console/dead-letters?like={new[0].id}"
    assert link in page
    status, page = await browser.get(link)
    assert status == 200 and page.count("Forbidden") == 2 and "BadRequest" not in page
    status, _, location = await browser.post("/console/dead-letters/replay", {"like": str(new[0].id)})
    assert status == 303 and location is not None and "replayed=2" in location
    assert [d.id for d in await store.queue.dead_letters(kind)] == [old.id]


async def test_an_endpoint_named_by_an_email_address_links_to_its_dead_letters_and_ids_in_errors_are_hidden(
        server: Server, browser: Browser) -> None:
    """An agency endpoint whose target is an e-mail address reads `so-gtvt/[email ẩn]` on the page: its link and its
    replay name it by one of its dead letters (resolved here), not by that redacted text, which matches no job. A
    Telegram user id quoted in an error (8 digits, below what `redact` takes for an id) is hidden; the status is
    not."""
    store = server.store
    async with store.transaction() as tx:
        for target in ("tiepnhan@sogtvt.example.vn", "tiepnhan@sogtvt.example.vn", "hook"):
            await enqueue_delivery(tx, 0, "so-gtvt", target, store.clock.now() + 3600, disabled=True)
    mail, _, hook = [d.id for d in sorted(await store.queue.dead_letters("deliver"), key=lambda d: d.id)]
    async with store.transaction() as tx:
        await tx.execute("UPDATE jobs SET last_error=? WHERE id=?",
                         ("HTTP 400: Bad Request: chat not found (user 12345678)", hook))
    await browser.login("admin")
    status, page = await browser.get("/console/dead-letters")
    assert status == 200 and "tiepnhan" not in page and "so-gtvt/[email ẩn]" in page
    assert "12345678" not in page and "HTTP 400: Bad Request" in page
    assert f"/console/dead-letters?like={mail}" in page
    status, page = await browser.get(f"/console/dead-letters?like={mail}")
    assert status == 200 and "so-gtvt/[email ẩn]" in page and "so-gtvt/hook" not in page
    assert [int(i) for i in re.findall(r'name="job" value="(\d+)"', page)] == [mail + 1, mail]
    status, _, location = await browser.post("/console/dead-letters/replay", {"like": str(mail)})
    assert status == 303 and location is not None and "replayed=2" in location
    assert [d.id for d in await store.queue.dead_letters("deliver")] == [hook]


async def test_admin_sees_and_replays_dead_letters_of_every_kind(server: Server, browser: Browser) -> None:
    case = await seed_case(server, text="Mất nước cả khu phố đường Trần Hưng Đạo", incident="INC-000001")
    store = server.store
    (delivery,) = await store.queue.lease("deliver", 5, 60)
    await store.queue.fail(delivery, "HTTP 400", retry_in=0, dead=True)
    # Classified: its dedupe job waits, and dies here.
    rid = await seed_report(store, text="Rác thải đầy hẻm 45", topic="waste", agency="ubnd-quan-3",
                            district="quan-3")
    (dedupe,) = await store.queue.lease("dedupe", 5, 60)
    await store.queue.fail(dedupe, "index unavailable", retry_in=0, dead=True)

    op = Browser(server.url)
    try:
        await op.login("operator")
        assert (await op.get("/console/dead-letters"))[0] == 403
    finally:
        await op.close()
    await browser.login("admin")
    status, page = await browser.get("/console/dead-letters")
    assert status == 200
    assert "deliver" in page and "sawaco/" in page and "HTTP 400" in page
    assert "dedupe" in page and f"/console/reports/{rid}" in page and "index unavailable" in page
    status, page = await browser.get("/console/dead-letters?kind=deliver")
    assert "index unavailable" not in page
    assert (await browser.post("/console/dead-letters/replay", {}))[0] == 400  # nothing chosen: nothing replayed
    status, _, location = await browser.post("/console/dead-letters/replay", {"job": str(delivery.id)})
    assert status == 303 and location is not None and "replayed=1" in location
    row = await store.fetchone("SELECT state, attempts FROM deliveries WHERE case_id=?", (case,))
    assert (row["state"], row["attempts"]) == ("pending", 0)  # the delivery kind's own replay ran
    assert [d.kind for d in await store.queue.dead_letters()] == ["dedupe"]


async def test_staff_pages_are_not_cached_framed_or_sniffed(server: Server) -> None:
    # Red-team pass: console pages (reporters' names and phones on them) sent no X-Content-Type-Options, no
    # Cache-Control and no CSP frame-ancestors (only X-Frame-Options, which some browsers ignore).
    b = Browser(server.url)
    try:
        await seed_report(server.store, text="Ống nước bể", topic="water_supply", agency="sawaco", status="review")
        assert (await b.login("operator")).status == 303
        async with b.session.get(server.url + "/console/review") as resp:
            assert resp.status == 200
            headers = resp.headers
        assert headers.get("Cache-Control") == "no-store" and headers.get("X-Content-Type-Options") == "nosniff"
        assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", "")
    finally:
        await b.close()
