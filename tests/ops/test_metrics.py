"""/metrics over real HTTP: exposition format that parses, stage latencies fed by a real StageWorker, queue depths,
dead letters, reports per channel, deadline breaches from the dispatch tables, and operator alerts per kind."""
from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from config.dispatch import dispatch_settings
from dispatch.clocks import tick
from ingest.clock import iso
from ingest.errors import PermanentError
from ingest.records import InboundMessage, Job
from ingest.store import StoredReport, Tx
from ingest.vocabulary import OPERATOR_ALERT_TEXTS
from ingest.worker import StageWorker

from .conftest import REPORTER_PHONE

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Parsed by prometheus_client's own text-format parser. Every sample must belong to a family declared by
    HELP and TYPE (an undeclared one comes back typed "unknown"), and no sample may repeat."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type in ("counter", "gauge", "histogram"), f"{family.name}: samples without their TYPE"
        assert family.documentation, f"{family.name}: no HELP"
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(url: str) -> tuple[int, str, Samples]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.status, text, parse(text)


async def test_stage_latency_queue_depth_and_dead_letters(world, context_for, serve_ops) -> None:
    served = await serve_ops(context_for(world.store, world.clock))
    store, now = world.store, world.clock.now()
    for key, text, age in (("ok", "Đèn đường hỏng", 120.0), ("bad", "poison", 30.0)):
        await store.submit(InboundMessage(channel="telegram", channel_instance="bot-1", idempotency_key=key,
                                          received_at=iso(now - age), text=text), b"x", "text/plain")

    async def classify(job: Job, report: StoredReport):
        if report.message.text == "poison":
            raise PermanentError("unreadable")

        async def writes(tx: Tx) -> None:
            await tx.enqueue("dedupe", job.report_id)
        return writes

    assert await StageWorker(store, "classify", classify).run_once() == 2
    status, _, samples = await scrape(served.url)
    assert status == 200
    # The good report was received 120 s before its classification finished: in the 120 s bucket, not the 60 s one.
    assert get(samples, "hcmc1022_stage_latency_seconds_bucket", stage="classify", le="60.0") == 0
    assert get(samples, "hcmc1022_stage_latency_seconds_bucket", stage="classify", le="120.0") == 1
    assert get(samples, "hcmc1022_stage_latency_seconds_bucket", stage="classify", le="+Inf") == 1
    assert get(samples, "hcmc1022_stage_latency_seconds_sum", stage="classify") == 120
    assert get(samples, "hcmc1022_stage_jobs_total", stage="classify", outcome="done") == 1
    assert get(samples, "hcmc1022_stage_jobs_total", stage="classify", outcome="dead") == 1
    assert get(samples, "hcmc1022_dead_letters", stage="classify") == 1
    assert get(samples, "hcmc1022_queue_jobs", stage="dedupe", state="ready") == 1
    assert get(samples, "hcmc1022_reports_accepted_total", channel="telegram", instance="bot-1") == 2
    assert get(samples, "hcmc1022_reports", status="failed") == 1
    assert get(samples, "hcmc1022_store_up") == 1


