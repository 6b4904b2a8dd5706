#!/usr/bin/env python3
"""Entry point of the 1022 routing daemon (`run_daemon.py` or the `hcmc1022` console script): wires channels and
stages together, and the operator CLI. `--config FILE` goes before or after the command; `COMMAND --help`
never opens the store.

    run_daemon.py [serve] [--config FILE]
    run_daemon.py check-config [FILE]
    run_daemon.py route --input IN.jsonl --output OUT.jsonl [--config FILE] [--store PATH]
    run_daemon.py eval --input FILE.jsonl [--cv] [--config FILE]
    run_daemon.py replay [--kind KIND] [--job ID ...] [--subject PREFIX] [--list] [--config FILE]
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
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("HCMC1022_WORKERS_PARENT"):
    # The workers process `serve` starts (ingest/workers_process.py), before its imports: a Ctrl-C reaching the
    # process group is the parent's to act on, and a reload's SIGHUP must not kill it before it can reload.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

from aiohttp.abc import AbstractAccessLogger  # noqa: E402

import config.loader as config_loader  # noqa: E402
from config.directory import Directory, load_directory  # noqa: E402
from config.schema import Settings  # noqa: E402
from ingest.app import AppContext, Published, Service  # noqa: E402
from ingest.clock import Clock, parse_iso  # noqa: E402
from ingest.errors import ConfigError, StorageError  # noqa: E402
from ingest.faults import storage_reason  # noqa: E402
from ingest.event_loop import run as run_loop  # noqa: E402
from ingest import heap  # noqa: E402
from ingest.http import loggable_path, make_app  # noqa: E402
from ingest.leases import Lease, Leadership, LocalLeadership, PgLeadership, run_while_held  # noqa: E402
from ingest.limits import GuardedSite  # noqa: E402
from ingest.migrations import Migration  # noqa: E402
from ingest.degraded import open_or_serve_degraded  # noqa: E402
from ingest.progress import progress_bar  # noqa: E402
from ingest.reclaim import Reclaimer  # noqa: E402
from ingest.store import WRITE_GAP, QuarantineLimits, Store  # noqa: E402
from ingest.supervise import supervised  # noqa: E402
from ingest.workers_process import WorkersProcess, bind_to_parent, is_workers_child  # noqa: E402
from config.ops import ops_settings  # noqa: E402

log = logging.getLogger("run_daemon")
STOP_GRACE_SECONDS = 20.0

PIPELINE_STAGES = ("classify", "dedupe", "dispatch")
ROUTE_STATUS = {"dispatched": "dispatched", "duplicate": "duplicate", "review": "review", "rejected": "rejected",
                "out_of_scope": "out_of_scope", "closed": "dispatched", "routed": "dispatched"}


def setup_logging(level: str, fmt: str = "text", journald: str = "auto") -> None:
    from ingest.logs import make_handler

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(fmt, None if journald == "auto" else journald == "on"))
    root.setLevel(level)
    # httpx logs full URLs, and Telegram puts the bot token in the URL. faiss's loader reports every CPU build it
    # could not load at INFO, which reads like a failure on a healthy start.
    for noisy in ("httpx", "httpcore", "telegram", "aiosqlite", "mail.log", "sentence_transformers", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass(frozen=True)
class Command:
    """An operator command a component owns: `module` has `add_arguments(parser)` and
    `async run_cli(store, settings, args)`. It is imported only when its command is used, so `--help` and the
    other commands do not pay for loading every component."""

    name: str
    module: str
    help: str


@dataclass(frozen=True)
class Component:
    """One entry of the registry the CLI, the migrations and the service start all read.

    role: "intake" (built first: channels register the reply senders the stages look up; stopped first),
    "stage" (a pipeline stage: also run by batch routing), "view" (served beside the pipeline by the daemon).
    """

    name: str  # the name its migrations are recorded under in schema_migrations
    role: str = "view"
    migrations: str | None = None  # module holding `MIGRATIONS`
    builder: str | None = None  # "module:function" taking the AppContext, returning its services
    commands: tuple[Command, ...] = ()
    # Module that declares what its queue kinds' death and replay mean (ingest/queue.py register_kind): imported
    # before dead letters are replayed, wherever that happens.
    job_kinds: tuple[str, ...] = ()
    # What an intake-only instance builds of a stage ("module:function" taking the AppContext): the HTTP routes and
    # shared services intake serves (the agency API, the case book the portal uses, the chat bots' place finder).
    # Its services are dropped: the stage's workers are the workers' instance's.
    intake_builder: str | None = None
    # A view a workers-only instance builds too (ops: its metrics listener and the leadership report sender); the
    # others only register routes, which a process without a site never serves.
    serves_workers: bool = False


# Every component, pipeline stages in stage order.
COMPONENTS: tuple[Component, ...] = (
    Component("channels", "intake", builder="channels.registry:build_channels"),
    Component("channels.telegram", "intake", migrations="channels.telegram"),
    Component("channels.messenger", "intake", migrations="channels.messenger"),
    Component("classifier", "stage", "classifier.schema", "classifier.service:build", (
        Command("review", "classifier.review.decisions",
                "the review queue of reports the classifier was not sure of"),),
        intake_builder="classifier.intake:build_places"),
    Component("dedupe", "stage", "dedupe.schema", "dedupe.service:build", (
        Command("incident", "dedupe.operations", "incidents: list, show, merge, split"),)),
    Component("dispatch", "stage", "dispatch.schema", "dispatch.service:build", (
        Command("dispatch", "dispatch.cli", "cases past their deadline, agency deliveries, replaying dead ones"),),
        intake_builder="dispatch.service:build", job_kinds=("dispatch.delivery", "dispatch.clocks")),
    Component("console", "view", "console.schema", "console.service:build", (
        Command("user", "console.service", "console logins: add, list, disable"),)),
    Component("ops", "view", "ops.schema", "ops.service:build", (
        Command("report", "ops.service", "the regulation's weekly and quarterly reports"),), serves_workers=True),
    Component("portal", "view", "portal.schema", "portal.service:build"),
)


def component_names(role: str) -> tuple[str, ...]:
    return tuple(c.name for c in COMPONENTS if c.role == role and c.builder)


STAGE_COMPONENTS = component_names("stage")
VIEW_COMPONENTS = component_names("view")
# `serve --role`: intake (HTTP and channels: never starved by the embedder), workers (the stages), or all.
ROLES = ("all", "intake", "workers")
COMMANDS = {command.name: command for component in COMPONENTS for command in component.commands}


def collect_migrations() -> dict[str, list[Migration]]:
    migrations: dict[str, list[Migration]] = {}
    for component in COMPONENTS:
        if component.migrations and importlib.util.find_spec(component.migrations) is not None:
            migrations[component.name] = importlib.import_module(component.migrations).MIGRATIONS
    return migrations


def collect_job_kinds() -> None:
    """Import the modules that register their queue kinds' hooks (a replayed delivery re-enables its endpoint)."""
    for component in COMPONENTS:
        for module in component.job_kinds:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)


