"""End-to-end throughput of the daemon beside the raw embedder rate of the same run (issue 21).

    python bench/bench_pipeline.py [--reports N] [--concurrency C] [--keep DIR]
    python bench/bench_pipeline.py --url http://127.0.0.1:8022 --store var/1022.sqlite3 [--pid PID]

By default it starts `run_daemon.py serve` on a temporary store and a free loopback port, with every agency of
the directory delivering to a webhook receiver of its own on loopback (signed, answered 200), and the embedder of
--config's `[classifier]` (backend, variant, model, batch, embed_threads: the one the raw rate measures), and waits
for /readyz. With `--url` it uses a running daemon instead (`--store`: its SQLite file, read only, to see the
reports' states; `--pid`: its process, for the peak RSS).

Then it POSTs N reports (the 700 dev reports of classifier/data/reports-seed.jsonl, repeated with fresh keys when
N is larger) through Open311 with C requests in flight, and waits until every report reached a final state
(dispatched, duplicate, review, rejected, out_of_scope, follow_up, failed) and the outbox holds no undelivered
webhook. It prints:
- reports/s from the first POST to the last report final (posted, classified, deduplicated, dispatched);
- the raw embedder rate on the same texts (restored where typed without diacritics, as the classifier embeds
  them), measured in this process with the daemon's embedder configuration in calls of `[classifier] batch`
  texts (what the classify stage leases), once before the daemon starts and once after it finished (the machine
  is shared: two measurements around the run, and their mean); the rate of one call of all texts beside it;
- the ratio of the two, and the daemon's peak RSS (VmHWM) after the run;
- the daemon's CPU time (every thread) per report beside the raw embedder's CPU time per text: on a shared
  machine the rates move with the load, CPU time much less.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from tests.net import free_port  # noqa: E402  (the repository is on sys.path from here)

sys.path.insert(0, str(REPO / "bench"))
from proc_tree import cpu_seconds, peak_rss_mb  # noqa: E402  (serve and its workers child)

SEED = REPO / "classifier" / "data" / "reports-seed.jsonl"
FINAL = ("dispatched", "duplicate", "review", "rejected", "out_of_scope", "follow_up", "failed", "closed")
SECRET = "whsec_" + base64.b64encode(b"bench-pipeline-webhook-secret-01").decode()


def load_reports(n: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in SEED.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [rows[i % len(rows)] for i in range(n)]


def raw_embedder_rate(settings: Any, texts: list[str]) -> tuple[float, float, float, Any]:
    """The daemon's embedder on the texts exactly as the classifier embeds them (restored where typed without
    diacritics), in calls of `[classifier] batch` texts as the classify stage leases them: (texts/s, CPU seconds
    of this process per text, texts/s of the same texts in one call, the embedder)."""
    from classifier.embedding.embedder import EmbeddingThread, load_embedder, report_text, serving_threads
    from classifier.training.trainer import Router
    from config.directory import load_directory

    cfg = settings.classifier
    # The daemon's own thread count (serving_threads: for embed_threads = 0 every core but one), so the raw rate is
    # always that of the embedder the daemon runs.
    embedder = EmbeddingThread(load_embedder(cfg.backend, cfg.model, cfg.variant, serving_threads(cfg.embed_threads)))
    router = Router(settings, load_directory(settings.data.agencies), embedder)
    router.load()  # the cached topic model: its restorer decides what is embedded
    embedded = router.embedding_texts([report_text(t) for t in texts])
    embedder.encode_blocking(embedded[:8])  # warm-up
    cpu, started = time.process_time(), time.perf_counter()
    for start in range(0, len(embedded), cfg.batch):
        embedder.encode_blocking(embedded[start:start + cfg.batch])
    rate = len(embedded) / (time.perf_counter() - started)
    cpu_per_text = (time.process_time() - cpu) / len(embedded)
    started = time.perf_counter()
    embedder.encode_blocking(embedded)
    return rate, cpu_per_text, len(embedded) / (time.perf_counter() - started), embedder


async def start_receiver() -> tuple[web.AppRunner, str, list[int]]:
    """The agencies' webhook endpoint on loopback: counts deliveries, answers 200."""
    hits = [0]

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        hits[0] += 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook/{agency}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook", hits


