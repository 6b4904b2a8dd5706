"""Cost of the ops reads on a store of a busy quarter, beside a plain full scan of the reports table in the same run.

    .venv/bin/python bench/bench_ops.py [--reports 60000]

A synthetic quarter (13 weeks) of reports, cases (one per 1.5 reports), clocks, answers and ratings across the
directory's agencies is written straight into the dispatch schema. Timed: the weekly figures of every agency, the
quarter's figures, the first /metrics scrape and the next ones (uncached), and the rendering of one weekly report (charts included).
Baseline: `SELECT COUNT(*), SUM(LENGTH(record)) FROM reports` (a full table scan). Figures are ratios to it.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.directory import load_directory  # noqa: E402
from dedupe.schema import MIGRATIONS as DEDUPE_MIGRATIONS
from dispatch.schema import MIGRATIONS as DISPATCH_MIGRATIONS  # noqa: E402
from ingest.clock import FakeClock  # noqa: E402
from ingest.store import Store  # noqa: E402
from ops.metrics import OpsMetrics  # noqa: E402
from ops.report_render import render_weekly  # noqa: E402
from ops.reports import agency_figures, quarter_from, week_from  # noqa: E402
from ops.schema import MIGRATIONS as OPS_MIGRATIONS  # noqa: E402

DAY = 86400.0


async def fill(store: Store, n: int, agencies: list[str], start: float) -> None:
    rng = random.Random(7)
    reports, cases, deadlines, answers, ratings = [], [], [], [], []
    span = 91 * DAY
    for i in range(n):
        at = start + rng.random() * span
        agency = rng.choice(agencies)
        reports.append(("app", "app", f"k{i}", at, at, b"x", "text/plain",
                        '{"text": "Ống nước bể trên đường Lê Lợi", "subject": null}', "dispatched", "water_supply",
                        "infrastructure", agency, "quan-1", f"INC-{i // 3 * 2 + i % 3 // 2:06d}", at))
        if i % 3 == 2:
            continue  # a third are duplicates of an incident that already has its case
        case = f"C{i}"
        cases.append((case, f"INC-{i}", i + 1, f"t{i}", "water_supply", "infrastructure", agency, "resolved", at,
                      at + 60, at, at))
        for kind, due in (("forward", 300), ("site_check", 7200), ("fix", 7200)):
            met = rng.random() < 0.8
            deadlines.append((case, agency, kind, at, at + due, at + due - 300,
                              "met" if met else rng.choice(("missed", "met_late")), at + due * (0.5 if met else 2)))
        answers.append((case, agency, "resolved", "api", at + 3600))
        if rng.random() < 0.3:
            ratings.append((case, rng.randint(1, 5), at + 7200))
    async with store.transaction() as tx:
        await tx.executemany(
            "INSERT INTO reports(channel, channel_instance, idem_key, received_at, stored_at, raw, raw_type, record,"
            " status, topic, category, agency, district, incident_id, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            reports)
        await tx.executemany(
            "INSERT INTO cases(id, incident_id, report_id, token, topic, category, agency, state, received_at,"
            " forwarded_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", cases)
        await tx.executemany(
            "INSERT INTO deadlines(case_id, agency, kind, started_at, due_at, warn_at, state, closed_at)"
            " VALUES (?,?,?,?,?,?,?,?)", deadlines)
        await tx.executemany("INSERT INTO answers(case_id, agency, kind, source, at) VALUES (?,?,?,?,?)", answers)
        await tx.executemany("INSERT INTO ratings(case_id, score, at) VALUES (?,?,?)", ratings)


async def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        await fn()
        best = min(best, time.perf_counter() - t)
    return best


async def main(n: int) -> None:
    directory = load_directory()
    names = {a.id: a.name_vi for a in directory.agencies.values()}
    quarter = quarter_from(date(2026, 7, 1))
    week = week_from(date(2026, 8, 3))
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock(quarter.end + DAY)
        store = await Store.open(Path(tmp) / "bench.sqlite3", Path(tmp) / "blobs", clock=clock,
                                 migrations={"dedupe": DEDUPE_MIGRATIONS, "dispatch": DISPATCH_MIGRATIONS, "ops": OPS_MIGRATIONS})
        try:
            await fill(store, n, sorted(names), quarter.start)
            metrics = OpsMetrics(store, cache_seconds=0)
            base = await timed(lambda: store.fetchone("SELECT COUNT(*), SUM(LENGTH(record)) FROM reports"))
            weekly = await timed(lambda: agency_figures(store, week, names))
            quarterly = await timed(lambda: agency_figures(store, quarter, names))
            first = await timed(metrics.render, repeat=1)  # counts every report and event once
            scrape = await timed(metrics.render)  # then only the rows added since the last scrape
            figures = await agency_figures(store, week, names)
            render = await timed(lambda: asyncio.to_thread(render_weekly, figures["sawaco"], week, clock.now()))
        finally:
            await store.close()
    print(f"store: {n} reports, {n * 2 // 3} cases, {n * 2} clocks, {len(names)} agencies")
    print(f"baseline full scan of reports : {base * 1000:8.1f} ms")
    for label, value in (("weekly figures, all agencies", weekly), ("quarterly figures", quarterly),
                         ("first /metrics scrape", first), ("next /metrics scrapes", scrape), ("render one weekly report", render)):
        print(f"{label:30s}: {value * 1000:8.1f} ms  ({value / base:5.1f}x baseline)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=60000)
    asyncio.run(main(parser.parse_args().reports))
