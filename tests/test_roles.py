"""`serve --role`: an intake instance serves HTTP and channels and runs no stage; a workers instance runs the stages
and the singletons and serves no HTTP. Wired in process, on the real store, without a model (backend "none")."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

import config.loader as config_loader
from config.directory import load_directory
from ingest.app import Published
from ingest.leases import LocalLeadership
from run_daemon import Generation, open_store
from tests.net import free_port


def _settings(tmp_path: Path, port: int):  # type: ignore[no-untyped-def]
    env = {"HCMC1022__STORE__PATH": str(tmp_path / "s.sqlite3"), "HCMC1022__STORE__BLOB_DIR": str(tmp_path / "b"),
           "HCMC1022__HTTP__PORT": str(port), "HCMC1022__CLASSIFIER__BACKEND": "none"}
    return config_loader.load(None, env=env)


async def _start(tmp_path: Path, role: str) -> tuple[Generation, int]:
    port = free_port()
    settings = _settings(tmp_path, port)
    store = await open_store(settings)
    generation = Generation(settings, load_directory(settings.data.agencies, settings.data.structure), store,
                            Published(), role, LocalLeadership())
    return generation, port


async def _run_role(tmp_path: Path, role: str) -> tuple[set[str], bool]:
    generation, port = await _start(tmp_path, role)
    try:
        async with asyncio.TaskGroup() as tg:
            await generation.start(tg)
            names = {t.get_name() for t in generation.intake + generation.workers}
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        serving = response.status == 200
            except aiohttp.ClientConnectionError:
                serving = False
            await generation.stop()
    finally:
        await generation.ctx.store.close()
    return names, serving


async def test_an_intake_instance_serves_http_and_runs_no_stage(tmp_path: Path) -> None:
    names, serving = await _run_role(tmp_path, "intake")
    assert serving
    assert not names & {"dedupe", "dispatch", "dispatch-clocks", "dispatch-delivery", "lease-reclaimer"}, names


async def test_a_workers_instance_runs_the_stages_and_serves_no_http(tmp_path: Path) -> None:
    names, serving = await _run_role(tmp_path, "workers")
    assert not serving
    assert {"dedupe", "dispatch-clocks", "lease-reclaimer"} <= names, names


async def test_all_in_one_serves_and_works(tmp_path: Path) -> None:
    names, serving = await _run_role(tmp_path, "all")
    assert serving and {"dedupe", "dispatch-clocks", "lease-reclaimer"} <= names, names


async def test_singletons_are_wrapped_in_their_lease(tmp_path: Path) -> None:
    generation, _ = await _start(tmp_path, "workers")
    try:
        async with asyncio.TaskGroup() as tg:
            await generation.start(tg)
            await generation.stop()
    finally:
        await generation.ctx.store.close()
    leases = generation.ctx.leases
    assert isinstance(leases, LocalLeadership)
    assert {"dispatch-clocks", "dispatch-escalations"} <= set(leases._leases)
    running = {t.get_name(): t for t in generation.workers}
    assert running  # the names above were asked for by the wrapped services, not by this test
