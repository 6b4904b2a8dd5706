"""The report form without a browser, as a phone without JavaScript posts it: one intake with the app API (same
record, same idempotency), errors next to the field with nothing typed lost, CSRF, honeypot, rate limits, the
receipt and the private lookup, photos shown only without metadata, address suggestions, the language switch."""
from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from ingest.records import InboundMessage, from_json

from .conftest import FormClient, Server, has_metadata, photo_with_gps, running_server

DESCRIPTION = "Đèn đường trước số 12 Lê Lợi tắt cả tuần nay, buổi tối rất tối"


def report_fields(csrf: str, key: str, **extra: str) -> dict[str, str]:
    fields = {"csrf": csrf, "form_key": key, "description": DESCRIPTION, "service_code": "",
              "address_string": "12 Lê Lợi, Phường Bến Nghé, Quận 1", "lat": "10.7741", "long": "106.7012",
              "last_name": "Nguyễn", "first_name": "Thị Canary", "phone": "0909 123 456",
              "email": "canary@example.vn", "website": ""}
    fields.update(extra)
    return fields


async def test_form_posts_through_the_app_intake_and_gives_a_private_receipt(server: Server,
                                                                           client: FormClient) -> None:
    page, csrf, key = await client.form()
    assert '<html lang="vi">' in page and "Gửi phản ánh" in page
    for name in ("description", "address_string", "lat", "long", "media", "first_name", "last_name", "phone",
                 "email", "confidential", "service_code"):
        assert f'name="{name}"' in page, name
    status, _, location = await client.post("/report", report_fields(csrf, key), [("a.jpg", photo_with_gps())])
    assert status == 303 and location is not None and location.startswith("/receipt/")
    rows = await server.store.fetchall("SELECT id, channel, channel_instance, record FROM reports")
    assert len(rows) == 1
    message = from_json(InboundMessage, rows[0]["record"])
    assert (rows[0]["channel"], rows[0]["channel_instance"]) == ("app", "portal")
    assert message.text == DESCRIPTION and message.service_code is None  # the topic is the classifier's to decide
    assert (message.lat, message.lon) == (10.7741, 106.7012)
    assert message.reporter.name == "Nguyễn Thị Canary" and message.reporter.phone == "0909 123 456"
    assert len(message.attachments) == 1
    # A second press of "send" (or a retry after a lost answer) carries the same form key: the same report.
    status, _, again = await client.post("/report", report_fields(csrf, key), [("a.jpg", photo_with_gps())])
    assert status == 303 and again == location
    assert len(await server.store.fetchall("SELECT id FROM reports")) == 1

    status, receipt = await client.get(location)
    token = location.rsplit("/", 1)[1]
    assert status == 200 and f"Số phản ánh của bạn: {rows[0]['id']}" in receipt
    assert f"http://1022.example.vn/lookup/{token}" in receipt and len(token) >= 24
    status, lookup = await client.get(f"/lookup/{token}")
    assert status == 200 and DESCRIPTION in lookup and "Đang phân loại" in lookup
    # The reporter's photo is shown to them re-encoded without EXIF: no camera, no GPS.
    sha = message.attachments[0].sha256
    assert has_metadata(server.store.blobs.get(sha))  # the original is kept as received
    async with client.session.get(f"{server.url}/lookup/{token}/photos/{sha}") as resp:
        assert resp.status == 200 and resp.content_type == "image/jpeg"
        assert not has_metadata(await resp.read())
    # Tokens are the only key: a wrong one, or a photo of another report, is not found.
    assert (await client.get("/lookup/" + "x" * 32))[0] == 404
    async with client.session.get(f"{server.url}/lookup/{token}/photos/{'0' * 64}") as resp:
        assert resp.status == 404


async def test_a_sent_form_changed_and_sent_again_is_no_silent_duplicate_nor_a_lost_change(server: Server,
                                                                                          client: FormClient) -> None:
    """Back after sending, the page still holds its form key: a double press (the same fields) is the first report,
    but a changed text under that key is a different request. It used to land on the first report's receipt, the
    change dropped without a word; now the person is told, their text is kept, and the form has a new key, so
    pressing send again files the changed report."""
    _, csrf, key = await client.form()
    status, _, location = await client.post("/report", report_fields(csrf, key))
    assert status == 303 and location is not None
    changed = DESCRIPTION + ", nay thêm một cột đèn nữa cũng tắt"
    status, page, _ = await client.post("/report", report_fields(csrf, key, description=changed))
    assert status == 422
    assert "Biểu mẫu này đã được gửi" in page and changed in page and 'value="Thị Canary"' in page
    fresh = page.split('name="form_key" value="', 1)[1].split('"', 1)[0]
    assert fresh != key and len(fresh) >= 16
    assert len(await server.store.fetchall("SELECT id FROM reports")) == 1
    status, _, second = await client.post("/report", report_fields(csrf, fresh, description=changed))
    assert status == 303 and second is not None and second != location
    texts = [from_json(InboundMessage, r["record"]).text
             for r in await server.store.fetchall("SELECT record FROM reports ORDER BY id")]
    assert texts == [DESCRIPTION, changed]
    # In English, in English.
    status, page, _ = await client.post("/report?lang=en", report_fields(csrf, key, description=changed + "!"))
    assert status == 422 and "This form was already sent" in page


