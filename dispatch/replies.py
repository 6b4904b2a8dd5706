"""The jobs the email channels queue for dispatch, applied in the transaction that finishes each job.

- `agency_email_reply`: an agency's mail answering a dispatch email, stored as a flagged report (never routed).
  Applied, or kept as a note for operators, by dispatch/answers.py's checks; the outcome is an event on the mail's
  own report. A mail that turns out to name none of our dispatches is an ordinary report after all: it goes to the
  classifier like any other.
- `reporter_follow_up`: a reporter's reply threaded onto their earlier report: after a result, within the dispute
  window and saying it is not fixed, it disputes the result; otherwise it stays on the timeline as it is.

A job's report may have been left as it is by an older daemon; everything here is idempotent (answers by the
mail's Message-ID, notes once per mail, a dispute only of a closed case).
"""
from __future__ import annotations

import logging

from ingest.jobs import CLASSIFY, AgencyEmailReplyJob, ReporterFollowUpJob
from ingest.records import Job
from ingest.store import StoredReport, Tx
from ingest.text import fold
from ingest.worker import Writes

from .answers import apply_email_reply_in
from .cases import CaseBook, NotFound, ReporterRejected
from .messages import is_dispute

log = logging.getLogger(__name__)

CHECKED_EVENT = "agency_reply_checked"


class EmailReplies:
    def __init__(self, book: CaseBook) -> None:
        self.book = book

    async def handle_agency_reply(self, job: Job, report: StoredReport) -> Writes:
        reply: AgencyEmailReplyJob = job.payload

        async def writes(tx: Tx) -> None:
            outcome = await apply_email_reply_in(tx, self.book, reply)
            await tx.event(report.id, CHECKED_EVENT, "dispatch", {
                "status": outcome.status, "case_id": outcome.case_id, "kind": outcome.kind})
            if outcome.status == "unmatched":
                # It names no dispatch of ours: an ordinary mail, classified like every report.
                await tx.execute("UPDATE reports SET status='received', updated_at=? WHERE id=? AND status='ignored'",
                                 (tx.store.clock.now(), report.id))
                await tx.enqueue(CLASSIFY, report.id)
        return writes

    async def handle_follow_up(self, job: Job, report: StoredReport) -> Writes | None:
        follow: ReporterFollowUpJob = job.payload
        if not is_dispute(fold(follow.text)):
            return None  # a thank-you, a question: it stays on the timeline as the reporter's reply
        if not follow.proven:
            # A From and a report number anyone can write: it stays on the timeline, and reopens nothing.
            log.info("reporter follow-up on report %d kept as a note: its sender is not proven", report.id)
            return None

        async def writes(tx: Tx) -> None:
            await tx.execute("SAVEPOINT follow_up")
            try:
                await self.book.dispute_in(tx, report.id, follow.text, source=follow.channel)
            except (ReporterRejected, NotFound) as exc:
                # No result to dispute, or too late: nothing of the attempt stays; the reply is on the timeline.
                await tx.execute("ROLLBACK TO follow_up")
                log.info("reporter follow-up on report %d kept as a note: %s", report.id, type(exc).__name__)
            await tx.execute("RELEASE follow_up")
        return writes
