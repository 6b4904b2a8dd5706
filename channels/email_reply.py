"""Answers to email reporters: outgoing SMTP through smtplib on a small thread pool, never on the loop.

Owns the shape of our outgoing mail: `Auto-Submitted: auto-replied` (RFC 3834, so well-behaved
auto-responders do not answer us), `In-Reply-To`/`References` to the reporter's mail, a case token in the
subject, and a Message-ID that names the report so the reporter's answer threads back onto it
(channels/email_intake.py OUR_MESSAGE_ID).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from config.channels import EmailReplyOptions
from ingest.app import AppContext, ThreadedReply
from ingest.mail import header_text, send_message, single_address
from ingest.errors import PermanentError, TransientError
from ingest.store import Store, StoredReport
from ingest.vocabulary import CHAT_TEXTS

from .email_intake import AGENCY_ANSWER_FLAG

log = logging.getLogger(__name__)


def reply_message_id(report_id: int, text: str, domain: str, secret: str = "") -> str:
    # Derived from the content, so a retried send carries the same id and receivers can drop the repeat; and
    # from `secret` (the reporter's own Message-ID, known only to their thread), so nobody else can forge a
    # reply that threads onto this report (channels/email_intake.py find_thread also wants it recorded as sent).
    digest = hashlib.sha256(f"{report_id}\0{text}\0{secret}".encode()).hexdigest()[:24]
    return f"<1022.r{report_id}.{digest}@{domain}>"


def compose_reply(report: StoredReport, text: str, options: EmailReplyOptions, when_ts: float) -> EmailMessage:
    from datetime import datetime, timezone

    to = report.message.reporter.email
    if not to:
        raise PermanentError("report has no email address to answer")
    domain = options.from_address.rpartition("@")[2] or "localhost"
    msg = EmailMessage()
    msg["From"] = formataddr((options.from_name, options.from_address))
    msg["To"] = single_address(to)
    base = header_text(report.message.subject or "")
    token = f"[1022-{report.id}]"
    if token in base:
        subject = base
    elif base:
        subject = f"Re: {base} {token}" if not base.lower().startswith("re:") else f"{base} {token}"
    else:
        subject = CHAT_TEXTS["email_subject"]["vi"].format(token=token)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(when_ts, timezone.utc))
    msg["Message-ID"] = reply_message_id(report.id, text, domain, report.message.idempotency_key)
    original = report.message.reporter.reply_to or report.message.external_id
    if original:
        msg["In-Reply-To"] = original
        msg["References"] = original
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"  # Outlook / Exchange: no out-of-office answers to us
    msg.set_content(text)
    return msg


class EmailReplySender:
    def __init__(self, store: Store, options: EmailReplyOptions, max_workers: int = 2) -> None:
        self.store = store
        self.options = options
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="smtp-out")

    async def send_reply(self, report: StoredReport, text: str) -> None:
        reply = self.threaded_reply(report, text)
        await asyncio.get_running_loop().run_in_executor(self._pool, reply.send)
        await reply.sent()

    def threaded_reply(self, report: StoredReport, text: str) -> ThreadedReply:
        """The reply as a blocking send and what is recorded after it (the notify stage runs the send by
        ingest.worker.in_thread, which keeps the job leased through a stop mid-send; see ReplySender)."""
        if set(report.message.flags) - {AGENCY_ANSWER_FLAG}:
            # Last line of defence against mail loops: never answer auto-replies, bounces, bulk mail. (A mail held
            # for dispatch as an agency's answer that named none of our dispatches is an ordinary report.)
            raise PermanentError("flagged mail is never answered")
        msg = compose_reply(report, text, self.options, self.store.clock.now())

        async def sent() -> None:
            async with self.store.transaction() as tx:
                await tx.event(report.id, "email_reply_sent", "system", {"message_id": msg["Message-ID"]})

        return ThreadedReply(send=lambda: self._send(msg), sent=sent)

    def _send(self, msg: EmailMessage) -> None:
        send_message(self.options, msg)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def register_reply_sender(ctx: AppContext, options: EmailReplyOptions) -> None:
    """Register once per context; a second email channel with a `reply` table reuses the first sender."""
    existing = ctx.replies.get("email")
    if isinstance(existing, EmailReplySender):
        if existing.options != options:
            log.warning("several email channels set `reply`; the first one is used")
        return
    ctx.replies.register("email", EmailReplySender(ctx.store, options))
