"""Canary corpus: personal data sent through the real intake (Open311 over HTTP, SMTP with smtplib, a call-centre
transcript dropped in the watched folder) never appears on any public URL, nor in the log.

The public URLs are not listed by hand: every GET route of the daemon's aiohttp app, built as run_daemon builds
it (channels, pipeline components, console, ops and whatever VIEW_COMPONENTS holds later), is fetched without
credentials, each path parameter filled with every report id, case id and lookup token there is
(tests/public_urls.py). A new public route is covered the day it is added.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest.app import AppContext
from ingest.public import CONFIDENTIAL_NOTE
from run_daemon import setup_logging
from tests.inprocess import MAILBOX, running_daemon, send_mail
from tests.public_urls import case_of, classify, digits_joined, dispatch_all, fetch, public_urls, readable, report_ids


# Each canary appears once in the corpus below, in the spelling a reporter would use; the test searches the
# folded (no diacritics, lower case) form of names and the digits-only form of numbers.
NAMES = ["canaryan", "canarybinh", "canarychi", "canarydung", "canaryem", "canaryphuong", "canarygiang",
         "canaryhem", "canarykhanh", "canarylong"]
NUMBERS = ["079203005678", "023456789", "02838291234", "02838291235", "0909555111", "0912345678",
           "190333222111", "0977888999", "0933444555", "0988111222", "7654321", "0966123123", "0944555666"]
EMAILS = ["canary.mail@gmail.com", "canaryfield@example.com", "canary.sender@yahoo.com.vn"]

APP_TEXT = ("Tên tôi là Nguyễn Văn Canaryan, CCCD 079 203 005 678, CMND 023456789. Ống nước bể trên đường Lê Lợi, "
            "gọi (028) 3829 1234 hoặc 028.3829.1235, di động +84 909 555 111, email canary.mail@gmail.com.")
APP_TEXT_2 = ("toi ten la tran thi canarybinh, sdt 0912.345.678, stk 1903 3322 2111 vietcombank. Cong thoat nuoc "
              "bi nghet o duong Hai Ba Trung quan 1")
CONFIDENTIAL_APP = "Người báo: Lê Canarychi, hộ chiếu B7654321. Đèn đường tắt cả tuần ở đường Pasteur, Quận 3."
MAIL_TEXT = ("Kính gửi Cổng 1022. Tôi là Phạm Canarydung, nhà 12 hẻm Canaryhem. Cây xanh ngã chắn ngang đường "
             "Điện Biên Phủ, Quận Bình Thạnh. Liên hệ 0933 444 555.")
MAIL_CONFIDENTIAL = ("Tôi xin được giữ bí mật danh tính. Quán karaoke trên đường Nguyễn Trãi, Quận 5 hát đến 2 giờ "
                     "sáng mỗi đêm. Em tên Canarykhanh, 0988 111 222.")
TRANSCRIPT = {"call_id": "CC-CANARY-1", "received_at": "2026-09-07T09:10:00+07:00",
              "reporter": {"name": "Võ Canaryphuong", "phone": "0966 123 123", "address": "5 hẻm Canarygiang"},
              "text": "alo em ơi chị là Võ Canaryphuong ở 5 hẻm Canarygiang, cái đèn đường trước nhà chị tắt cả tuần nay,"
                      " số chị 0966123123"}
RESULT_NOTE = "Đã xử lý xong, đã liên hệ ông Canarylong 0944 555 666 để kiểm tra."


def leaks(body: str) -> list[str]:
    """The canaries present in a response body."""
    folded = readable(body)
    digits = digits_joined(folded).replace("+84", "0")
    found = [n for n in NAMES if n in folded] + [e for e in EMAILS if e in folded]
    found += [n for n in NUMBERS if n in digits or (n.startswith("0") and "84" + n[1:] in digits)]
    return found


CONFIG = """
[http]
public_base_url = "https://1022.example.vn"

[[channels]]
kind = "open311"
name = "app"

[[channels]]
kind = "smtp"
name = "mail"
host = "127.0.0.1"
port = 0
recipients = ["{mailbox}"]

[[channels]]
kind = "transcripts"
name = "call-centre"
folder = "{folder}"
poll_seconds = 0.05

[[dispatch.agencies.sawaco.targets]]
kind = "email"
to = ["hopthu@sawaco.com.vn"]

[[dispatch.agencies.cay-xanh.targets]]
kind = "email"
to = ["hopthu@cayxanh.example.vn"]

[[dispatch.agencies.chieu-sang.targets]]
kind = "email"
to = ["hopthu@chieusang.example.vn"]

