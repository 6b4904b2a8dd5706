"""SIGHUP reload of the running daemon (a subprocess): a channel added to the file starts taking input, an invalid
file is refused with its reason while the old configuration keeps running, and no report acknowledged around a
reload is lost or stored twice.
"""
from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from config.directory import BUNDLED as BUNDLED_DIRECTORY
from tests.daemon import Daemon, query, toml_str, wait_for
from tests.net import free_port
from tests.test_e2e_support import base_config, drop_transcript

TIMEOUT = 60.0
CLIENTS = 4
REPORTS_PER_CLIENT = 15


def channels(tmp: Path, *names: str) -> str:
    out = '\n[[channels]]\nkind = "open311"\nname = "app"\n'
    for name in names:
        out += (f'\n[[channels]]\nkind = "transcripts"\nname = "{name}"\nfolder = {toml_str(tmp / name)}\n'
                f'poll_seconds = 0.2\n')
    return out


async def post_until_acknowledged(http: aiohttp.ClientSession, url: str, key: str, text: str) -> int:
    """What the app does: resend with the same Idempotency-Key until an answer arrives (refused connections and
    resets during the swap, 503 while intake stops)."""
    while True:
        try:
            async with http.post(url, json={"service_code": "street_lighting", "description": text,
                                            "address_string": "Đường Nguyễn Trãi, Quận 5"},
                                 headers={"Idempotency-Key": key}) as resp:
                if resp.status in (200, 201):
                    return int((await resp.json())[0]["service_request_id"])
                assert resp.status == 503, await resp.text()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.02)


