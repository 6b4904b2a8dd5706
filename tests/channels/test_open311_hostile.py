"""Hostile bodies against the Open311 endpoint on a real aiohttp server: each gets a clear 4xx, is kept (bounded) in
quarantine, and leaves the server answering everyone else."""
from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from channels.open311 import build
from config.channels import ChannelEntry, Open311Options
from config.directory import load_directory
from config.schema import Settings
from ingest.app import AppContext
from ingest.http import make_app
from ingest.store import Store
from ops import health

MAX_BODY = 11 * 1024 * 1024
REQUESTS = "/open311/v2/requests.json"
GOOD = {"service_code": "drainage", "description": "Cống bị rác bít kín, nước ngập nửa bánh xe",
        "lat": "10.761701", "long": "106.668647"}


@dataclass
class Server:
    url: str
    store: Store
    session: aiohttp.ClientSession

    async def post(self, data: bytes | dict, content_type: str | None = None) -> tuple[int, list]:
        headers = {"Content-Type": content_type} if content_type else {}
        async with self.session.post(self.url + REQUESTS, data=data, headers=headers) as resp:
            text = await resp.text()
            assert "Traceback" not in text
            return resp.status, json.loads(text)


@pytest.fixture
async def server(store: Store) -> AsyncIterator[Server]:
    ctx = AppContext(settings=Settings(), directory=load_directory(None), store=store, clock=store.clock,
                     http=make_app(MAX_BODY))
    build(ctx, ChannelEntry(kind="open311", name="app"), Open311Options())
    health.add_routes(ctx, timeout=2.0)
    runner = web.AppRunner(ctx.http)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        yield Server(f"http://127.0.0.1:{port}", store, session)
    await runner.cleanup()


async def _quarantined(store: Store) -> list:
    return await store.fetchall("SELECT reason, raw, sha256, size, meta FROM quarantine ORDER BY id")


@pytest.mark.parametrize(("raw", "content_type", "says"), [
    (json.dumps({**GOOD, "description": "x \ud800"}).encode(), "application/json", "lone surrogate"),
    (b'{"service_code": "drainage", "description": ' + b"[" * 1000 + b"]" * 1000 + b"}", "application/json",
     "nested deeper"),
    (b'--b\r\nContent-Disposition: form-data; name="service_code"\r\n\r\ndrainage\r\n'
     b'--b\r\nContent-Disposition: form-data; name="description"\r\nContent-Type: text/plain; charset=rot13\r\n\r\n'
     b"Pbat ovg\r\n--b--\r\n", "multipart/form-data; boundary=b", "unknown charset"),
    (b'--b\r\nContent-Disposition: form-data; name="description"\r\nContent-Type: text/plain; charset=x-nope\r\n\r\n'
     b"abc\r\n--b--\r\n", "multipart/form-data; boundary=b", "unknown charset"),
    # A key given twice: before, the last one counted (201), whatever a proxy or log reader in front took.
    (json.dumps(GOOD)[:-1].encode() + b', "confidential": true, "confidential": false}', "application/json",
     "more than once"),
    (b"service_code=drainage&description=C%E1%BB%91ng+t%E1%BA%AFc&lat=10.76&long=106.66&confidential=true"
     b"&confidential=false", "application/x-www-form-urlencoded", "more than once"),
    (b'--b\r\nContent-Disposition: form-data; name="service_code"\r\n\r\ndrainage\r\n'
     b'--b\r\nContent-Disposition: form-data; name="description"\r\n\r\nabc\r\n'
     b'--b\r\nContent-Disposition: form-data; name="description"\r\n\r\ndef\r\n--b--\r\n',
     "multipart/form-data; boundary=b", "more than once"),
])
async def test_invalid_unicode_depth_and_charsets_are_400_and_quarantined(
        server: Server, raw: bytes, content_type: str, says: str) -> None:
    status, body = await server.post(raw, content_type)
    assert status == 400 and says in body[0]["description"]
    (row,) = await _quarantined(server.store)
    assert row["raw"] == raw and row["sha256"] == hashlib.sha256(raw).hexdigest()
    assert await server.store.fetchone("SELECT 1 FROM reports") is None


