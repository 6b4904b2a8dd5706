"""What the SMTP listener and the IMAP poller share: raw mail in, a durable report (or quarantine row) out.

Owns: running the pure parser off the loop with a time limit, quarantining what it rejects (once per raw
message), storing attachments as blobs, and threading a reporter's reply onto the report it answers
(an event `reporter_reply` on the earlier report; the reply itself is kept flagged, never re-classified).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from config.channels import EmailLimitOptions
from ingest.clock import iso
from ingest.faults import ThrottledLog
from ingest.records import Attachment, InboundMessage
from ingest.store import Store, SubmitResult

from .mail_auth import sender_verdict
from .email_parse import ParsedEmail, ParseError, ParseLimits, parse_email, to_inbound

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

RAW_TYPE = "message/rfc822"
REPLY_FLAG = "reporter_reply"
AGENCY_ANSWER_FLAG = "agency_answer"
AGENCY_ANSWER_REJECTED_FLAG = "agency_answer_rejected"


AGENCY_ANSWER_UNVERIFIED_FLAG = "agency_answer_unverified"


class AgencyReplyHook(Protocol):
    """Applies an agency's emailed answer to its case, or keeps it as a note for operators; returns applied,
    duplicate, unmatched, unverified or rejected (dispatch.answers.apply_email_reply behind
    ctx.shared["agency_email_reply"]). `from_addr` is the From address alone, `sender_auth` the trusted relay's
    verdict on it, `reply_tokens` the sub-address tags of the addresses the mail was delivered to."""

    async def __call__(self, *, from_addr: str | None, subject: str | None, body: str, in_reply_to: str | None,
                       references: Sequence[str], attachments: Sequence[Attachment],
                       message_id: str | None, reply_tokens: Sequence[str], sender_auth: str) -> str: ...


class ReporterFollowUpHook(Protocol):
    """A reporter's reply about their earlier report: a dispute of its result when it says so, within the window
    (dispatch behind ctx.shared["reporter_follow_up"]); returns "disputed" or "noted"."""

    async def __call__(self, *, report_id: int, text: str, channel: str) -> str: ...


def subaddress_tags(addresses: Iterable[str]) -> tuple[str, ...]:
    """`box+TAG@domain` -> TAG: our dispatch mail's reply address carries the case's reply token there."""
    tags = []
    for addr in addresses:
        local = addr.strip().strip("<>").rpartition("@")[0]
        if "+" in local:
            tags.append(local.partition("+")[2][:64])
    return tuple(dict.fromkeys(t for t in tags if t))[:20]
# Message-IDs of our own outgoing mail carry the report id, so a reply finds its report without a lookup table.
INLINE_PARSE_BYTES = 64 * 1024  # larger mail is parsed on a worker thread, under a hard time limit
OUR_MESSAGE_ID = re.compile(r"^<1022\.r(\d{1,12})\.[0-9a-f]{4,64}@")


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    message: InboundMessage
    raw: bytes
    parsed: ParsedEmail
    thread_report_id: int | None  # the earlier report this mail answers, when it is a reporter's reply


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    report_id: int | None = None
    created: bool = False
    quarantine_id: int | None = None
    thread_report_id: int | None = None


def limits_from(options: EmailLimitOptions) -> ParseLimits:
    return ParseLimits(
        max_header_bytes=options.max_header_bytes,
        max_attachments=options.max_attachments,
        max_attachment_bytes=options.max_attachment_bytes,
        time_limit=options.parse_seconds,
    )


class EmailIntake:
    def __init__(self, store: Store, channel_instance: str, limits: ParseLimits,
                 agency_reply: Callable[[], AgencyReplyHook | None] = lambda: None,
                 trusted_authserv_ids: Sequence[str] = (),
                 reporter_follow_up: Callable[[], ReporterFollowUpHook | None] = lambda: None) -> None:
        self.store = store
        self.channel_instance = channel_instance
        self.limits = limits
        # Authentication-Results under these ids were written by our own relay (channels/mail_auth.py).
        self.trusted_authserv_ids = tuple(trusted_authserv_ids)
        # Looked up per message: the dispatch stage registers its hook after the channels are built.
        self.agency_reply = agency_reply
        self.reporter_follow_up = reporter_follow_up

    # -- one message, acknowledged by the caller after this returns (SMTP) -------------------------------
    async def accept(self, raw: bytes, envelope_from: str | None = None, envelope_to: Sequence[str] = ()) -> Outcome:
        """Store `raw` durably as a report or a quarantine row; raises StorageError (or any store error)."""
        prepared = await self.prepare(raw, envelope_from, envelope_to)
        if isinstance(prepared, Outcome):
            return prepared
        result = await self.store.submit(prepared.message, raw, RAW_TYPE)
        await self.record_replies([(prepared, result)])
        return Outcome(report_id=result.report_id, created=result.created,
                       thread_report_id=prepared.thread_report_id)

    # -- the steps, used one by one by the IMAP poller to commit a batch with its cursor -----------------
    async def prepare(self, raw: bytes, envelope_from: str | None = None,
                      envelope_to: Sequence[str] = ()) -> Prepared | Outcome:
        """Parse and store blobs; returns an Outcome when the mail went to quarantine instead."""
        try:
            if len(raw) <= INLINE_PARSE_BYTES:
                # Small mail parses in well under a millisecond; a thread hop would cost more than it saves.
                # The parser's own deadline still applies between parts.
                parsed = parse_email(raw, limits=self.limits, envelope_from=envelope_from)
            else:
                parsed = await asyncio.wait_for(
                    asyncio.to_thread(parse_email, raw, limits=self.limits, envelope_from=envelope_from),
                    self.limits.time_limit + 1.0)
        except ParseError as exc:
            return Outcome(quarantine_id=await self.quarantine(raw, exc.reason))
        except TimeoutError:
            # The worker thread cannot be interrupted; it finishes on its own and its result is dropped.
            return Outcome(quarantine_id=await self.quarantine(raw, "parse_timeout"))
        attachments = []
        for part in parsed.attachments:
            digest = await self.store.put_blob(part.data, part.content_type)
            attachments.append(Attachment(sha256=digest, content_type=part.content_type, size=len(part.data),
                                          filename=part.filename))
        if parsed.skipped_attachments:
            log.info("%s: %d attachment(s) over the caps kept only in the raw mail", self.channel_instance,
                     parsed.skipped_attachments)
        thread_report_id = None
        extra_flags: tuple[str, ...] = ()
        hook = self.agency_reply()
        tags = subaddress_tags([*envelope_to, *parsed.header_recipients])
        if not parsed.flags and (parsed.references or parsed.case_token or tags) and hook is not None:
            # An agency answering a dispatch email. Applied before the mail is committed: the answer is
            # idempotent by Message-ID, so a redelivery after a crash here applies nothing twice.
            verdict = sender_verdict(parsed.auth_results, self.trusted_authserv_ids, parsed.from_email or "")
            status = await hook(from_addr=parsed.from_email, subject=parsed.subject, body=parsed.full_text,
                                in_reply_to=parsed.references[0] if parsed.references else None,
                                references=parsed.references, attachments=tuple(attachments),
                                message_id=parsed.message_id, reply_tokens=tags, sender_auth=verdict)
            if status in ("applied", "duplicate"):
                extra_flags = (AGENCY_ANSWER_FLAG,)
            elif status == "rejected":
                extra_flags = (AGENCY_ANSWER_REJECTED_FLAG,)  # kept for operators, never routed as a report
            elif status == "unverified":
                extra_flags = (AGENCY_ANSWER_UNVERIFIED_FLAG,)  # a note on the case, never a report nor a change
        if not extra_flags and not parsed.flags and (parsed.references or parsed.case_token):
            thread_report_id = await self.find_thread(parsed)
            if thread_report_id is not None:
                extra_flags = (REPLY_FLAG,)
        message = to_inbound(parsed, channel_instance=self.channel_instance, received_at=iso(self.store.clock.now()),
                             attachments=tuple(attachments), extra_flags=extra_flags)
        return Prepared(message=message, raw=raw, parsed=parsed, thread_report_id=thread_report_id)

    async def quarantine(self, raw: bytes, reason: str) -> int:
        """One quarantine row per distinct raw mail (the store counts a retry on that row), bounded in size."""
        _throttled.log(logging.WARNING, f"{self.channel_instance}:{reason}", "%s: mail quarantined (%s)",
                       self.channel_instance, reason)
        return await self.store.quarantine(self.channel_instance, raw, reason, {"channel": "email"})

    async def find_thread(self, parsed: ParsedEmail) -> int | None:
        """The report this mail answers: a Message-ID we really sent for it, the reporter's own earlier Message-ID,
        or a report reference in the subject from the same address as that report's reporter.

        A reference anyone can guess (a report number in `<1022.rN…>` or `[1022-N]`, a case number) is never
        enough on its own: it would let anyone write into someone else's report."""
        for ref in parsed.references:
            match = OUR_MESSAGE_ID.match(ref)
            if match and await self.store.fetchone(
                    "SELECT 1 FROM events WHERE report_id=? AND kind='email_reply_sent'"
                    " AND json_extract(data, '$.message_id')=?", (int(match.group(1)), ref)):
                return int(match.group(1))
        refs = [r for r in parsed.references if r != parsed.message_id]
        if refs:
            marks = ",".join("?" * len(refs))
            row = await self.store.fetchone(
                f"SELECT MIN(id) AS id FROM reports WHERE channel='email' AND external_id IN ({marks})", refs)
            if row is not None and row["id"] is not None:
                return int(row["id"])
        token = parsed.case_token
        senders = {a for a in (parsed.from_email, parsed.sender_email) if a}
        if not token or not senders:
            return None
        if token.startswith("1022-") and token[5:].isdigit():
            rows = await self.store.fetchall("SELECT id, record FROM reports WHERE id=?", (int(token[5:]),))
        elif token.startswith(("INC-", "CASE-")):
            incident = "INC-" + token.split("-", 1)[1]
            rows = await self.store.fetchall("SELECT id, record FROM reports WHERE incident_id=? ORDER BY id",
                                             (incident,))
        else:
            return None
        for row in rows:
            reporter = (json.loads(row["record"]).get("reporter") or {})
            if str(reporter.get("email") or "").lower() in senders:
                return int(row["id"])
        return None

    async def record_replies(self, stored: list[tuple[Prepared, SubmitResult]]) -> None:
        """Write the `reporter_reply` event on the earlier report, once, even if the mail is delivered twice."""
        replies = [(p, r) for p, r in stored if p.thread_report_id is not None]
        if not replies:
            return
        fresh: list[Prepared] = []
        async with self.store.transaction() as tx:
            for prepared, result in replies:
                seen = await tx.fetchone(
                    "SELECT 1 FROM events WHERE report_id=? AND kind=? AND json_extract(data, '$.reply_report_id')=?",
                    (prepared.thread_report_id, REPLY_FLAG, result.report_id))
                if seen is not None:
                    continue
                fresh.append(prepared)
                await tx.event(prepared.thread_report_id, REPLY_FLAG, "reporter", {
                    "reply_report_id": result.report_id,
                    "channel": "email",
                    "message_id": prepared.parsed.message_id,
                    "subject": prepared.parsed.subject,
                    "text": prepared.parsed.text[:4000],
                })
        hook = self.reporter_follow_up()
        for prepared in fresh if hook is not None else ():
            assert hook is not None and prepared.thread_report_id is not None
            try:
                # After a result, "not fixed" in the reply disputes it (the case reopens at the same agency).
                await hook(report_id=prepared.thread_report_id, text=prepared.parsed.text[:4000], channel="email")
            except Exception:  # the reply is stored and on the timeline; a failed hook must not fail intake
                log.exception("%s: reporter follow-up hook failed", self.channel_instance)