async def open_store(settings: Settings, clock: Clock | None = None, path: Path | None = None) -> Store:
    """The configured store: PostgreSQL when `[store] url` is set (several instances share it), else the SQLite
    file (an explicit `path`, as batch routing gives, is always SQLite)."""
    cfg = settings.store
    store: Any
    if cfg.url is not None and path is None:
        from ingest.pgstore import PgStore

        store = await PgStore.open(cfg.url.get_secret_value(), cfg.blob_dir, clock, collect_migrations(),
                                   blobs_in_database=cfg.blobs_in_database, pool_size=cfg.pool_size)
    else:
        store = await Store.open(path or cfg.path, cfg.blob_dir, clock=clock, migrations=collect_migrations())
    store.quarantine_limits = QuarantineLimits(head_bytes=cfg.quarantine_head_bytes,
                                               max_bytes=cfg.quarantine_max_bytes, max_rows=cfg.quarantine_max_rows)
    return store


def store_fault_reason(settings: Settings) -> Callable[[BaseException], str | None]:
    """How the configured backend says it cannot be used now (waited for) rather than misconfigured (raised): a
    PostgreSQL server still starting or out of connections is an outage, not a reason to exit."""
    if settings.store.url is None:
        return storage_reason
    import asyncpg

    from ingest.pgstore import storage_reason as pg_reason

    def reason(exc: BaseException) -> str | None:
        # asyncpg's refusal of the URL itself (sslmode=bogus) is an InterfaceError, and a missing sslrootcert a
        # FileNotFoundError: both "unreachable" to the running store, but at start they are a config to fix.
        if isinstance(exc, (asyncpg.ClientConfigurationError, FileNotFoundError, PermissionError)):
            return None
        return pg_reason(exc)

    return reason


