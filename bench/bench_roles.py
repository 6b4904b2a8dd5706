"""Intake of the whole daemon while its workers process a backlog (issue 20), per store and process layout.

    .venv/bin/python bench/bench_roles.py [--backlog 2000] [--seconds 5] [--clients 32] [--rate 500]
                                          [--postgresql ADMIN_URL] [--layouts sqlite-all,sqlite-one,sqlite-split,pg-all,pg-split]

Five layouts, each on a fresh store, each beside the raw one-row-per-commit rate of its backend measured in the
same run (bench_intake.py's baselines):
  - sqlite, all:  `make run`'s shape: `serve`, intake in its process and the stages in the workers child it
    starts (ingest/workers_process.py); cores are counted over both;
  - sqlite, one:  the same with `[serve] workers_process = false`, everything in one process (the shape before);
  - sqlite, split: `serve --role intake` and `serve --role workers` on one SQLite file;
  - postgresql, all: `make run`'s shape (`serve` and its workers child) with `[store] url` on a PostgreSQL
    database (created for the run, dropped after);
  - postgresql, split: the two processes of the split layout on such a database.
For each: the daemon is started with the real classifier (int8), `--backlog` reports are posted (the dev reports
of classifier/data/reports-seed.jsonl, repeated with fresh keys: each its own text and place, so the workers
classify, match incidents and dispatch as for real reports; the benchmark's own form, one text from one phone, is
taken for the reporter's follow-ups and never reaches the incident stage), and while the workers process them the
intake is measured: reports/s answered 2xx by `clients` concurrent connections (target >= 2,000/s on 2 cores; wrk
when installed, else a Python client, see bench_intake.generator), with the cores each
daemon process used meanwhile, then p50/p99 of the acknowledgement at `rate` offered (target p99 < 50 ms at
500/s; an open-loop Python client, timed from when each request was due). The classify backlog before and after
is printed, with the incident decisions taken meanwhile, to show the workers were busy throughout. `--layouts`
picks some of them.

Each role's process is started as its systemd unit starts it (deploy/hcmc1022*.service): its `Nice=` is read from
the unit and applied (the workers' unit runs the embedder at Nice=5, so intake on the same host stays ahead of it).
The units' CPUWeight= (a cgroup setting) is not applied here; the output says what was.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_intake import (free_port, generator, latency, pg_database, raw_commit_rate,  # noqa: E402
                          raw_pg_commit_rate, throughput)
from bench_pipeline import load_reports, post_all  # noqa: E402
from proc_tree import cpu_seconds  # noqa: E402


# Which unit file starts each role (deploy/): the bench starts the role's process with its unit's settings.
UNITS = {"all": "hcmc1022.service", "intake": "hcmc1022-intake.service", "workers": "hcmc1022-workers.service"}


def unit_nice(role: str) -> int:
    """The `Nice=` of the role's systemd unit (0 when it sets none)."""
    for line in (REPO / "deploy" / UNITS[role]).read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "Nice":
            return int(value.strip())
    return 0


def _config(tmp: Path, port: int, url: str | None, embed_threads: int | None = None,
            workers_process: bool = True) -> Path:
    config = tmp / f"config-{port}.toml"
    store = f'url = "env:BENCH_STORE_URL"\n' if url else ""
    threads = f"embed_threads = {embed_threads}\n" if embed_threads is not None else ""
    config.write_text(f"""
[store]
{store}path = "{tmp / 'store.sqlite3'}"
blob_dir = "{tmp / 'blobs'}"

[http]
host = "127.0.0.1"
port = {port}

[serve]
workers_process = {str(workers_process).lower()}

[http.limits]
max_connections_per_ip = 0  # every client of the bench is 127.0.0.1 (an open-loop client's tail opens >100)

[classifier]
cache_dir = "{REPO / 'var' / 'models'}"
variant = "int8"
{threads}
[logging]
level = "WARNING"

[[channels]]
kind = "open311"
name = "app"
""", encoding="utf-8")
    return config


