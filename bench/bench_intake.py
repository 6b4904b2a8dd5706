"""Intake benchmark: durable accepts over HTTP (Open311) against the raw commit rate of the store's backend.

    .venv/bin/python bench/bench_intake.py [--seconds 5] [--clients 32] [--rate 500] [--postgresql [ADMIN_URL]]

With --postgresql the store is PostgreSQL (a database created for the run on ADMIN_URL's server, default
postgresql://postgres@127.0.0.1:5432/postgres, and dropped after), and the baseline is PostgreSQL's raw commit rate
(one row per COMMIT, synchronous_commit=on) on that server in the same run.

The server runs in a subprocess (only the store and the Open311 channel, no pipeline stages competing for the
CPU), so client and server do not share an event loop. Printed:
  - raw SQLite: one row per COMMIT, WAL, synchronous=FULL (the fsync-bound baseline, same disk, same run);
  - throughput: reports/s answered 2xx by `clients` concurrent connections (target >= 2,000/s on 2 cores), from
    wrk when it is installed (`apt-get install wrk`; a Python client costs the 2 cores more than the server it
    measures), else from the Python client; the generator used is printed;
  - latency: p50/p99 of the acknowledgement at a fixed offered rate (target p99 < 50 ms at 500/s).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.net import free_port  # noqa: E402  (the repository is on sys.path from here)

FORM = {"service_code": "drainage", "description": "Cống bị rác bít kín trên đường Ngô Gia Tự, nước ngập",
        "lat": "10.761701", "long": "106.668647", "phone": "0903123456"}


# -- server (subprocess) ------------------------------------------------------------------------------
async def serve(db: Path, port: int, url: str | None = None) -> None:
    from aiohttp import web

    from channels.open311 import build
    from config.channels import ChannelEntry, Open311Options
    from config.directory import load_directory
    from config.schema import Settings
    from ingest.app import AppContext
    from ingest.http import make_app
    from ingest.store import Store

    if url:
        from ingest.pgstore import PgStore

        store = await PgStore.open(url, db.parent / "blobs")
        store.max_committers = int(os.environ.get("BENCH_PG_COMMITTERS", store.max_committers))
    else:
        store = await Store.open(db, db.parent / "blobs")
    ctx = AppContext(settings=Settings(), directory=load_directory(None), store=store, clock=store.clock,
                     http=make_app(10 * 1024 * 1024))
    build(ctx, ChannelEntry(kind="open311", name="app"), Open311Options())
    runner = web.AppRunner(ctx.http, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        print(f"commits {store.commit_count}", flush=True)
        await store.close()


# -- client -------------------------------------------------------------------------------------------
def raw_commit_rate(path: Path, seconds: float) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, body BLOB)")
    body = os.urandom(300)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t(k, body) VALUES (?, ?)", (f"k{n}", body))
        conn.execute("COMMIT")
        n += 1
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


def raw_pg_commit_rate(url: str, seconds: float) -> float:
    """PostgreSQL's fsync-bound baseline: one row per COMMIT from one session, as a lone client would commit."""
    import asyncpg

    async def run() -> float:
        conn = await asyncpg.connect(url, server_settings={"synchronous_commit": "on"})
        try:
            await conn.execute("CREATE TABLE raw_t(id BIGSERIAL PRIMARY KEY, k TEXT UNIQUE, body BYTEA)")
            body = os.urandom(300)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                await conn.execute("INSERT INTO raw_t(k, body) VALUES ($1, $2)", f"k{n}", body)  # autocommit
                n += 1
            return n / (time.perf_counter() - start)
        finally:
            await conn.close()

    return asyncio.run(run())


def pg_database(admin: str, create: bool, name: str) -> str:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"' if create else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(run())
    return admin.rsplit("/", 1)[0] + "/" + name


# wrk's per-thread script: every request a new Idempotency-Key (`prefix`-thread-n), so every 2xx is a new report.
_WRK_LUA = """
local threads, counter = {}, 0
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  prefix = args[1]
  body = args[2]
end
function request()
  counter = counter + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded",
                                  ["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. counter}, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d\\n", summary.requests, summary.duration,
                         e.status + e.connect + e.read + e.write + e.timeout))
end
"""


def generator() -> str:
    """Which load generator the throughput phase uses: wrk (C, a fraction of the CPU of a Python client on the
    2 cores the daemon also runs on) when installed, else the Python client below. Printed by the benches."""
    return "wrk" if shutil.which("wrk") else "python"


async def throughput(url: str, clients: int, seconds: float, prefix: str) -> tuple[float, int, int]:
    """Closed loop: `clients` connections each posting a new report as soon as the last is answered; returns
    (2xx/s, 2xx, others). wrk when installed (see `generator`)."""
    if generator() == "wrk":
        return await asyncio.to_thread(_wrk_throughput, url, clients, seconds, prefix)
    return await _python_throughput(url, clients, seconds, prefix)


def _wrk_throughput(url: str, clients: int, seconds: float, prefix: str) -> tuple[float, int, int]:
    from urllib.parse import urlencode

    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_WRK_LUA)
        script.flush()
        out = subprocess.run(["wrk", "-t", "1", "-c", str(clients), "-d", f"{max(1, round(seconds))}s",
                              "--timeout", "30s", "-s", script.name, url, "--", prefix, urlencode(FORM)],
                             capture_output=True, text=True, check=True).stdout
    # wrk counts a non-2xx/3xx answer as a request too: its errors (status >= 400, socket errors) are taken off.
    requests, micros, errors = (int(x) for x in next(l for l in out.splitlines() if l.startswith("WRK")).split()[1:])
    ok = requests - errors
    return ok / (micros / 1e6), ok, errors


