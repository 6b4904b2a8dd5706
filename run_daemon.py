#!/usr/bin/env python3
"""Entry point of the 1022 routing daemon: wires channels and stages together, and the operator CLI.

    run_daemon.py [serve] [--config FILE]
    run_daemon.py check-config FILE
    run_daemon.py route --input IN.jsonl --output OUT.jsonl [--config FILE] [--store PATH]
    run_daemon.py eval --input FILE.jsonl [--cv] [--config FILE]
    run_daemon.py replay [--stage STAGE] [--job ID ...] [--config FILE]
    run_daemon.py backup DEST [--config FILE]
    run_daemon.py review|incident|dispatch|user|report ... [--config FILE]

Only this module knows every component; components meet through ingest (records, store, queue) and config.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import logging
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from aiohttp.abc import AbstractAccessLogger  # noqa: E402

import config.loader as config_loader  # noqa: E402
from config.directory import Directory, load_directory  # noqa: E402
from config.schema import Settings  # noqa: E402
from ingest.app import AppContext, Service  # noqa: E402
from ingest.clock import Clock, parse_iso  # noqa: E402
from ingest.errors import ConfigError  # noqa: E402
from ingest.http import make_app  # noqa: E402
from ingest.migrations import Migration  # noqa: E402
from ingest.store import Store  # noqa: E402

log = logging.getLogger("run_daemon")

# Pipeline components in stage order; each has `<pkg>.schema.MIGRATIONS` and `<pkg>.service.build(ctx)`.
COMPONENTS = ("classifier", "dedupe", "dispatch")
# Served beside the pipeline by the daemon, not in batch routing: operator console, metrics, citizen portal.
SERVICE_COMPONENTS = ("console", "ops", "portal")
PIPELINE_STAGES = ("classify", "dedupe", "dispatch")
ROUTE_STATUS = {"dispatched": "dispatched", "duplicate": "duplicate", "review": "review", "rejected": "rejected",
                "out_of_scope": "out_of_scope", "closed": "dispatched", "routed": "dispatched"}


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # httpx logs full URLs, and Telegram puts the bot token in the URL.
    for noisy in ("httpx", "httpcore", "telegram", "aiosqlite", "mail.log", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# Components that own tables: name recorded in schema_migrations -> module holding `MIGRATIONS`.
MIGRATION_SOURCES = {
    "classifier": "classifier.schema",
    "dedupe": "dedupe.schema",
    "dispatch": "dispatch.schema",
    "console": "console.schema",
    "portal": "portal.schema",
    "ops": "ops.schema",
    "channels.telegram": "channels.telegram",
}


def collect_migrations() -> dict[str, list[Migration]]:
    migrations: dict[str, list[Migration]] = {}
    for component, module in MIGRATION_SOURCES.items():
        if importlib.util.find_spec(module) is not None:
            migrations[component] = importlib.import_module(module).MIGRATIONS
    return migrations


async def open_store(settings: Settings, clock: Clock | None = None, path: Path | None = None) -> Store:
    return await Store.open(path or settings.store.path, settings.store.blob_dir, clock=clock,
                            migrations=collect_migrations())


def make_context(settings: Settings, directory: Directory, store: Store, *, route_mode: bool = False) -> AppContext:
    return AppContext(settings=settings, directory=directory, store=store, clock=store.clock,
                      http=make_app(settings.http.max_body_bytes), route_mode=route_mode)


def build_pipeline(ctx: AppContext, components: Sequence[str] = COMPONENTS) -> list[Service]:
    services: list[Service] = []
    for name in components:
        if importlib.util.find_spec(f"{name}.service") is None:
            log.warning("component %s is not installed: its stage will not run", name)
            continue
        services.extend(importlib.import_module(f"{name}.service").build(ctx))
    return services


# Paths whose next segment is a credential: a reporter's private lookup/receipt token, a case token.
PRIVATE_PATH = re.compile(r"^(/lookup|/receipt|/cases|/api/v1/cases)/[^/]+")


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access log without query strings (they carry secrets, e.g. Messenger's hub.verify_token, and search terms)
    and without the tokens in private paths (whoever reads the log must not be able to open a reporter's page)."""

    def log(self, request: Any, response: Any, time: float) -> None:
        path = PRIVATE_PATH.sub(r"\1/[token]", request.path)
        self.logger.info("%s %s %s %.1fms", request.method, path, response.status, time * 1000)


class Reclaimer:
    """Puts jobs whose lease expired (a worker died) back in the queue, periodically."""

    name = "lease-reclaimer"

    def __init__(self, store: Store, interval: float) -> None:
        self.store, self.interval = store, interval

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.store.reclaim_expired()


