"""Wires ops into the daemon: `/metrics`, `/healthz`, `/readyz` routes, the worker metrics hook, the periodic sender
of weekly (and quarterly) reports to agency leadership, and `report_cli` for `run_daemon.py report ...`.

Sending is at-least-once and idempotent per (kind, agency, period, channel) through `ops_report_sends`: a week
already sent is not sent again after a restart; a failed send is retried each check until `max_send_attempts`.
Email goes through SMTP (`[ops.smtp]`, else `[dispatch.smtp]`) with smtplib in a thread; SMS through the gateway
client the dispatch component publishes as `ctx.published.sms_gateway` (ingest.app.SmsSender), skipped while there
is none or it is not configured.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from aiohttp import web

from config.directory import Directory, load_directory
from config.dispatch import SmtpConfig, dispatch_settings
from config.ops import OpsConfig, ops_settings
from ingest import worker
from ingest.mail import send_message
from ingest.app import AppContext, Service
from ingest.errors import ConfigError, PermanentError
from ingest.store import Store
from ingest.workers_process import inherited_listener

from . import health
from .metrics import CONTENT_TYPE, OpsMetrics
from .report_render import Rendered, email_message, render_quarterly, render_weekly, weekly_csv
from .reports import (
    Period,
    agency_figures,
    last_complete_quarter,
    last_complete_week,
    quarter_from,
    rank,
    suggestions,
    week_from,
)

log = logging.getLogger(__name__)


# -- building reports -----------------------------------------------------------------------------
def agency_names(directory: Directory) -> dict[str, str]:
    return {a.id: a.name_vi for a in directory.agencies.values()}


async def weekly_reports(store: Store, directory: Directory, period: Period, agencies: Sequence[str] | None,
                         now: float) -> tuple[list[Rendered], str]:
    """One rendered report per agency (the given ones, else every agency active in the period) and the CSV of all."""
    names = agency_names(directory)
    figures = await agency_figures(store, period, names, now)
    chosen = [figures[a] for a in agencies if a in figures] if agencies else [f for f in figures.values() if f.active]
    chosen.sort(key=lambda f: f.agency)
    rendered = await asyncio.to_thread(lambda: [render_weekly(f, period, now) for f in chosen])
    return rendered, weekly_csv(chosen, period)


async def quarterly_report(store: Store, directory: Directory, period: Period, agency: str | None,
                           now: float) -> Rendered:
    names = agency_names(directory)
    figures = await agency_figures(store, period, names, now)
    ranked = rank(list(figures.values()))
    found = await suggestions(store, period, agency)
    return await asyncio.to_thread(render_quarterly, ranked, found, period, now, agency)


# -- sending --------------------------------------------------------------------------------------
def smtp_config(settings: Any, cfg: OpsConfig) -> SmtpConfig:
    return cfg.smtp or dispatch_settings(settings).smtp


def smtp_send(cfg: SmtpConfig, message: Any, to: list[str]) -> None:
    """Blocking: run in a thread. 5xx answers are permanent; anything else (4xx, network) is worth a retry."""
    send_message(cfg, message, from_addr=cfg.from_addr, to_addrs=to)


@dataclass(frozen=True, slots=True, kw_only=True)
class Due:
    kind: str
    period: Period
    agency: str
    channel: str  # "email" or "sms:<phone>"
    to: list[str]


class ReportSender:
    """Finds the reports due, renders each once per check, and sends what is not yet recorded as sent."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._warned_no_sms = False

    def due(self, cfg: OpsConfig, now: float) -> list[Due]:
        out: list[Due] = []
        plans = []
        if cfg.weekly_send:
            plans.append(("weekly", last_complete_week(now), list(cfg.agencies)))
        if cfg.quarterly_send:
            plans.append(("quarterly", last_complete_quarter(now), list(cfg.quarterly_recipients)))
        for kind, period, agencies in plans:
            if now < period.end + cfg.weekly_send_hour * 3600:
                continue
            for agency in agencies:
                contacts = cfg.agencies.get(agency)
                if contacts is None:
                    continue
                if contacts.leadership_email:
                    out.append(Due(kind=kind, period=period, agency=agency, channel="email",
                                   to=list(contacts.leadership_email)))
                out.extend(Due(kind=kind, period=period, agency=agency, channel=f"sms:{phone}", to=[phone])
                           for phone in contacts.leadership_phone)
        return out

    async def send_due(self) -> int:
        """One check: returns how many messages were sent."""
        ctx = self.ctx
        cfg = ops_settings(ctx.settings)  # read each time: a reloaded config takes effect at the next check
        now = ctx.clock.now()
        pending = [d for d in self.due(cfg, now) if await self._open(d, cfg)]
        if not pending:
            return 0
        gateway = ctx.published.sms_gateway
        if gateway is not None and not gateway.configured:
            gateway = None
        if gateway is None and any(d.channel.startswith("sms") for d in pending):
            if not self._warned_no_sms:
                log.warning("ops: leadership SMS configured but no SMS gateway is registered; SMS skipped")
                self._warned_no_sms = True
            pending = [d for d in pending if not d.channel.startswith("sms")]
        rendered: dict[tuple[str, str, str], Rendered] = {}
        sent = 0
        for d in pending:
            key = (d.kind, d.period.key, d.agency)
            try:
                if key not in rendered:
                    if d.kind == "weekly":
                        reports, _ = await weekly_reports(ctx.store, ctx.directory, d.period, [d.agency], now)
                        if not reports:
                            raise PermanentError(f"agency {d.agency!r} is not in the directory")
                        rendered[key] = reports[0]
                    else:
                        rendered[key] = await quarterly_report(ctx.store, ctx.directory, d.period, None, now)
                report = rendered[key]
                msg_key = f"{report.slug}.{d.channel}"
                if d.channel == "email":
                    smtp = smtp_config(ctx.settings, cfg)
                    message = email_message(report, sender=smtp.from_addr, to=d.to, now=now,
                                            msgid_domain=smtp.message_id_domain)
                    await asyncio.to_thread(smtp_send, smtp, message, d.to)
                else:
                    assert gateway is not None
                    await gateway.send(d.to[0], report.sms, msg_key, now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._record_failure(d, cfg, exc)
                continue
            await self._record_sent(d, msg_key)
            sent += 1
            log.info("ops: %s report %s sent to %s by %s", d.kind, d.period.key, d.agency, d.channel.split(":")[0])
        return sent

    async def _open(self, d: Due, cfg: OpsConfig) -> bool:
        """True when this message still has to be sent (creating its row on first sight)."""
        async with self.ctx.store.transaction() as tx:
            await tx.execute(
                "INSERT OR IGNORE INTO ops_report_sends(kind, agency, period, channel, updated_at) VALUES (?,?,?,?,?)",
                (d.kind, d.agency, d.period.key, d.channel, self.ctx.clock.now()))
            row = await tx.fetchone("SELECT state, attempts FROM ops_report_sends"
                                    " WHERE kind=? AND agency=? AND period=? AND channel=?",
                                    (d.kind, d.agency, d.period.key, d.channel))
        return row is not None and row["state"] == "pending" and row["attempts"] < cfg.max_send_attempts

    async def _record_sent(self, d: Due, message_id: str) -> None:
        now = self.ctx.clock.now()
        async with self.ctx.store.transaction() as tx:
            await tx.execute(
                "UPDATE ops_report_sends SET state='sent', attempts=attempts+1, sent_at=?, message_id=?, updated_at=?"
                " WHERE kind=? AND agency=? AND period=? AND channel=?",
                (now, message_id, now, d.kind, d.agency, d.period.key, d.channel))

    async def _record_failure(self, d: Due, cfg: OpsConfig, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:500]
        permanent = isinstance(exc, PermanentError)
        async with self.ctx.store.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE ops_report_sends SET attempts=attempts+1, last_error=?, updated_at=?,"
                " state=CASE WHEN ? OR attempts+1>=? THEN 'failed' ELSE 'pending' END"
                " WHERE kind=? AND agency=? AND period=? AND channel=? RETURNING state, attempts",
                (error, self.ctx.clock.now(), permanent, cfg.max_send_attempts,
                 d.kind, d.agency, d.period.key, d.channel))
        # Logged without addresses or phone numbers.
        log.warning("ops: %s report %s to %s by %s failed (attempt %s, now %s): %s", d.kind, d.period.key, d.agency,
                    d.channel.split(":")[0], row["attempts"] if row else "?", row["state"] if row else "?",
                    type(exc).__name__)


