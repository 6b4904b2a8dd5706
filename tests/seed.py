"""What a stage leaves for the next one, made by the stages' own code: the one seeding module of the tests.

A report is submitted through the store (as a channel does); its `classify` job is taken by the real queue worker
and finished with the classify stage's own writes (classifier.service.classification_writes: the report row, the
event and the hand-off to `dedupe`), for the classification the test chooses instead of the model's; the `dedupe`
job is finished with the incident repository and the stage's own routing (dedupe.incidents, route_member), into
the incident the test chooses instead of the matcher's (a case's closing or reopening waiting before it is applied
by the stage's own writes); the `dispatch` job runs the real dispatch stage. No test
writes another stage's rows by hand.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from classifier.service import classification_writes
from dedupe import incidents
from dedupe.service import incident_state_writes, route_member
from dispatch.cases import CaseBook
from ingest.records import Classification, InboundMessage, Job
from ingest.store import Store, StoredReport, Tx
from ingest.worker import StageWorker, WorkerSettings

# One job at a time: each seeding step finishes the job of the report it names.
ONE = WorkerSettings(batch=1)


async def submit(store: Store, message: InboundMessage, raw: bytes | None = None) -> int:
    """The report as a channel stores it (raw bytes and record, its `classify` job enqueued)."""
    return (await store.submit(message, raw if raw is not None else message.text.encode(), "text/plain")).report_id


async def classify(store: Store, report_id: int, result: Classification, vector: np.ndarray | None = None,
                   model: str = "e5") -> None:
    """Finish the report's `classify` job with the classify stage's writes for `result`, with the report's
    embedding `vector` when the test gives one (dedupe matches on it)."""
    async def handle(job: Job, report: StoredReport) -> Any:
        assert report.id == report_id, "another report's classify job is waiting first"
        return classification_writes(report.id, result, vector, model if vector is not None else None,
                                     len(vector) if vector is not None else None)
    assert await StageWorker(store, "classify", handle, ONE).run_once() == 1


async def group(store: Store, report_id: int, incident_id: str | None = None) -> str:
    """Finish the report's `dedupe` job as the stage does, joining `incident_id` (a new incident when None or not
    yet open); returns the incident. Routing follows the stage's contract: the first routed member is dispatched,
    later ones are duplicates."""
    joined: list[str] = []

    async def handle(job: Job, report: StoredReport) -> Any:
        if job.payload.incident_state is not None:
            # A case closed or reopened before: the stage's own writes bring its incident along first.
            return incident_state_writes(job.id, job.payload)
        assert report.id == report_id, "another report's dedupe job is waiting first"

        async def writes(tx: Tx) -> None:
            row = await tx.fetchone("SELECT received_at, topic, district, status FROM reports WHERE id=?",
                                    (report_id,))
            target = incident_id if incident_id and await incidents.get(tx, incident_id) is not None else None
            if target is None:
                target = await incidents.create(tx, first_report_id=report_id, topic=row["topic"],
                                                district=row["district"], created_at=row["received_at"],
                                                last_report_at=row["received_at"])
            await incidents.join(tx, report_id, target, row["received_at"])
            await route_member(tx, report_id, target, row["status"])
            joined.append(target)
        return writes
    worker = StageWorker(store, "dedupe", handle, ONE)
    while not joined:
        assert await worker.run_once() == 1, "the report has no dedupe job waiting"
    return joined[0]


async def route(store: Store, report_id: int, result: Classification, incident_id: str | None = None) -> str:
    """`classify` then `group`: the report classified as `result` and grouped into `incident_id` (a new incident
    when None); returns the incident. A routed report that opens its incident then waits for dispatch."""
    await classify(store, report_id, result)
    return await group(store, report_id, incident_id)


async def dispatch(store: Store, book: CaseBook) -> int:
    """Run the real dispatch stage over the waiting `dispatch` jobs; how many it handled."""
    return await StageWorker(store, "dispatch", book.handle_dispatch).run_once()
