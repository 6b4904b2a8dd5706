"""What a classification hands to the next stage: one rule, shared by the classify stage and by an operator's
review decision (classifier/review/decisions.py), so neither module needs the other for it."""
from __future__ import annotations

from ingest.jobs import DEDUPE, NOTIFY, DedupeJob, NotifyJob
from ingest.records import Classification
from ingest.store import Tx


async def enqueue_next(tx: Tx, report_id: int, result: Classification, after_review: bool = False) -> None:
    """Routed or in review -> `dedupe`; rejected or out of scope -> `notify` the reporter with the reason."""
    if result.status in ("routed", "review"):
        await tx.enqueue(DEDUPE, report_id, DedupeJob(after_review=after_review), need_id=False)
    elif result.status in ("rejected", "out_of_scope"):
        template = "rejected" if result.status == "rejected" else "out_of_scope"
        await tx.enqueue(NOTIFY, report_id, NotifyJob(template=template, reason=result.reason), need_id=False)