@pytest.mark.timeout(300)
async def test_sighup_adds_channels_refuses_bad_files_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    # The agency directory (routing rules) is a file of its own: editing it and reloading must take effect too.
    agencies = tmp_path / "agencies.json"
    agencies.write_text(BUNDLED_DIRECTORY.read_text(encoding="utf-8"), encoding="utf-8")
    head = base_config(tmp_path, port) + f"\n[data]\nagencies = {toml_str(agencies)}\n"
    config = tmp_path / "config.toml"
    config.write_text(head + channels(tmp_path, "call-centre"), encoding="utf-8")
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    db = tmp_path / "store.sqlite3"

    def generations() -> int:
        return daemon.log().count("run_daemon: listening on")

    daemon.start()
    try:
        await daemon.wait_ready()
        assert generations() == 1

        # 1. A transcripts instance added to the file takes files after SIGHUP.
        config.write_text(head + channels(tmp_path, "call-centre", "hotline-2"), encoding="utf-8")
        daemon.signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return generations() == 2
        await wait_for(reloaded, TIMEOUT, "no new generation after SIGHUP; log:\n{log}", log=daemon.log)
        listening = [line for line in daemon.log().splitlines() if "run_daemon: listening on" in line]
        assert "with 3 channel service(s)" in listening[-1]
        drop_transcript(tmp_path / "hotline-2", "call-1.json",
                        {"call_id": "H2-1", "text": "Đèn đường trước số 12 Nguyễn Trãi quận 5 tắt cả tuần nay."})

        async def taken() -> list[object]:
            return query(db, "SELECT id FROM reports WHERE channel_instance='hotline-2'")
        await wait_for(taken, TIMEOUT, "the new channel took nothing; log:\n{log}", log=daemon.log)
        assert (tmp_path / "hotline-2" / "done" / "call-1.json").exists()

        # 2. An invalid file (unknown key) is refused with its reason; the running configuration stays.
        config.write_text(head.replace("[http]\n", "[http]\nbogus_key = 1\n", 1)
                          + channels(tmp_path, "call-centre"), encoding="utf-8")
        daemon.signal(signal.SIGHUP)

        async def refused() -> bool:
            return "reload refused" in daemon.log()
        await wait_for(refused, TIMEOUT, "no refusal logged; log:\n{log}", log=daemon.log)
        refusal = next(line for line in daemon.log().splitlines() if "reload refused" in line)
        assert "http.bogus_key" in daemon.log()[daemon.log().index(refusal):], refusal
        assert daemon.alive() and generations() == 2
        # hotline-2 (dropped by the refused file) still runs, and the app channel still answers.
        drop_transcript(tmp_path / "hotline-2", "call-2.json", {"call_id": "H2-2", "text": "Cống bị nghẹt ở Quận 5."})

        async def still_taken() -> bool:
            return len(query(db, "SELECT id FROM reports WHERE channel_instance='hotline-2'")) == 2
        await wait_for(still_taken, TIMEOUT, "the old configuration stopped; log:\n{log}", log=daemon.log)

        # 3. Reports posted while the daemon reloads (twice): each acknowledged one is stored exactly once.
        config.write_text(head + channels(tmp_path, "call-centre", "hotline-2", "hotline-3"), encoding="utf-8")
        url = f"{daemon.base}/open311/v2/requests.json"
        acknowledged: dict[str, int] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            async def client(c: int) -> None:
                for i in range(REPORTS_PER_CLIENT):
                    key = f"reload-{c}-{i}"
                    acknowledged[key] = await post_until_acknowledged(
                        http, url, key, f"Đèn đường số {c * 100 + i} đường Nguyễn Trãi quận 5 bị tắt.")

            async def reloads() -> None:
                for target in (3, 4):
                    while len(acknowledged) < (target - 2) * 10:
                        await asyncio.sleep(0.01)
                    daemon.signal(signal.SIGHUP)

                    async def done() -> bool:
                        return generations() == target
                    await wait_for(done, TIMEOUT, "reload did not finish; log:\n{log}", log=daemon.log)

            await asyncio.gather(reloads(), *(client(c) for c in range(CLIENTS)))
        assert len(acknowledged) == CLIENTS * REPORTS_PER_CLIENT
        rows = query(db, "SELECT idem_key, id, COUNT(*) AS n FROM reports WHERE idem_key LIKE 'reload-%'"
                         " GROUP BY idem_key")
        assert {r["idem_key"]: (r["id"], r["n"]) for r in rows} == {k: (v, 1) for k, v in acknowledged.items()}

        # Leases released by the old workers are taken by the new ones: every report leaves `received`.
        async def classified() -> bool:
            return not query(db, "SELECT id FROM reports WHERE status='received'")
        await wait_for(classified, 120.0, "reports stuck in 'received' after reload; log:\n{log}", log=daemon.log)

        # 4. A routing rule changed in the directory file alone (the config file is the same) takes effect on
        # SIGHUP: street lighting goes to the power company instead of the lighting company.
        before = query(db, "SELECT DISTINCT agency FROM reports WHERE idem_key LIKE 'reload-%' AND agency IS NOT NULL")
        assert {r["agency"] for r in before} == {"chieu-sang"}
        directory = json.loads(agencies.read_text(encoding="utf-8"))
        for topic in directory["topics"]:
            if topic["id"] == "street_lighting":
                topic["agency"] = "evnhcmc"
        agencies.write_text(json.dumps(directory, ensure_ascii=False), encoding="utf-8")
        daemon.signal(signal.SIGHUP)

        async def fifth() -> bool:
            return generations() == 5
        await wait_for(fifth, TIMEOUT, "no reload after the directory changed; log:\n{log}", log=daemon.log)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            rid = await post_until_acknowledged(http, url, "after-directory",
                                                "Đèn đường trước số 300 đường Nguyễn Trãi quận 5 bị tắt.")

        async def routed() -> list[object]:
            return query(db, "SELECT agency FROM reports WHERE id=? AND agency IS NOT NULL", (rid,))
        await wait_for(routed, 120.0, "the report after the directory change was not routed; log:\n{log}",
                       log=daemon.log)
        assert query(db, "SELECT agency FROM reports WHERE id=?", (rid,))[0]["agency"] == "evnhcmc"
        assert "Traceback" not in daemon.log()
        assert daemon.stop() == 0
    finally:
        daemon.stop()


async def test_a_worker_cancelled_at_begin_leaves_the_store_writable(tmp_path: Path) -> None:
    """A reload cancels stage workers wherever they are, also while their BEGIN runs on the writer thread; the
    next transaction (the lease release that follows) must still start."""
    from ingest.store import Store

    store = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs")
    try:
        for _ in range(20):
            entered = asyncio.Event()

            async def worker() -> None:
                async with store.transaction():
                    entered.set()
                    await asyncio.sleep(10)

            task = asyncio.create_task(worker())
            await asyncio.sleep(0)  # the task now awaits its BEGIN IMMEDIATE
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with store.transaction() as tx:
                await tx.execute("SELECT 1")
    finally:
        await store.close()