def write_config(tmp: Path, port: int, hook: str, agencies: list[str], classifier: Any) -> Path:
    """The daemon's config: its embedder exactly as the raw rate is measured here (backend, variant, model, batch,
    threads from `classifier`, the settings of --config)."""
    def q(value: Any) -> str:
        return json.dumps(str(value), ensure_ascii=False)

    model = f"model = {q(classifier.model)}\n" if classifier.model else ""

    parts = [f"""
[store]
path = {q(tmp / 'store.sqlite3')}
blob_dir = {q(tmp / 'blobs')}

[http]
host = "127.0.0.1"
port = {port}

[classifier]
cache_dir = {q(Path(classifier.cache_dir).resolve())}
backend = {q(classifier.backend)}
variant = {q(classifier.variant)}
{model}batch = {classifier.batch}
embed_threads = {classifier.embed_threads}

[dispatch.delivery]
poll_seconds = 0.2

[dispatch.notify]
enabled = false

[logging]
level = "WARNING"

[[channels]]
kind = "open311"
name = "app"
"""]
    for agency in agencies:
        parts.append(f"""
[[dispatch.agencies.{q(agency)}.targets]]
kind = "webhook"
name = "main"
url = {q(f'{hook}/{agency}')}
secrets = ["env:BENCH_WHSEC"]
allow_private = true
""")
    config = tmp / "config.toml"
    config.write_text("".join(parts), encoding="utf-8")
    return config


async def wait_ready(base: str, proc: subprocess.Popen[bytes] | None, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"daemon exited with {proc.returncode}")
            try:
                async with http.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit("daemon not ready")


async def post_all(base: str, reports: list[dict[str, Any]], concurrency: int, run: str) -> int:
    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for i, r in enumerate(reports):
        queue.put_nowait((i, r))
    refused = [0]

    async def worker(http: aiohttp.ClientSession, codes: set[str]) -> None:
        while not queue.empty():
            i, r = queue.get_nowait()
            # The app's topic choice: the report's own where the app offers it (not for abusive or complaints).
            topic = r["expected"]["topic"]
            code = topic if topic in codes else ("suggestion" if "suggestion" in codes else min(codes))
            form = {"service_code": code, "description": r["text"]}
            if r.get("lat") is not None:
                form.update(lat=str(r["lat"]), long=str(r["lon"]))
            else:
                form["address_string"] = r.get("reporter_address") or "Thành phố Hồ Chí Minh"
            async with http.post(f"{base}/open311/v2/requests.json", data=form,
                                 headers={"Idempotency-Key": f"bench-{run}-{i}"}) as resp:
                await resp.read()
                if resp.status not in (200, 201):
                    refused[0] += 1

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/open311/v2/services.json") as resp:
            codes = {s["service_code"] for s in await resp.json()}
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker(http, codes))
    return refused[0]


