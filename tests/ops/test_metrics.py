"""/metrics over real HTTP: exposition format that parses, stage latencies fed by a real StageWorker, queue depths,
dead letters, reports per channel, and deadline breaches from the dispatch tables."""
from __future__ import annotations

import re

import aiohttp

from dispatch.clocks import tick
from ingest.clock import iso
from ingest.errors import PermanentError
from ingest.records import InboundMessage, Job
from ingest.store import StoredReport, Tx
from ingest.worker import StageWorker

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """A strict reader of the text format: every sample belongs to a family declared by HELP and TYPE first."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: Samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4, line
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in types, line
            types[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, raw_labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count|total)$", "", name)
        assert name in types or family in types, f"sample before its TYPE: {line!r}"
        labels: list[tuple[str, str]] = []
        if raw_labels:
            pos = 0
            while pos < len(raw_labels):
                m = LABEL.match(raw_labels, pos)
                assert m, f"bad labels in {line!r}"
                labels.append((m.group(1), m.group(2)))
                pos = m.end()
        key = (name, frozenset(labels))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)
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


async def test_deadline_breaches_cases_and_delivery_failures(filled, context_for, serve_ops) -> None:
    store, now = filled.store, filled.clock.now()
    async with store.transaction() as tx:
        for n, (state, attempts, error, delivered) in enumerate(
                (("delivered", 3, "HTTP 503", now), ("retry", 2, "timeout", None), ("delivered", 1, None, now))):
            await tx.execute(
                "INSERT INTO deliveries(msg_id, case_id, agency, target, kind, event, payload, state, attempts,"
                " next_at, deadline_at, last_error, delivered_at, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (f"m{n}", "C1", "so-gtvt", "webhook", "webhook", "forwarded", "{}", state, attempts, now, now + 3600,
                 error, delivered, now, now))
        # A return judged late on the answer, recorded as the dispatch stage's CaseBook does.
        await tx.event(None, "deadline_escalation", "dispatch",
                       {"case_id": "C3", "kind": "return_misroute", "agency": "so-gtvt", "late": True})
    assert (await tick(store)).escalated == 1  # C5's fix clock, open past due, is escalated now
    served = await serve_ops(context_for(store, filled.clock, ops={"metrics_cache_seconds": 0}))
    _, text, samples = await scrape(served.url)
    assert get(samples, "hcmc1022_deadline_breaches_total", agency="so-gtvt", kind="fix") == 1
    assert get(samples, "hcmc1022_deadline_breaches_total", agency="so-gtvt", kind="return_misroute") == 1
    assert get(samples, "hcmc1022_deadlines_overdue", agency="so-gtvt", kind="fix") == 1
    assert get(samples, "hcmc1022_deadlines_overdue", agency="cay-xanh", kind="site_check") == 1
    assert get(samples, "hcmc1022_deadlines_open", agency="so-gtvt", kind="answer") == 1
    assert ("hcmc1022_deadlines_open", frozenset({("agency", "so-gtvt"), ("kind", "forward")})) not in samples
    assert get(samples, "hcmc1022_cases", state="resolved") == 3
    assert get(samples, "hcmc1022_deliveries", agency="so-gtvt", state="delivered") == 2
    # 2 failed before the first delivery succeeded, 2 failed on the one waiting for its retry.
    assert get(samples, "hcmc1022_delivery_failed_attempts", agency="so-gtvt") == 4
    assert get(samples, "hcmc1022_reports_accepted_total", channel="app", instance="app") == 7
    assert "0903123456" not in text  # no reporter data in metrics

    # Counters move on from where they were: the next escalation and the next report add one each.
    filled.clock.advance(2 * 86400)
    assert (await tick(store)).escalated == 1  # C2's answer clock
    await filled.report(filled.clock.now(), agency="so-gtvt")
    _, _, samples = await scrape(served.url)
    assert get(samples, "hcmc1022_deadline_breaches_total", agency="so-gtvt", kind="answer") == 1
    assert get(samples, "hcmc1022_deadline_breaches_total", agency="so-gtvt", kind="fix") == 1
    assert get(samples, "hcmc1022_reports_accepted_total", channel="app", instance="app") == 8


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
    from ops.metrics import Family

    fam = Family("x", "help with \\ backslash", "gauge")
    fam.add(1.5, (("path", 'a"b\\c\nd'),))
    samples = parse(fam.render())
    assert get(samples, "hcmc1022_x", path='a\\"b\\\\c\\nd') == 1.5
