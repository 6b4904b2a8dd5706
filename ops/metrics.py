"""`/metrics` in the Prometheus text exposition format (version 0.0.4), through `prometheus_client`.

Three sources, each in the process's own registry (not the library's global one: a reload or a test builds a
fresh OpsMetrics without name clashes):
- the process: CPU, memory, open files, start time (`process_*`), Python's GC and version (`python_*`);
- in-process, fed by the stage workers through `ingest.worker.JOB_OBSERVERS`: how long after its receipt a report
  finished each stage (received -> classified -> incident -> dispatched -> notified), handler time, job outcomes,
  and by the HTTP middleware: requests per method, route template and status, and their duration. These reset when
  the process restarts, as Prometheus counters and histograms may;
- the store, read at scrape time (cached a few seconds): queue depths and dead letters per stage, reports accepted
  per channel, quarantined inputs, deadline breaches (the dispatch stage's escalation events), operator alerts
  per kind (events of kind 'alert'), jobs kept retrying past `[queue] max_attempts`, and with the
  dispatch tables: cases, deliveries and failed delivery attempts, open and overdue deadlines per agency and kind.
  Append-only tables (reports, events) are counted incrementally by id, so a scrape costs O(new rows).
  A store that cannot be read gives `hcmc1022_store_up 0`, never a failed scrape.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from dispatch import queries as dispatch_queries
from ingest.clock import parse_iso
from ingest.limits import REFUSALS
from ingest.store import Store, StoredReport
from ingest.vocabulary import OPERATOR_ALERT_TEXTS

log = logging.getLogger(__name__)

NAMESPACE = "hcmc1022"
PREFIX = NAMESPACE + "_"
# What generate_latest writes for these (classic) names; scrapers of every Prometheus version read it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Seconds; 300 is the regulation's 5-minute receive-classify-forward limit (Art. 6), 3600 the operator's hour.
LATENCY_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Counters without their `_created` twin samples: the start time is already `process_start_time_seconds`.
prometheus_client.disable_created_metrics()

Labels = tuple[tuple[str, str], ...]


class Family:
    """One metric family read from the store at scrape time, turned into a prometheus_client family."""

    def __init__(self, name: str, help: str, kind: str) -> None:
        self.name, self.help, self.kind = name, help, kind  # kind: counter | gauge
        self.samples: list[tuple[Labels, float]] = []

    def add(self, value: float, labels: Labels = (), suffix: str = "") -> None:
        del suffix  # the library adds `_total` to counters itself
        self.samples.append((labels, value))

    def metric(self) -> Metric:
        names = [k for k, _ in self.samples[0][0]] if self.samples else []
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(PREFIX + self.name, self.help, labels=names)
        for labels, value in self.samples:
            family.add_metric([v for _, v in labels], value)
        return family


class _StoreFamilies(Collector):
    """Hands the registry the families the last scrape read from the store (collect() itself cannot await)."""

    def __init__(self) -> None:
        self.families: list[Family] = []

    def collect(self) -> Iterable[Metric]:
        return [f.metric() for f in self.families]


class _PublishedGauges(Collector):
    """Gauges other components publish in ctx.published.gauges as name -> (help, value), e.g. the calendar's
    `calendar_missing_decision_years`; read at each scrape."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, float]] = {}

    def collect(self) -> Iterable[Metric]:
        out = []
        for name, (help_text, value) in sorted(self.gauges.items()):
            gauge = GaugeMetricFamily(PREFIX + name, help_text)
            gauge.add_metric([], float(value))
            out.append(gauge)
        return out


# Stages always listed in dead_letters (0 when none), so an alert on `> 0` never depends on a series appearing.
KNOWN_STAGES = ("classify", "dedupe", "dispatch", "notify", "deliver", "escalate", "agency_email_reply",
                "reporter_follow_up")
