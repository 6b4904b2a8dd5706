"""Red-team probes of every place the daemon compares a secret a client presents (the agency API's bearer token,
the Open311 API key, the /metrics token, the console login's CSRF cookie and form): bytes that are not UTF-8 are a
wrong secret, answered 401/403 like any other, never a 500. aiohttp reads header bytes that are not UTF-8 as lone
surrogates, which str.encode() refuses; the requests are written on a raw socket, as a hostile client sends them."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ingest.app import AppContext
from tests.inprocess import running_daemon

CONFIG = """
[[channels]]
kind = "open311"
name = "app"
api_keys = ["rt-app-key"]

[[dispatch.agencies.sawaco.targets]]
kind = "email"
to = ["hopthu@sawaco.com.vn"]

[ops]
metrics_token = "rt-metrics-token"

[secrets]
"agency.sawaco" = "rt-sawaco-token"
"""
NOT_UTF8 = b"\xc3\xa9\xff\xfe"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[AppContext, str, Any]]:
    async with running_daemon(tmp_path, CONFIG) as d:
        yield d


async def _raw(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"Host: x\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    status_line = answer.split(b"\r\n", 1)[0]
    return int(status_line.split(b" ")[1]), answer


FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"
JSON = b"Content-Type: application/json\r\n"
REPORT = "service_code=water_supply&description=%E1%BB%90ng+n%C6%B0%E1%BB%9Bc+b%E1%BB%83&address_string=L%C3%AA+L%E1%BB%A3i"


@pytest.mark.parametrize("name,head,body,expected", [
    ("agency bearer", b"POST /api/v1/agency/cases/CASE-000001/answers HTTP/1.1\r\n" + JSON
     + b"Authorization: Bearer " + NOT_UTF8 + b"\r\n", b'{"kind": "progress_report", "note": "x"}', {401}),
    # Not a credential, but read from the same kind of header and stored: refused like Open311's, not a 500.
    ("agency idempotency key", b"POST /api/v1/agency/cases/CASE-000001/answers HTTP/1.1\r\n" + JSON
     + b"Authorization: Bearer rt-sawaco-token\r\nIdempotency-Key: " + NOT_UTF8 + b"\r\n",
     b'{"kind": "acknowledged"}', {400}),
    ("agency idempotency key past 255", b"POST /api/v1/agency/cases/CASE-000001/answers HTTP/1.1\r\n" + JSON
     + b"Authorization: Bearer rt-sawaco-token\r\nIdempotency-Key: " + b"k" * 4000 + b"\r\n",
     b'{"kind": "acknowledged"}', {400}),
    ("agency list", b"GET /api/v1/agency/cases HTTP/1.1\r\nAuthorization: Bearer " + NOT_UTF8 + b"\r\n", b"", {401}),
    ("open311 api key", b"POST /open311/v2/requests.json HTTP/1.1\r\n" + FORM + b"X-Api-Key: " + NOT_UTF8 + b"\r\n",
     REPORT.encode(), {403}),
    ("metrics token", b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer " + NOT_UTF8 + b"\r\n", b"", {401}),
    ("console login cookie", b"POST /console/login HTTP/1.1\r\n" + FORM + b"Cookie: hcmc1022_login_csrf="
     + NOT_UTF8 + b"\r\n", b"csrf=abc&username=a&password=b", {400, 401, 403}),
    ("console session", b"GET /console HTTP/1.1\r\nCookie: hcmc1022_session=" + NOT_UTF8 + b"\r\n", b"", {302, 303}),
    ("console logout", b"POST /console/logout HTTP/1.1\r\n" + FORM + b"Cookie: hcmc1022_session=" + NOT_UTF8
     + b"\r\n", b"", {302, 303, 401, 403}),
    ("portal csrf cookie", b"POST /report HTTP/1.1\r\n" + FORM + b"Cookie: portal_csrf=" + NOT_UTF8 + b"\r\n",
     REPORT.encode() + b"&csrf=abc&form_key=k", {400, 403}),
    ("portal csrf field", b"POST /report HTTP/1.1\r\n" + FORM + b"Cookie: portal_csrf=abc\r\n",
     REPORT.encode() + b"&csrf=%C3%A9&form_key=k", {400, 403}),
    ("portal language cookie", b"GET / HTTP/1.1\r\nCookie: lang=" + NOT_UTF8 + b"\r\n", b"", {200}),
])
async def test_a_secret_that_is_not_utf8_is_refused_not_a_500(daemon: tuple[AppContext, str, Any], name: str,
                                                              head: bytes, body: bytes, expected: set[int]) -> None:
    _, base, _ = daemon
    port = int(base.rsplit(":", 1)[1])
    status, answer = await _raw(port, head, body)
    assert status in expected, (name, answer[:400])
    assert b"Traceback" not in answer


@pytest.mark.parametrize("path,body", [
    ("/open311/v2/requests.json", REPORT.encode()), ("/report", REPORT.encode() + b"&csrf=abc&form_key=k"),
    ("/console/login", b"csrf=abc&username=a&password=b"), ("/cases/" + "t" * 22 + "/rating", b"score=5")])
@pytest.mark.parametrize("content_type", [b"application/x-www-form-urlencoded; charset=" + NOT_UTF8,
                                          NOT_UTF8, b"application/x-www-form-urlencoded; charset=x-no-such-charset",
                                          b"multipart/form-data", b"multipart/form-data; boundary=" + b"x" * 5000])
async def test_a_content_type_that_is_not_utf8_or_names_no_charset_is_never_a_500(
        daemon: tuple[AppContext, str, Any], path: str, body: bytes, content_type: bytes) -> None:
    # Red-team probe: the refusal quoted the header in its quarantine row, which the store could not encode (Open311,
    # portal: 500), and the console's form reader looked the charset up as a codec (LookupError: 500).
    _, base, _ = daemon
    status, answer = await _raw(int(base.rsplit(":", 1)[1]), b"POST " + path.encode() + b" HTTP/1.1\r\n"
                                b"X-Api-Key: rt-app-key\r\nContent-Type: " + content_type + b"\r\n", body)
    # A refusal, or (Open311's urlencoded body is ASCII whatever charset it names) the report taken.
    assert status < 500, answer[:400]
    assert b"Traceback" not in answer


@pytest.mark.parametrize("head,body", [
    (b"POST /open311/v2/requests.json HTTP/1.1\r\nX-Api-Key: rt-app-key\r\n" + FORM, REPORT.encode()),
    (b"POST /api/v1/agency/cases/CASE-000001/answers HTTP/1.1\r\nAuthorization: Bearer rt-sawaco-token\r\n" + JSON,
     b'{"kind": "acknowledged"}')])
async def test_an_idempotency_key_given_twice_is_refused(daemon: tuple[AppContext, str, Any], head: bytes,
                                                         body: bytes) -> None:
    # Red-team probe as a careless client: two Idempotency-Key headers with different values; the first was taken
    # and the other silently dropped (a proxy in front may pick the other, or join them with a comma). Like a field
    # given twice in a form, a 400.
    ctx, base, _ = daemon
    status, answer = await _raw(int(base.rsplit(":", 1)[1]),
                                head + b"Idempotency-Key: first\r\nIdempotency-Key: second\r\n", body)
    assert status == 400, answer[:400]
    assert b"Idempotency-Key" in answer
    assert (await ctx.store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 0
