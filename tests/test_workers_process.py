"""`serve` in its default role runs the pipeline stages in a child process `serve --role workers`
(ingest/workers_process.py), so the embedder never starves intake of the interpreter: the real daemon as a
subprocess, its child found through /proc, killed and signalled as an admin or a crash would."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.daemon import Daemon, query, wait_for
from tests.net import free_port
from tests.test_e2e_support import base_config

FINAL = ("dispatched", "review", "rejected", "out_of_scope", "duplicate", "closed", "routed")


def _daemon(tmp: Path, *, workers_process: bool = True) -> Daemon:
    port = free_port()
    config = tmp / "config.toml"
    config.write_text(base_config(tmp, port) + f"""
[serve]
workers_process = {str(workers_process).lower()}

[[channels]]
kind = "open311"
name = "app"
""", encoding="utf-8")
    return Daemon(config, port, tmp / "daemon.log")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, not yet reaped by its parent


async def the_child(daemon: Daemon, other_than: int | None = None) -> int:
    assert daemon.proc is not None
    pid = daemon.proc.pid

    async def found() -> int | None:
        kids = [k for k in children(pid) if k != other_than and not gone(k)]
        return kids[0] if len(kids) == 1 else None
    return await wait_for(found, 60, "no workers child", log=daemon.log)


async def post(http: aiohttp.ClientSession, daemon: Daemon, text: str) -> int:
    async with http.post(f"{daemon.base}/open311/v2/requests.json",
                         json={"service_code": "street_lighting", "description": text,
                               "address_string": "Đường Nguyễn Trãi, Quận 5"}) as resp:
        assert resp.status == 201, await resp.text()
        return int((await resp.json())[0]["service_request_id"])


async def processed(daemon: Daemon, report_id: int) -> None:
    db = daemon.config.parent / "store.sqlite3"

    async def final() -> bool:
        rows = query(db, "SELECT status FROM reports WHERE id=?", (report_id,))
        return bool(rows) and rows[0]["status"] in FINAL
    await wait_for(final, 120, f"report {report_id} not processed", log=daemon.log)


@pytest.mark.timeout(300)
async def test_the_stages_run_in_a_lower_child_that_reloads_restarts_and_stops_after_intake(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    daemon.start()
    try:
        child = await the_child(daemon)
        # A reload while the child is still importing: it must neither die nor be started again.
        daemon.signal(signal.SIGHUP)
        await daemon.wait_ready()
        assert daemon.proc is not None
        parent = daemon.proc.pid
        assert await the_child(daemon) == child
        assert "workers process stopped" not in daemon.log()
        assert cmdline(child)[2:5] == ["serve", "--role", "workers"], cmdline(child)
        assert nice(child) == nice(parent) + 5  # [serve] workers_nice: intake gets the cores first
        async with aiohttp.ClientSession() as http:
            # The parent processes nothing itself: the child classifies, matches and dispatches.
            first = await post(http, daemon, "Đèn đường trước số 12 Nguyễn Trãi quận 5 bị tắt mấy hôm nay")
            await processed(daemon, first)
            async with http.get(f"{daemon.base}/metrics") as resp:
                metrics = await resp.text()
            # The child's job counts are in the parent's scrape, once.
            assert 'hcmc1022_stage_jobs_total{outcome="done",stage="classify"}' in metrics
            assert metrics.count("# TYPE hcmc1022_stage_jobs_total counter") == 1

            # The admin breaks the file: the reload is refused, and not given to the workers either.
            daemon.config.write_text("[store\n", encoding="utf-8")
            daemon.signal(signal.SIGHUP)
            await wait_for(lambda: _async("reload refused" in daemon.log()), 30, "reload not refused",
                           log=daemon.log)
            assert await the_child(daemon) == child

            # A crash of the child: /readyz says so, intake keeps accepting, the child comes back on the
            # configuration that was accepted (not the broken file) and catches up.
            os.kill(child, signal.SIGKILL)

            async def not_ready() -> str | None:
                async with http.get(f"{daemon.base}/readyz") as resp:
                    body = await resp.json()
                    return "; ".join(body.get("reasons", [])) if resp.status == 503 else None
            reasons = await wait_for(not_ready, 30, "readyz stayed ready with the workers gone", interval=0.05,
                                     log=daemon.log)
            assert "workers" in reasons, reasons
            second = await post(http, daemon, "Cột đèn ở hẻm 45 Trần Hưng Đạo quận 5 chập điện, tối om")
            restarted = await the_child(daemon, other_than=child)
            await daemon.wait_ready()
            await processed(daemon, second)
        assert "starting it again" in daemon.log()

        # Ctrl-C in a terminal reaches every process of the group: both stop, intake first, and no restart.
        before = daemon.log().count("starting it again")
        for pid in (restarted, parent):
            os.kill(pid, signal.SIGINT)
        assert daemon.proc.wait(timeout=30) == 0
        assert gone(restarted)
        log = daemon.log()
        assert log.count("starting it again") == before
        assert log.rindex("stopping: intake first") < log.rindex("stopped")
    finally:
        daemon.stop()


@pytest.mark.timeout(300)
async def test_the_child_dies_with_a_killed_serve_and_one_process_is_a_setting(tmp_path: Path) -> None:
    (tmp_path / "two").mkdir()
    daemon = _daemon(tmp_path / "two")
    daemon.start()
    try:
        await daemon.wait_ready()
        child = await the_child(daemon)
        # kill -9 of `serve` itself: its child must not live on beside the next start's.
        daemon.kill9()

        async def child_gone() -> bool:
            return gone(child)
        await wait_for(child_gone, 10, "the workers child outlived its parent's kill -9")
    finally:
        daemon.stop()

    (tmp_path / "one").mkdir()
    single = _daemon(tmp_path / "one", workers_process=False)
    single.start()
    try:
        await single.wait_ready()
        assert single.proc is not None
        await asyncio.sleep(1)
        assert children(single.proc.pid) == []
        async with aiohttp.ClientSession() as http:
            await processed(single, await post(http, single, "Đèn đường hẻm 7 Nguyễn Trãi quận 5 không sáng"))
    finally:
        single.stop()


async def _async(value: bool) -> bool:
    return value