# Alert kinds always listed in alerts_total (0 when none), likewise: every kind dispatch and dedupe raise.
KNOWN_ALERTS = tuple(OPERATOR_ALERT_TEXTS)
# The stages whose worker keeps some jobs retrying past `[queue] max_attempts` (WorkerSettings.keep_trying), listed in
# jobs_retrying_past_limit (0 when none). Only dedupe does: in any other stage a job past the limit is one whose
# lease expired on its last attempt (a killed workers process) and is being tried once more, not a stuck cause.
KEEPS_TRYING_STAGES = ("dedupe",)
# Which milestone a stage's finished job marks, for the help text and dashboards.
STAGE_MILESTONE = {"classify": "classified", "dedupe": "incident", "dispatch": "dispatched", "notify": "notified"}


def _families(text: str) -> dict[str, list[str]]:
    """Exposition text by family: each family's HELP/TYPE lines with its samples, in order."""
    families: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name = line.split(" ", 3)[2]
            current = families.setdefault(name, [])
        elif current is None:
            continue  # a sample before any header: not ours to place
        current.append(line)
    return families


def merge_exposition(own: str, other: str) -> str:
    """This process's exposition with another's samples added: a sample this process has none of (the stages'
    latencies and job counts in an intake process, which counts its own chat workers' jobs in the same families) is
    taken from the other; one both have (the store's counts both read alike, this process's own CPU and memory)
    stays this process's. Each family keeps one HELP/TYPE."""
    mine, theirs = _families(own), _families(other)

    def key(line: str) -> str:
        return line.rsplit(" ", 1)[0]  # the sample's name and labels

    merged: dict[str, list[str]] = {}
    for name, lines in mine.items():
        have = {key(line) for line in lines if not line.startswith("#")}
        merged[name] = lines + [line for line in theirs.get(name, [])
                                if not line.startswith("#") and key(line) not in have]
    merged.update((name, lines) for name, lines in theirs.items() if name not in mine)
    return "".join(line + "\n" for lines in merged.values() for line in lines)


