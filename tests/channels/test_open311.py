"""The Open311 app channel against a real aiohttp server on loopback, with a real store behind it."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from channels.open311 import build
from config.channels import ChannelEntry, Open311Options
from config.directory import load_directory
from config.schema import Settings
from ingest.app import AppContext
from ingest.http import make_app
from ingest.records import InboundMessage, from_json
from ingest.store import Store
from tests.stores import StoreFactory, store_factory  # noqa: F401  (the parametrised fixture)

MAX_BODY = 64 * 1024
REQUESTS = "/open311/v2/requests.json"
PHONE, EMAIL, NAME, ADDRESS = "0903123456", "tran.thi.b@example.vn", "Trần Thị Bích", "83/16/4 Ba Tháng Hai"


@dataclass
class Server:
    url: str
    store: Store
    session: aiohttp.ClientSession

    async def post(self, path: str = REQUESTS, **kw) -> tuple[int, object, str]:
        async with self.session.post(self.url + path, **kw) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if resp.content_type == "application/json" else None, text

    async def get(self, path: str) -> tuple[int, object, str]:
        async with self.session.get(self.url + path) as resp:
            text = await resp.text()
            return resp.status, json.loads(text), text

    async def count(self, table: str) -> int:
        row = await self.store.fetchone(f"SELECT COUNT(*) AS n FROM {table}")
        return row["n"]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    from run_daemon import collect_migrations

    store = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs", migrations=collect_migrations())
    async with serving(store) as srv:
        yield srv
    await store.close()


@pytest.fixture
async def any_server(store_factory: StoreFactory) -> AsyncIterator[Server]:
    """The same server on each store backend (SQLite, PostgreSQL)."""
    from run_daemon import collect_migrations

    async with serving(await store_factory.open(migrations=collect_migrations())) as srv:  # type: ignore[arg-type]
        yield srv


@contextlib.asynccontextmanager
async def serving(store: Store) -> AsyncIterator[Server]:
    # Every component's tables: a public request is read with its case and the case's answers.
    from console.public import add_public_routes

    directory = load_directory(None)
    ctx = AppContext(settings=Settings(), directory=directory, store=store, clock=store.clock,
                     http=make_app(MAX_BODY))
    entry = ChannelEntry(kind="open311", name="app")
    (channel,) = build(ctx, entry, Open311Options(max_photos=2))
    # The public read API beside it, as every serving instance builds it (a report's page reads its case).
    add_public_routes(ctx)
    runner = web.AppRunner(ctx.http)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            yield Server(f"http://127.0.0.1:{port}", store, session)
    finally:
        await runner.cleanup()
    del channel


def form(**overrides: str) -> dict[str, str]:
    fields = {"service_code": "drainage", "description": "Cống bị rác bít kín, nước ngập nửa bánh xe",
              "lat": "10.761701", "long": "106.668647"}
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


async def _record(store: Store, report_id: str) -> InboundMessage:
    report = await store.get_report(int(report_id))
    assert report is not None
    return report.message


# -- accepted requests ----------------------------------------------------------------------------------
async def test_form_encoded_request_is_stored_and_queued(server: Server) -> None:
    status, body, _ = await server.post(data=form(first_name="Bích", last_name="Trần Thị", phone=PHONE))
    assert status == 201
    (item,) = body
    assert item["service_request_id"].isdigit()
    msg = await _record(server.store, item["service_request_id"])
    assert msg.channel == "app" and msg.channel_instance == "app" and msg.service_code == "drainage"
    assert msg.text == "Cống bị rác bít kín, nước ngập nửa bánh xe"
    assert (msg.lat, msg.lon) == (10.761701, 106.668647)
    assert msg.reporter.name == "Trần Thị Bích" and msg.reporter.phone == PHONE
    row = await server.store.fetchone("SELECT raw, raw_type FROM reports")
    assert b"service_code=drainage" in row["raw"] and row["raw_type"].startswith("application/x-www-form-urlencoded")
    assert await server.count("jobs") == 1


async def test_json_request(server: Server) -> None:
    payload = {"service_code": "street_lighting", "description": "Đèn đường tắt cả tuần",
               "address_string": "12 Lê Lợi, Quận 1", "email": EMAIL, "confidential": True, "lat": None}
    status, body, _ = await server.post(json=payload)
    assert status == 201
    msg = await _record(server.store, body[0]["service_request_id"])
    assert msg.service_code == "street_lighting" and msg.lat is None
    assert msg.reporter.address == "12 Lê Lợi, Quận 1" and msg.reporter.confidential and msg.reporter.email == EMAIL


async def test_multipart_with_photos_stores_blobs_and_names_them(server: Server) -> None:
    photo_a = b"\xff\xd8\xff\xe0 fake jpeg " + bytes(range(256)) * 10
    photo_b = b"\x89PNG\r\n\x1a\n fake png"
    data = aiohttp.FormData(quote_fields=False)  # UTF-8 file names unescaped, as browsers send them
    for k, v in form().items():
        data.add_field(k, v)
    data.add_field("media", photo_a, filename="ổ gà.jpg", content_type="image/jpeg")
    data.add_field("media", photo_b, filename="b.png", content_type="image/png")
    status, body, _ = await server.post(data=data)
    assert status == 201, body
    msg = await _record(server.store, body[0]["service_request_id"])
    assert [(a.sha256, a.content_type, a.size) for a in msg.attachments] == [
        (hashlib.sha256(photo_a).hexdigest(), "image/jpeg", len(photo_a)),
        (hashlib.sha256(photo_b).hexdigest(), "image/png", len(photo_b))]
    assert msg.attachments[0].filename == "ổ gà.jpg"
    for attachment, photo in zip(msg.attachments, (photo_a, photo_b)):
        assert server.store.blobs.get(attachment.sha256) == photo
    assert await server.count("blobs") == 2


async def test_idempotency_key_retry_answers_200_and_another_request_under_it_422(any_server: Server) -> None:
    """IETF httpapi Idempotency-Key: the same key again is a retry of the same request (200, the first id), however
    it is encoded (form, JSON with its keys in another order, multipart with its own boundary); the key on a
    different request is the client's mistake (422, nothing stored, the first report untouched)."""
    server = any_server
    headers = {"Idempotency-Key": "app-install-42:req-7"}
    photo = b"\xff\xd8\xff\xe0" + b"JFIF photo of the drain"

    def multipart(fields: dict[str, str], data: bytes = photo) -> aiohttp.FormData:
        body = aiohttp.FormData()
        for name, value in fields.items():
            body.add_field(name, value)
        body.add_field("media", data, filename="cong.jpg", content_type="image/jpeg")
        return body

    first = await server.post(data=multipart(form()), headers=headers)
    assert first[0] == 201, first[2]
    report_id = first[1][0]["service_request_id"]
    for retry in ({"data": multipart(form())}, {"data": multipart(dict(reversed(form().items())))}):
        again = await server.post(headers=headers, **retry)
        assert again[0] == 200 and again[1][0]["service_request_id"] == report_id, again[2]
    stored = (await server.store.fetchone("SELECT record FROM reports WHERE id=?", (int(report_id),)))["record"]
    for changed in ({"data": multipart(form(description="gửi lại lần hai"))},  # another text
                    {"data": multipart(form(), photo + b" another shot")},  # another photo
                    {"data": form()},  # the photo left out
                    {"json": {**form(), "phone": PHONE}}):  # another field
        status, body, text = await server.post(headers=headers, **changed)
        assert status == 422, text
        assert body[0]["code"] == 422 and "Idempotency-Key" in body[0]["description"], text
        assert "different request" in body[0]["description"] and report_id not in text
    assert await server.count("reports") == 1 and await server.count("jobs") == 1
    after = (await server.store.fetchone("SELECT record FROM reports WHERE id=?", (int(report_id),)))["record"]
    assert after == stored
    # The same fields without photos as JSON under a key of their own: a retry as JSON is still the same request.
    headers = {"Idempotency-Key": "app-install-42:req-8"}
    created = await server.post(data=form(description="Nắp cống bị mất"), headers=headers)
    retried = await server.post(json=form(description="Nắp cống bị mất"), headers=headers)
    assert (created[0], retried[0]) == (201, 200)
    assert created[1][0]["service_request_id"] == retried[1][0]["service_request_id"]