def make_context(settings: Settings, directory: Directory, store: Store, *, route_mode: bool = False,
                 role: str = "all") -> AppContext:
    return AppContext(settings=settings, directory=directory, store=store, clock=store.clock,
                      http=make_app(settings.http.max_body_bytes, settings.http.limits), route_mode=route_mode,
                      role=role)


def build_components(ctx: AppContext, names: Sequence[str] = STAGE_COMPONENTS, *,
                     intake_only: bool = False) -> list[Service]:
    """The services of the named components, in registry order; one that is not installed is skipped.
    `intake_only`: each one's `intake_builder` instead (none: not built)."""
    services: list[Service] = []
    for component in COMPONENTS:
        builder = component.intake_builder if intake_only else component.builder
        if component.name not in names or builder is None:
            continue
        module, _, function = builder.partition(":")
        if importlib.util.find_spec(module) is None:
            log.warning("component %s is not installed: it will not run", component.name)
            continue
        services.extend(getattr(importlib.import_module(module), function)(ctx))
    return services


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access log without query strings (they carry secrets, e.g. Messenger's hub.verify_token, and search terms)
    and without the tokens in private paths (whoever reads the log must not be able to open a reporter's page)."""

    def log(self, request: Any, response: Any, time: float) -> None:
        path = loggable_path(request.path)
        self.logger.info("%s %s %s %.1fms", request.method, path, response.status, time * 1000)


# -- serve ---------------------------------------------------------------------------------------
class Singleton:
    """A service that must run on one instance only (its `singleton` names the lease): runs while this instance
    holds the lease, is cancelled the moment it is lost, and starts again when the lease comes back."""

    def __init__(self, service: Service, lease: Lease) -> None:
        self.service = service
        self.lease = lease
        self.name = getattr(service, "name", lease.name)

    async def run(self) -> None:
        await run_while_held(self.lease, self.service.run)


def singleton(service: Service, leases: Leadership) -> Service:
    name = getattr(service, "singleton", None)
    return Singleton(service, leases.lease(name)) if name else service


def make_leadership(settings: Settings) -> Leadership:
    """PostgreSQL: advisory-lock leases shared by every instance of the database. SQLite: one instance, all held."""
    if settings.store.url is not None:
        return PgLeadership(settings.store.url.get_secret_value())
    return LocalLeadership()


class Generation:
    """One configuration's set of running services: HTTP site, channels, stage workers.

    SIGHUP replaces the generation: the new config is validated first (an invalid one keeps the old
    running), then intake stops, workers release their leases, and the new generation starts on the same
    store. Nothing acknowledged is lost, since everything acknowledged is already committed.
    """

    def __init__(self, settings: Settings, directory: Directory, store: Store, published: Published,
                 role: str = "all", leases: Leadership | None = None) -> None:
        self.ctx = make_context(settings, directory, store, role=role)
        self.ctx.published = published  # loaded models survive a reload
        if leases is not None:
            self.ctx.leases = leases
        self.role = role
        self.runner: Any = None
        self.intake: list[asyncio.Task[None]] = []
        self.workers: list[asyncio.Task[None]] = []

    async def start(self, tg: asyncio.TaskGroup) -> None:
        from aiohttp import web

        settings = self.ctx.settings
        # Channels first: they register the ReplySenders that the dispatch stage's notifier looks up (a workers'
        # instance builds them for that, and runs none of them).
        channels = build_components(self.ctx, component_names("intake"))
        if self.role == "intake":
            # No embedder, no incident index here: those are the workers'. Stages that serve intake are built
            # for their routes, their workers dropped.
            build_components(self.ctx, STAGE_COMPONENTS, intake_only=True)
            pipeline = build_components(self.ctx, VIEW_COMPONENTS)
        elif self.role == "workers":
            pipeline = build_components(self.ctx, STAGE_COMPONENTS + tuple(
                c.name for c in COMPONENTS if c.role == "view" and c.serves_workers))
        else:
            pipeline = build_components(self.ctx, STAGE_COMPONENTS + VIEW_COMPONENTS)
        if self.role == "workers":
            channels = []
        channels = [singleton(s, self.ctx.leases) for s in channels]
        pipeline = [singleton(s, self.ctx.leases) for s in pipeline]
        reclaimer = Reclaimer(self.ctx.store, settings.queue.reclaim_interval)
        if self.role != "intake":
            pipeline.append(reclaimer)
        if self.role == "workers":
            # No public HTTP: the intake instances serve it. Workers are watched through their own metrics listener
            # (`[ops] metrics_listen`) and systemd.
            self.workers = [tg.create_task(supervised(s, getattr(s, "name", "stage")), name=getattr(s, "name", "stage"))
                            for s in pipeline]
            log.info("workers: %d pipeline service(s), no HTTP site", len(pipeline))
            return
        self.runner = web.AppRunner(self.ctx.http, handle_signals=False, access_log_class=PathOnlyAccessLogger,
                                    shutdown_timeout=settings.queue.drain_seconds / 2,
                                    keepalive_timeout=settings.http.limits.keepalive_timeout_seconds)
        await self.runner.setup()
        limits = settings.http.limits
        site = GuardedSite(self.runner, settings.http.host, settings.http.port, reuse_address=True,
                           max_connections=limits.max_connections, header_timeout=limits.header_timeout_seconds,
                           max_per_ip=limits.max_connections_per_ip)
        await site.start()
        # Supervised: a storage outage or a bug in one service restarts that service after a backoff; it never
        # ends the process (the TaskGroup would cancel every other service with it).
        self.intake = [tg.create_task(supervised(s, getattr(s, "name", "channel")), name=getattr(s, "name", "channel"))
                       for s in channels]
        self.workers = [tg.create_task(supervised(s, getattr(s, "name", "stage")), name=getattr(s, "name", "stage"))
                        for s in pipeline]
        log.info("listening on http://%s:%s with %d channel service(s) and %d pipeline service(s) (role %s)",
                 settings.http.host, settings.http.port, len(channels), len(pipeline), self.role)

    async def stop(self) -> None:
        for task in self.intake:
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()
        for task in self.workers:
            task.cancel()
        tasks = [*self.intake, *self.workers]
        # Bounded: a task that does not end within the grace time (one stuck in a call that ignores cancellation)
        # is named in the log and left behind, so a stop or a reload never hangs on it.
        _, stuck = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS) if tasks else (set(), set())
        if stuck:
            log.error("stop: %d task(s) did not end within %.0f s: %s", len(stuck), STOP_GRACE_SECONDS,
                      ", ".join(sorted(t.get_name() for t in stuck)))
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a task's own failure was already logged by its supervisor


async def serve(settings: Settings, config_path: Path | None = None, stop: asyncio.Event | None = None,
                role: str = "all") -> None:
    """The daemon. In role "all" with `[serve] workers_process` (the default), intake runs here and the stages in a
    child process (ingest/workers_process.py); a workers process started so is bound to its parent first."""
    child = is_workers_child()
    bind_to_parent()
    directory = load_directory(settings.data.agencies, settings.data.structure)
    stop = stop or asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM,) if child else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    # A store that cannot even be opened (a full disk at start) is waited for, serving degraded meanwhile (a
    # workers process has no site of its own: intake serves the degraded answers).
    store = await open_or_serve_degraded(lambda: open_store(settings), settings.http.host, settings.http.port, stop,
                                         serve_http=role != "workers", reason=store_fault_reason(settings))
    if store is None:
        return  # stopped before the store could be opened
    children = None
    if role == "all" and settings.serve.workers_process:
        # Started only now: this process has migrated the store, so the child opens it as it is.
        children = WorkersProcess.for_serve(
            config_loader.read(config_path), store_overrides(settings), nice=settings.serve.workers_nice,
            stop_seconds=STOP_GRACE_SECONDS - 2, metrics_token=metrics_token(settings))
        role = "intake"
    if role == "workers" and isinstance(store, Store):
        store.write_gap = WRITE_GAP  # intake commits to the same file from its own process (ingest/store.py)
    try:
        await store.reclaim_expired()  # leases held by a previous process that died
    except StorageError:
        # Opened but not writable (full disk): serve degraded (/readyz 503, intake 503/451); the Reclaimer retries.
        log.error("store not writable at start: serving degraded until it is")
    published = Published()
    published.workers_process = children
    leases = make_leadership(settings)
    await leases.start()
    try:
        async with asyncio.TaskGroup() as tg:
            generation = Generation(settings, directory, store, published, role, leases)
            await generation.start(tg)
            heap.freeze()  # everything started is long-lived: out of the collector's full passes (ingest/heap.py)
            refreeze = tg.create_task(heap.freeze_when_ready(published.classifier_not_ready), name="heap-freeze")
            workers = tg.create_task(children.run(), name=children.name) if children is not None else None
            while True:
                waiters = [tg.create_task(stop.wait()), tg.create_task(reload.wait())]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                if stop.is_set():
                    refreeze.cancel()
                    log.info("stopping: intake first, then workers release their leases")
                    await generation.stop()
                    if workers is not None:
                        workers.cancel()  # SIGTERM to the child, which drains and gives back its leases
                        await asyncio.wait([workers])
                    break
                reload.clear()
                try:
                    text = config_loader.read(config_path)
                    new_settings = config_loader.load_text(text, config_path)
                    new_directory = load_directory(new_settings.data.agencies, new_settings.data.structure)
                except ConfigError as exc:
                    log.error("reload refused, the running configuration stays: %s", exc)
                    continue
                if children is not None:  # the same text, validated here: the workers reload it too
                    children.write_config(text)
                    children.set_token(metrics_token(new_settings))
                    children.signal(signal.SIGHUP)
                log.info("reloading configuration from %s", config_path or config_loader.DEFAULT_PATH)
                await generation.stop()
                generation = Generation(new_settings, new_directory, store, published, role, leases)
                await generation.start(tg)
                heap.freeze()  # the old generation's objects are garbage now
    finally:
        await leases.close()  # frees this instance's leases for the others at once
        await store.close()
        if children is not None:
            children.close()
        log.info("stopped")