class Layout:
    def __init__(self, tmp: Path, name: str, roles: list[str], url: str | None,
                 embed_threads: int | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = url
        self.tmp = tmp
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "BENCH_STORE_URL": url or ""}
        # Intake's process listens on the measured port; a workers-only process has no HTTP site.
        self.procs = []
        for label in roles:
            # "one": role all with the stages kept in its process ([serve] workers_process = false).
            role = "all" if label == "one" else label
            config = _config(tmp, self.port if role != "workers" else free_port(), url, embed_threads,
                             workers_process=label != "one")
            log = open(tmp / f"{label}.log", "ab")
            nice = unit_nice(role)
            self.procs.append(subprocess.Popen(
                [sys.executable, str(REPO / "run_daemon.py"), "serve", "--role", role, "--config", str(config)],
                cwd=REPO, env=env, stdout=log, stderr=log, preexec_fn=(lambda n=nice: os.nice(n)) if nice else None))
            if role == "intake" and url is None:
                time.sleep(3)  # the first process migrates the SQLite file before the second opens it

    async def wait_ready(self, timeout: float = 600) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/open311/v2/services.json") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        raise RuntimeError(f"{self.name}: intake did not start")

    async def unprocessed(self) -> tuple[int, int]:
        """(classify jobs not done, incident jobs done)."""
        sql = ("SELECT SUM(CASE WHEN stage='classify' AND state!='done' THEN 1 ELSE 0 END),"
               " SUM(CASE WHEN stage='dedupe' AND state='done' THEN 1 ELSE 0 END) FROM jobs")
        if self.url is None:
            conn = sqlite3.connect(self.tmp / "store.sqlite3", timeout=30)
            try:
                return tuple(int(x or 0) for x in conn.execute(sql).fetchone())  # type: ignore[return-value]
            finally:
                conn.close()
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            return tuple(int(x or 0) for x in await conn.fetchrow(sql))  # type: ignore[return-value]
        finally:
            await conn.close()

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _served(layout: Layout) -> dict[str, float]:
    """The daemon's own timing of Open311 POSTs (its /metrics histogram): bucket upper bound -> cumulative count."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{layout.port}/metrics") as resp:
            text = await resp.text()
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if (line.startswith("hcmc1022_http_request_duration_seconds_bucket{")
                and 'route="/open311/v2/requests.json"' in line and 'method="POST"' in line):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


def _share_over(before: dict[str, float], after: dict[str, float], le: str = "0.05") -> float | None:
    """Of the requests answered between the two scrapes, the share the daemon itself took longer than `le` s for."""
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    if total <= 0 or le not in after:
        return None
    return 1.0 - (after[le] - before.get(le, 0.0)) / total


async def _measure(layout: Layout, backlog: int, clients: int, seconds: float, rate: float) -> dict[str, Any]:
    await layout.wait_ready()
    url = f"http://127.0.0.1:{layout.port}/open311/v2/requests.json"
    # The workers' backlog.
    await post_all(f"http://127.0.0.1:{layout.port}", load_reports(backlog), clients, "backlog")
    before = await layout.unprocessed()
    cpu = [cpu_seconds(p.pid) for p in layout.procs]
    started = time.perf_counter()
    tput, ok, failed = await throughput(url, clients, seconds, "tput")
    # Cores each process used while intake was measured: where the 2 cores went (intake, workers, the client).
    wall = time.perf_counter() - started
    cores = [((cpu_seconds(p.pid) or 0.0) - (c or 0.0)) / wall for p, c in zip(layout.procs, cpu)]
    served_before = await _served(layout)
    lats, lat_failed, achieved = await latency(url, rate, seconds, "lat")
    served_after = await _served(layout)
    after = await layout.unprocessed()
    lats.sort()
    return {"tput": tput, "failed": failed + lat_failed, "p50": statistics.median(lats) * 1000,
            "p99": lats[int(len(lats) * 0.99) - 1] * 1000, "achieved": achieved, "before": before, "after": after,
            "cores": cores, "ok": ok,
            "server_over_50ms": _share_over(served_before, served_after)}


# --layouts key -> (printed name, the processes' roles, backend)
LAYOUTS = {"sqlite-all": ("sqlite, all", ["all"], "sqlite"), "sqlite-one": ("sqlite, one process", ["one"], "sqlite"),
           "sqlite-split": ("sqlite, split", ["intake", "workers"], "sqlite"),
           "pg-all": ("postgresql, all", ["all"], "postgresql"),
           "pg-split": ("postgresql, split", ["intake", "workers"], "postgresql")}


def _percent(share: float | None) -> str:
    return "unknown" if share is None else f"{share * 100:.2f} %"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--postgresql", default="postgresql://postgres@127.0.0.1:5432/postgres", metavar="ADMIN_URL")
    parser.add_argument("--embed-threads", type=int, default=None,
                        help="the daemon's [classifier] embed_threads (default: its own default)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of: {', '.join(LAYOUTS)}")
    args = parser.parse_args()
    print(f"load generator: {generator()} for throughput, Python open loop for latency; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    print("each role started with its systemd unit's Nice= (" + ", ".join(
        f"{role} {unit_nice(role)} from deploy/{unit}" for role, unit in UNITS.items()) + "; CPUWeight= not applied)",
        flush=True)
    lines = []
    for key in args.layouts.split(","):
        name, roles, backend = LAYOUTS[key]
        with tempfile.TemporaryDirectory(prefix="bench-roles-") as tmp_name:
            tmp = Path(tmp_name)
            pg_name = f"hcmc1022_bench_roles_{os.getpid()}"
            url = pg_database(args.postgresql, True, pg_name) if backend == "postgresql" else None
            try:
                raw = raw_pg_commit_rate(url, 3.0) if url else raw_commit_rate(tmp / "raw.sqlite3", 3.0)
                layout = Layout(tmp, name, roles, url, args.embed_threads)
                try:
                    m = asyncio.run(_measure(layout, args.backlog, args.clients, args.seconds, args.rate))
                finally:
                    layout.stop()
            finally:
                if url:
                    pg_database(args.postgresql, False, pg_name)
        cores = ", ".join(f"{role} {c:.2f}" for role, c in zip(roles, m["cores"]))
        lines.append(f"{name:<18} raw {backend} {raw:6.0f} commits/s | intake {m['tput']:6.0f} reports/s "
                     f"(target >= 2000; cores used: {cores}) | at {args.rate:.0f}/s offered ({m['achieved']:.0f}/s):"
                     f" p50 {m['p50']:6.1f} ms p99 {m['p99']:6.1f} ms (target < 50; over 50 ms in the daemon's own timing: "
                     f"{_percent(m['server_over_50ms'])}) | {m['failed']} non-2xx |"
                     f" classify backlog {m['before'][0]} -> {m['after'][0]},"
                     f" incident decisions meanwhile {m['after'][1] - m['before'][1]}")
        print(lines[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
