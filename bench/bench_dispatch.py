"""Dispatch throughput against a loopback webhook receiver, beside raw aiohttp POSTs in the same run.

    .venv/bin/python bench/bench_dispatch.py [--cases 2000] [--concurrency 8]

Phases: (1) `dispatch` stage: cases created with their outbox rows and clocks; (2) the delivery sender drains
the outbox (signing, leasing, recording each outcome in SQLite with full fsync); baseline: the same number of
signed POSTs of the same bodies with one aiohttp session and the same concurrency, nothing recorded.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.directory import load_directory  # noqa: E402
from config.dispatch import DispatchConfig  # noqa: E402
from dispatch import signing  # noqa: E402
from dispatch.calendar import load_calendar  # noqa: E402
from dispatch.cases import CaseBook  # noqa: E402
from dispatch.delivery import DeliverySender  # noqa: E402
from dedupe.schema import MIGRATIONS as DEDUPE_MIGRATIONS  # noqa: E402
from dispatch.schema import MIGRATIONS  # noqa: E402
from ingest.clock import iso  # noqa: E402
from ingest.records import Classification, InboundMessage, Place, Reporter, to_json  # noqa: E402
from ingest.store import Store  # noqa: E402
from ingest.worker import StageWorker, WorkerSettings  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"bench-secret-key-0123456789abcdef").decode()


async def main(n: int, concurrency: int) -> None:
    received = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal received
        await request.read()
        received += 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"

    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "db.sqlite3", Path(tmp) / "blobs", migrations={"dedupe": DEDUPE_MIGRATIONS, "dispatch": MIGRATIONS})
        cfg = DispatchConfig.model_validate({
            "agencies": {"sawaco": {"targets": [{"kind": "webhook", "name": "main", "url": url, "secrets": [SECRET],
                                                 "allow_private": True, "concurrency": concurrency}]}},
            "delivery": {"batch": 256}})
        book = CaseBook(store, load_directory(), cfg, load_calendar(), "https://1022.example.vn")
        cls = to_json(Classification(status="route", topic="water_supply", category="infrastructure",
                                     agency="sawaco", confidence=0.9, place=Place(district="quan-1")))
        msgs = [(InboundMessage(channel="app", channel_instance="app", idempotency_key=f"b{i}",
                                received_at=iso(time.time()), text=f"Ống nước bể số {i} trên đường Lê Lợi",
                                reporter=Reporter(name="Bench", phone="0900000000")), b"x", "text/plain")
                for i in range(n)]
        results = await store.submit_batch(msgs)
        async with store.transaction() as tx:
            for i, r in enumerate(results):
                await tx.execute("UPDATE reports SET status='routed', topic='water_supply', category='infrastructure',"
                                 " agency='sawaco', district='quan-1', classification=?, incident_id=? WHERE id=?",
                                 (cls, f"INC-{i:06d}", r.report_id))
            await tx.execute("DELETE FROM jobs")
            for i, r in enumerate(results):
                await tx.enqueue("dispatch", r.report_id, {"incident_id": f"INC-{i:06d}"})

        worker = StageWorker(store, "dispatch", book.handle_dispatch, WorkerSettings(batch=64))
        t0 = time.perf_counter()
        while await worker.run_once():
            pass
        t_dispatch = time.perf_counter() - t0

        sender = DeliverySender(store, cfg)
        t0 = time.perf_counter()
        while await sender.run_once():
            pass
        t_deliver = time.perf_counter() - t0
        await sender.close()
        delivered = (await store.fetchone("SELECT COUNT(*) AS n FROM deliveries WHERE state='delivered'"))["n"]
        bodies = [r["payload"].encode() for r in await store.fetchall("SELECT payload FROM deliveries")]
        await store.close()

    import aiohttp
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def post(i: int, body: bytes) -> None:
            async with sem:
                headers = signing.headers([SECRET], f"msg_{i}", int(time.time()), body)
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
        t0 = time.perf_counter()
        await asyncio.gather(*(post(i, b) for i, b in enumerate(bodies)))
        t_raw = time.perf_counter() - t0
    await runner.cleanup()

    out = {
        "cases": n, "concurrency": concurrency, "delivered": delivered, "receiver_requests_incl_baseline": received,
        "dispatch_stage_cases_per_s": round(n / t_dispatch, 1),
        "delivery_per_s": round(delivered / t_deliver, 1),
        "raw_aiohttp_post_per_s": round(len(bodies) / t_raw, 1),
        "delivery_vs_raw_ratio": round((delivered / t_deliver) / (len(bodies) / t_raw), 3),
        "payload_bytes_avg": round(sum(map(len, bodies)) / max(1, len(bodies))),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    asyncio.run(main(a.cases, a.concurrency))
