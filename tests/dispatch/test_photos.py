"""Photos with an agency's answer: uploaded as multipart parts, or named by URL and fetched through the SSRF
guard; only real images count as the site photo a resolved infrastructure case needs."""
from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from .test_clocks import TOKENS, new_case, smtp, world  # noqa: F401  (smtp, world are fixtures)


def jpeg(color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
async def photo_server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/site.jpg", lambda r: web.Response(body=jpeg(), content_type="image/jpeg"))
    app.router.add_get("/page.html", lambda r: web.Response(text="<html>", content_type="text/html"))
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def post(base: str, case: str, **kw) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/api/v1/agency/cases/{case}/answers", headers={"Authorization": f"Bearer {TOKENS['agency.sawaco']}"},
            **kw) as resp:
        return resp.status, await resp.json()


async def stored_photos(ctx, case: str) -> list[bytes]:
    row = await ctx.store.fetchone("SELECT data FROM answers WHERE case_id=? AND kind='resolved'", (case,))
    return [ctx.store.blobs.get(sha) for sha in json.loads(row["data"])["photos"]]


async def test_multipart_upload_of_the_site_photo(world):  # noqa: F811
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    form = aiohttp.FormData()
    form.add_field("kind", "resolved")
    form.add_field("note", "Đã thay ống")
    form.add_field("photo", b"GIF89a not really", filename="x.gif", content_type="image/gif")
    status, body = await post(base, case, data=form)
    assert status == 409 and "image" in body["error"]
    form = aiohttp.FormData()
    form.add_field("kind", "resolved")
    form.add_field("note", "Đã thay ống")
    form.add_field("photo", jpeg(), filename="hien-truong.jpg", content_type="image/jpeg")
    status, body = await post(base, case, data=form)
    assert status == 201 and body["state"] == "resolved"
    assert await stored_photos(ctx, case) == [jpeg()]


async def test_photo_urls_are_fetched_through_the_ssrf_guard(world, photo_server):  # noqa: F811
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    # Loopback is private: refused unless the operator allows it ([dispatch.evidence] fetch_allow_private).
    status, body = await post(base, case, json={"kind": "resolved", "photo_urls": [f"{photo_server}/site.jpg"]})
    assert status == 409 and "refused" in body["error"]
    book = ctx.published.report_rating.__self__  # the running CaseBook: allow loopback for this test server
    book.cfg = book.cfg.model_copy(update={"evidence": book.cfg.evidence.model_copy(
        update={"fetch_allow_private": True})})
    status, body = await post(base, case, json={"kind": "resolved", "photo_urls": [f"{photo_server}/page.html"]})
    assert status == 409 and "image" in body["error"]
    status, body = await post(base, case, json={"kind": "resolved", "photo_urls": [f"{photo_server}/site.jpg"]})
    assert status == 201
    assert await stored_photos(ctx, case) == [jpeg()]


async def test_a_json_photo_is_what_its_bytes_say_not_what_it_declares(world):  # noqa: F811
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    page = base64.b64encode(b"<html><script>alert(1)</script></html>").decode()
    # Before: 201, the page kept as the site photo under image/png, and the case resolved on it.
    status, body = await post(base, case, json={"kind": "resolved", "note": "Đã thay ống",
                                                "photos": [{"content_type": "image/png", "data": page}]})
    assert status == 409 and "image" in body["error"]
    assert (await ctx.store.fetchone("SELECT state FROM cases WHERE id=?", (case,)))["state"] != "resolved"
    real = base64.b64encode(jpeg()).decode()
    status, body = await post(base, case, json={"kind": "resolved", "note": "Đã thay ống",
                                                "photos": [{"content_type": "image/png", "data": real}]})
    assert status == 201 and body["state"] == "resolved"
    row = await ctx.store.fetchone("SELECT data FROM answers WHERE case_id=? AND kind='resolved'", (case,))
    (sha,) = json.loads(row["data"])["photos"]
    assert (await ctx.store.fetchone("SELECT content_type FROM blobs WHERE sha256=?", (sha,)))["content_type"] \
        == "image/jpeg"
