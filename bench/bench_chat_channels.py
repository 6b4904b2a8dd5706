"""Webhook acknowledgement latency of the Messenger and Telegram channels, against a no-commit baseline.

    python bench/bench_chat_channels.py [--requests 200] [--concurrency 20]

Each POST goes through the real aiohttp server on loopback, the signature / secret-token check, parsing and
the durable commit (WAL, synchronous=FULL). The baseline, in the same run and on the same server, is an
endpoint that reads the body and answers 200 without committing: the ratio is the price of "ack only after
commit". Messenger must answer within 1 s (it gives up at 20 s).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from channels import messenger, telegram  # noqa: E402
from config.channels import ChannelEntry, MessengerOptions, TelegramOptions  # noqa: E402
from config.directory import load_directory  # noqa: E402
from config.schema import Settings  # noqa: E402
from ingest.app import AppContext  # noqa: E402
from ingest.clock import Clock  # noqa: E402
from ingest.store import Store  # noqa: E402

SECRET = "bench-secret"


def messenger_body(i: int, events: int) -> bytes:
    now = int(time.time() * 1000)
    return json.dumps({"object": "page", "entry": [{"id": "P", "time": now, "messaging": [
        {"sender": {"id": f"U{i}"}, "recipient": {"id": "P"}, "timestamp": now,
         "message": {"mid": f"m.{i}.{k}", "text": f"Đèn đường số {i} bị hỏng ở đường Lê Lợi quận 1"}}
        for k in range(events)]}]}).encode()


def telegram_body(i: int) -> bytes:
    return json.dumps({"update_id": 1000 + i, "message": {
        "message_id": i, "date": int(time.time()), "chat": {"id": 10_000 + i, "type": "private"},
        "from": {"id": 10_000 + i, "is_bot": False, "first_name": "B"},
        "text": f"Ống nước vỡ trước nhà {i}/3 Nguyễn Trãi quận 5, SĐT 0903123456"}}).encode()


async def timed(http: aiohttp.ClientSession, url: str, bodies: list[tuple[bytes, dict[str, str]]],
                concurrency: int) -> list[float]:
    sem = asyncio.Semaphore(concurrency)
    out: list[float] = []

    async def one(body: bytes, headers: dict[str, str]) -> None:
        async with sem:
            t = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            out.append(time.perf_counter() - t)

    await asyncio.gather(*(one(b, h) for b, h in bodies))
    return out


def summary(name: str, xs: list[float], base: list[float]) -> str:
    xs, base = sorted(xs), sorted(base)
    p = lambda v, q: v[min(len(v) - 1, int(q * len(v)))] * 1000  # noqa: E731
    return (f"{name:<34} p50 {p(xs, .5):7.2f} ms  p95 {p(xs, .95):7.2f} ms  max {xs[-1] * 1000:7.2f} ms  "
            f"(x{statistics.median(xs) / statistics.median(base):.1f} baseline p50)")


async def main(n: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "db.sqlite3", Path(tmp) / "blobs",
                                 migrations={telegram.COMPONENT: telegram.MIGRATIONS,
                                             messenger.COMPONENT: messenger.MIGRATIONS})
        app = web.Application()

        async def baseline(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(text="ok")

        app.router.add_post("/baseline", baseline)
        ctx = AppContext(settings=Settings(), directory=load_directory(), store=store, clock=Clock(), http=app)
        m = messenger.build(ctx, ChannelEntry(kind="messenger", name="page"), MessengerOptions(
            app_secret=SECRET, page_token="t", verify_token="v", graph_base_url="http://127.0.0.1:9"))
        t = telegram.build(ctx, ChannelEntry(kind="telegram", name="bot"), TelegramOptions(
            bot_token="1:x", mode="webhook", webhook_secret=SECRET, base_url="http://127.0.0.1:9/bot"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        sig = lambda b: {"X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), b, hashlib.sha256).hexdigest()}  # noqa: E731
        async with aiohttp.ClientSession() as http:
            plain = [(messenger_body(i, 1), {}) for i in range(n)]
            b_seq = await timed(http, f"{base}/baseline", plain, 1)
            b_con = await timed(http, f"{base}/baseline", plain, concurrency)
            one = [(b, sig(b)) for b in (messenger_body(i, 1) for i in range(n))]
            m_seq = await timed(http, f"{base}/webhooks/messenger/page", one, 1)
            many = [(b, sig(b)) for b in (messenger_body(n + i, 10) for i in range(n))]
            m_con = await timed(http, f"{base}/webhooks/messenger/page", many, concurrency)
            tg = [(telegram_body(i), {"X-Telegram-Bot-Api-Secret-Token": SECRET}) for i in range(n)]
            t_seq = await timed(http, f"{base}/webhooks/telegram/bot", tg, 1)
        count = (await store.fetchone("SELECT COUNT(*) FROM reports"))[0]
        print(f"{n} requests each; concurrency {concurrency}; reports stored: {count}")
        print(summary("messenger 1 event, sequential", m_seq, b_seq))
        print(summary(f"messenger 10 events, {concurrency} parallel", m_con, b_con))
        print(summary("telegram webhook, sequential", t_seq, b_seq))
        for svc in (*m, *t):
            close = getattr(svc, "close", None)
            if close:
                await close()
        await runner.cleanup()
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