def store_overrides(settings: Settings) -> dict[str, str]:
    """The environment overrides that make another process open the store this one has open."""
    cfg = settings.store
    out = {"HCMC1022__STORE__PATH": str(cfg.path), "HCMC1022__STORE__BLOB_DIR": str(cfg.blob_dir)}
    if cfg.url is not None:
        out["HCMC1022__STORE__URL"] = cfg.url.get_secret_value()
    return out


def metrics_token(settings: Settings) -> str | None:
    token = ops_settings(settings).metrics_token
    return token.get_secret_value() if token is not None else None


# -- first run -----------------------------------------------------------------------------------
def welcome(settings: Settings) -> str:
    """What a person starting the daemon for the first time needs: where everything is."""
    base = f"http://{settings.http.host}:{settings.http.port}"
    return "\n".join([
        f"1022 routing daemon {version()} on {base}",
        f"  citizen portal:                {base}/",
        f"  console (operators, agencies): {base}/console",
        f"  public list and map:           {base}/public",
        f"  Open311 app API:               {base}/open311/v2/services.json, discovery {base}/open311/discovery.json",
        f"  agency API:                    {base}/api/v1/agency/cases (OpenAPI: {base}/openapi.json)",
        f"  health:                        {base}/healthz, {base}/readyz; metrics {base}/metrics",
        *(f"  channel {c.name} ({c.kind}):{' ' * max(1, 20 - len(c.name) - len(c.kind))}"
          + (f"files into {c.options().get('folder')}/new/" if c.kind == "transcripts" else "enabled")
          for c in settings.channels if c.enabled and c.kind != "open311"),
    ])


