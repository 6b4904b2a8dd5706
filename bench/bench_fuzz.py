"""Adversarial bench (issue 17, items 3 and 7): hostile input at scale against the daemon, beside a baseline daemon
built from an older revision (default: the commit before the intake hardening), same machine, same run.

    .venv/bin/python bench/bench_fuzz.py [--inputs 100000] [--http 4000] [--baseline-rev a98d9aa]
                                         [--tiny-parts-mb 10] [--baseline-tiny-parts-mb 2] [--seconds 10]

Both daemons run as `run_daemon.py serve` subprocesses (classifier off: intake only), each from its own tree.
Printed, baseline beside current:
  1. /healthz while a multipart body of tiny parts is posted: the slowest /healthz answer and the body's status
     (the baseline parses it on the event loop; its body size is smaller, the stall grows linearly with it);
  2. legitimate reports under a stream of bad bodies (lone surrogates, 1,000-deep JSON, charset=rot13) at
     50/s: the share of legitimate reports not acknowledged;
  3. fuzzing, current tree only: `--inputs` generated inputs (hypothesis strategies of tests/fuzz_strategies.py,
     multiplied by cheap mutations) through every pure parser (crashes = exceptions other than the parser's own
     refusal), `--http` of them through the Open311 and Messenger endpoints (5xx count, acknowledged-but-missing
     count) while a prober measures /healthz round trips (p50/p99/max: the event loop's lag as clients feel it;
     the target is max < 100 ms).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.net import free_port  # noqa: E402  (the repository is on sys.path from here)

REPORT = {"service_code": "drainage", "description": "Cống bị rác bít kín trên đường Ngô Gia Tự, nước ngập",
          "lat": "10.761701", "long": "106.668647"}
APP_SECRET = "bench-app-secret"


class Daemon:
    def __init__(self, tree: Path, tmp: Path, label: str) -> None:
        self.tree, self.label, self.port = tree, label, free_port()
        self.db = tmp / f"{label}.sqlite3"
        self.config = tmp / f"{label}.toml"
        self.config.write_text(f"""
[store]
path = {json.dumps(str(self.db))}
blob_dir = {json.dumps(str(tmp / (label + '-blobs')))}
[http]
host = "127.0.0.1"
port = {self.port}
[classifier]
backend = "none"
[logging]
level = "WARNING"
[[channels]]
kind = "open311"
name = "app"
[[channels]]
kind = "messenger"
name = "page"
app_secret = "{APP_SECRET}"
page_token = "t"
verify_token = "v"
graph_base_url = "http://127.0.0.1:9"
media_budget_seconds = 0.05
""", encoding="utf-8")
        self.log = open(tmp / f"{label}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(tree / "run_daemon.py"), "serve", "--config", str(self.config)],
                                     cwd=tree, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)})
        self.base = f"http://127.0.0.1:{self.port}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(600):
            try:
                async with http.get(self.base + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.label} daemon exited; see its log")
            await asyncio.sleep(0.1)
        raise SystemExit(f"{self.label} daemon not answering")

    def stored(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Prober:
    """GETs /healthz back to back, recording each round trip."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base, self.times, self._stop = http, base, [], asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                async with self.http.get(self.base + "/healthz") as resp:
                    await resp.read()
            except aiohttp.ClientError:
                pass
            self.times.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> str:
        if not self.times:
            return "no probe"
        ts = sorted(self.times)
        p99 = ts[min(len(ts) - 1, int(len(ts) * 0.99))]
        return (f"/healthz p50 {statistics.median(ts) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
                f"max {ts[-1] * 1000:.1f} ms over {len(ts)} probes")