# -- serve ---------------------------------------------------------------------------------------
class Generation:
    """One configuration's set of running services: HTTP site, channels, stage workers.

    SIGHUP replaces the generation: the new config is validated first (an invalid one keeps the old
    running), then intake stops, workers release their leases, and the new generation starts on the same
    store. Nothing acknowledged is lost, since everything acknowledged is already committed.
    """

    def __init__(self, settings: Settings, directory: Directory, store: Store, shared: dict[str, Any]) -> None:
        self.ctx = make_context(settings, directory, store)
        self.ctx.shared = shared  # loaded models survive a reload
        self.runner: Any = None
        self.intake: list[asyncio.Task[None]] = []
        self.workers: list[asyncio.Task[None]] = []

    async def start(self, tg: asyncio.TaskGroup) -> None:
        from aiohttp import web

        from channels.registry import build_channels

        settings = self.ctx.settings
        # Channels first: they register the ReplySenders that the dispatch stage's notifier looks up.
        channels = build_channels(self.ctx)
        pipeline = build_pipeline(self.ctx) + build_pipeline(self.ctx, SERVICE_COMPONENTS)
        self.runner = web.AppRunner(self.ctx.http, handle_signals=False, access_log_class=PathOnlyAccessLogger,
                                    shutdown_timeout=settings.queue.drain_seconds / 2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, settings.http.host, settings.http.port, reuse_address=True)
        await site.start()
        self.intake = [tg.create_task(s.run(), name=getattr(s, "name", "channel")) for s in channels]
        self.workers = [tg.create_task(s.run(), name=getattr(s, "name", "stage")) for s in pipeline]
        self.workers.append(tg.create_task(Reclaimer(self.ctx.store, settings.queue.reclaim_interval).run()))
        log.info("listening on http://%s:%s with %d channel service(s) and %d pipeline service(s)",
                 settings.http.host, settings.http.port, len(channels), len(pipeline))

    async def stop(self) -> None:
        for task in self.intake:
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()
        for task in self.workers:
            task.cancel()
        await asyncio.gather(*self.intake, *self.workers, return_exceptions=True)


async def serve(settings: Settings, config_path: Path | None = None, stop: asyncio.Event | None = None) -> None:
    directory = load_directory(settings.data.agencies, settings.data.structure)
    store = await open_store(settings)
    await store.reclaim_expired()  # leases held by a previous process that died
    stop = stop or asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    shared: dict[str, Any] = {}
    try:
        async with asyncio.TaskGroup() as tg:
            generation = Generation(settings, directory, store, shared)
            await generation.start(tg)
            while True:
                waiters = [tg.create_task(stop.wait()), tg.create_task(reload.wait())]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                if stop.is_set():
                    log.info("stopping: intake first, then workers release their leases")
                    await generation.stop()
                    break
                reload.clear()
                try:
                    new_settings = config_loader.load(config_path)
                    new_directory = load_directory(new_settings.data.agencies, new_settings.data.structure)
                except ConfigError as exc:
                    log.error("reload refused, the running configuration stays: %s", exc)
                    continue
                log.info("reloading configuration from %s", config_path or config_loader.DEFAULT_PATH)
                await generation.stop()
                generation = Generation(new_settings, new_directory, store, shared)
                await generation.start(tg)
    finally:
        await store.close()
        log.info("stopped")


# -- route ---------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


async def run_until_drained(store: Store, services: list[Service], stages: Sequence[str] = PIPELINE_STAGES,
                            timeout: float = 24 * 3600) -> None:
    """Run stage workers until no job of `stages` is waiting or leased (batch mode)."""
    marks = ",".join("?" * len(stages))
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(s.run()) for s in services]
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            row = await store.fetchone(
                f"SELECT COUNT(*) AS n FROM jobs WHERE stage IN ({marks}) AND state IN ('ready','leased')", stages)
            if row is not None and row["n"] == 0:
                break
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()


async def route(settings: Settings, input_path: Path, output_path: Path, store_path: Path | None) -> int:
    records = read_jsonl(input_path)
    from channels.jsonl_parse import parse_line

    directory = load_directory(settings.data.agencies, settings.data.structure)
    with tempfile.TemporaryDirectory(prefix="route-") as tmp:
        path = store_path or Path(tmp) / "route.sqlite3"
        settings = settings.model_copy(update={"store": settings.store.model_copy(
            update={"path": path, "blob_dir": Path(tmp) / "blobs" if store_path is None else settings.store.blob_dir})})
        store = await open_store(settings, path=path)
        try:
            ctx = make_context(settings, directory, store, route_mode=True)
            messages = [parse_line(r) for r in records]
            # Submitted in received_at order: incident matching must see every earlier report first.
            batch = sorted(((m, json.dumps(r, ensure_ascii=False).encode(), "application/json")
                            for m, r in zip(messages, records)), key=lambda item: parse_iso(item[0].received_at))
            await store.submit_batch(batch)
            await run_until_drained(store, build_pipeline(ctx))
            rows = await store.fetchall(
                "SELECT external_id, status, topic, category, agency, district, confidence, incident_id, classification"
                " FROM reports"
                " WHERE channel_instance='batch'")
        finally:
            await store.close()
    by_id = {r["external_id"]: r for r in rows}
    with open(output_path, "w", encoding="utf-8") as out:
        for message in messages:
            row = by_id[message.external_id]
            out.write(json.dumps({
                "id": message.external_id,
                "status": ROUTE_STATUS.get(row["status"], "review"),
                "topic": row["topic"], "category": row["category"], "agency": row["agency"],
                "district": row["district"],
                "confidence": round(row["confidence"], 4) if row["confidence"] is not None else None,
                "incident": row["incident_id"],
                "ward": route_ward(row["classification"]),
            }, ensure_ascii=False) + "\n")
    return 0