async def _python_throughput(url: str, clients: int, seconds: float, prefix: str) -> tuple[float, int, int]:
    import aiohttp

    keys = itertools.count()
    ok = failed = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal ok, failed
        while time.perf_counter() < deadline:
            async with session.post(url, data=FORM, headers={"Idempotency-Key": f"{prefix}-{next(keys)}"}) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    ok += 1
                else:
                    failed += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return ok / elapsed, ok, failed


async def latency(url: str, rate: float, seconds: float, prefix: str) -> tuple[list[float], int, float]:
    """Open loop: a request is started every 1/rate s whatever the answers do (no coordinated omission)."""
    import aiohttp

    latencies: list[float] = []
    failed = 0

    async def one(session: aiohttp.ClientSession, i: int, scheduled: float) -> None:
        nonlocal failed
        try:
            async with session.post(url, data=FORM, headers={"Idempotency-Key": f"{prefix}-{i}"}) as resp:
                await resp.read()
                status = resp.status
        except aiohttp.ClientError:  # a reset connection is a failed request, not the end of the run
            status = 0
        if 200 <= status < 300:
            latencies.append(time.perf_counter() - scheduled)  # from when it should have been sent
        else:
            failed += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm the connection pool so the measurement is not of TCP handshakes.
        await asyncio.gather(*(one(session, -i - 1, time.perf_counter()) for i in range(32)))
        latencies.clear()
        tasks = []
        start = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, i, scheduled)))
        await asyncio.gather(*tasks)
        achieved = total / (time.perf_counter() - start)
    return latencies, failed, achieved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", nargs="+", metavar=("DB", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--postgresql", nargs="?", const="postgresql://postgres@127.0.0.1:5432/postgres",
                        metavar="ADMIN_URL", help="the store on PostgreSQL (a database created and dropped)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    if args.serve:
        try:
            asyncio.run(serve(Path(args.serve[0]), int(args.serve[1]), args.serve[2] if len(args.serve) > 2 else None))
        except KeyboardInterrupt:
            pass
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-intake-", dir=REPO / "var" if (REPO / "var").is_dir() else None) as tmp:
        pg_name = f"hcmc1022_bench_{os.getpid()}"
        pg_url = pg_database(args.postgresql, True, pg_name) if args.postgresql else None
        backend = "PostgreSQL" if pg_url else "SQLite"
        raw_rate = raw_pg_commit_rate(pg_url, min(args.seconds, 3.0)) if pg_url else \
            raw_commit_rate(Path(tmp) / "raw.sqlite3", min(args.seconds, 3.0))
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(Path(tmp) / "bench.sqlite3"), str(port),
                                   *([pg_url] if pg_url else [])], stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                print("server did not start", file=sys.stderr)
                return 1
            url = f"http://127.0.0.1:{port}/open311/v2/requests.json"
            tput, ok, failed = asyncio.run(throughput(url, args.clients, args.seconds, "tput"))
            lats, lat_failed, achieved = asyncio.run(latency(url, args.rate, args.seconds, "lat"))
        finally:
            server.send_signal(2)
            out, _ = server.communicate(timeout=30)
        commits = next((int(line.split()[1]) for line in out.splitlines() if line.startswith("commits")), 0)
        if pg_url:
            import asyncpg

            async def count() -> int:
                conn = await asyncpg.connect(pg_url)
                try:
                    return int(await conn.fetchval("SELECT COUNT(*) FROM reports"))
                finally:
                    await conn.close()

            rows = asyncio.run(count())
            pg_database(args.postgresql, False, pg_name)
        else:
            rows = sqlite3.connect(Path(tmp) / "bench.sqlite3").execute("SELECT COUNT(*) FROM reports").fetchone()[0]

    lats.sort()
    p50 = statistics.median(lats) * 1000 if lats else float("nan")
    p99 = lats[int(len(lats) * 0.99) - 1] * 1000 if lats else float("nan")
    accepted = ok + len(lats) + 32  # 32 warm-up requests of the latency run
    how = "synchronous_commit=on" if backend == "PostgreSQL" else "WAL, synchronous=FULL"
    print(f"raw {backend} commit rate (1 row/commit, {how}): {raw_rate:8.0f} commits/s")
    print(f"durable accepts over HTTP ({args.clients} clients, {args.seconds:.0f} s, {generator()}): {tput:8.0f} reports/s "
          f"({tput / raw_rate:.1f}x raw; {failed} non-2xx)   target >= 2000")
    print(f"ack latency at {args.rate:.0f}/s offered ({achieved:.0f}/s achieved):         p50 {p50:6.1f} ms   "
          f"p99 {p99:6.1f} ms ({lat_failed} non-2xx)   target p99 < 50 ms")
    print(f"group commit: {rows} reports stored in {commits} commits ({rows / max(commits, 1):.1f} per commit); "
          f"{accepted} acknowledged")
    # wrk does not count the requests still in flight when it stops (at most one per connection): stored, unanswered.
    return 0 if accepted <= rows <= accepted + (args.clients if generator() == "wrk" else 0) else 1


if __name__ == "__main__":
    sys.exit(main())