async def ensure_first_admin(settings: Settings, config_path: str | None) -> None:
    """With no console login yet: ask for the first admin when a person is at the terminal, else say how."""
    from console import auth

    store = await open_store(settings)
    try:
        row = await store.fetchone("SELECT COUNT(*) AS n FROM users")
        if row is None or row["n"] > 0:
            return
        if sys.stdin.isatty():
            from console.service import ask_password

            print("No console login exists yet: create the first administrator (Enter to skip).", file=sys.stderr)
            name = input("administrator name [admin]: ").strip() or "admin"
            password = ask_password(name)
            if password:
                await auth.create_user(store, name, "admin", password)
                print(f"administrator {name} created: log in at /console", file=sys.stderr)
                return
        config = f" --config {config_path}" if config_path else ""
        print("No console login exists yet. Create the first administrator with:\n"
              f"  .venv/bin/python run_daemon.py user add admin --role admin{config}\n"
              "(it asks for the password in a terminal; or give --password-env VAR)", file=sys.stderr)
    finally:
        await store.close()


# -- route ---------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


async def run_until_drained(store: Store, services: list[Service], stages: Sequence[str] = PIPELINE_STAGES,
                            timeout: float = 24 * 3600, bar: Any = None) -> None:
    """Run stage workers until no job of `stages` is waiting or leased (batch mode). `bar` (a progress bar
    whose total is the number of reports) is moved to the number of reports with no job left."""
    marks = ",".join("?" * len(stages))
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(s.run()) for s in services]
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            row = await store.fetchone(
                f"SELECT COUNT(*) AS n, COUNT(DISTINCT report_id) AS reports FROM jobs"
                f" WHERE stage IN ({marks}) AND state IN ('ready','leased')", stages)
            if row is not None and bar is not None and not bar.disable:
                bar.update(max(0, bar.total - row["reports"] - bar.n))
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
            with progress_bar(len(batch), "routing", unit="report") as bar:
                await run_until_drained(store, build_components(ctx), bar=bar)
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
EXIT_CODES = """exit codes:
  0  done
  1  the operation was refused or failed (unknown id, a decision already taken, a failed integrity check)
  2  usage or configuration error (bad arguments, invalid config file, unknown agency)
  3  the store (or an input or output file) could not be opened or written
  130  interrupted (Ctrl-C)"""
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

