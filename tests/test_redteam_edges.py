"""Red-team probes of the daemon's outside edges, through its real HTTP app on loopback and its real SMTP listener
(smtplib): numbers no row can have, JSON bodies nested past any sense. Each gets a clear 4xx (or, for mail, a 250
and a stored report), never a 500 or a 451 for the sender's own input."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import smtplib
import threading
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from console import auth
from console.auth import create_user
from ingest.app import AppContext
from tests.inprocess import MAILBOX, running_daemon
from tests.public_urls import case_of, classify, dispatch_all, report_ids

AGENCY_TOKEN = "redteam-sawaco-token"
PASSWORD = "correct horse battery"
CONFIG = f"""
[[channels]]
kind = "open311"
name = "app"

[[channels]]
kind = "smtp"
name = "mail"
host = "127.0.0.1"
port = 0
recipients = ["{MAILBOX}"]

[[dispatch.agencies.sawaco.targets]]
kind = "email"
to = ["hopthu@sawaco.com.vn"]

[secrets]
"agency.sawaco" = "{AGENCY_TOKEN}"
"""
# Past SQLite's and PostgreSQL's 64-bit integers; "²" and "١٢" are digits to str.isdigit(), not to int().
HUGE = "9" * 20
NOT_IDS = (HUGE, "9" * 40, "²", "١٢")
# How long a test waits for what should happen at once before it gives up (a deadline to stop waiting, not a
# measure of speed).
GIVE_UP_SECONDS = 30


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[AppContext, str, Any]]:
    async with running_daemon(tmp_path, CONFIG) as d:
        yield d


async def _login(http: aiohttp.ClientSession, base: str, username: str) -> None:
    async with http.get(f"{base}/console/login") as resp:
        match = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert match is not None
    async with http.post(f"{base}/console/login", allow_redirects=False,
                         data={"csrf": match.group(1), "username": username, "password": PASSWORD}) as resp:
        assert resp.status == 303, await resp.text()


async def test_numbers_no_row_can_have_are_404_or_400_on_every_id_route(
        daemon: tuple[AppContext, str, Any]) -> None:
    ctx, base, _ = daemon
    await create_user(ctx.store, "operator", "admin", PASSWORD)
    public = [path for n in NOT_IDS for path in (
        f"/public/{n}", f"/public/{n}/photos/{'a' * 64}", f"/open311/v2/requests/{n}.json",
        f"/open311/v2/requests/{n}.xml", f"/open311/v2/requests.json?service_request_id=1,{n}",
        f"/open311/v2/requests.json?page={n}", f"/open311/v2/requests.xml?page={n}", f"/public?page={n}")]
    console = [path for n in NOT_IDS for path in (
        f"/console/reports/{n}", f"/console/review/{n}", f"/console/cases?page={n}", f"/console/search?q={n}",
        f"/console/dead-letters?like={n}")]
    # unsafe: the jar keeps cookies of an IP address (the console's CSRF and session cookies on 127.0.0.1).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        answers = {}
        for path in public:
            async with http.get(base + path) as resp:
                answers[path] = (resp.status, await resp.text())
        await _login(http, base, "operator")
        for path in console:
            async with http.get(base + path, allow_redirects=False) as resp:
                answers[path] = (resp.status, await resp.text())
    wrong = {path: status for path, (status, _) in answers.items() if not 200 <= status < 500}
    assert not wrong, wrong
    assert all("Traceback" not in text for _, text in answers.values())
    # The public ones name no report: not found, or a query refused with a reason (a page in Arabic-Indic digits,
    # which int() reads, is just an empty page).
    assert {answers[p][0] for p in public if "page=" not in p} <= {400, 404}


@pytest.mark.parametrize("path", ["/api/v1/cases/{token}/rating", "/api/v1/cases/{token}/dispute",
                                  "/api/v1/agency/cases/CASE-000001/answers"])
async def test_json_nested_past_the_cap_is_a_422_not_a_500(daemon: tuple[AppContext, str, Any], path: str) -> None:
    _, base, _ = daemon
    deep = b'{"score": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {AGENCY_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(base + path.format(token="x" * 22), data=deep, headers=headers) as resp:
            assert resp.status == 422, await resp.text()
        # The server still answers everyone else.
        async with http.get(base + "/open311/v2/services.json") as resp:
            assert resp.status == 200


async def test_a_mail_naming_a_report_number_past_any_id_is_stored_not_answered_451(
        daemon: tuple[AppContext, str, Any]) -> None:
    ctx, _, smtp = daemon
    msg = EmailMessage()
    msg["From"] = "nguoidan@example.org"
    msg["To"] = MAILBOX
    msg["Subject"] = f"Re: [1022-{HUGE}] ống nước bể"
    msg["Message-ID"] = "<huge-ref@example.org>"
    msg.set_content("Ống nước bể trên đường Lê Lợi, Quận 1, nước chảy lênh láng.")

    def send() -> Any:
        with smtplib.SMTP("127.0.0.1", smtp.port, timeout=30) as client:
            return client.send_message(msg)

    assert await asyncio.to_thread(send) == {}  # accepted for every recipient (a 451 raises)
    rows = await ctx.store.fetchall("SELECT channel FROM reports")
    assert [r["channel"] for r in rows] == ["email"]


async def _raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_malformed_requests_log_one_line_without_their_bytes(daemon: tuple[AppContext, str, Any],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    _, base, _ = daemon
    port = int(base.rsplit(":", 1)[1])
    phone, secret = "0909123456", "verify-token-canary"
    malformed = [
        b"GET /places?q=" + phone.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Phone: " + phone.encode() + b"\x01\r\n\r\n",
        b"GET /webhooks/messenger/fb?hub.verify_token=" + secret.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: " + phone.encode() + b"abc\r\n\r\n",
        b"GET /places?q=" + phone.encode() * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # request line past 8 KB
    ]
    caplog.set_level(logging.DEBUG)
    for _ in range(20):  # a client sending them in a loop
        for data in malformed:
            assert b" 400 " in (await _raw_request(port, data)).split(b"\r\n", 1)[0]
    async with aiohttp.ClientSession() as http:  # and the server answers everyone else
        async with http.get(base + "/open311/v2/services.json") as resp:
            assert resp.status == 200
    logged = caplog.text
    assert phone not in logged and secret not in logged
    assert "Traceback" not in logged
    server_records = [r for r in caplog.records if r.name in ("aiohttp.server", "ingest.http")]
    assert all(r.levelno <= logging.WARNING for r in server_records)
    assert 1 <= len(server_records) <= len(malformed), [r.getMessage() for r in server_records]


async def test_a_flood_of_console_logins_does_not_hold_up_the_rest_of_the_daemon(
        daemon: tuple[AppContext, str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: what intake's parsing of large bodies, blob writes and photos wait for (the default executor) waited
    # 2-5 s behind six 64 MiB argon2 checks at a time. Here the password checks are held (each waits for the test
    # before the real argon2 runs, on whatever thread the console gave it) and the default executor has one thread:
    # while logins wait, a to_thread call must still run. Were the checks on the default executor, it would never
    # run; the deadline only ends the wait for it.
    _, base, _ = daemon
    asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    release, checking = threading.Event(), []
    real_hasher = auth._hasher

    class HeldHasher:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_hasher, name)

        def verify(self, *args: Any) -> Any:
            checking.append(threading.current_thread().name)
            release.wait()
            return real_hasher.verify(*args)

    monkeypatch.setattr(auth, "_hasher", HeldHasher())
    statuses: list[int] = []

    async def guess(http: aiohttp.ClientSession, n: int) -> None:
        # A new username every time: the login throttle counts per (username, address), so each try is checked.
        async with http.get(f"{base}/console/login") as resp:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert csrf is not None
        async with http.post(f"{base}/console/login", data={
                "csrf": csrf.group(1), "username": f"guess{n}", "password": "x" * 12}) as resp:
            statuses.append(resp.status)
            if resp.status == 503:
                assert resp.headers["Retry-After"]

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        guesses = [asyncio.create_task(guess(http, n)) for n in range(24)]
        try:
            for _ in range(GIVE_UP_SECONDS * 100):
                if checking:
                    break
                await asyncio.sleep(0.01)
            assert checking, "no password was checked"
            try:
                await asyncio.wait_for(asyncio.to_thread(lambda: None), GIVE_UP_SECONDS)
            except TimeoutError:
                pytest.fail(f"the default executor ran nothing in {GIVE_UP_SECONDS} s while passwords were checked "
                            f"on {sorted(set(checking))}")
        finally:
            release.set()
        await asyncio.gather(*guesses)
    assert set(statuses) <= {401, 503} and 401 in statuses


async def test_the_reporters_case_page_is_not_cached_framed_or_sniffed(daemon: tuple[AppContext, str, Any]) -> None:
    # Red-team probe: the reporter's private /cases/<token> page (its URL is the credential; the agency's answer and
    # a rating form are on it) and its JSON came with none of the headers the portal's /lookup/<token> has: a shared
    # cache could keep it, another site could frame its rating form.
    ctx, base, _ = daemon
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/open311/v2/requests.json", data={
                "service_code": "water_supply", "description": "Ống nước bể đường Lê Lợi, Quận 1",
                "address_string": "Lê Lợi, Quận 1"}) as resp:
            assert resp.status == 201, await resp.text()
        (rid,) = await report_ids(ctx.store, 1)
        await classify(ctx, rid, "water_supply", "sawaco")
        await dispatch_all(ctx)
        case = await ctx.store.fetchone("SELECT token FROM cases WHERE id=?", ((await case_of(ctx, rid))["id"],))
        token = case["token"]
        for path in (f"/cases/{token}", f"/api/v1/cases/{token}"):
            async with http.get(base + path) as resp:
                assert resp.status == 200, path
                headers = resp.headers
            assert "no-store" in headers.get("Cache-Control", ""), (path, dict(headers))
            assert headers.get("X-Content-Type-Options") == "nosniff", path
            assert headers.get("Referrer-Policy") == "no-referrer", path
            assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), path


@pytest.mark.parametrize("path", ["/open311/v2/requests.json", "/report", "/api/v1/agency/cases/CASE-000001/answers"])
async def test_a_client_hanging_up_mid_body_is_not_logged_as_our_error(daemon: tuple[AppContext, str, Any],
                                                                       caplog: pytest.LogCaptureFixture,
                                                                       path: str) -> None:
    # Red-team probe as a careless client (a phone losing its signal mid-upload): the intake's read of the body
    # raised ConnectionResetError and the daemon logged "unhandled error" at ERROR with a traceback, which pages
    # whoever watches `journalctl -p err`, and answered (nobody) 500. It is the client's doing: one INFO line.
    _, base, _ = daemon
    port = int(base.rsplit(":", 1)[1])
    caplog.set_level(logging.INFO)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer {AGENCY_TOKEN}\r\nContent-Length: 100000\r\n\r\n".encode() + b'{"a": "' + b"x" * 500)
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    def seen() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "ingest.http"]
    for _ in range(GIVE_UP_SECONDS * 100):
        if seen():
            break
        await asyncio.sleep(0.01)
    assert seen(), "the hang-up was not noticed"
    assert all(r.levelno <= logging.INFO and not r.exc_info for r in seen()), [r.getMessage() for r in seen()]