[[dispatch.agencies.cong-an-tp.targets]]
kind = "email"
to = ["hopthu@congan.example.vn"]
"""


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[AppContext, str, Any]]:
    async with running_daemon(tmp_path, CONFIG.format(mailbox=MAILBOX, folder=tmp_path / "transcripts")) as d:
        yield d


async def seed(ctx: AppContext, base: str, smtp: Any, folder: Path) -> list[int]:
    async with aiohttp.ClientSession() as s:
        ids = []
        for fields in (
            {"service_code": "water_supply", "description": APP_TEXT, "lat": "10.7731", "long": "106.7004",
             "first_name": "Canaryem", "last_name": "Hoàng", "phone": "0977 888 999", "email": "canaryfield@example.com"},
            {"service_code": "drainage", "description": APP_TEXT_2, "address_string": "Hai Bà Trưng, Quận 1"},
            {"service_code": "street_lighting", "description": CONFIDENTIAL_APP, "address_string": "Pasteur, Quận 3",
             "confidential": "true"},
        ):
            async with s.post(f"{base}/open311/v2/requests.json", data=fields) as resp:
                assert resp.status == 201, await resp.text()
                ids.append(int((await resp.json())[0]["service_request_id"]))
    await asyncio.to_thread(send_mail, smtp.port, "Phạm Canarydung <canary.sender@yahoo.com.vn>",
                            "Cây ngã đường Điện Biên Phủ", MAIL_TEXT, "<m1@yahoo.com.vn>")
    await asyncio.to_thread(send_mail, smtp.port, "canary.sender@yahoo.com.vn", "Karaoke ồn", MAIL_CONFIDENTIAL,
                            "<m2@yahoo.com.vn>")
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    (folder / "new").mkdir(parents=True, exist_ok=True)
    (folder / "tmp" / "call.json").write_text(json.dumps(TRANSCRIPT, ensure_ascii=False), encoding="utf-8")
    (folder / "tmp" / "call.json").rename(folder / "new" / "call.json")
    return await report_ids(ctx.store, 6)


async def test_no_canary_on_any_public_url_nor_in_the_log(daemon: tuple[AppContext, str, Any], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    setup_logging("DEBUG")  # the daemon's own policy: its loggers at DEBUG, chatty libraries held at WARNING
    caplog.set_level(logging.DEBUG)
    ctx, base, smtp = daemon
    ids = await seed(ctx, base, smtp, tmp_path / "transcripts")
    # The corpus really carries the canaries (else the test could not fail).
    records = " ".join(r["record"] for r in await ctx.store.fetchall("SELECT record FROM reports"))
    assert len(leaks(records)) >= len(NAMES + NUMBERS + EMAILS) - 2, leaks(records)
    # Four become cases (one confidential), one waits for review, the last stays as received (in the order they
    # came in, as the classify stage takes them).
    for rid, topic, agency, status in [(ids[0], "water_supply", "sawaco", "routed"),
                                       (ids[1], "drainage", "thoat-nuoc", "review"),
                                       (ids[2], "street_lighting", "chieu-sang", "routed"),
                                       (ids[3], "trees", "cay-xanh", "routed"),
                                       (ids[4], "noise", "cong-an-tp", "routed")]:
        await classify(ctx, rid, topic, agency, status)
    book = await dispatch_all(ctx)
    photo = await ctx.store.put_blob(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")
    await book.apply_answer("sawaco", (await case_of(ctx, ids[0]))["id"], "resolved", {"photos": [photo]},
                            source="api", note=RESULT_NOTE)
    assert (await ctx.store.fetchone("SELECT COUNT(*) AS n FROM cases"))["n"] == 4
    assert (await ctx.store.get_report(ids[1])).status == "review"

    urls = await public_urls(ctx, ids)
    assert {"/public", "/open311/v2/requests.json", "/open311/v2/requests.xml"} <= {u.split("?")[0] for u in urls}
    assert any(u.startswith("/cases/") for u in urls) and any(u.startswith("/public/") for u in urls)
    bodies = await fetch(base, urls)
    found = {url: bad for url, body in bodies.items() if (bad := leaks(body))}
    shown_text = sum("ong nuoc be tren duong le loi" in readable(body) for body in bodies.values())
    assert found == {}, (sorted({c for v in found.values() for c in v}), found)
    assert shown_text > 0  # the reports' content is published, only the personal data is not
    assert leaks(caplog.text) == [], leaks(caplog.text)

    # A confidentiality request written in a mail is honoured like the app's flag: the public sees no content,
    # and the agency (not authorised by config) gets neither the reporter nor their details in the text.
    async with aiohttp.ClientSession() as s, s.get(f"{base}/open311/v2/requests/{ids[4]}.json") as resp:
        (item,) = await resp.json()
    assert item["description"] == CONFIDENTIAL_NOTE and item["lat"] is None
    confidential = (await case_of(ctx, ids[4]))["id"]
    payload = json.loads((await ctx.store.fetchone("SELECT payload FROM deliveries WHERE case_id=?",
                                                   (confidential,)))["payload"])["data"]
    assert payload["reporter"] == {"confidential": True} and leaks(json.dumps(payload)) == []
    assert "karaoke" in payload["text"].lower()