def version() -> str:
    """The installed package's version; from pyproject.toml when run from a checkout that is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("hcmc1022")
    except PackageNotFoundError:
        import tomllib

        with open(Path(__file__).resolve().parent / "pyproject.toml", "rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The command word in argv (skipping `--config FILE`), before argparse runs: only its component is loaded."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _complete_tree(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """`--config FILE` and the exit codes on every parser of the tree, so `--config` may stand before or after
    any (sub)command word. Below the top its default is SUPPRESS: a value given before the command stays."""
    parser.add_argument("--config", metavar="FILE", default=None if top else argparse.SUPPRESS,
                        help="configuration file (default: config/default.toml)")
    parser.epilog = parser.epilog or EXIT_CODES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _complete_tree(child, top=False)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The one parser of the CLI. `command`: the component command whose own arguments to load."""
    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "hcmc1022",
                                     description="1022 routing daemon")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help)

    p = add("serve", "run the daemon (the default command)")
    p.add_argument("--first-run", action="store_true",
                   help="print the URLs, and create the first console administrator if there is none (asks when "
                        "run in a terminal, else prints the command); `make run` does this")
    p.add_argument("--role", choices=ROLES, default="all",
                   help="intake: HTTP and channels only; workers: the pipeline stages only (no HTTP site); "
                        "all: both in one process (default). Run intake and workers as two processes, on one host "
                        "or several, on one PostgreSQL store (README: deployment)")
    p = add("check-config", "validate a config file without starting (exit 2 and every problem if invalid)")
    p.add_argument("file", nargs="?", help="the file to check (default: --config, else the embedded default)")
    p = add("route", "route a JSONL batch of reports (stable output format)")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--store", type=Path, help="keep the routed store here (default: a temporary one)")
    p = add("eval", "measure routing and incident grouping against `expected` fields")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--cv", action="store_true", help="5-fold cross-validation of the classifier on this set")
    p = add("backup", "online, consistent copy of the store while the daemon runs")
    p.add_argument("dest", type=Path)
    p = add("migrate-store", "copy the SQLite store (every table, and the blobs) into an empty PostgreSQL database,"
                             " verified by row counts and checksums; stop the daemon first")
    p.add_argument("--to", required=True, metavar="postgresql://USER@HOST:PORT/DB",
                   help="the target database (or env:NAME to read the URL from the environment)")
    p.add_argument("--blobs", choices=("database", "directory"), default="database",
                   help="database: blobs copied into PostgreSQL (default); directory: left in blob_dir, which "
                        "the instances then share (copy it yourself)")
    p = add("replay", "put dead-lettered jobs of every kind back in their queue: stage jobs, agency deliveries,"
                      " Telegram messages, email replies for dispatch")
    p.add_argument("--kind", "--stage", dest="stage", metavar="KIND",
                   help="only this kind: classify, dedupe, dispatch, notify, deliver, agency_email_reply,"
                        " reporter_follow_up, telegram_send:CHANNEL, messenger_media:CHANNEL")
    p.add_argument("--job", type=int, action="append", default=[], help="only this job id (repeatable)")
    p.add_argument("--subject", metavar="PREFIX",
                   help="only jobs of this subject: an endpoint (sawaco/main), a bot's chat (as --list shows it:"
                        " bot/chat-…); ending with '/', every subject under it (sawaco/: each endpoint of an agency)")
    p.add_argument("--list", action="store_true", help="list the dead letters instead of replaying them")
    for name, owned in COMMANDS.items():
        p = add(name, owned.help)
        if name == command:
            importlib.import_module(owned.module).add_arguments(p)
    _complete_tree(parser)
    return parser