@pytest.mark.parametrize("field", ["first_name", "last_name", "email", "phone", "device_id"])
async def test_line_breaks_in_single_line_fields_are_refused(server: Server, field: str) -> None:
    status, body = await server.post({**GOOD, field: "a@b.vn\r\nBcc: victim@example.vn"})
    assert status == 400 and field in body[0]["description"]
    assert await server.store.fetchone("SELECT 1 FROM reports") is None


async def test_an_address_of_megabytes_is_refused_and_one_of_a_line_is_kept(server: Server) -> None:
    # Before: megabytes of address_string was stored as the reporter's address and sent on to the agency (now such a
    # body is refused whole, past 512 KB); 2,000 characters are past the field's own cap.
    status, body = await server.post({**GOOD, "address_string": "Hẻm 12 Lê Lợi " * 150})
    assert status == 400 and "address_string" in body[0]["description"]
    assert await server.store.fetchone("SELECT 1 FROM reports") is None
    assert (await server.post({**GOOD, "address_string": "Hẻm 12/3 Lê Lợi, Phường Bến Thành, Quận 1"}))[0] == 201


@pytest.mark.parametrize(("raw", "content_type", "status"), [
    # Before: each was 201, its megabytes of fields nobody reads stored verbatim with the report.
    (json.dumps({**GOOD, "zzz": "A" * 9_000_000}).encode(), "application/json", 413),
    (json.dumps({**GOOD, **{f"k{i}": "v" for i in range(200_000)}}).encode(), "application/json", 413),
    (json.dumps({**GOOD, **{f"k{i}": "v" for i in range(100)}}).encode(), "application/json", 400),
    (b'--b\r\nContent-Disposition: form-data; name="service_code"\r\n\r\ndrainage\r\n'
     b'--b\r\nContent-Disposition: form-data; name="description"\r\n\r\nabc\r\n'
     b'--b\r\nContent-Disposition: form-data; name="zzz"\r\n\r\n' + b"A" * 2_000_000 + b"\r\n--b--\r\n",
     "multipart/form-data; boundary=b", 413),
])
async def test_megabytes_of_fields_nobody_reads_are_refused(server: Server, raw: bytes, content_type: str,
                                                            status: int) -> None:
    assert (await server.post(raw, content_type))[0] == status
    assert await server.store.fetchone("SELECT 1 FROM reports") is None


@pytest.mark.parametrize("field", ["description", "phone", "service_code", "address_string", "first_name"])
async def test_a_json_number_or_list_where_text_belongs_is_refused(server: Server, field: str) -> None:
    # Before: {"phone": 909123456} was stored as "909123456" (its leading 0 lost), {"description": 12345} as a
    # report of "12345".
    for value in (909123456, True, ["x"]):
        status, body = await server.post(json.dumps({**GOOD, field: value}).encode(), "application/json")
        assert status == 400 and field in body[0]["description"], (value, body)
    assert await server.store.fetchone("SELECT 1 FROM reports") is None
    # Numbers stay numbers where GeoReport v2 has them.
    status, _ = await server.post(json.dumps({**GOOD, "lat": 10.7617, "long": 106.6686, "confidential": True}).encode(),
                                  "application/json")
    assert status == 201


async def test_a_description_of_invisible_characters_is_no_description(server: Server) -> None:
    # Before: 201, a report of zero-width spaces, joiners and a right-to-left mark.
    status, body = await server.post({**GOOD, "description": "\u200b\u200d\u2060\ufeff\u200f \u200b"})
    assert status == 400 and "description" in body[0]["description"]
    assert await server.store.fetchone("SELECT 1 FROM reports") is None