async def test_concurrent_repeats_make_one_report(server: Server) -> None:
    headers = {"Idempotency-Key": "retry-storm"}
    results = await asyncio.gather(*(server.post(data=form(), headers=headers) for _ in range(8)))
    assert sorted(r[0] for r in results) == [200] * 7 + [201]
    assert len({r[1][0]["service_request_id"] for r in results}) == 1
    assert await server.count("reports") == 1


async def test_without_a_key_an_identical_body_is_one_report(server: Server) -> None:
    first = await server.post(data=form())
    second = await server.post(data=form())
    assert (first[0], second[0]) == (201, 200)
    assert await server.count("reports") == 1


# -- refused requests ---------------------------------------------------------------------------------
async def _refused(server: Server, expected_status: int, **kw) -> str:
    status, body, text = await server.post(**kw)
    assert status == expected_status, text
    assert "Traceback" not in text
    assert isinstance(body, list) and body[0]["code"] == expected_status and body[0]["description"]
    assert await server.count("reports") == 0 and await server.count("jobs") == 0
    return body[0]["description"]


@pytest.mark.parametrize(("fields", "status", "says"), [
    ({"service_code": None}, 400, "service_code is required"),
    ({"service_code": "unicorns"}, 404, "unknown service_code"),
    ({"description": "   "}, 400, "description is required"),
    ({"lat": "91", "long": "106.6"}, 400, "lat is out of range"),
    ({"lat": "mười", "long": "106.6"}, 400, "lat must be a number"),
    ({"lat": "nan", "long": "106.6"}, 400, "lat is out of range"),
    ({"long": None}, 400, "lat and long must be given together"),
    ({"lat": None, "long": None}, 400, "a location is required"),
])
async def test_bad_fields_are_refused_and_quarantined(server: Server, fields: dict, status: int, says: str) -> None:
    description = await _refused(server, status, data=form(**fields))
    assert says in description
    row = await server.store.fetchone("SELECT raw, reason FROM quarantine")
    assert row["reason"] == description and b"description=" in row["raw"]