async def test_deadline_breaches_cases_and_delivery_failures(any_filled, context_for, serve_ops) -> None:
    filled = any_filled  # on both backends: the figures come from SQL written once
    store, now = filled.store, filled.clock.now()
    c3 = filled.case_id("C3")
    async with store.transaction() as tx:
        # A return judged late on the answer, recorded as the dispatch stage's CaseBook does.
        await tx.event(None, "deadline_escalation", "dispatch",
                       {"case_id": c3, "kind": "return_misroute", "agency": "so-gtvt", "late": True})
    # C5's subordinate_forward, site_check and fix clocks, open past due, are escalated now.
    assert (await tick(store)).escalated == 3
    served = await serve_ops(context_for(store, filled.clock, ops={"metrics_cache_seconds": 0}))
    _, text, samples = await scrape(served.url)
    assert get(samples, "hcmc1022_deadline_breaches_total", agency="so-gtvt", kind="fix") == 1
    assert get(samples, "hcmc1022_deadline_breaches_total", agency="so-gtvt", kind="return_misroute") == 1
    assert get(samples, "hcmc1022_deadline_breaches_total", agency="so-gtvt", kind="site_check") == 1
    assert get(samples, "hcmc1022_deadlines_overdue", agency="so-gtvt", kind="fix") == 1
    assert get(samples, "hcmc1022_deadlines_overdue", agency="so-gtvt", kind="site_check") == 1
    # cay-xanh's clocks on C3 were met late by its result: closed, so not overdue.
    assert ("hcmc1022_deadlines_overdue", frozenset({("agency", "cay-xanh"), ("kind", "site_check")})) not in samples
    assert get(samples, "hcmc1022_deadlines_open", agency="so-gtvt", kind="answer") == 1
    assert ("hcmc1022_deadlines_open", frozenset({("agency", "so-gtvt"), ("kind", "forward")})) not in samples
    assert get(samples, "hcmc1022_cases", state="resolved") == 3
    # The week's five cases the delivery sender delivered to so-gtvt (C4 C1 C3 C2 C5), each at its first attempt.
    assert get(samples, "hcmc1022_deliveries", agency="so-gtvt", state="delivered") == 5
    assert get(samples, "hcmc1022_deliveries", agency="cay-xanh", state="delivered") == 1
    assert get(samples, "hcmc1022_delivery_failed_attempts", agency="so-gtvt") == 0
    assert get(samples, "hcmc1022_reports_accepted_total", channel="app", instance="app") == 7
    assert "0903123456" not in text  # no reporter data in metrics

    # Counters move on from where they were: the next escalation and the next report add one each.
    filled.clock.advance(2 * 86400)
    assert (await tick(store)).escalated == 1  # C2's answer clock
    await filled.report(filled.clock.now(), agency="so-gtvt", incident="C6")
    _, _, samples = await scrape(served.url)
    assert get(samples, "hcmc1022_deadline_breaches_total", agency="so-gtvt", kind="answer") == 1
    assert get(samples, "hcmc1022_deadline_breaches_total", agency="so-gtvt", kind="fix") == 1
    assert get(samples, "hcmc1022_reports_accepted_total", channel="app", instance="app") == 8

    # so-gtvt's server goes down: the delivery sender records each 503 and retries, as it does in the daemon.
    filled.webhook.failures = 2
    await filled.dispatch("C6", filled.clock.now())  # the case of the report above: refused
    await filled.deliver_retries()  # refused again
    await filled.deliver_retries()  # delivered at its third attempt
    filled.webhook.failures = 2
    await filled.report(filled.clock.now(), agency="so-gtvt", incident="C7")
    await filled.dispatch("C7", filled.clock.now())
    await filled.deliver_retries()  # refused twice, it waits for its retry
    _, _, samples = await scrape(served.url)
    assert get(samples, "hcmc1022_deliveries", agency="so-gtvt", state="delivered") == 6
    assert get(samples, "hcmc1022_deliveries", agency="so-gtvt", state="retry") == 1
    # 2 failed before C6's delivery succeeded, 2 failed on C7's, waiting for its retry.
    assert get(samples, "hcmc1022_delivery_failed_attempts", agency="so-gtvt") == 4


async def test_a_closed_store_still_gives_a_scrape_that_says_so(world, context_for, serve_ops) -> None:
    served = await serve_ops(context_for(world.store, world.clock, ops={"metrics_cache_seconds": 0}))
    _, _, samples = await scrape(served.url)
    assert get(samples, "hcmc1022_store_up") == 1
    await world.store.close()
    status, _, samples = await scrape(served.url)
    assert status == 200
    assert get(samples, "hcmc1022_store_up") == 0
    assert get(samples, "hcmc1022_metrics_store_errors_total") == 1


def test_label_values_are_escaped() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from ops.metrics import Family, _StoreFamilies

    fam = Family("x", "help with \\ backslash", "gauge")
    fam.add(1.5, (("path", 'a"b\\c\nd'),))
    collector = _StoreFamilies()
    collector.families = [fam]
    registry = CollectorRegistry()
    registry.register(collector)
    samples = parse(generate_latest(registry).decode())
    assert get(samples, "hcmc1022_x", path='a"b\\c\nd') == 1.5