async def test_errors_are_shown_next_to_the_field_and_nothing_typed_is_lost(server: Server,
                                                                          client: FormClient) -> None:
    _, csrf, key = await client.form()
    status, page, _ = await client.post("/report", report_fields(
        csrf, key, description="  ", address_string="", lat="", long="", email="not-an-address"))
    assert status == 400
    assert 'id="email-error">Địa chỉ thư điện tử không hợp lệ.' in page
    assert 'aria-invalid="true"' in page and 'role="alert"' in page
    # Everything typed comes back; the form key too, so a corrected post is still one report.
    assert 'value="Thị Canary"' in page and 'value="0909 123 456"' in page and 'value="not-an-address"' in page
    assert f'name="form_key" value="{key}"' in page
    status, page, _ = await client.post("/report", report_fields(
        csrf, key, description="  ", address_string="", lat="", long=""))
    assert status == 400 and 'id="description-error">Vui lòng mô tả sự việc.' in page
    status, page, _ = await client.post("/report", report_fields(csrf, key, address_string="", lat="", long=""))
    assert status == 400 and "Vui lòng nhập địa chỉ hoặc chọn vị trí trên bản đồ." in page
    assert DESCRIPTION in page
    status, page, _ = await client.post("/report", report_fields(csrf, key, lat="91"))
    assert status == 400 and 'id="lat-error">Vĩ độ không hợp lệ.' in page
    status, page, _ = await client.post("/report", report_fields(csrf, key), [(f"{i}.jpg", b"\xff\xd8x") for i in range(6)])
    assert status == 400 and "tối đa 5 ảnh" in page and "vui lòng chọn lại ảnh" in page
    assert await server.store.fetchall("SELECT id FROM reports") == []
    # Refused bodies are kept for operators, as the app API's are.
    assert len(await server.store.fetchall("SELECT id FROM quarantine WHERE channel_instance='portal'")) == 4
    # In English, the same errors in English.
    status, page, _ = await client.post("/report?lang=en", report_fields(csrf, key, description=""))
    assert status == 400 and '<html lang="en">' in page and "Please describe the problem." in page


async def test_csrf_and_honeypot_refuse_politely_and_keep_the_text(server: Server, client: FormClient) -> None:
    _, csrf, key = await client.form()
    status, page, _ = await client.post("/report", report_fields("forged", key))
    assert status == 403 and "Phiên làm việc đã hết hạn" in page and DESCRIPTION in page
    # The page carries a valid token again: pressing send once more works.
    fresh = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    status, _, location = await client.post("/report", report_fields(fresh, key))
    assert status == 303 and location is not None
    # Another site's form has no cookie at all.
    other = FormClient(server.url)
    try:
        status, page, _ = await other.post("/report", report_fields(csrf, "k" * 24))
        assert status == 403
    finally:
        await other.close()
    status, page, _ = await client.post("/report", report_fields(csrf, "h" * 24, website="http://spam.example"))
    assert status == 400
    assert len(await server.store.fetchall("SELECT id FROM reports")) == 1
    row = await server.store.fetchone("SELECT reason FROM quarantine WHERE channel_instance='portal'")
    assert row is not None and row["reason"] == "honeypot field filled"


async def test_rate_limit_per_client_answers_429_and_keeps_the_text(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"rate_burst": 2, "rate_per_minute": 1.0}) as srv:
        client = FormClient(srv.url)
        try:
            _, csrf, _ = await client.form()
            for i in range(2):
                status, _, _ = await client.post("/report", report_fields(csrf, f"key-{i}-" + "k" * 20))
                assert status == 303
            status, page, _ = await client.post("/report", report_fields(csrf, "key-3-" + "k" * 20))
            assert status == 429 and "Vui lòng thử lại sau 60 giây" in page and DESCRIPTION in page
            srv.ctx.clock.advance(60)
            status, _, _ = await client.post("/report", report_fields(csrf, "key-4-" + "k" * 20))
            assert status == 303
        finally:
            await client.close()
        assert len(await srv.store.fetchall("SELECT id FROM reports")) == 3


