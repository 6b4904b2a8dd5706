"""The error middleware (ingest/http.py) on a real aiohttp site on loopback: a handler's bug is a 500 with one
logged trace, and that log line never holds the credential a private path carries."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from ingest.http import make_app

TOKEN = "SECRETlookuptoken0123456789abcd"


@pytest.fixture
async def base() -> AsyncIterator[str]:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = make_app(1024)
    app.router.add_post("/lookup/{token}/rating", boom)
    app.router.add_get("/cases/{token}", boom)
    app.router.add_get("/public/{id}", boom)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_bug_on_a_private_path_logs_its_trace_but_never_the_reporters_token(
        base: str, caplog: pytest.LogCaptureFixture) -> None:
    # Red-team review: the access log writes /lookup/[token], but the "unhandled error" line quoted request.path,
    # so a bug on a reporter's page put the token that opens it in the error log.
    caplog.set_level(logging.INFO, logger="ingest.http")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/lookup/{TOKEN}/rating", data={"score": "5"}) as resp:
            assert resp.status == 500
        async with http.get(f"{base}/cases/{TOKEN}") as resp:
            assert resp.status == 500
        async with http.get(f"{base}/public/42") as resp:
            assert resp.status == 500
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and all(r.exc_info for r in errors)
    assert TOKEN not in caplog.text
    assert "/lookup/[token]/rating" in caplog.text and "/cases/[token]" in caplog.text
    assert "/public/42" in caplog.text  # other paths stay as they are, to find the row the bug is about
