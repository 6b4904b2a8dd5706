"""The `classify` stage: embed each report once, find its place, decide topic/agency/status, store the vector.

Writes, atomically with finishing the job: reports.status/topic/category/agency/district/confidence/
classification, the `embeddings` row, an event, and the next job (`dedupe` for routed/review, `notify` with
the reason for rejected/out_of_scope). The model trains (or loads from cache) at start, off the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import numpy as np

from ingest.app import AppContext, Service
from ingest.errors import TransientError
from ingest.jobs import NOTIFY, NotifyJob
from ingest.records import Classification, Job, to_json
from ingest.store import Store, StoredReport, Tx
from ingest.text import fold
from ingest.worker import StageWorker, WorkerSettings, Writes

from classifier.embedding.embedder import EmbeddingThread, embed_threads, load_embedder, report_text, serving_threads
from classifier.routing.handoff import enqueue_next
from classifier.review.decisions import Retrainer, review_examples
from classifier.training.trainer import Router

log = logging.getLogger(__name__)

STAGE = "classify"
_EN_WORDS = re.compile(r"\b(the|is|are|and|on|in|at|of|please|there|street|near|since|my|our|this|for)\b")


def guess_language(text: str) -> str:
    """'vi' or 'en': English reports get English answers. Diacritics mean Vietnamese."""
    if fold(text) != text.lower():
        return "vi"
    return "en" if len(_EN_WORDS.findall(text.lower())) >= 3 else "vi"


def shared_embedder(ctx: AppContext) -> EmbeddingThread:
    """The process-wide embedder: loaded once, reused across stages and config reloads."""
    cfg = ctx.settings.classifier
    key = (cfg.backend, cfg.model, cfg.variant, cfg.embed_threads, cfg.embed_nice)
    current = ctx.published.embedder
    if isinstance(current, EmbeddingThread) and ctx.published.embedder_key == key:
        return current
    # `route` is a batch with nothing else to serve: every core; the daemon leaves one to intake and the stages.
    threads = embed_threads(cfg.embed_threads) if ctx.route_mode else serving_threads(cfg.embed_threads)
    thread = EmbeddingThread(load_embedder(cfg.backend, cfg.model, cfg.variant, threads), cfg.embed_nice)
    ctx.published.embedder, ctx.published.embedder_key = thread, key
    log.info("embedder loaded: %s (dim %d)", thread.name, thread.dim)
    return thread


class ClassifyStage:
    name = "classifier"

    def __init__(self, ctx: AppContext, router: Router) -> None:
        self.ctx = ctx
        self.router = router
        q = ctx.settings.queue
        self.worker = StageWorker(ctx.store, STAGE, self.handle,
                                  # Reports are classified independently: the next batch is embedded while
                                  # this one is committed, and a batch commits once (see WorkerSettings).
                                  WorkerSettings(batch=ctx.settings.classifier.batch, lease_seconds=q.lease_seconds,
                                                 max_attempts=q.max_attempts, prefetch=True, group_commit=True,
                                                 group_size=q.group_commit_jobs),
                                  batch_handler=self.prepare)
        self._prepared: dict[int, Classification] = {}
        self._vectors: dict[int, np.ndarray] = {}
        self.ready = asyncio.Event()

    async def start(self) -> None:
        """Train or load the model without blocking the loop (first start embeds the seed set)."""
        if self.router.model is None:
            await asyncio.to_thread(self.router.load, await self._review_examples())
        self.ready.set()

    async def run(self) -> None:
        await self.start()
        await self.worker.run()

    async def _review_examples(self) -> list[Any]:
        return await review_examples(self.ctx.store)

    async def _follow_up(self, report: StoredReport) -> Writes | None:
        """A message from the same reporter on the same chat or app within the window of their open report joins
        that report's timeline (ingest/followup.py) instead of being classified as a new report."""
        from ingest import followup

        if await _follow_up_of(self.ctx, report, self.ctx.store) is None:
            return await self._dispute(report)

        async def writes(tx: Tx) -> None:
            # Decided again inside the commit: a batch commits at once, and a message must see what the ones
            # before it in the batch became (a follow-up or a refused report is no longer open).
            earlier = await _follow_up_of(self.ctx, report, tx)
            if earlier is None:
                raise TransientError("the reporter's open report changed in this batch: classify again",
                                     retry_after=0.0)
            await followup.join_timeline(tx, earlier, report)
            await tx.enqueue(NOTIFY, report.id, NotifyJob(template="follow_up", report_id=earlier))
        return writes

    async def _dispute(self, report: StoredReport) -> Writes | None:
        """A message from the same reporter on the same chat after their report's result, saying it is not
        fixed, disputes the result (Art. 7.4) like a reply by email: dispatch decides whether it is a dispute
        (its words, its window) and reopens the case; the message then lives on the disputed report's timeline.
        Anything else (a thank-you, a new problem) is classified as a new report."""
        from config.dispatch import dispatch_settings
        from ingest import followup

        handler = self.ctx.published.reporter_follow_up
        # Only a chat answers the bot's result message; on the app every submission is a new report (its
        # reporters dispute on the lookup page), so "rác vẫn còn" there is never taken for an old case's dispute.
        if handler is None or report.message.channel not in followup.CHAT_CHANNELS:
            return None
        row = await self.ctx.store.fetchone("SELECT received_at FROM reports WHERE id=?", (report.id,))
        if row is None:
            return None
        days = dispatch_settings(self.ctx.settings).reporters.dispute_days
        earlier = await followup.earlier_closed_report(self.ctx.store, report, float(row["received_at"]),
                                                       days * 86400.0)
        if earlier is None:
            return None
        outcome = await handler(report_id=earlier, text=report.message.text, channel=report.message.channel)
        if outcome != "disputed":
            return None

        async def writes(tx: Tx) -> None:
            # dispatch has told the reporter the case went back to the agency: no second message here.
            await followup.join_timeline(tx, earlier, report)
        return writes

    async def prepare(self, batch: list[tuple[Job, StoredReport]]) -> None:
        """Embed and classify the whole leased batch in one model call."""
        items = [(job, report) for job, report in batch if job.id not in self._prepared]
        if not items:
            return
        router = self.router
        texts = [report_text(r.message.text, r.message.subject) for _, r in items]
        # The restorer, the gazetteer and the topic model cost about a fifth of the embedding: run on the event
        # loop they stalled intake and the later stages for a whole batch (a POST waited ~200 ms under load).
        # In a worker thread they run beside the inference thread (ONNX Runtime releases the GIL); the places
        # need only the texts, so they are found while the batch is embedded.
        embedded = await asyncio.to_thread(router.embedding_texts, texts)
        vectors, places = await asyncio.gather(
            router.embedder.encode(embedded),
            asyncio.to_thread(lambda: [router.place(t, r.message.lat, r.message.lon, r.message.reporter.address)
                                       for t, (_, r) in zip(texts, items)]))
        results = await asyncio.to_thread(router.classify, texts, vectors, places,
                                          [guess_language(t) for t in texts])
        for (job, _), vec, result in zip(items, vectors, results):
            self._prepared[job.id] = result
            self._vectors[job.id] = vec

    async def handle(self, job: Job, report: StoredReport) -> Writes | None:
        if not self.ctx.route_mode:
            follow = await self._follow_up(report)
            if follow is not None:
                self._prepared.pop(job.id, None)
                self._vectors.pop(job.id, None)
                return follow
        if job.id not in self._prepared:
            try:
                await self.prepare([(job, report)])
            except RuntimeError as exc:
                raise TransientError(str(exc), retry_after=5.0) from exc
        result = self._prepared.pop(job.id)
        vector = self._vectors.pop(job.id)
        model_name, dim = self.router.embedder.name, int(vector.shape[0])
        return classification_writes(report.id, result, vector, model_name, dim)


