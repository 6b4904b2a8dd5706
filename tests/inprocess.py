"""The daemon built in the test's own process, as run_daemon builds it, on a temporary store from a config text:
the tests that drive its real intake over loopback (Open311 over HTTP, SMTP with smtplib) and read its real HTTP
app, faster than a subprocess (tests/daemon.py) and with its context at hand."""
from __future__ import annotations

import asyncio
import contextlib
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web

import config.loader as config_loader
from channels.registry import build_channels
from config.directory import load_directory
from ingest.app import AppContext
from ingest.store import Store
from run_daemon import STAGE_COMPONENTS, VIEW_COMPONENTS, build_components, collect_migrations, make_context

MAILBOX = "phananh@1022.hochiminhcity.gov.vn"


async def open_context(tmp_path: Path, config: str) -> AppContext:
    """The daemon's context on `config` (TOML without its [store] table) and a new store in `tmp_path`; the
    caller closes `ctx.store`."""
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "s.sqlite3"}"\nblob_dir = "{tmp_path / "blobs"}"\n' + config,
                    encoding="utf-8")
    settings = config_loader.load(path)
    store = await Store.open(settings.store.path, settings.store.blob_dir, migrations=collect_migrations())
    return make_context(settings, load_directory(settings.data.agencies), store)


@contextlib.asynccontextmanager
async def running_daemon(tmp_path: Path, config: str) -> AsyncIterator[tuple[AppContext, str, Any]]:
    """(context, base URL, its SMTP channel or None): the channels running, every component built but the
    classifier's model (the tests classify by hand; the stages' workers are theirs to run), the HTTP app on a free
    loopback port."""
    ctx = await open_context(tmp_path, config)
    channels = build_channels(ctx)
    build_components(ctx, [c for c in STAGE_COMPONENTS if c != "classifier"])
    build_components(ctx, VIEW_COMPONENTS)
    tasks = [asyncio.create_task(c.run()) for c in channels]
    runner = web.AppRunner(ctx.http, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    smtp = next((c for c in channels if hasattr(c, "started")), None)
    if smtp is not None:
        await asyncio.wait_for(smtp.started.wait(), 10)
    try:
        yield ctx, f"http://127.0.0.1:{runner.addresses[0][1]}", smtp
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await ctx.store.close()


def send_mail(port: int, sender: str, subject: str, body: str, message_id: str) -> None:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = MAILBOX
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(msg)
