"""`serve --role`: an intake instance serves HTTP and channels and runs no stage; a workers instance runs the stages
and the singletons and serves no HTTP. Wired in process, on the real store (SQLite with its local leases, and the
machine's PostgreSQL with advisory-lock leases), without a model (backend "none")."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

import config.loader as config_loader
from config.directory import load_directory
from ingest.app import Published
from ingest.leases import LocalLeadership, PgLeadership
from run_daemon import Generation, make_leadership, open_store
from tests.net import free_port


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None: the SQLite file; else the PostgreSQL database the instance uses (`[store] url`)."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


def _settings(tmp_path: Path, port: int, url: str | None):  # type: ignore[no-untyped-def]
    env = {"HCMC1022__STORE__PATH": str(tmp_path / "s.sqlite3"), "HCMC1022__STORE__BLOB_DIR": str(tmp_path / "b"),
           "HCMC1022__HTTP__PORT": str(port), "HCMC1022__CLASSIFIER__BACKEND": "none"}
    if url is not None:
        env["HCMC1022__STORE__URL"] = url
    return config_loader.load(None, env=env)


async def _start(tmp_path: Path, role: str, url: str | None) -> tuple[Generation, int]:
    port = free_port()
    settings = _settings(tmp_path, port, url)
    store = await open_store(settings)
    leases = make_leadership(settings)
    assert isinstance(leases, PgLeadership if url else LocalLeadership)
    await leases.start()
    generation = Generation(settings, load_directory(settings.data.agencies, settings.data.structure), store,
                            Published(), role, leases)
    return generation, port


async def _close(generation: Generation) -> None:
    await generation.ctx.leases.close()
    await generation.ctx.store.close()


async def _run_role(tmp_path: Path, role: str, url: str | None) -> tuple[set[str], bool]:
    generation, port = await _start(tmp_path, role, url)
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
        await _close(generation)
    return names, serving


async def test_an_intake_instance_serves_http_and_runs_no_stage(tmp_path: Path, store_url: str | None) -> None:
    names, serving = await _run_role(tmp_path, "intake", store_url)
    assert serving
    assert not names & {"dedupe", "dispatch", "dispatch-clocks", "dispatch-delivery", "lease-reclaimer"}, names


async def test_a_workers_instance_runs_the_stages_and_serves_no_http(tmp_path: Path, store_url: str | None) -> None:
    names, serving = await _run_role(tmp_path, "workers", store_url)
    assert not serving
    assert {"dedupe", "dispatch-clocks", "lease-reclaimer"} <= names, names


async def test_all_in_one_serves_and_works(tmp_path: Path, store_url: str | None) -> None:
    names, serving = await _run_role(tmp_path, "all", store_url)
    assert serving and {"dedupe", "dispatch-clocks", "lease-reclaimer"} <= names, names


async def test_singletons_are_wrapped_in_their_lease(tmp_path: Path, store_url: str | None) -> None:
    generation, _ = await _start(tmp_path, "workers", store_url)
    try:
        async with asyncio.TaskGroup() as tg:
            await generation.start(tg)
            await generation.stop()
    finally:
        await _close(generation)
    leases = generation.ctx.leases
    assert isinstance(leases, LocalLeadership | PgLeadership)
    assert {"dispatch-clocks", "dispatch-escalations"} <= set(leases._leases)
    running = {t.get_name(): t for t in generation.workers}
    assert running  # the names above were asked for by the wrapped services, not by this test


async def test_an_intake_instance_finds_places_for_the_chat_bots_without_a_model(tmp_path: Path) -> None:
    """The chat bots ask for the place when the words and GPS give none: intake runs them, so it needs the place
    finder, which needs no embedder (the classifier's own backend is set here; intake must not load it)."""
    port = free_port()
    settings = config_loader.load(None, env={
        "HCMC1022__STORE__PATH": str(tmp_path / "s.sqlite3"), "HCMC1022__STORE__BLOB_DIR": str(tmp_path / "b"),
        "HCMC1022__HTTP__PORT": str(port), "HCMC1022__CLASSIFIER__CACHE_DIR": str(tmp_path / "no-models")})
    store = await open_store(settings)
    generation = Generation(settings, load_directory(settings.data.agencies, settings.data.structure), store,
                            Published(), "intake", LocalLeadership())
    try:
        async with asyncio.TaskGroup() as tg:
            await generation.start(tg)
            await generation.stop()
    finally:
        await store.close()
    published = generation.ctx.published
    assert published.embedder is None and published.classifier_not_ready is None  # no model here
    assert published.place_found is not None
    assert published.place_found("Ổ gà trước số 10 đường Nguyễn Trãi, Quận 5", None, None)
    assert not published.place_found("Chỗ này ngập quá trời luôn", None, None)