async def test_http_and_process_metrics(world, context_for, serve_ops) -> None:
    served = await serve_ops(context_for(world.store, world.clock))
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(served.url + "/healthz") as resp:
                assert resp.status == 200
        async with http.get(served.url + "/no/such/page") as resp:
            assert resp.status == 404
    _, text, samples = await scrape(served.url)
    assert get(samples, "hcmc1022_http_requests_total", method="GET", route="/healthz", status="200") == 2
    # Unknown paths are one series, not one per path.
    assert get(samples, "hcmc1022_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert get(samples, "hcmc1022_http_request_duration_seconds_count", method="GET", route="/healthz") == 2
    assert get(samples, "process_resident_memory_bytes") > 0 and get(samples, "process_open_fds") > 0
    assert ("python_info", frozenset()) not in samples and "python_info{" in text
    # The counters' TYPE lines name the samples they declare (no `# TYPE x counter` above `x_total` samples).
    assert "# TYPE hcmc1022_stage_jobs_total counter" in text or "hcmc1022_stage_jobs" not in text
    assert "# TYPE hcmc1022_reports_accepted_total counter" in text


async def test_metrics_behind_a_bearer_token(world, context_for, serve_ops) -> None:
    served = await serve_ops(context_for(world.store, world.clock, ops={"metrics_token": "s3cret-token-for-scrapes"}))
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token-for-scrapes"}):
            async with http.get(served.url + "/metrics", headers=headers) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(served.url + "/metrics",
                            headers={"Authorization": "Bearer s3cret-token-for-scrapes"}) as resp:
            assert resp.status == 200 and get(parse(await resp.text()), "hcmc1022_store_up") == 1


async def test_metrics_on_their_own_loopback_listener(world, context_for) -> None:
    import asyncio

    from ops.service import build

    ctx = context_for(world.store, world.clock, ops={"metrics_listen": "127.0.0.1:0"})
    services = build(ctx)
    assert ("GET", "/metrics") not in {(r.method, r.resource.canonical) for r in ctx.http.router.routes()
                                       if r.resource is not None}
    listener = ctx.published.metrics_listener
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.started.wait(), 10)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{listener.port}/metrics") as resp:
            assert resp.status == 200 and get(parse(await resp.text()), "hcmc1022_store_up") == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        services[0].close()


@pytest.mark.parametrize("listen", ["9022", "host:", ":x"])
def test_metrics_listen_must_be_host_and_port(listen: str) -> None:
    from config.loader import validate
    from ingest.errors import ConfigError

    with pytest.raises(ConfigError, match="ops.metrics_listen"):
        validate({"ops": {"metrics_listen": listen}}, {})


async def test_operator_alerts_counted_by_kind_every_known_kind_listed(world, context_for, serve_ops) -> None:
    """hcmc1022_alerts_total: the events of kind 'alert' per alert kind, each kind the stages raise listed from the
    first scrape (0), so an alerting rule on `increase(...) > 0` never waits for its series to appear. The alerts
    come from the stages' own code: an agency without a dispatch target, a delivery its endpoint kept refusing."""
    served = await serve_ops(context_for(world.store, world.clock, ops={"metrics_cache_seconds": 0}))
    _, _, samples = await scrape(served.url)
    for kind in OPERATOR_ALERT_TEXTS:
        assert get(samples, "hcmc1022_alerts_total", alert=kind) == 0
    # sawaco has no target in the ops tests' config: its case is made, and the operators alerted (no_targets).
    await world.report(world.clock.now(), agency="sawaco", incident="A")
    await world.dispatch("A", world.clock.now())
    # so-gtvt's endpoint answers 503 until the delivery's deadline passes: dead, alerted (delivery_dead).
    world.webhook.failures = 1_000_000
    await world.report(world.clock.now(), agency="so-gtvt", incident="B")
    await world.dispatch("B", world.clock.now())
    world.at(world.clock.now() + dispatch_settings(world.ctx.settings).delivery.deadline_seconds + 1)
    await world.deliver()
    _, text, samples = await scrape(served.url)
    assert get(samples, "hcmc1022_alerts_total", alert="no_targets") == 1
    assert get(samples, "hcmc1022_alerts_total", alert="delivery_dead") == 1
    assert get(samples, "hcmc1022_alerts_total", alert="escalation_dead") == 0
    # Counted on from where it was; an alert attached to no report counts too, and a kind of a newer build as itself.
    async with world.store.transaction() as tx:
        await tx.event(None, "alert", "dispatch", {"alert": "delivery_dead", "case_id": None})
        await tx.event(None, "alert", "dispatch", {"alert": "from_a_newer_build"})
    _, text, samples = await scrape(served.url)
    assert get(samples, "hcmc1022_alerts_total", alert="delivery_dead") == 2
    assert get(samples, "hcmc1022_alerts_total", alert="from_a_newer_build") == 1
    assert get(samples, "hcmc1022_alerts_total", alert="no_targets") == 1
    assert REPORTER_PHONE not in text