async def test_too_large_a_body_gets_a_polite_page(server: Server, client: FormClient) -> None:
    _, csrf, key = await client.form()
    # Over the HTTP body limit (10 MB): a page that says so and leads back (the browser still holds the text).
    status, page, _ = await client.post("/report", report_fields(csrf, key), [("big.jpg", b"\xff" * 11_000_000)])
    assert status == 413 and "quá lớn (tối đa 10 MB)" in page and "Quay lại biểu mẫu" in page
    assert "Traceback" not in page
    # Under it, but one photo over the per-photo limit: the form again, with the text and a message at the photos.
    status, page, _ = await client.post("/report", report_fields(csrf, key), [("big.jpg", b"\xff" * 9_000_000)])
    assert status == 413 and 'id="media-error">Mỗi ảnh tối đa 8 MB' in page and DESCRIPTION in page
    assert await server.store.fetchall("SELECT id FROM reports") == []


async def test_address_suggestions_language_switch_and_no_open_redirect(server: Server, client: FormClient) -> None:
    async with client.session.get(f"{server.url}/places", params={"q": "ben nghe"}) as resp:
        labels = [p["label"] for p in await resp.json()]
    assert "Phường Bến Nghé, Quận 1" in labels
    async with client.session.get(f"{server.url}/places", params={"q": "le loi q1"}) as resp:
        assert "Lê Lợi, Quận 1" in [p["label"] for p in await resp.json()]
    async with client.session.get(f"{server.url}/lang/en?next=/public", allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/public"
    status, page = await client.get("/")
    assert '<html lang="en">' in page and "Report a problem" in page and "Tiếng Việt" in page
    async with client.session.get(f"{server.url}/lang/vi?next=//evil.example/x", allow_redirects=False) as resp:
        assert resp.headers["Location"] == "/"
    # Browsers drop tabs and line breaks and read "\\" as "/": each of these went to evil.example before.
    for target in ("/%09/evil.example", "/%0a/evil.example", "/%0d%0a/evil.example", "%2F%09%2Fevil.example",
                   "/%5Cevil.example"):
        async with client.session.get(f"{server.url}/lang/vi?next={target}", allow_redirects=False) as resp:
            assert resp.headers["Location"] == "/", target
    status, page = await client.get("/")
    assert '<html lang="vi">' in page


async def test_receipt_token_is_written_once_per_report(server: Server, client: FormClient) -> None:
    _, csrf, key = await client.form()
    first = await client.post("/report", report_fields(csrf, key))
    second = await client.post("/report", report_fields(csrf, key))
    assert first[2] == second[2] and first[2] is not None
    rows = await server.store.fetchall("SELECT report_id, token FROM portal_receipts")
    assert len(rows) == 1 and first[2].endswith(rows[0]["token"])
    _, _, other = await client.post("/report", report_fields(csrf, "another-key-" + "k" * 12))
    assert other is not None and other != first[2]
    assert len(await server.store.fetchall("SELECT token FROM portal_receipts")) == 2


def test_the_access_log_never_holds_a_private_token(caplog: pytest.LogCaptureFixture) -> None:
    from run_daemon import PathOnlyAccessLogger

    class Request:
        method = "GET"

    class Response:
        status = 200

    logger = PathOnlyAccessLogger(logging.getLogger("aiohttp.access"), "")
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    for path in ("/lookup/SECRETtoken1234567890abcd", "/receipt/SECRETtoken1234567890abcd",
                 "/lookup/SECRETtoken1234567890abcd/photos/" + "a" * 64, "/cases/SECRETcasetoken",
                 "/api/v1/cases/SECRETcasetoken", "/public/12"):
        Request.path = path  # type: ignore[attr-defined]
        logger.log(Request(), Response(), 0.01)
    assert "SECRET" not in caplog.text
    assert "GET /lookup/[token]/photos/" in caplog.text and "GET /public/12 200" in caplog.text


async def test_cookies_are_secure_when_the_portal_is_published_over_https(tmp_path: Path) -> None:
    async with running_server(tmp_path, base_url="https://1022.example.vn") as srv:
        async with aiohttp.ClientSession() as http, http.get(srv.url + "/") as resp:
            cookie = resp.headers["Set-Cookie"]
    assert "portal_csrf=" in cookie and "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
