"""Crash test (issue 2): kill -9 the daemon five times under HTTP load; every acknowledged report is stored exactly
once, and after a clean run every report reaches a state an operator can see.

The daemon runs as a real subprocess (`run_daemon.py serve`) on a temporary store and a free loopback port.
Clients resend a report whose answer they did not get (connection reset, 503), with the same Idempotency-Key,
as the mobile app does.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from tests.daemon import MODEL_CACHE, Daemon, toml_str
from tests.net import free_port

# 2,000 as issue 2 asks; HCMC1022_CRASH_REPORTS lowers it for a quick local run.
REPORTS = int(os.environ.get("HCMC1022_CRASH_REPORTS", "2000"))
CLIENTS = 16
KILLS = 5
# The pipeline stages are separate components; the final-state half of the test needs them installed.
STAGES_PRESENT = all(importlib.util.find_spec(f"{m}.service") is not None for m in ("classifier", "dedupe", "dispatch"))
FINAL_WAIT_SECONDS = 900.0
STALL_SECONDS = 30.0


def crash_daemon(tmp: Path) -> Daemon:
    """The daemon under test, on its own store and port, with short leases so killed work comes back fast."""
    port = free_port()
    config = tmp / "config.toml"
    config.write_text(f"""
[store]
path = {toml_str(tmp / 'store.sqlite3')}
blob_dir = {toml_str(tmp / 'blobs')}

[http]
host = "127.0.0.1"
port = {port}

[queue]
lease_seconds = 5
reclaim_interval = 1
max_attempts = 3

[classifier]
cache_dir = {toml_str(MODEL_CACHE)}
# Durability is under test here, not routing quality: the int8 runtime of the same model embeds 3-4x faster.
variant = "int8"

[logging]
level = "WARNING"

[[channels]]
kind = "open311"
name = "app"
""", encoding="utf-8")
    # The machine's cores for the model, as the daemon has them in production.
    return Daemon(config, port, tmp / "daemon.log", env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})


def _query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def _push_with_kills(daemon: Daemon, rng: random.Random) -> dict[str, int]:
    """Send every report until acknowledged, while the daemon is killed at random points of the load."""
    acked: dict[str, int] = {}
    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REPORTS):
        todo.put_nowait(i)
    kill_at = sorted(rng.sample(range(REPORTS // 20, REPORTS - REPORTS // 20), KILLS))
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await daemon.wait_serving(180)

        async def client() -> None:
            while len(acked) < REPORTS:
                try:
                    i = todo.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.01)
                    continue
                key = f"crash-test-{i}"
                form = {"service_code": "drainage", "lat": "10.7617", "long": "106.6686",
                        "description": f"Cống số {i} trên đường Ngô Gia Tự bị rác bít kín, nước ngập nửa bánh xe"}
                try:
                    async with session.post(f"http://127.0.0.1:{daemon.port}/open311/v2/requests.json", data=form,
                                            headers={"Idempotency-Key": key}) as resp:
                        body = await resp.json(content_type=None)
                        if resp.status in (200, 201):
                            acked[key] = int(body[0]["service_request_id"])
                            continue
                        assert resp.status == 503, (resp.status, body)  # shutting down / store busy: retry
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                    pass  # killed mid-request: the answer is unknown, so the app sends it again
                todo.put_nowait(i)
                await asyncio.sleep(0.05)

        async def killer() -> None:
            for threshold in kill_at:
                while len(acked) < threshold:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(rng.uniform(0, 0.05))
                await asyncio.to_thread(daemon.kill9)
                daemon.start()
                await daemon.wait_serving(180)

        await asyncio.gather(killer(), *(client() for _ in range(CLIENTS)))
    return acked


@pytest.mark.timeout(1200)
async def test_kill9_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    print(f"crash test seed {seed}")
    daemon = crash_daemon(tmp_path)
    db = tmp_path / "store.sqlite3"
    daemon.start()
    try:
        acked = await _push_with_kills(daemon, random.Random(seed))
        assert daemon.starts == KILLS + 1
        assert len(acked) == REPORTS

        # Every acknowledged report is stored exactly once, under the id its acknowledgement gave.
        rows = _query(db, "SELECT idem_key, id FROM reports WHERE channel='app'")
        stored: dict[str, list[int]] = {}
        for key, rid in rows:
            stored.setdefault(key, []).append(rid)
        assert len(rows) == REPORTS, f"{len(rows)} rows for {REPORTS} reports"
        assert all(len(ids) == 1 for ids in stored.values())
        assert {k: ids[0] for k, ids in stored.items()} == acked
        # Each one was queued for classification exactly once.
        assert _query(db, "SELECT COUNT(DISTINCT report_id), COUNT(*) FROM jobs WHERE stage='classify'") == \
            [(REPORTS, REPORTS)]

        if STAGES_PRESENT:
            # A final clean run: every report leaves received/routed, or is visibly dead-lettered.
            # Classifying 2,000 reports takes minutes on a shared 2-core box: wait as long as the pipeline makes
            # progress, and fail when it stalls (a lost job) or the overall cap is reached.
            pending: list[tuple] = []
            await daemon.wait_ready(600)  # the first start on a fresh machine trains the model
            deadline = time.monotonic() + FINAL_WAIT_SECONDS
            last_progress, last_count = time.monotonic(), REPORTS + 1
            while time.monotonic() < deadline and time.monotonic() - last_progress < STALL_SECONDS:
                pending = _query(db,
                                 "SELECT id, status FROM reports r WHERE status IN ('received', 'routed')"
                                 " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.report_id=r.id AND j.state='dead')")
                if not pending:
                    break
                if len(pending) < last_count:
                    last_progress, last_count = time.monotonic(), len(pending)
                assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
                await asyncio.sleep(1)
            assert not pending, f"{len(pending)} reports still not final, e.g. {pending[:5]}\n{daemon.tail()}"
        # else: the classifier, dedupe and dispatch components are not installed yet; only intake is checked.
        assert daemon.stop(timeout=20) == 0, daemon.tail()  # SIGTERM drains and exits cleanly
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    leased = _query(db, "SELECT COUNT(*) FROM jobs WHERE state='leased'")
    assert leased == [(0,)], "a clean stop gives every lease back"