async def test_the_longest_description_still_fits_percent_encoded(server: Server) -> None:
    # 20,000 characters of three UTF-8 bytes each, each byte written %XX: 180 KB of form.
    status, body = await server.post({**GOOD, "description": "ố" * 20_000, "address_string": "ẫ" * 1_000})
    assert status == 201, body


def _with_media(content: bytes, content_type: str, filename: str) -> aiohttp.FormData:
    data = aiohttp.FormData(quote_fields=False)
    for k, v in GOOD.items():
        data.add_field(k, v)
    data.add_field("media", content, filename=filename, content_type=content_type)
    return data


@pytest.mark.parametrize(("content", "content_type", "filename"), [
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>', "image/svg+xml",
     "anh.svg"),
    (b"<html><script>alert(1)</script></html>", "image/png", "anh.png"),
    (b"MZ\x90\x00\x03 a Windows program", "application/octet-stream", "anh.jpg"),
    (b"#!/bin/sh\nrm -rf /\n", "image/jpeg", "o-ga.jpg"),
])
async def test_media_whose_bytes_are_not_a_photo_are_refused_whatever_they_claim(
        server: Server, content: bytes, content_type: str, filename: str) -> None:
    # Before: each was stored (201) under the type it claimed and attached to the agency's e-mail as such.
    async with server.session.post(server.url + REQUESTS, data=_with_media(content, content_type, filename)) as resp:
        assert resp.status == 400 and "media" in (await resp.json())[0]["description"]
    assert await server.store.fetchone("SELECT 1 FROM reports") is None
    assert await server.store.fetchone("SELECT 1 FROM blobs") is None


async def test_a_real_photo_is_kept_under_its_own_type_and_a_plain_file_name(server: Server) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    data = _with_media(png, "application/octet-stream", "../../etc/\u202epasswd")
    async with server.session.post(server.url + REQUESTS, data=data) as resp:
        assert resp.status == 201, await resp.text()
    row = await server.store.fetchone("SELECT record FROM reports")
    (attachment,) = json.loads(row["record"])["attachments"]
    assert (attachment["content_type"], attachment["filename"]) == ("image/png", "passwd")


async def test_ten_megabytes_of_tiny_parts_is_refused_and_others_are_served(server: Server) -> None:
    part = b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'
    raw = part * (10 * 1024 * 1024 // len(part)) + b"--b--\r\n"
    big = asyncio.ensure_future(server.post(raw, "multipart/form-data; boundary=b"))
    answered = 0
    while not big.done():  # /healthz and a legitimate report are answered while the big body is in flight
        async with server.session.get(server.url + "/healthz") as resp:
            assert resp.status == 200
        answered += 1
    status, body = await big
    assert status == 400 and "more than" in body[0]["description"]
    assert (await server.post(dict(GOOD)))[0] == 201
    (row,) = await _quarantined(server.store)
    # Kept bounded: a head, the hash and the size of the whole body.
    assert row["size"] == len(raw) and len(row["raw"]) == server.store.quarantine_limits.head_bytes
    assert row["sha256"] == hashlib.sha256(raw).hexdigest() and json.loads(row["meta"])["truncated"] is True
    assert answered >= 1


async def test_legitimate_reports_survive_a_stream_of_bad_bodies(server: Server) -> None:
    bad = json.dumps({**GOOD, "description": "x \ud800"}).encode()
    goods = [dict(GOOD, description=f"Cống bị rác bít kín số {i}") for i in range(40)]
    outcomes = await asyncio.gather(*(server.post(g) for g in goods),
                                    *(server.post(bad, "application/json") for _ in range(40)))
    assert [s for s, _ in outcomes[:40]] == [201] * 40
    assert {s for s, _ in outcomes[40:]} == {400}
    row = await server.store.fetchone("SELECT COUNT(*) AS n FROM reports")
    assert row["n"] == 40
    # Forty identical bad bodies are one quarantine row with a repeat count, not forty copies.
    (q,) = await server.store.fetchall("SELECT repeats FROM quarantine")
    assert q["repeats"] == 40