async def test_malformed_json_is_400_and_kept(server: Server) -> None:
    raw = b'{"service_code": "drainage", "description": "c\xe1\xbb\x91ng ngh'
    await _refused(server, 400, data=raw, headers={"Content-Type": "application/json"})
    row = await server.store.fetchone("SELECT raw FROM quarantine")
    assert row["raw"] == raw


@pytest.mark.parametrize("raw", [b"[1, 2]", b'{"service_code": {"nested": 1}}', b"\xff\xfe not utf-8"])
async def test_other_broken_json_bodies(server: Server, raw: bytes) -> None:
    await _refused(server, 400, data=raw, headers={"Content-Type": "application/json"})


async def test_unsupported_content_type_is_415(server: Server) -> None:
    await _refused(server, 415, data=b"<xml/>", headers={"Content-Type": "application/xml"})


async def test_oversize_body_is_413_in_open311_format(server: Server) -> None:
    big = form(description="ngập " * (MAX_BODY // 4))
    description = await _refused(server, 413, data=big)
    assert "large" in description or "limit" in description


async def test_photo_of_the_wrong_type_stores_no_blob(server: Server) -> None:
    data = aiohttp.FormData()
    for k, v in form().items():
        data.add_field(k, v)
    data.add_field("media", b"#!/bin/sh\nrm -rf /", filename="x.sh", content_type="text/x-shellscript")
    await _refused(server, 400, data=data)
    assert await server.count("blobs") == 0
    assert not any(p.is_file() for p in Path(server.store.blobs.root).rglob("*"))


async def test_too_many_photos(server: Server) -> None:
    data = aiohttp.FormData()
    for k, v in form().items():
        data.add_field(k, v)
    for i in range(3):
        data.add_field("media", f"img{i}".encode(), filename=f"{i}.jpg", content_type="image/jpeg")
    assert "at most 2 photos" in await _refused(server, 400, data=data)
    assert await server.count("blobs") == 0


async def test_storage_failure_is_503_with_retry_after_and_no_trace(server: Server) -> None:
    side = sqlite3.connect(server.store.path)
    side.execute("CREATE TRIGGER refuse BEFORE INSERT ON reports BEGIN SELECT RAISE(ABORT, 'disk I/O'); END")
    side.commit()
    try:
        async with server.session.post(server.url + REQUESTS, data=form()) as resp:
            text = await resp.text()
            assert resp.status == 503 and resp.headers["Retry-After"]
            assert "Traceback" not in text and "disk I/O" not in text
            assert json.loads(text)[0]["code"] == 503
    finally:
        side.execute("DROP TRIGGER refuse")
        side.commit()
        side.close()
    # The app retries and is accepted once.
    assert (await server.post(data=form()))[0] == 201


# -- reading --------------------------------------------------------------------------------------------
async def test_services_lists_requestable_topics(server: Server) -> None:
    status, body, _ = await server.get("/open311/v2/services.json")
    assert status == 200
    codes = {s["service_code"] for s in body}
    directory = load_directory(None)
    assert codes == {t.id for t in directory.topics.values() if t.agency is not None}
    assert all(s["service_name"] and s["type"] == "realtime" for s in body)


async def test_public_request_view_has_no_personal_data(server: Server) -> None:
    text = f"Cống nghẹt trước nhà {ADDRESS}. Gọi {NAME} số 0903.123.456 hoặc {EMAIL} để vào xem."
    status, body, _ = await server.post(data=form(
        description=text, first_name="Bích", last_name="Trần Thị", phone=PHONE, email=EMAIL,
        address_string=ADDRESS, device_id="device-secret-77"))
    assert status == 201
    rid = body[0]["service_request_id"]
    status, view, raw = await server.get(f"/open311/v2/requests/{rid}.json")
    assert status == 200
    (item,) = view
    assert item["service_request_id"] == rid and item["status"] == "open"
    assert item["description"].startswith("Cống nghẹt trước nhà")
    for secret in (PHONE, "0903.123.456", EMAIL, NAME, ADDRESS, "device-secret-77", "106.668647"):
        assert secret not in raw, secret
    assert "Trần" not in json.dumps(view, ensure_ascii=False)


async def test_unknown_request_ids_are_404(server: Server) -> None:
    for rid in ("999999", "abc", "-1"):
        status, body, raw = await server.get(f"/open311/v2/requests/{rid}.json")
        assert status == 404 and body[0]["code"] == 404 and "Traceback" not in raw


async def test_stored_record_round_trips(server: Server) -> None:
    status, body, _ = await server.post(json=form())
    row = await server.store.fetchone("SELECT record FROM reports WHERE id=?", (int(body[0]["service_request_id"]),))
    assert from_json(InboundMessage, row["record"]).service_code == "drainage"


@pytest.mark.parametrize(("value", "confidential"), [
    (" true", True), ("true ", True), ("TRUE", True), (1.0, True), (1, True), ("on", True),
    ("false", False), (0, False), (False, False), ("", False), (" no ", False), (0.0, False)])
async def test_the_confidential_flag_as_careless_clients_send_it(server: Server, value: object,
                                                                 confidential: bool) -> None:
    # Red-team probe: " true" (a padded form value) and the JSON number 1.0 were read as *not* confidential, and the
    # report's content, place and coordinates were published.
    payload = {"service_code": "drainage", "description": "Cống bị rác bít kín", "address_string": "Lê Lợi",
               "confidential": value}
    status, body, _ = await server.post(json=payload)
    assert status == 201, body
    msg = await _record(server.store, body[0]["service_request_id"])
    assert msg.reporter.confidential is confidential


@pytest.mark.parametrize("value", ["có", "maybe", "truee", "[x]", "2", "0.5", "nan", "inf"])  # numbers: only 0 and 1
async def test_a_confidential_flag_that_is_neither_yes_nor_no_is_refused_not_read_as_no(server: Server,
                                                                                       value: str) -> None:
    status, body, _ = await server.post(data={"service_code": "drainage", "description": "Cống bị rác bít kín",
                                              "address_string": "Lê Lợi", "confidential": value})
    assert status == 400, body
    assert "confidential" in body[0]["description"]
    assert await server.count("reports") == 0