def route_ward(classification: str | None) -> str | None:
    """The new unit's slug on the 2025 map (hcmc-2025-wards.json); None when unknown and always on the 2023 map,
    so the key set of a route line is the same under both structures."""
    if not classification:
        return None
    unit = json.loads(classification).get("place", {}).get("unit")
    return unit if isinstance(unit, str) else None


# -- CLI -----------------------------------------------------------------------------------------
def load_settings(path: str | None) -> Settings:
    return config_loader.load(Path(path) if path else None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="run_daemon.py", description="1022 routing daemon")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("serve", help="run the daemon (the default)")
    p.add_argument("--config")
    p = sub.add_parser("check-config", help="validate a config file without starting")
    p.add_argument("file")
    p = sub.add_parser("route", help="route a JSONL batch of reports (stable output format)")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--config")
    p.add_argument("--store", type=Path)
    p = sub.add_parser("eval", help="measure routing and incident grouping against `expected` fields")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--cv", action="store_true", help="5-fold cross-validation of the classifier on this set")
    p.add_argument("--config")
    p = sub.add_parser("backup", help="online, consistent copy of the store while the daemon runs")
    p.add_argument("dest", type=Path)
    p.add_argument("--config")
    p = sub.add_parser("replay", help="put dead-lettered jobs back in their queue")
    p.add_argument("--stage")
    p.add_argument("--job", type=int, action="append", default=[])
    p.add_argument("--config")
    for name in ("review", "incident", "dispatch", "user", "report"):
        p = sub.add_parser(name, help=f"{name} operations (see `{name} --help`)")
        p.add_argument("--config")
        p.add_argument("rest", nargs=argparse.REMAINDER)

    if not argv or argv[0].startswith("-"):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            # The directory the file names (data.agencies), not the bundled one: serve would load that one.
            checked = load_settings(args.file)
            load_directory(checked.data.agencies, checked.data.structure)
            # Endpoints whose names resolve to private addresses: refused at every attempt, so refused now.
            from config.dispatch import dispatch_settings
            from dispatch.ssrf import target_problems
            problems = target_problems(dispatch_settings(checked))
            if problems:
                raise ConfigError(f"{args.file}: {len(problems)} problem(s):\n"
                                  + "\n".join(f"  - {p}" for p in problems))
            print(f"{args.file}: OK")
            return 0
        settings = load_settings(getattr(args, "config", None))
        setup_logging(settings.logging.level)
        if args.command == "serve":
            asyncio.run(serve(settings, Path(args.config) if args.config else None))
            return 0
        if args.command == "route":
            return asyncio.run(route(settings, args.input, args.output, args.store))
        if args.command == "eval":
            from classifier.evaluate import evaluate
            print(evaluate(args.input, settings, cv=True if args.cv else None))
            return 0
        if args.command == "backup":
            return backup(settings, args.dest)
        if args.command == "replay":
            return asyncio.run(_replay(settings, args.stage, args.job))
        if args.command in ("review", "incident", "dispatch", "user", "report"):
            return asyncio.run(_component_cli(settings, args.command, args.rest))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 1


def backup(settings: Settings, dest: Path) -> int:
    """SQLite's online backup API: a consistent snapshot even while the daemon writes."""
    import sqlite3

    if dest.exists():
        print(f"{dest} exists: choose a new file", file=sys.stderr)
        return 1
    source = sqlite3.connect(f"file:{settings.store.path}?mode=ro", uri=True)
    target = sqlite3.connect(dest)
    try:
        with target:
            source.backup(target, pages=4096)
        check = target.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        target.close()
        source.close()
    print(f"backed up {settings.store.path} to {dest} (integrity: {check}); copy {settings.store.blob_dir} too")
    return 0 if check == "ok" else 1


async def _replay(settings: Settings, stage: str | None, jobs: list[int]) -> int:
    store = await open_store(settings)
    try:
        count = await store.replay_dead(stage, jobs)
    finally:
        await store.close()
    print(f"replayed {count} dead-lettered job(s)")
    return 0


async def _component_cli(settings: Settings, command: str, rest: list[str]) -> int:
    module, func = {"review": ("classifier.review", "review_cli"), "incident": ("dedupe.operations", "incident_cli"),
                    "dispatch": ("dispatch.cli", "dispatch_cli"), "user": ("console.service", "user_cli"),
                    "report": ("ops.service", "report_cli")}[command]
    store = await open_store(settings)
    try:
        result: int = await getattr(importlib.import_module(module), func)(store, settings, rest)
        return result
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(main())
