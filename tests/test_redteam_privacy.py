"""Red-team canaries through the real intake (Open311 over HTTP, SMTP with smtplib): personal data in the
spellings people use to dodge scrapers or in the parts of a report other than its description (the mail's
subject, the Open311 address field, an agency's answer) never reaches any public URL."""
from __future__ import annotations

import asyncio
import re
import unicodedata
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


# Numbers and addresses written the way people (and those probing the redactor) type them: spaced dashes, the
# dashes autocorrect makes, slashes, zero-width spaces and soft hyphens inside, a fullwidth "＠".
TRICKS = [
    "Ống nước bể đường Lê Lợi quận 1, gọi 0903 - 444 - 555 hoặc 0903 – 666 – 777",
    "Đèn đường tắt ở Pasteur Quận 3, sđt 0909/444/111, CCCD 079\u200b203\u200b005\u200b678",
    "Ống nước bể đường Lê Lợi, mail rtcanarytrick\uff20gmail.com, zalo 0909\u00ad222\u00ad333 ngày 12/09/2026",
]
TRICK_CANARIES = ["0903444555", "0903666777", "0909444111", "079203005678", "rtcanarytrick", "0909222333"]


def unmasked(body: str) -> str:
    """What a reader sees: invisible characters gone, fullwidth forms plain, digits joined across any separator."""
    text = unicodedata.normalize("NFKC", "".join(c for c in readable(body) if unicodedata.category(c) != "Cf"))
    return re.sub(r"(?<=\d)[\s.\-\u2010-\u2015/_()+]+(?=\d)", "", text)


async def test_numbers_split_by_dashes_slashes_and_invisible_characters_stay_off_public_urls(
        daemon: tuple[AppContext, str, Any]) -> None:
    ctx, base, _ = daemon
    async with aiohttp.ClientSession() as s:
        for text in TRICKS:
            fields = {"service_code": "water_supply", "description": text, "address_string": "Lê Lợi, Quận 1"}
            async with s.post(f"{base}/open311/v2/requests.json", data=fields) as resp:
                assert resp.status == 201, await resp.text()
    ids = await report_ids(ctx.store, len(TRICKS))
    for rid in ids:
        await classify(ctx, rid, "water_supply", "sawaco")
    await dispatch_all(ctx)
    bodies = {url: unmasked(body) for url, body in (await fetch(base, await public_urls(ctx, ids))).items()}
    found = {url: bad for url, body in bodies.items() if (bad := [c for c in TRICK_CANARIES if c in body])}
    assert found == {}, found
    # The incident and its date stay readable.
    assert any("ong nuoc be" in body and "12092026" in body for body in bodies.values())  # 12/09/2026, joined