def tiny_parts(megabytes: float) -> bytes:
    part = b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'
    return part * int(megabytes * 1024 * 1024 // len(part)) + b"--b--\r\n"


async def stall(daemon: Daemon, http: aiohttp.ClientSession, megabytes: float) -> str:
    prober = Prober(http, daemon.base)
    task = asyncio.ensure_future(prober.run())
    await asyncio.sleep(0.3)
    t = time.perf_counter()
    async with http.post(daemon.base + "/open311/v2/requests.json", data=tiny_parts(megabytes),
                         headers={"Content-Type": "multipart/form-data; boundary=b"},
                         timeout=aiohttp.ClientTimeout(total=900)) as resp:
        status = resp.status
    took = time.perf_counter() - t
    await asyncio.sleep(0.3)
    prober.stop()
    await task
    return f"{megabytes:g} MB of tiny parts -> {status} in {took:.2f} s; {prober.summary()}"


BAD_BODIES = [
    (json.dumps({**REPORT, "description": "x \ud800"}).encode(), "application/json"),
    (b'{"service_code": "drainage", "description": ' + b"[" * 1000 + b"]" * 1000 + b"}", "application/json"),
    (b'--b\r\nContent-Disposition: form-data; name="service_code"\r\n\r\ndrainage\r\n--b\r\nContent-Disposition:'
     b' form-data; name="description"\r\nContent-Type: text/plain; charset=rot13\r\n\r\nPbat\r\n--b\r\n'
     b'Content-Disposition: form-data; name="address_string"\r\n\r\n12 Le Loi\r\n--b--\r\n',
     "multipart/form-data; boundary=b"),
]


async def legit_under_bad(daemon: Daemon, http: aiohttp.ClientSession, seconds: float) -> str:
    url = daemon.base + "/open311/v2/requests.json"
    outcomes: Counter[str] = Counter()
    bad_status: Counter[int] = Counter()
    tasks = []

    async def legit(i: int) -> None:
        try:
            async with http.post(url, data=dict(REPORT, description=f"Cống bị rác bít kín số {i} {random.random()}"),
                                 headers={"Idempotency-Key": f"legit-{daemon.label}-{i}"}) as resp:
                outcomes["ok" if resp.status in (200, 201) else f"failed {resp.status}"] += 1
        except aiohttp.ClientError:
            outcomes["failed (connection)"] += 1

    async def bad(i: int) -> None:
        raw, ctype = BAD_BODIES[i % len(BAD_BODIES)]
        try:
            async with http.post(url, data=raw, headers={"Content-Type": ctype}) as resp:
                bad_status[resp.status] += 1
        except aiohttp.ClientError:
            bad_status[0] += 1

    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        tasks.append(asyncio.ensure_future(bad(i)))
        for j in range(2):  # 100 legitimate reports/s beside 50 bad bodies/s
            tasks.append(asyncio.ensure_future(legit(2 * i + j)))
        i += 1
        await asyncio.sleep(0.02)
    await asyncio.gather(*tasks)
    total = sum(outcomes.values())
    failed = total - outcomes["ok"]
    return (f"legitimate reports not acknowledged: {failed}/{total} ({100 * failed / max(1, total):.1f} %)"
            f" [{dict(outcomes)}]; bad bodies answered {dict(sorted(bad_status.items()))}")


def collect(strategy: Any, n: int) -> list[Any]:
    from hypothesis import HealthCheck, given, settings

    pool: list[Any] = []

    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def gather(x: Any) -> None:
        pool.append(x)

    gather()
    return pool


def mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(0, 3)):
        op = rng.random()
        pos = rng.randint(0, len(data)) if data else 0
        if op < 0.3 and data:
            data[min(pos, len(data) - 1)] = rng.randint(0, 255)
        elif op < 0.5:
            del data[pos:]
        elif op < 0.8:
            data[pos:pos] = rng.choice([b"\\ud800", b"[", b"{", b"\r\n", b"\x00", b"\xff", b'"', b"--b\r\n"])
        else:
            data += data[: rng.randint(0, 64)]
    return bytes(data)