class OpsMetrics:
    """The process's metrics; `observe_job` is the worker hook, `render` produces the exposition text."""

    def __init__(self, store: Store, cache_seconds: float = 5.0, max_attempts: int = 5) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.max_attempts = max_attempts  # [queue] max_attempts, for jobs_retrying_past_limit
        self.registry = registry = CollectorRegistry()
        prometheus_client.ProcessCollector(registry=registry)
        prometheus_client.PlatformCollector(registry=registry)
        prometheus_client.GCCollector(registry=registry)
        self.stage_latency = Histogram(
            "stage_latency_seconds",
            "Seconds from a report's receipt to its job finishing in a stage (classify: classified, dedupe: "
            "incident, dispatch: dispatched, notify: notified); the 5-minute forward limit is the 300 bucket.",
            ("stage",), namespace=NAMESPACE, buckets=LATENCY_BUCKETS, registry=registry)
        self.handler_seconds = Histogram("stage_handler_seconds", "Seconds a stage's handler spent on one job.",
                                         ("stage",), namespace=NAMESPACE, buckets=HANDLER_BUCKETS, registry=registry)
        self.job_outcomes = Counter("stage_jobs", "Jobs handled per stage and outcome (done, retry, dead, lost lease).",
                                    ("stage", "outcome"), namespace=NAMESPACE, registry=registry)
        self.http_requests = Counter("http_requests", "HTTP requests answered, per method, route template and status.",
                                     ("method", "route", "status"), namespace=NAMESPACE, registry=registry)
        self.http_seconds = Histogram("http_request_duration_seconds", "Seconds to answer an HTTP request, per method"
                                      " and route template.", ("method", "route"), namespace=NAMESPACE,
                                      buckets=HTTP_BUCKETS, registry=registry)
        self.scrape_errors = Counter("metrics_store_errors", "Scrapes whose store queries failed.",
                                     namespace=NAMESPACE, registry=registry)
        self._store_families = _StoreFamilies()
        registry.register(self._store_families)
        self.published = _PublishedGauges()  # ops.service points it at ctx.published.gauges
        registry.register(self.published)
        self._cached: tuple[float, list[Family]] | None = None
        # Another process's exposition to add (the workers' child of `serve`), None when there is none.
        self.merge_from: Callable[[], Awaitable[str | None]] | None = None
        # Running totals over append-only rows, advanced by id at each scrape.
        self._reports_seen = 0
        self._accepted: dict[tuple[str, str], int] = {}
        self._events_seen = 0
        self._breaches: dict[tuple[str, str], int] = {}
        self._alerts: dict[str, int] = dict.fromkeys(KNOWN_ALERTS, 0)

    # -- the worker hook ----------------------------------------------------------------------------
    def observe_job(self, stage: str, outcome: str, report: StoredReport, seconds: float) -> None:
        self.job_outcomes.labels(stage, outcome).inc()
        self.handler_seconds.labels(stage).observe(seconds)
        if outcome == "done":
            try:
                received = parse_iso(report.message.received_at)
            except (TypeError, ValueError):
                return
            # A channel's clock may run a little ahead of ours: never a negative latency.
            self.stage_latency.labels(stage).observe(max(0.0, self.store.clock.now() - received))

    # -- scrape -------------------------------------------------------------------------------------
    async def render(self) -> str:
        self._store_families.families = await self._read_store_cached()
        own = prometheus_client.generate_latest(self.registry).decode()
        # The stages' child process (ingest/workers_process.py) counts their jobs: its families join this scrape.
        other = await self.merge_from() if self.merge_from is not None else None
        return merge_exposition(own, other) if other else own

    # -- HTTP requests ------------------------------------------------------------------------------
    @web.middleware
    async def http_middleware(self, request: web.Request,
                              handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Counts and times every request by its route template (`/open311/v2/requests/{id}.json`), never by
        the path itself: ids and tokens must not become label values (nor grow the series without bound)."""
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            info = request.match_info
            route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
            self.http_requests.labels(request.method, route, str(status)).inc()
            self.http_seconds.labels(request.method, route).observe(time.perf_counter() - started)

    async def _read_store_cached(self) -> list[Family]:
        mono = time.monotonic()
        if self._cached is not None and mono - self._cached[0] < self.cache_seconds:
            return self._cached[1]
        up = Family("store_up", "1 when the store answered the scrape's queries.", "gauge")
        try:
            families = await self._read_store()
        except Exception as exc:  # closed, locked, corrupt: the scrape still answers, and says so
            log.warning("metrics: store queries failed: %s", type(exc).__name__)
            self.scrape_errors.inc()
            up.add(0)
            return [up]
        up.add(1)
        families.insert(0, up)
        self._cached = (mono, families)
        return families

    def _intake_guard_families(self) -> list[Family]:
        """Bounded quarantine, records refused alone, store outage, and what the HTTP limits refused."""
        store = self.store
        totals = store.quarantine_totals()
        out = []
        if totals is not None:
            rows = Family("quarantine_rows", "Rows in quarantine (bounded by store.quarantine_max_rows).", "gauge")
            rows.add(totals[0])
            heads = Family("quarantine_head_bytes", "Bytes of input heads kept in quarantine (bounded by"
                           " store.quarantine_max_bytes).", "gauge")
            heads.add(totals[1])
            out += [rows, heads]
        evicted = Family("quarantine_evictions", "Quarantine heads dropped (kind=head) and rows deleted (kind=row)"
                         " to stay under the caps.", "counter")
        for kind, n in sorted(store.quarantine_evicted.items()):
            evicted.add(n, (("kind", kind),), "_total")
        refused = Family("records_refused", "Records the store refused alone (not storable); their group commit"
                         " went on without them.", "counter")
        refused.add(store.records_refused, (), "_total")
        failing = Family("store_writes_failing", "1 while the store's writes fail (disk full, I/O error).", "gauge")
        failing.add(0 if store.health.ok else 1)
        http = Family("http_refusals", "Requests and connections refused by the HTTP limits: rate_limited (per ip,"
                      " api_key, device), connection_refused, header_timeout, body_timeout.", "counter")
        for (what, kind), n in sorted(REFUSALS.items()):
            http.add(n, (("reason", what), ("key", kind)), "_total")
        out += [evicted, refused, failing]
        if http.samples:
            out.append(http)
        return out

    async def _past_limit_family(self) -> Family:
        """Jobs a stage worker keeps retrying past `[queue] max_attempts` (WorkerSettings.keep_trying: dedupe's
        incident-state and case report jobs, for a transient cause): no dead letter or alert ever shows them, and a
        cause that never passes retries them for ever. Waiting with max_attempts spent (where another job would have
        died; the worker logs it once), or leased for an attempt past them."""
        past = Family("jobs_retrying_past_limit", "Jobs not dead though past [queue] max_attempts, per stage (kept"
                      " retrying for a transient cause: dedupe's incident-state and case report jobs); alert on"
                      " > 0 for a while: the cause is not passing.", "gauge")
        n = self.max_attempts
        stages = ",".join("?" * len(KEEPS_TRYING_STAGES))
        # By stage and state first (the jobs_take index): done jobs, most of the table, are never read.
        counts = {r["stage"]: r["n"] for r in await self.store.fetchall(
            f"SELECT stage, COUNT(*) AS n FROM jobs WHERE stage IN ({stages}) AND state IN ('ready', 'leased')"
            " AND (attempts>? OR (state='ready' AND attempts=?)) GROUP BY stage", (*KEEPS_TRYING_STAGES, n, n))}
        for stage in KEEPS_TRYING_STAGES:
            past.add(counts.get(stage, 0), (("stage", stage),))
        return past

    async def _read_store(self) -> list[Family]:
        store = self.store
        now = store.clock.now()
        out: list[Family] = []

        depths = await store.queue_depths()
        queue = Family("queue_jobs", "Jobs waiting (ready), in progress (leased) or dead-lettered, per kind (stages, deliveries, outboxes).", "gauge")
        dead = Family("dead_letters", "Dead-lettered jobs per kind (list and replay with `run_daemon.py replay`).", "gauge")
        for (stage, state), n in sorted(depths.items()):
            queue.add(n, (("stage", stage), ("state", state)))
        for stage in sorted({*KNOWN_STAGES, *(s for s, _ in depths)}):
            dead.add(depths.get((stage, "dead"), 0), (("stage", stage),))
        out += [queue, dead]

        out.append(await self._past_limit_family())

        oldest = Family("queue_oldest_ready_seconds", "Age of the oldest job ready to run, per stage.", "gauge")
        for stage, age in sorted((await store.queue.oldest_ready()).items()):
            oldest.add(age, (("stage", stage),))
        out.append(oldest)

        accepted = Family("reports_accepted", "Reports stored, per channel kind and instance.", "counter")
        # Reports are never deleted and ids only grow: count the new rows since the last scrape, not the table.
        for row in await store.fetchall("SELECT channel, channel_instance, COUNT(*) AS n, MAX(id) AS last"
                                        " FROM reports WHERE id>? GROUP BY channel, channel_instance",
                                        (self._reports_seen,)):
            key = (row["channel"], row["channel_instance"])
            self._accepted[key] = self._accepted.get(key, 0) + row["n"]
            self._reports_seen = max(self._reports_seen, row["last"])
        for (channel, instance), n in sorted(self._accepted.items()):
            accepted.add(n, (("channel", channel), ("instance", instance)), "_total")
        status = Family("reports", "Reports per current status.", "gauge")
        for row in await store.fetchall("SELECT status, COUNT(*) AS n FROM reports GROUP BY status ORDER BY status"):
            status.add(row["n"], (("status", row["status"]),))
        quarantined = Family("quarantined", "Inputs a channel could not accept, kept for operators.", "counter")
        row = await store.fetchone("SELECT COUNT(*) AS n FROM quarantine")
        quarantined.add(row["n"] if row else 0, (), "_total")
        out += [accepted, status, quarantined]

        tables = await store.table_names()
        if "cases" in tables:
            cases = Family("cases", "Cases per state.", "gauge")
            for row in await dispatch_queries.case_counts(store):
                cases.add(row["n"], (("state", row["state"]),))
            out.append(cases)
        if "deliveries" in tables:
            deliveries = Family("deliveries", "Outbox rows to agencies, per agency and state.", "gauge")
            failed = Family("delivery_failed_attempts",
                            "Failed attempts to deliver cases to an agency (a replay resets them).", "gauge")
            for row in await dispatch_queries.delivery_counts(store):
                deliveries.add(row["n"], (("agency", row["agency"]), ("state", row["state"])))
            for row in await dispatch_queries.delivery_failed_attempts(store):
                failed.add(row["n"] or 0, (("agency", row["agency"]),))
            out += [deliveries, failed]
        if "deadlines" in tables:
            open_ = Family("deadlines_open", "Running deadline clocks per agency and kind.", "gauge")
            overdue = Family("deadlines_overdue", "Clocks past due and not met yet, per agency and kind: act on these.",
                             "gauge")
            counts: dict[tuple[str, str], list[int]] = {}
            for row in await dispatch_queries.deadline_counts(store, now):
                counts[(row["agency"], row["kind"])] = [row["open"] or 0, row["overdue"] or 0]
            for (agency, kind), (n_open, n_overdue) in sorted(counts.items()):
                labels = (("agency", agency), ("kind", kind))
                open_.add(n_open, labels)
                overdue.add(n_overdue, labels)
            out += [open_, overdue]
        breaches = Family("deadline_breaches",
                          "Deadlines breached (escalated when missed, or judged late on the answer), per agency and"
                          " kind, counted from the dispatch stage's escalation events.", "counter")
        alerts = Family("alerts", "Operator alerts recorded (events of kind 'alert'), per alert kind ("
                        f"{', '.join(KNOWN_ALERTS)}); the console's alerts page (/console/alerts) lists them.",
                        "counter")
        # One query (one snapshot) over the events added since the last scrape; only escalations and alerts carry
        # their data.
        for row in await store.fetchall("SELECT id, kind, CASE WHEN kind IN ('deadline_escalation', 'alert')"
                                        " THEN data END AS data FROM events WHERE id>? ORDER BY id",
                                        (self._events_seen,)):
            self._events_seen = row["id"]
            if row["data"] is None:
                continue
            try:
                data = json.loads(row["data"])
            except ValueError:
                data = None
            if row["kind"] == "alert":
                # A kind this build does not name (a newer build's) is still counted, under its own name.
                kind = str((data.get("alert") if isinstance(data, dict) else None) or "unknown")
                self._alerts[kind] = self._alerts.get(kind, 0) + 1
                continue
            if data is None:
                continue
            # The ticker records {"deadline": kind}, a clock judged late on the answer {"kind": kind}.
            key = (str(data.get("agency") or ""), str(data.get("deadline") or data.get("kind") or ""))
            self._breaches[key] = self._breaches.get(key, 0) + 1
        for (agency, kind), n in sorted(self._breaches.items()):
            breaches.add(n, (("agency", agency), ("kind", kind)), "_total")
        for kind, n in sorted(self._alerts.items()):
            alerts.add(n, (("alert", kind),), "_total")
        out += [breaches, alerts]

        commits = Family("store_commits", "Write transactions committed by this process.", "counter")
        commits.add(store.commit_count, (), "_total")
        out.append(commits)
        out += self._intake_guard_families()
        return out

