"""Red-team canaries through the real intake (Open311 over HTTP, SMTP with smtplib): personal data in the
spellings people use to dodge scrapers or in the parts of a report other than its description (the mail's
subject, the Open311 address field, an agency's answer) never reaches any public URL."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest.app import AppContext
from tests.inprocess import MAILBOX, running_daemon, send_mail
from tests.public_urls import case_of, classify, digits_joined, dispatch_all, fetch, public_urls, readable, report_ids

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

[[dispatch.agencies.sawaco.targets]]
kind = "email"
to = ["hopthu@sawaco.com.vn"]

[[dispatch.agencies.chieu-sang.targets]]
kind = "email"
to = ["hopthu@chieusang.example.vn"]
"""

CANARIES = ["rtcanaryone", "rtcanarytwo", "rtcanarythree", "rtcanaryfour", "rtcanaryfive", "rtcanarysix",
            "rtcanaryseven", "0903777111", "0909888222", "0282229999", "0123987654321", "c7778889"]
DESCRIPTIONS = [
    "Ong nuoc be o duong Le Loi quan 1, tui ten Rtcanaryone nha, mail rtcanarytwo at gmail dot com",
    "Đèn đường tắt ở đường Pasteur Quận 3. Tên: Lê Rtcanarythree. Email rtcanaryfour (at) yahoo (dot) com",
    "Ống nước bể đường Lê Lợi, hộ chiếu c7778889, stk 0123 987 654 321 vietinbank, lh (028) 222-9999",
]


def visible(body: str) -> str:
    return digits_joined(readable(body))


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[AppContext, str, Any]]:
    async with running_daemon(tmp_path, CONFIG.format(mailbox=MAILBOX)) as d:
        yield d


async def test_redteam_canaries_stay_off_public_urls(daemon: tuple[AppContext, str, Any]) -> None:
    ctx, base, smtp = daemon
    async with aiohttp.ClientSession() as s:
        for text, code in zip(DESCRIPTIONS, ("water_supply", "street_lighting", "water_supply")):
            fields = {"service_code": code, "description": text, "address_string": "Lê Lợi, Quận 1"}
            async with s.post(f"{base}/open311/v2/requests.json", data=fields) as resp:
                assert resp.status == 201, await resp.text()
    await asyncio.to_thread(send_mail, smtp.port, "Nguoi Dan <dan@example.org>",
                            "Phan anh - Rtcanaryfive sdt 0903 777 111",
                            "Cây ngã chắn đường Điện Biên Phủ, Quận Bình Thạnh.\n\n--\nRtcanarysix\n0909.888.222",
                            "<rt1@example.org>")
    ids = await report_ids(ctx.store, 4)
    for rid in ids:
        await classify(ctx, rid, "water_supply", "sawaco")
    book = await dispatch_all(ctx)
    photo = await ctx.store.put_blob(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")
    await book.apply_answer("sawaco", (await case_of(ctx, ids[0]))["id"], "resolved", {"photos": [photo]},
                            source="api",
                            note="Đã sửa xong. Liên hệ anh Rtcanaryseven qua rtcanaryseven [a còng] sawaco [chấm] vn")
    bodies = {url: visible(body) for url, body in (await fetch(base, await public_urls(ctx, ids))).items()}
    found = {url: bad for url, body in bodies.items() if (bad := [c for c in CANARIES if c in body])}
    published = sum("cay nga chan duong" in body or "ong nuoc be" in body for body in bodies.values())
    assert found == {}, found
    assert published > 0