def fuzz_parsers(n: int, rng: random.Random) -> tuple[str, dict[str, list[tuple[bytes, str]]]]:
    from channels.email_parse import ParseError, parse_email
    from channels.messenger_parse import BadPayload, parse_webhook
    from channels.open311_parse import Open311Error, parse_request
    from channels.telegram_parse import BadUpdate, parse_update
    from channels.transcripts_parse import TranscriptError, parse_transcript
    from ingest.untrusted import BodyError, loads_json
    from tests import fuzz_strategies as fs

    pool_size = max(50, n // 40)
    pools = {
        "open311": collect(fs.open311_body(), pool_size),
        "email": [(r, "") for r in collect(fs.mutated_email(), pool_size // 2)],
        "messenger": [(r, "") for r in collect(fs.messenger_body(), pool_size // 2)],
        "telegram": [(json.dumps(u, ensure_ascii=True).encode(), "") for u in collect(fs.telegram_update, pool_size // 2)],
        "transcripts": [(r, "") for r in collect(fs.transcript_raw, pool_size // 2)],
    }
    share = {"open311": 0.4, "email": 0.15, "messenger": 0.2, "telegram": 0.15, "transcripts": 0.1}

    def telegram(raw: bytes) -> None:
        try:
            parse_update(loads_json(raw), max_photo_bytes=1 << 20)
        except BodyError:
            return

    parsers = {
        "open311": (lambda raw, ct: parse_request(raw, ct, idempotency_key=None, received_at="2026-09-01T08:00:00+07:00",
                                                  service_codes={"drainage"}, channel_instance="app", max_photos=3),
                    (Open311Error,)),
        "email": (lambda raw, ct: parse_email(raw), (ParseError,)),
        "messenger": (lambda raw, ct: parse_webhook(raw), (BadPayload,)),
        "telegram": (lambda raw, ct: telegram(raw), (BadUpdate,)),
        "transcripts": (lambda raw, ct: parse_transcript(raw, filename="f", channel_instance="cc",
                                                         default_received_at="2026-09-01T08:00:00+07:00"),
                        (TranscriptError,)),
    }
    counts: Counter[str] = Counter()
    crashes: Counter[str] = Counter()
    durations: dict[str, list[float]] = {k: [] for k in pools}
    inputs: dict[str, list[tuple[bytes, str]]] = {k: [] for k in pools}
    for name, (parse, refusals) in parsers.items():
        for _ in range(int(n * share[name])):
            raw, ct = rng.choice(pools[name])
            raw = mutate(raw, rng) if rng.random() < 0.7 else raw
            t = time.perf_counter()
            try:
                parse(raw, ct)
            except refusals:
                pass
            except Exception as exc:  # a crash: the parser's contract is its own refusal type only
                crashes[f"{name}:{type(exc).__name__}"] += 1
            durations[name].append(time.perf_counter() - t)
            counts[name] += 1
            if len(inputs[name]) < 20_000:
                inputs[name].append((raw, ct))
    total = sum(counts.values())
    # p99.9 rather than the maximum alone: on a shared machine one parse in 100,000 may wait for a CPU or a GC pass.
    times = {k: sorted(v) for k, v in durations.items() if v}
    spread = ", ".join(f"{k} p99.9 {v[int(len(v) * 0.999)] * 1000:.2f} ms (max {v[-1] * 1000:.0f})"
                       for k, v in times.items())
    return (f"{total} inputs through the parsers {dict(counts)}; crashes {dict(crashes) or 0}; {spread}"), inputs


async def fuzz_endpoints(daemon: Daemon, http: aiohttp.ClientSession, inputs: dict[str, list[tuple[bytes, str]]],
                         n: int, rng: random.Random) -> str:
    from tests.channels.fakes.fake_graph_api import sign

    prober = Prober(http, daemon.base)
    probe = asyncio.ensure_future(prober.run())
    statuses: Counter[int] = Counter()
    acked: list[int] = []
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            if i % 4 == 3 and inputs["messenger"]:
                raw, _ = rng.choice(inputs["messenger"])
                url, headers = daemon.base + "/webhooks/messenger/page", {"X-Hub-Signature-256": sign(APP_SECRET, raw),
                                                                           "Content-Type": "application/json"}
            else:
                raw, ct = rng.choice(inputs["open311"])
                url, headers = daemon.base + "/open311/v2/requests.json", ({"Content-Type": ct} if ct else {})
            try:
                async with http.post(url, data=raw, headers=headers) as resp:
                    statuses[resp.status] += 1
                    if resp.status in (200, 201) and "open311" in url:
                        acked.append(int(json.loads(await resp.read())[0]["service_request_id"]))
            except aiohttp.ClientError:
                statuses[0] += 1

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    took = time.perf_counter() - t
    prober.stop()
    await probe
    stored = {r[0] for r in daemon.stored("SELECT id FROM reports")}
    missing = [a for a in acked if a not in stored]
    five = sum(v for k, v in statuses.items() if k >= 500)
    return (f"{n} HTTP inputs in {took:.1f} s: statuses {dict(sorted(statuses.items()))}; 5xx {five};"
            f" acknowledged {len(acked)}, missing from the store {len(missing)}; {prober.summary()}")


def baseline_tree(rev: str, tmp: Path) -> Path | None:
    tree = tmp / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True)
    if archive.returncode != 0:
        print(f"baseline revision {rev} not available: {archive.stderr.decode().strip()}")
        return None
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    (tree / "var").mkdir(exist_ok=True)
    if (REPO / "var" / "models").exists():
        (tree / "var" / "models").symlink_to(REPO / "var" / "models")
    return tree


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmpdir:
        tmp = Path(tmpdir)
        base_tree = baseline_tree(args.baseline_rev, tmp) if args.baseline_rev else None
        daemons = {"current": Daemon(REPO, tmp, "current")}
        if base_tree is not None:
            daemons["baseline"] = Daemon(base_tree, tmp, "baseline")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
                for d in daemons.values():
                    await d.ready(http)
                print("1. /healthz while a body of tiny multipart parts is posted")
                for label, d in daemons.items():
                    mb = args.tiny_parts_mb if label == "current" else args.baseline_tiny_parts_mb
                    print(f"   {label:8s} {await stall(d, http, mb)}")
                    if label == "current" and args.baseline_tiny_parts_mb != mb:
                        print(f"   {label:8s} {await stall(d, http, args.baseline_tiny_parts_mb)}")
                print(f"2. legitimate reports (100/s) beside bad bodies (50/s) for {args.seconds:g} s")
                for label, d in daemons.items():
                    print(f"   {label:8s} {await legit_under_bad(d, http, args.seconds)}")
                print(f"3. fuzzing (current tree): {args.inputs} generated inputs")
                summary, inputs = fuzz_parsers(args.inputs, rng)
                print(f"   parsers  {summary}")
                print(f"   http     {await fuzz_endpoints(daemons['current'], http, inputs, args.http, rng)}")
        finally:
            for d in daemons.values():
                d.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--http", type=int, default=4000)
    parser.add_argument("--baseline-rev", default="a98d9aa", help="git revision of the baseline daemon ('' for none)")
    parser.add_argument("--tiny-parts-mb", type=float, default=10.0)
    parser.add_argument("--baseline-tiny-parts-mb", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1022)
    asyncio.run(main(parser.parse_args()))
