"""Operator review: the queue of low-confidence reports, one report with its candidates and reasons, and
decisions (agency, topic, or reject) recorded with who and when.

A decision updates the report, records an event and a `review_decisions` row, and re-enqueues `dedupe`
{"after_review": true} (or `notify` for a rejection) in one transaction. Decisions are training examples:
`maybe_retrain` retrains in the background and swaps the model atomically. The example's topic is the one the
operator chose or the one their agency implies (`policy.training_label`); an agency-only correction that implies
none records no topic, so the model's old, wrong topic is never taught back to it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from config.directory import Directory, load_directory
from config.schema import Settings
from ingest.records import Classification, from_json, to_json
from ingest.store import Store

from classifier.embedding.embedder import report_text
from classifier.routing.handoff import enqueue_next
from classifier.routing.policy import operator_decision, training_label
from classifier.training.examples import Example, reject_reasons

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueItem:
    report_id: int
    received_at: float
    channel: str
    topic: str | None
    agency: str | None
    district: str | None
    confidence: float | None
    excerpt: str


async def review_queue(store: Store, limit: int = 50) -> list[QueueItem]:
    rows = await store.fetchall(
        "SELECT id, received_at, channel, topic, agency, district, confidence, record FROM reports"
        " WHERE status='review' ORDER BY received_at LIMIT ?", (limit,))
    out = []
    for r in rows:
        text = json.loads(r["record"]).get("text", "")
        out.append(QueueItem(report_id=r["id"], received_at=r["received_at"], channel=r["channel"], topic=r["topic"],
                             agency=r["agency"], district=r["district"], confidence=r["confidence"],
                             excerpt=" ".join(text.split())[:120]))
    return out


async def nearest_examples(store: Store, report_id: int, k: int = 3) -> list[dict[str, Any]]:
    """The labelled reports closest to this one in embedding space (routed/decided reports in the store)."""
    row = await store.fetchone("SELECT model, vector FROM embeddings WHERE report_id=?", (report_id,))
    if row is None:
        return []
    query = np.frombuffer(row["vector"], np.float32)
    rows = await store.fetchall(
        "SELECT e.report_id, e.vector, r.topic, r.agency, r.record FROM embeddings e JOIN reports r ON r.id=e.report_id"
        " WHERE e.model=? AND e.report_id!=? AND r.status NOT IN ('review','received','failed','ignored')"
        " ORDER BY e.report_id DESC LIMIT 5000", (row["model"], report_id))
    if not rows:
        return []
    mat = np.stack([np.frombuffer(r["vector"], np.float32) for r in rows])
    sims = mat @ query
    out = []
    for i in np.argsort(-sims)[:k]:
        r = rows[int(i)]
        out.append({"report_id": r["report_id"], "similarity": round(float(sims[i]), 3), "topic": r["topic"],
                    "agency": r["agency"], "excerpt": " ".join(json.loads(r["record"]).get("text", "").split())[:100]})
    return out


async def show(store: Store, report_id: int) -> dict[str, Any]:
    row = await store.fetchone("SELECT id, status, record, classification FROM reports WHERE id=?", (report_id,))
    if row is None:
        raise LookupError(f"no report {report_id}")
    record = json.loads(row["record"])
    cls = json.loads(row["classification"]) if row["classification"] else None
    decisions = await store.fetchall(
        "SELECT actor, at, decision, topic, agency FROM review_decisions WHERE report_id=? ORDER BY id", (report_id,))
    return {
        "report_id": row["id"], "status": row["status"], "channel": record.get("channel"),
        "text": record.get("text"), "subject": record.get("subject"),
        "classification": cls,
        "candidates": (cls or {}).get("candidates", []),
        "place": (cls or {}).get("place"),
        "nearest": await nearest_examples(store, report_id),
        "decisions": [dict(d) for d in decisions],
    }


class AlreadyDecided(ValueError):
    """The report is no longer waiting for review: another operator (or a second click) decided it first."""


async def decide(store: Store, directory: Directory, report_id: int, *, actor: str, topic: str | None = None,
                 agency: str | None = None, reject: str | None = None,
                 reasons: dict[str, str] | None = None) -> Classification:
    """Record an operator decision and send the report on. Raises LookupError/ValueError on bad input, and
    AlreadyDecided when the report is not (or, by the time the decision is written, no longer) in review."""
    if not actor:
        raise ValueError("an operator name (--actor) is required")
    row = await store.fetchone("SELECT id, status, record, classification, topic, agency FROM reports WHERE id=?",
                               (report_id,))
    if row is None:
        raise LookupError(f"no report {report_id}")
    if row["classification"] is None:
        raise ValueError(f"report {report_id} has not been classified yet")
    if row["status"] != "review":
        raise AlreadyDecided(f"report {report_id} is not waiting for review (status: {row['status']})")
    previous = from_json(Classification, row["classification"])
    result = operator_decision(directory, previous, topic=topic, agency=agency, reject=reject, reasons=reasons)
    label = training_label(directory, result, topic=topic)
    record = json.loads(row["record"])
    text = report_text(record.get("text", ""), record.get("subject"))
    now = store.clock.now()
    async with store.transaction() as tx:
        # Checked again inside the write transaction: two operators deciding at once must not both dispatch.
        cur = await tx.execute(
            "UPDATE reports SET status=?, topic=?, category=?, agency=?, confidence=?, classification=?, updated_at=?"
            " WHERE id=? AND status='review'", (result.status, result.topic, result.category, result.agency,
                                                result.confidence, to_json(result), now, report_id))
        if cur.rowcount != 1:
            raise AlreadyDecided(f"report {report_id} was decided by someone else a moment ago")
        await tx.execute(
            "INSERT INTO review_decisions(report_id, actor, at, decision, topic, agency, previous_topic,"
            " previous_agency, text) VALUES (?,?,?,?,?,?,?,?,?)",
            (report_id, actor, now, "reject" if result.status in ("rejected", "out_of_scope") else "route",
             label, result.agency, row["topic"], row["agency"], text))
        await tx.event(report_id, "review_decision", actor,
                       {"status": result.status, "topic": result.topic, "agency": result.agency,
                        "previous_topic": row["topic"], "previous_agency": row["agency"]})
        await enqueue_next(tx, report_id, result, after_review=True)
    return result


async def review_examples(store: Store) -> list[Example]:
    """Operator decisions as training examples; the latest decision per report wins."""
    try:
        rows = await store.fetchall(
            "SELECT report_id, topic, text FROM review_decisions WHERE id IN"
            " (SELECT MAX(id) FROM review_decisions GROUP BY report_id) ORDER BY report_id")
    except Exception:  # table missing: the classifier migrations were not applied (tests of other stages)
        return []
    # Operators correct the model where it was unsure: weigh their labels above a seed example.
    return [Example(text=r["text"], topic=r["topic"], weight=2.0, source="review", ref=str(r["report_id"]))
            for r in rows if r["topic"]]


async def maybe_retrain(store: Store, router: Any, min_new: int, seen: int) -> int:
    """Retrain in a worker thread when at least `min_new` decisions arrived since the last training.

    Returns the number of decisions the live model now includes. The old model keeps serving meanwhile."""
    extra = await review_examples(store)
    if len(extra) - seen < min_new:
        return seen
    if await asyncio.to_thread(router.retrain, extra):
        return len(extra)
    return seen


class Retrainer:
    """Background service: polls for new review decisions and retrains (started by the classify stage build)."""

    name = "classifier-retrainer"

    def __init__(self, store: Store, router: Any, min_new: int, interval: float = 60.0) -> None:
        self.store, self.router, self.min_new, self.interval = store, router, min_new, interval
        self.seen = -1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.router.model is None:
                continue
            if self.seen < 0:
                self.seen = len(await review_examples(self.store))  # what the model was trained with at start
                continue
            self.seen = await maybe_retrain(self.store, self.router, self.min_new, self.seen)


# -- CLI -----------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """`review list | show ID | decide ID ...`, added to the daemon's one parser (run_daemon.py)."""
    sub = p.add_subparsers(dest="cmd", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="reports waiting for review")
    ls.add_argument("--limit", type=int, default=50)
    sh = sub.add_parser("show", help="one report with candidates, place and nearest examples")
    sh.add_argument("report_id", type=int)
    de = sub.add_parser("decide", help="route to an agency/topic, or reject")
    de.add_argument("report_id", type=int)
    de.add_argument("--actor", required=True, help="who decides (recorded)")
    g = de.add_mutually_exclusive_group(required=True)
    g.add_argument("--topic")
    g.add_argument("--agency")
    g.add_argument("--reject", choices=["abusive", "out_of_scope"])
    de.add_argument("--with-topic", dest="with_topic", help="topic to record with --agency")


async def review_cli(store: Store, settings: Settings, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="run_daemon.py review", description="Operator review of low-confidence reports")
    add_arguments(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return await run_cli(store, settings, args)


async def run_cli(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    if args.cmd == "list":
        items = await review_queue(store, args.limit)
        if not items:
            print("review queue is empty")
        for it in items:
            conf = f"{it.confidence:.2f}" if it.confidence is not None else "-"
            print(f"{it.report_id:>7}  {it.channel:<9} {conf}  {it.topic or '-':<22} {it.agency or '-':<24} "
                  f"{it.district or '-':<11} {it.excerpt}")
        return 0
    if args.cmd == "show":
        try:
            info = await show(store, args.report_id)
        except LookupError as exc:
            print(f"error: {exc}")
            return 1
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return 0
    directory = load_directory(settings.data.agencies, settings.data.structure)
    try:
        result = await decide(store, directory, args.report_id, actor=args.actor,
                              topic=args.topic or args.with_topic, agency=args.agency, reject=args.reject,
                              reasons=reject_reasons(settings.data.agencies))
    except (LookupError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    print(f"report {args.report_id}: {result.status} topic={result.topic} agency={result.agency} (by {args.actor})")
    return 0