async def _follow_up_of(ctx: AppContext, report: StoredReport, reader: Store | Tx) -> int | None:
    from config.dispatch import dispatch_settings
    from ingest import followup

    if not followup.sender_keys(report.message):
        return None  # nothing tells who sent it (a form without phone or reply address): no read needed
    hours = dispatch_settings(ctx.settings).reporters.follow_up_hours
    row = await reader.fetchone("SELECT received_at FROM reports WHERE id=?", (report.id,))
    if row is None:
        return None
    return await followup.earlier_open_report(reader, report, float(row["received_at"]), hours * 3600.0)


def classification_writes(report_id: int, result: Classification, vector: np.ndarray | None,
                          model_name: str | None, dim: int | None, actor: str = "classifier") -> Writes:
    async def writes(tx: Tx) -> None:
        await tx.write(
            "UPDATE reports SET status=?, topic=?, category=?, agency=?, district=?, confidence=?,"
            " classification=?, updated_at=? WHERE id=?",
            (result.status, result.topic, result.category, result.agency, result.place.district,
             result.confidence, to_json(result), tx.store.clock.now(), report_id))
        if vector is not None:
            await tx.write(
                "INSERT INTO embeddings(report_id, model, dim, vector) VALUES (?,?,?,?)"
                " ON CONFLICT(report_id) DO UPDATE SET model=excluded.model, dim=excluded.dim,"
                " vector=excluded.vector",
                (report_id, model_name, dim, np.asarray(vector, np.float32).tobytes()))
        await tx.event(report_id, "classified", actor,
                       {"status": result.status, "topic": result.topic, "agency": result.agency,
                        "district": result.place.district, "confidence": result.confidence})
        await enqueue_next(tx, report_id, result)
    return writes


def _not_ready(embedder: EmbeddingThread, router: Router) -> str | None:
    """Why the classifier cannot classify yet: the embedder loads at build time, the topic model afterwards in
    the classify stage's own thread."""
    if getattr(embedder, "ready", True) is False or router.model is None:
        return "classifier: model not loaded yet"
    return None


def build(ctx: AppContext) -> list[Service]:
    if ctx.settings.classifier.backend == "none":
        log.warning("classifier backend 'none': the classify stage is not running")
        return []
    embedder = shared_embedder(ctx)
    router = ctx.published.router
    # A reload that changed only the agency directory file (routing rules) must still route by the new rules.
    if (not isinstance(router, Router) or router.embedder is not embedder or router.settings != ctx.settings
            or router.directory != ctx.directory):
        previous = router if isinstance(router, Router) else None
        router = Router(ctx.settings, ctx.directory, embedder)
        if previous is not None and previous.embedder is embedder:
            router.model, router.model_version = previous.model, previous.model_version
        ctx.published.router = router
    ctx.published.classifier_not_ready = lambda: _not_ready(embedder, router)
    # Chat channels ask for the place when the words and GPS give none (channels/place_question.py).
    ctx.published.place_found = router.place_found
    # On the 2025 map, chat channels ask which ward/commune when the words name several (telegram_dialogue.py).
    ctx.published.unit_candidates = router.unit_candidates if ctx.directory.structure == "2025" else None

    return [ClassifyStage(ctx, router),
            Retrainer(ctx.store, router, ctx.settings.classifier.retrain_min_decisions)]
