"""What a classification hands to the next stage: one rule, shared by the classify stage and by an operator's
review decision (classifier/review.py), so neither module needs the other for it."""
from __future__ import annotations

from ingest.records import Classification
from ingest.store import Tx


async def enqueue_next(tx: Tx, report_id: int, result: Classification, after_review: bool = False) -> None:
    """Routed or in review -> `dedupe`; rejected or out of scope -> `notify` the reporter with the reason."""
    if result.status in ("routed", "review"):
        await tx.enqueue("dedupe", report_id, {"after_review": True} if after_review else {})
    elif result.status in ("rejected", "out_of_scope"):
        template = "rejected" if result.status == "rejected" else "out_of_scope"
        await tx.enqueue("notify", report_id, {"template": template, "reason": result.reason})