class OpsService:
    """Keeps the metrics hook installed while the daemon runs, and checks periodically for reports to send."""

    name = "ops"

    def __init__(self, ctx: AppContext, metrics: OpsMetrics) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.sender = ReportSender(ctx)

    def close(self) -> None:
        if self.metrics.observe_job in worker.JOB_OBSERVERS:
            worker.JOB_OBSERVERS.remove(self.metrics.observe_job)

    async def run(self) -> None:
        try:
            while True:
                cfg = ops_settings(self.ctx.settings)
                # The sender runs on one instance (a leader lease) that runs workers (an intake process beside a
                # workers one on SQLite holds every lease too); every instance keeps its metrics hook.
                if ((cfg.weekly_send or cfg.quarterly_send) and self.ctx.role != "intake"
                        and self.ctx.leases.lease("ops-report-sender").held):
                    try:
                        await self.sender.send_due()
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # e.g. the store briefly unavailable: next check
                        log.exception("ops: report check failed")
                await self.ctx.clock.sleep(cfg.check_interval_seconds)
        finally:
            self.close()


class MetricsListener:
    """`/metrics` on its own listener (`[ops] metrics_listen`, e.g. loopback for a local Prometheus), off the
    public port; a service of the generation, so a reload moves or closes it like the main site."""

    name = "metrics-listener"

    def __init__(self, handler: Any, host: str, port: int, sock_fd: int | None = None) -> None:
        self.app = web.Application()
        self.app.router.add_get("/metrics", handler)
        self.host, self.port = host, port
        # A listening socket handed over by the parent `serve` (ingest/workers_process.py): it stays bound for the
        # parent while this process is down, so no other local program can take the port meanwhile.
        self.sock_fd = sock_fd
        self.started = asyncio.Event()

    async def run(self) -> None:
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            if self.sock_fd is not None:
                # A copy: closing this generation's site (a reload) must leave the inherited socket to the next.
                await web.SockSite(runner, socket.socket(fileno=os.dup(self.sock_fd))).start()
            else:
                await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
            self.port = runner.addresses[0][1]
            log.info("metrics on http://%s:%s/metrics", self.host, self.port)
            self.started.set()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def metrics_handler(metrics: OpsMetrics, token: str | None, refusal: str | None = None) -> Any:
    """The /metrics handler: with a token, only `Authorization: Bearer <token>` reads (compared in constant
    time); `refusal` set, nobody does (public port, no token), and the answer says what to configure."""
    expected = f"Bearer {token}".encode() if token is not None else None

    async def handler(request: web.Request) -> web.Response:
        if refusal is not None:
            return web.Response(status=403, text=refusal + "\n")
        # surrogateescape: header bytes that are not UTF-8 are a wrong token (401), not an encoding error (500).
        presented = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if expected is not None and not hmac.compare_digest(presented, expected):
            return web.Response(status=401, text="a bearer token is required\n",
                                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return web.Response(body=(await metrics.render()).encode(), headers={"Content-Type": CONTENT_TYPE})
    return handler


def build(ctx: AppContext) -> list[Service]:
    if ctx.route_mode:  # a batch `route` run serves no HTTP and must never mail leadership
        return []
    cfg = ops_settings(ctx.settings)
    # One set of counters for the process: a reload's new generation keeps counting where the old one was.
    metrics = ctx.published.ops_metrics
    if not isinstance(metrics, OpsMetrics) or metrics.store is not ctx.store:
        metrics = OpsMetrics(ctx.store, cache_seconds=cfg.metrics_cache_seconds)
        ctx.published.ops_metrics = metrics
    metrics.cache_seconds = cfg.metrics_cache_seconds
    metrics.max_attempts = ctx.settings.queue.max_attempts
    metrics.published.gauges = ctx.published.gauges
    children = ctx.published.workers_process
    metrics.merge_from = children.metrics_text if children is not None else None
    worker.JOB_OBSERVERS.append(metrics.observe_job)
    ctx.http.middlewares.insert(0, metrics.http_middleware)  # outermost: times and counts every answer

    token = cfg.metrics_token.get_secret_value() if cfg.metrics_token is not None else None
    services: list[Service] = []
    address = cfg.metrics_address()
    readyz = health.add_routes(ctx, cfg.ready_timeout_seconds)
    if address is not None:
        listener = MetricsListener(metrics_handler(metrics, token), *address, sock_fd=inherited_listener())
        # A workers process has no site: its listener says whether it is ready, and what its parent `serve` asks.
        listener.app.router.add_get("/readyz", readyz)
        listener.app.router.add_get("/state", health.state_handler(ctx))
        services.append(listener)
        ctx.published.metrics_listener = listener
    elif token is None and not _loopback(ctx.settings.http.host):
        log.warning("/metrics is refused on the public port %s: set [ops] metrics_token or metrics_listen",
                    ctx.settings.http.host)
        ctx.http.router.add_get("/metrics", metrics_handler(
            metrics, None, "metrics are not served on a public address: set [ops] metrics_token or metrics_listen"))
    else:
        ctx.http.router.add_get("/metrics", metrics_handler(metrics, token))
    return [OpsService(ctx, metrics), *services]


# -- CLI ------------------------------------------------------------------------------------------
def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


async def report_cli(store: Store, settings: Any, argv: Sequence[str]) -> int:
    """`run_daemon.py report weekly|quarterly [--agency ID] [--since DATE] [--output DIR]`.

    --since: the period's first day (default: the last complete Monday-Sunday week, or calendar quarter).
    Writes the HTML (charts inline), the PNG charts and the CSV files into DIR; prints the SMS summaries.
    """
    parser = argparse.ArgumentParser(prog="run_daemon.py report", description="weekly and quarterly reports")
    add_arguments(parser)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return await run_cli(store, settings, args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=("weekly", "quarterly"))
    parser.add_argument("--agency", action="append", default=[], help="agency id (repeatable); default: all active")
    parser.add_argument("--since", type=_date, help="first day of the period, YYYY-MM-DD (Vietnam time)")
    parser.add_argument("--output", type=Path, default=Path("var/reports"))


async def run_cli(store: Store, settings: Any, args: argparse.Namespace) -> int:
    try:
        directory = load_directory(settings.data.agencies, settings.data.structure)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    unknown = [a for a in args.agency if a not in directory.agencies]
    if unknown:
        print(f"unknown agency: {', '.join(unknown)}", file=sys.stderr)
        return 2
    now = store.clock.now()
    written: list[Path] = []
    if args.kind == "weekly":
        period = week_from(args.since) if args.since else last_complete_week(now)
        reports, combined = await weekly_reports(store, directory, period, args.agency or None, now)
        for report in reports:
            written += report.write(args.output)
            print(report.sms)
        if not args.agency:
            path = args.output / f"weekly-{period.key}-all.csv"
            args.output.mkdir(parents=True, exist_ok=True)
            path.write_text(combined, encoding="utf-8-sig", newline="")
            written.append(path)
        if not reports:
            print(f"no agency activity in the week {period.label}", file=sys.stderr)
    else:
        period = quarter_from(args.since) if args.since else last_complete_quarter(now)
        agency = args.agency[0] if args.agency else None
        report = await quarterly_report(store, directory, period, agency, now)
        written += report.write(args.output)
        print(report.sms)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