def load_settings(path: str | None) -> Settings:
    return config_loader.load(Path(path) if path else None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen_command(argv)
    if command is None and not {"-h", "--help", "--version"} & set(argv):
        argv, command = ["serve", *argv], "serve"
    args = build_parser(command).parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def check_config(args: argparse.Namespace) -> int:
    # The directory the file names (data.agencies), not the bundled one: serve would load that one.
    path = args.file or args.config
    checked = load_settings(path)
    load_directory(checked.data.agencies, checked.data.structure)
    # Endpoints whose names resolve to private addresses: refused at every attempt, so refused now.
    from config.dispatch import dispatch_settings
    from dispatch.ssrf import target_problems
    problems = target_problems(dispatch_settings(checked))
    if problems:
        raise ConfigError(f"{path or config_loader.DEFAULT_PATH}: {len(problems)} problem(s):\n"
                          + "\n".join(f"  - {p}" for p in problems))
    print(f"{path or config_loader.DEFAULT_PATH}: OK")
    return EXIT_OK


def _serve_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.first_run:
        print(welcome(settings), file=sys.stderr)
        run_loop(ensure_first_admin(settings, args.config))
    run_loop(serve(settings, Path(args.config) if args.config else None, role=args.role))
    return EXIT_OK


def _eval_command(settings: Settings, args: argparse.Namespace) -> int:
    from classifier.training.evaluate import evaluate
    print(evaluate(args.input, settings, cv=True if args.cv else None))
    return EXIT_OK


# The daemon's own commands that run on loaded settings; components' commands are in COMMANDS.
BUILTIN_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "serve": _serve_command,
    "route": lambda settings, args: run_loop(route(settings, args.input, args.output, args.store)),
    "eval": _eval_command,
    "backup": lambda settings, args: backup(settings, args.dest),
    "replay": lambda settings, args: run_loop(_replay(settings, args.stage, args.job, args.list, args.subject)),
    "migrate-store": lambda settings, args: run_loop(migrate_store(settings, args.to, args.blobs)),
}


