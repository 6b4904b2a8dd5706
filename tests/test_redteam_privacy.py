"""Red-team canaries through the real intake (Open311 over HTTP, SMTP with smtplib): personal data in the
spellings people use to dodge scrapers or in the parts of a report other than its description (the mail's
subject, the Open311 address field, an agency's answer) never reaches any public URL."""
from __future__ import annotations

import asyncio
import html
import json
import re
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import config.loader as config_loader
from channels.registry import build_channels
from config.directory import load_directory
from dispatch.book import make_book
from ingest.app import AppContext
from ingest.records import Classification, Place, to_json
from ingest.store import Store
from ingest.text import fold
from run_daemon import STAGE_COMPONENTS, VIEW_COMPONENTS, build_components, collect_migrations, make_context

MAILBOX = "phananh@1022.hochiminhcity.gov.vn"
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
    try:
        body = json.dumps(json.loads(body), ensure_ascii=False)
    except ValueError:
        body = html.unescape(body)
    folded = fold(body).lower()
    return re.sub(r"(?<=\d)[\s.\-()+\u00a0]+(?=\d)", "", folded)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[AppContext, str, Any]]:
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "s.sqlite3"}"\nblob_dir = "{tmp_path / "blobs"}"\n'
                    + CONFIG.format(mailbox=MAILBOX), encoding="utf-8")
    settings = config_loader.load(path)
    store = await Store.open(settings.store.path, settings.store.blob_dir, migrations=collect_migrations())
    ctx = make_context(settings, load_directory(settings.data.agencies), store)
    channels = build_channels(ctx)
    build_components(ctx, [c for c in STAGE_COMPONENTS if c != "classifier"])
    build_components(ctx, VIEW_COMPONENTS)
    tasks = [asyncio.create_task(c.run()) for c in channels]
    runner = web.AppRunner(ctx.http, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    smtp = next(c for c in channels if hasattr(c, "started"))
    await asyncio.wait_for(smtp.started.wait(), 10)
    try:
        yield ctx, f"http://127.0.0.1:{runner.addresses[0][1]}", smtp
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await store.close()


def send_mail(port: int, subject: str, body: str) -> None:
    msg = EmailMessage()
    msg["From"] = "Nguoi Dan <dan@example.org>"
    msg["To"] = MAILBOX
    msg["Subject"] = subject
    msg["Message-ID"] = "<rt1@example.org>"
    msg.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(msg)


async def test_redteam_canaries_stay_off_public_urls(daemon: tuple[AppContext, str, Any]) -> None:
    ctx, base, smtp = daemon
    async with aiohttp.ClientSession() as s:
        for text, code in zip(DESCRIPTIONS, ("water_supply", "street_lighting", "water_supply")):
            fields = {"service_code": code, "description": text, "address_string": "Lê Lợi, Quận 1"}
            async with s.post(f"{base}/open311/v2/requests.json", data=fields) as resp:
                assert resp.status == 201, await resp.text()
    await asyncio.to_thread(send_mail, smtp.port, "Phan anh - Rtcanaryfive sdt 0903 777 111",
                            "Cây ngã chắn đường Điện Biên Phủ, Quận Bình Thạnh.\n\n--\nRtcanarysix\n0909.888.222")
    for _ in range(200):
        ids = [r["id"] for r in await ctx.store.fetchall("SELECT id FROM reports ORDER BY id")]
        if len(ids) == 4:
            break
        await asyncio.sleep(0.05)
    assert len(ids) == 4
    for n, rid in enumerate(ids, 1):
        cls = Classification(status="route", topic="water_supply", category="infrastructure", agency="sawaco",
                             confidence=0.95, place=Place(district="quan-1", street="le loi"))
        async with ctx.store.transaction() as tx:
            await tx.execute("UPDATE reports SET status='routed', topic='water_supply', category='infrastructure',"
                             " agency='sawaco', district='quan-1', classification=?, incident_id=? WHERE id=?",
                             (to_json(cls), f"INC-{n:06d}", rid))
            await tx.execute("DELETE FROM jobs WHERE report_id=?", (rid,))
            await tx.enqueue("dispatch", rid, {"incident_id": f"INC-{n:06d}"})
    from ingest.worker import StageWorker, WorkerSettings
    book = make_book(ctx)
    worker = StageWorker(ctx.store, "dispatch", book.handle_dispatch, WorkerSettings(batch=16))
    while await worker.run_once():
        pass
    case = (await ctx.store.fetchone("SELECT id FROM cases ORDER BY id LIMIT 1"))["id"]
    photo = await ctx.store.put_blob(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")
    await book.apply_answer("sawaco", case, "resolved", {"photos": [photo]}, source="api",
                            note="Đã sửa xong. Liên hệ anh Rtcanaryseven qua rtcanaryseven [a còng] sawaco [chấm] vn")
    pool = [str(i) for i in ids] + [r["id"] for r in await ctx.store.fetchall("SELECT id FROM cases")]
    pool += [r["token"] for r in await ctx.store.fetchall("SELECT token FROM cases")]
    urls: set[str] = set()
    for route in ctx.http.router.routes():
        if route.method not in ("GET", "*") or route.resource is None:
            continue
        params = re.findall(r"\{(\w+)", route.resource.canonical)
        if not params:
            urls |= {route.resource.canonical,
                     route.resource.canonical + "?page_size=1000&start_date=2000-01-01T00:00:00Z&status=open,closed"}
            continue
        for value in pool:
            try:
                urls.add(str(route.resource.url_for(**{p: value for p in params})))
            except (KeyError, ValueError, TypeError):
                continue
    found: dict[str, list[str]] = {}
    published = 0
    async with aiohttp.ClientSession() as s:
        for url in sorted(urls):
            async with s.get(base + url, allow_redirects=False) as resp:
                body = visible(await resp.text(errors="replace"))
            bad = [c for c in CANARIES if c in body]
            if bad:
                found[url] = bad
            published += "cay nga chan duong" in body or "ong nuoc be" in body
    assert found == {}, found
    assert published > 0
