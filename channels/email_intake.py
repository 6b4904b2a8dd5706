"""What the SMTP listener and the IMAP poller share: raw mail in, a durable report (or quarantine row) out.

Owns: running the pure parser off the loop with a time limit, quarantining what it rejects (once per raw
message), storing attachments as blobs, and threading a reporter's reply onto the report it answers
(an event `reporter_reply` on the earlier report; the reply itself is kept flagged, never re-classified).

Mail for dispatch is stored, acknowledged and handed over as a job in the same transaction, never a call into
dispatch during intake: a mail naming one of our dispatch emails (ingest/agency_mail.py) is kept flagged
`agency_answer` with an `agency_email_reply` job (dispatch checks the proof and applies it, or keeps a note); a
reporter's reply gets a `reporter_follow_up` job on the report it answers (a dispute of its result, or a note).
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from config.channels import EmailLimitOptions
from ingest.clock import iso
from ingest.faults import ThrottledLog
from ingest.agency_mail import claims_a_dispatch
from ingest.jobs import AGENCY_EMAIL_REPLY, REPORTER_FOLLOW_UP, AgencyEmailReplyJob, ReporterFollowUpJob
from ingest.records import Attachment, InboundMessage
from ingest.store import Store, SubmitResult, Tx
from ingest.untrusted import row_id

from .mail_auth import sender_verdict
from .email_parse import ParsedEmail, ParseError, ParseLimits, parse_email, to_inbound

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

RAW_TYPE = "message/rfc822"
REPLY_FLAG = "reporter_reply"
AGENCY_ANSWER_FLAG = "agency_answer"  # held for dispatch's agency_email_reply job, never classified as it is


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
# ...on threads of their own, not the default executor: a 20 MB mail of short quoted lines takes 6 s to parse and
# its thread cannot be stopped at the time limit, so a sender with a few SMTP sessions held every default thread,
# and intake's other work there (Open311 bodies, blob writes, photos) waited behind its mail.
_PARSE_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mail-parse")
OUR_MESSAGE_ID = re.compile(r"^<1022\.r(\d{1,12})\.[0-9a-f]{4,64}@")


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    message: InboundMessage
    raw: bytes
    parsed: ParsedEmail
    thread_report_id: int | None  # the earlier report this mail answers, when it is a reporter's reply
    thread_proven: bool = True  # found by a Message-ID, or by the subject with our relay's pass for the From
    agency_reply: AgencyEmailReplyJob | None = None  # the job for dispatch, when it names one of our dispatches


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
                 trusted_authserv_ids: Sequence[str] = ()) -> None:
        self.store = store
        self.channel_instance = channel_instance
        self.limits = limits
        # Authentication-Results under these ids were written by our own relay (channels/mail_auth.py).
        self.trusted_authserv_ids = tuple(trusted_authserv_ids)

    # -- one message, acknowledged by the caller after this returns (SMTP) -------------------------------
    async def accept(self, raw: bytes, envelope_from: str | None = None, envelope_to: Sequence[str] = (), *,
                     believe_auth_results: bool = True) -> Outcome:
        """Store `raw` durably as a report or a quarantine row; raises StorageError (or any store error)."""
        prepared = await self.prepare(raw, envelope_from, envelope_to, believe_auth_results=believe_auth_results)
        if isinstance(prepared, Outcome):
            return prepared
        if prepared.agency_reply is not None or prepared.thread_report_id is not None:
            # Not the group commit: the mail and what it means for dispatch (its job, a reply's event and
            # follow-up job) commit together.
            (result,) = await self.store.submit_batch([(prepared.message, raw, RAW_TYPE)],
                                                      then=self.queue_jobs([prepared]))
        else:
            result = await self.store.submit(prepared.message, raw, RAW_TYPE)
        return Outcome(report_id=result.report_id, created=result.created,
                       thread_report_id=prepared.thread_report_id)

    # -- the steps, used one by one by the IMAP poller to commit a batch with its cursor -----------------
    async def prepare(self, raw: bytes, envelope_from: str | None = None, envelope_to: Sequence[str] = (), *,
                      believe_auth_results: bool = True) -> Prepared | Outcome:
        """Parse and store blobs; returns an Outcome when the mail went to quarantine instead.

        `believe_auth_results` false: the mail did not come through our relay (the SMTP listener's peer is not in
        its `trusted_relays`), so its Authentication-Results, whatever id they carry, are read as none at all. The
        IMAP poller reads a mailbox on the server it was configured for, whose headers are that server's."""
        try:
            if len(raw) <= INLINE_PARSE_BYTES:
                # Small mail parses in well under a millisecond; a thread hop would cost more than it saves.
                # The parser's own deadline still applies between parts.
                parsed = parse_email(raw, limits=self.limits, envelope_from=envelope_from)
            else:
                parsed = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                    _PARSE_POOL, functools.partial(parse_email, raw, limits=self.limits, envelope_from=envelope_from)),
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
        trusted_ids = self.trusted_authserv_ids if believe_auth_results else ()
        if not believe_auth_results and parsed.auth_results and sender_verdict(
                parsed.auth_results, self.trusted_authserv_ids, parsed.from_email or "") != "none":
            _throttled.log(logging.WARNING, f"{self.channel_instance}:auth_results_from_outside",
                           "%s: mail from a peer outside trusted_relays carries our relay's Authentication-Results;"
                           " ignored", self.channel_instance)
        thread_report_id = None
        extra_flags: tuple[str, ...] = ()
        agency_reply = None
        tags = subaddress_tags([*envelope_to, *parsed.header_recipients])
        if not parsed.flags and claims_a_dispatch(parsed.subject, parsed.references, tags):
            # An agency answering a dispatch email (or someone claiming to): dispatch checks the proof in a job.
            # The relay's verdict is read here, from the raw headers, once.
            verdict = sender_verdict(parsed.auth_results, trusted_ids, parsed.from_email or "")
            agency_reply = AgencyEmailReplyJob(
                from_addr=parsed.from_email, subject=parsed.subject, body=parsed.full_text,
                in_reply_to=parsed.references[0] if parsed.references else None,
                references=tuple(parsed.references), attachments=tuple(attachments),
                message_id=parsed.message_id, reply_tokens=tags, sender_auth=verdict)
            extra_flags = (AGENCY_ANSWER_FLAG,)
        thread_proven = True
        if not extra_flags and not parsed.flags and (parsed.references or parsed.case_token):
            thread = await self.find_thread(parsed)
            if thread is not None:
                thread_report_id, thread_proven = thread
                if not thread_proven:
                    # Threaded by the subject's report number and the From address, both claims: only our relay's
                    # verdict on that From makes it the reporter's (else a note that disputes nothing).
                    thread_proven = sender_verdict(parsed.auth_results, trusted_ids,
                                                   parsed.from_email or "") == "pass"
                extra_flags = (REPLY_FLAG,)
        message = to_inbound(parsed, channel_instance=self.channel_instance, received_at=iso(self.store.clock.now()),
                             attachments=tuple(attachments), extra_flags=extra_flags)
        return Prepared(message=message, raw=raw, parsed=parsed, thread_report_id=thread_report_id,
                        thread_proven=thread_proven, agency_reply=agency_reply)

    async def quarantine(self, raw: bytes, reason: str) -> int:
        """One quarantine row per distinct raw mail (the store counts a retry on that row), bounded in size."""
        _throttled.log(logging.WARNING, f"{self.channel_instance}:{reason}", "%s: mail quarantined (%s)",
                       self.channel_instance, reason)
        return await self.store.quarantine(self.channel_instance, raw, reason, {"channel": "email"})

    async def find_thread(self, parsed: ParsedEmail) -> tuple[int, bool] | None:
        """The report this mail answers, and whether that is proven: a Message-ID we really sent for it, the
        reporter's own earlier Message-ID (proven), or a report reference in the subject from the same address as
        that report's reporter (not proven: the caller asks the relay's verdict).

        A reference anyone can guess (a report number in `<1022.rN…>` or `[1022-N]`, a case number) is never
        enough on its own: it would let anyone write into someone else's report."""
        for ref in parsed.references:
            match = OUR_MESSAGE_ID.match(ref)
            if match and await self.store.fetchone(
                    "SELECT 1 FROM events WHERE report_id=? AND kind='email_reply_sent'"
                    " AND json_extract(data, '$.message_id')=?", (int(match.group(1)), ref)):
                return int(match.group(1)), True
        refs = [r for r in parsed.references if r != parsed.message_id]
        if refs:
            marks = ",".join("?" * len(refs))
            row = await self.store.fetchone(
                f"SELECT MIN(id) AS id FROM reports WHERE channel='email' AND external_id IN ({marks})", refs)
            if row is not None and row["id"] is not None:
                return int(row["id"]), True
        token = parsed.case_token
        senders = {a for a in (parsed.from_email, parsed.sender_email) if a}
        if not token or not senders:
            return None
        if token.startswith("1022-") and token[5:].isdigit():
            # A number past the database's integers ("[1022-99999999999999999999]") names no report; it made the
            # driver raise, and the mail was answered 451 for ever.
            report_id = row_id(token[5:])
            if report_id is None:
                return None
            rows = await self.store.fetchall("SELECT id, record FROM reports WHERE id=?", (report_id,))
        elif token.startswith(("INC-", "CASE-")):
            incident = "INC-" + token.split("-", 1)[1]
            rows = await self.store.fetchall("SELECT id, record FROM reports WHERE incident_id=? ORDER BY id",
                                             (incident,))
        else:
            return None
        for row in rows:
            reporter = (json.loads(row["record"]).get("reporter") or {})
            if str(reporter.get("email") or "").lower() in senders:
                return int(row["id"]), False
        return None

    def queue_jobs(self, prepared: list[Prepared]) -> Callable[[Tx, list[SubmitResult]], Awaitable[None]]:
        """The `then` of a submit_batch: each newly stored agency reply's job for dispatch, and each reporter
        reply's event and follow-up job, in the transaction that stores the mails (and the IMAP cursor): a crash
        after that commit must not leave a reply stored but never seen by dispatch. A mail delivered again was
        queued with its first copy."""
        async def then(tx: Tx, results: list[SubmitResult]) -> None:
            for p, result in zip(prepared, results):
                if p.agency_reply is not None and result.created:
                    await tx.enqueue(AGENCY_EMAIL_REPLY, result.report_id, p.agency_reply)
            await self._record_replies(tx, list(zip(prepared, results)))
        return then

    @staticmethod
    async def _record_replies(tx: Tx, stored: list[tuple[Prepared, SubmitResult]]) -> None:
        """Write the `reporter_reply` event on the earlier report, once, even if the mail is delivered twice, and
        queue dispatch's `reporter_follow_up` job (after a result, "not fixed" in the reply disputes it)."""
        for prepared, result in stored:
            if prepared.thread_report_id is None:
                continue
            # The CAST: PostgreSQL's JSON extraction is text, and an integer parameter compared with text is
            # refused there (SQLite compares either way).
            seen = await tx.fetchone(
                "SELECT 1 FROM events WHERE report_id=? AND kind=?"
                " AND CAST(json_extract(data, '$.reply_report_id') AS INTEGER)=?",
                (prepared.thread_report_id, REPLY_FLAG, result.report_id))
            if seen is not None:
                continue
            text = prepared.parsed.text[:4000]
            await tx.event(prepared.thread_report_id, REPLY_FLAG, "reporter", {
                "reply_report_id": result.report_id,
                "channel": "email",
                "message_id": prepared.parsed.message_id,
                "subject": prepared.parsed.subject,
                "text": text,
                "proven": prepared.thread_proven,
            })
            await tx.enqueue(REPORTER_FOLLOW_UP, prepared.thread_report_id,
                             ReporterFollowUpJob(text=text, channel="email", proven=prepared.thread_proven))