async def migrate_store(settings: Settings, to: str, blobs: str) -> int:
    """`migrate-store`: the SQLite store at [store] path into PostgreSQL, then a verification table."""
    from ingest.move_store import MoveError, move_store

    url = os.environ.get(to[4:], "") if to.startswith("env:") else to
    if not url.startswith(("postgresql://", "postgres://")):
        print(f"--to must be a PostgreSQL URL (postgresql://USER@HOST:PORT/DB){' in ' + to if to.startswith('env:') else ''}",
              file=sys.stderr)
        return EXIT_USAGE
    if not settings.store.path.exists():
        print(f"no SQLite store at {settings.store.path}", file=sys.stderr)
        return EXIT_USAGE
    # The source first reaches the current schema, as the daemon would bring it at start.
    source = await Store.open(settings.store.path, settings.store.blob_dir, migrations=collect_migrations())
    await source.close()
    try:
        tables, blob_result = await move_store(settings.store.path, settings.store.blob_dir, url, collect_migrations(),
                                               blobs_in_database=blobs == "database",
                                               progress=lambda line: print(line, file=sys.stderr))
    except MoveError as exc:
        print(f"migrate-store: {exc}", file=sys.stderr)
        return EXIT_USAGE
    width = max(len(t.table) for t in tables)
    print(f"{'table':<{width}}  {'source':>9}  {'target':>9}  checksum")
    for t in tables:
        verdict = "same" if t.ok else f"DIFFERENT ({t.altered_values} values altered)" if t.altered_values else "DIFFERENT"
        print(f"{t.table:<{width}}  {t.source_rows:>9}  {t.target_rows:>9}  {verdict} {t.target_checksum[:16]}")
    print(f"blobs: {blob_result.listed} listed, {blob_result.copied} copied into the database, "
          f"{len(blob_result.missing)} missing, {len(blob_result.corrupt)} corrupt"
          + ("" if blobs == "database" else f" (left in {settings.store.blob_dir}: copy it to the shared directory)"))
    ok = all(t.ok for t in tables) and blob_result.ok
    print("verified: every row and blob copied" if ok else "NOT verified: see the lines above", file=sys.stderr)
    return EXIT_OK if ok else EXIT_STORAGE


def _run(args: argparse.Namespace) -> int:
    import sqlite3

    import asyncpg

    if args.command == "check-config":
        return check_config(args)
    settings = load_settings(args.config)
    setup_logging(settings.logging.level, settings.logging.format, settings.logging.journald)
    try:
        if args.command in BUILTIN_COMMANDS:
            return BUILTIN_COMMANDS[args.command](settings, args)
        return run_loop(_component_cli(settings, args))
    except (StorageError, sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # PostgreSQL's messages name the fault, never the URL's password.
        print(f"storage error: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except OSError as exc:  # a store directory, input or output file that cannot be opened or written
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_STORAGE


def backup(settings: Settings, dest: Path) -> int:
    """SQLite's online backup API: a consistent snapshot even while the daemon writes."""
    import sqlite3

    if settings.store.url is not None:
        print("the store is PostgreSQL: back it up with PostgreSQL's own tools (pg_basebackup and WAL archiving,"
              " or pg_dump; README: deployment)", file=sys.stderr)
        return EXIT_USAGE
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


async def _replay(settings: Settings, kind: str | None, jobs: list[int], list_only: bool = False,
                  subject: str | None = None) -> int:
    collect_job_kinds()
    store = await open_store(settings)
    try:
        if list_only:
            wanted = set(jobs)
            letters = [d for d in await store.queue.dead_letters(kind, limit=10_000, subject_prefix=subject)
                       if not wanted or d.id in wanted]
            for d in letters:
                about = f"report {d.report_id}" if d.report_id is not None else (d.subject or "")
                print(f"{d.id}\t{d.kind}\t{about}\tattempts={d.attempts}\t{(d.last_error or '')[:200]}")
            print(f"{len(letters)} dead-lettered job(s)")
            return 0
        count = await store.queue.replay(kind, jobs, subject_prefix=subject)
    finally:
        await store.close()
    print(f"replayed {count} dead-lettered job(s)")
    return 0


async def _component_cli(settings: Settings, args: argparse.Namespace) -> int:
    module = COMMANDS[args.command].module
    store = await open_store(settings)
    try:
        result: int = await importlib.import_module(module).run_cli(store, settings, args)
        return result
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(main())