def progress(db: Path, run: str) -> tuple[int, int]:
    """(reports of this run in a final state, undelivered webhook rows)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        marks = ",".join("?" * len(FINAL))
        final = conn.execute(f"SELECT COUNT(*) FROM reports WHERE idem_key LIKE ? AND status IN ({marks})",
                             (f"bench-{run}-%", *FINAL)).fetchone()[0]
        try:
            pending = conn.execute("SELECT COUNT(*) FROM deliveries WHERE state='pending'").fetchone()[0]
        except sqlite3.OperationalError:
            pending = 0
        return int(final), int(pending)
    finally:
        conn.close()


async def run_pipeline(args: argparse.Namespace, reports: list[dict[str, Any]], settings: Any
                       ) -> tuple[float, float | None, int, int, float | None]:
    from config.directory import load_directory

    run = f"{os.getpid()}-{int(time.time())}"
    receiver, hook, hits = await start_receiver()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    tmp.mkdir(parents=True, exist_ok=True)
    proc = None
    pid = args.pid
    try:
        if args.url:
            base, db = args.url.rstrip("/"), Path(args.store)
        else:
            port = free_port()
            agencies = sorted(load_directory(settings.data.agencies).agencies)
            config = write_config(tmp, port, hook, agencies, settings.classifier)
            env = {**os.environ, "BENCH_WHSEC": SECRET, "PYTHONUNBUFFERED": "1"}
            log = open(tmp / "daemon.log", "ab")
            proc = subprocess.Popen([sys.executable, str(REPO / "run_daemon.py"), "serve", "--config", str(config)],
                                    cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            pid = proc.pid
            base, db = f"http://127.0.0.1:{port}", tmp / "store.sqlite3"
        await wait_ready(base, proc)
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        refused = await post_all(base, reports, args.concurrency, run)
        posted = time.perf_counter() - started
        print(f"posted {len(reports)} reports in {posted:.1f} s ({refused} refused)", flush=True)
        expected = len(reports) - refused
        while True:
            final, pending = await asyncio.to_thread(progress, db, run)
            if final >= expected and pending == 0:
                break
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"daemon exited with {proc.returncode}; log in {tmp / 'daemon.log'}")
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(pid)
        cpu = cpu_after - cpu_before if cpu_after is not None and cpu_before is not None else None
        return expected / elapsed, peak_rss_mb(pid), hits[0], refused, cpu
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await receiver.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=700)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--config", help="the daemon's config (for its classifier settings); default: the embedded one")
    ap.add_argument("--url", help="use this running daemon instead of starting one")
    ap.add_argument("--store", help="with --url: the daemon's SQLite file (read only)")
    ap.add_argument("--pid", type=int, help="with --url: the daemon's process id, for its peak RSS")
    ap.add_argument("--keep", help="directory for the started daemon's store and log (default: a temporary one)")
    ap.add_argument("--skip-raw", action="store_true", help="do not measure the raw embedder rate")
    args = ap.parse_args()
    if args.url and not args.store:
        ap.error("--url needs --store")

    import config.loader as config_loader

    settings = config_loader.load(Path(args.config) if args.config else None)
    reports = load_reports(args.reports)
    texts = [r["text"] for r in reports]
    raws: list[tuple[float, float, float]] = []
    embedder = None
    if not args.skip_raw:
        rate, cpu, whole, embedder = raw_embedder_rate(settings, texts)
        raws.append((rate, cpu, whole))
        embedder.close()
        print(f"raw embedder (before): {rate:.1f} texts/s", flush=True)
    rps, rss, deliveries, refused, cpu = asyncio.run(run_pipeline(args, reports, settings))
    if not args.skip_raw:
        rate, cpu_text, whole, embedder = raw_embedder_rate(settings, texts)
        raws.append((rate, cpu_text, whole))
        embedder.close()
        print(f"raw embedder (after): {rate:.1f} texts/s", flush=True)
    load = os.getloadavg()[0]
    done = len(reports) - refused
    print(f"{done} reports end to end (POST, classify, dedupe, dispatch to a loopback webhook:"
          f" {deliveries} deliveries), load avg {load:.1f}")
    from classifier.embedding.embedder import serving_threads

    print(f"pipeline        {rps:7.1f} reports/s (embedder: {settings.classifier.variant},"
          f" {serving_threads(settings.classifier.embed_threads)} threads, daemon and raw alike)")
    if raws:
        raw = sum(r[0] for r in raws) / len(raws)
        print(f"raw embedder    {raw:7.1f} texts/s in calls of [classifier] batch = {settings.classifier.batch}"
              f" (mean of before/after: {', '.join(f'{r[0]:.1f}' for r in raws)}; all {len(texts)} in one call:"
              f" {', '.join(f'{r[2]:.1f}' for r in raws)})")
        print(f"pipeline / raw  {rps / raw:7.3f}")
    # The machine may be shared: rates move with the load, CPU per report much less.
    if cpu is not None and done:
        print(f"daemon CPU      {1000 * cpu / done:7.1f} ms a report (every thread: intake, stages, delivery)")
        if raws:
            raw_cpu = sum(r[1] for r in raws) / len(raws)
            print(f"raw embedder    {1000 * raw_cpu:7.1f} ms CPU a text;"
                  f" CPU ratio (raw per text / daemon per report) {raw_cpu * done / cpu:.3f}")
    print(f"daemon peak RSS {rss:7.0f} MB" if rss is not None else "daemon peak RSS unknown (give --pid)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
