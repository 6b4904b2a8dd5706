"""The `notify` stage: messages to reporters on the channel they used (Art. 6, 7.4).

Email, Messenger and Telegram replies go through the ReplySender their channel registered in ctx.replies;
phone and SMS reporters (and any other reporter who left a phone number, when no sender exists) get an SMS
through the configured HTTP gateway. A row in `notifications` per (report, template, case) makes a retried
job send nothing twice; a reporter we cannot reach is recorded, never a reason to fail the report.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from config.directory import Directory, unit_agency
from config.dispatch import DispatchConfig
from ingest.app import ReplyRegistry, ThreadedReply
from ingest.errors import PermanentError, TransientError
from ingest.pii import redact
from ingest.jobs import NotifyJob
from ingest.records import Job
from ingest.store import Store, StoredReport, Tx
from ingest.worker import Writes, in_thread

from . import policy
from .delivery import classify_status, parse_retry_after
from .cases import public_ref
from .messages import reporter_text, unit_committee_name
from .ssrf import GuardedResolver, check_url

log = logging.getLogger(__name__)

SMS_CHANNELS = ("phone", "sms")
# Messages that end a reporter-facing 5-minute clock from receipt (the first of them for each report).
RECEIPT_CLOCKS = {"ack": "acknowledge", "received": "acknowledge", "rejected": "acknowledge",
                  "out_of_scope": "acknowledge", "duplicate_ack": "duplicate_notice", "follow_up": "acknowledge"}


class SmsGateway:
    """POST {"to", "text", "sender", "id"} to the configured gateway; `id` lets the gateway drop repeats."""

    def __init__(self, cfg: DispatchConfig) -> None:
        self.cfg = cfg.sms
        self._session: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        return self.cfg.url is not None

    async def send(self, to: str, text: str, message_id: str, now: float) -> None:
        assert self.cfg.url is not None
        check_url(self.cfg.url, self.cfg.allow_private)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=GuardedResolver(self.cfg.allow_private), limit=8),
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_seconds), trust_env=False)
        headers = {"Authorization": f"Bearer {self.cfg.token.get_secret_value()}"} if self.cfg.token else {}
        body = {"to": to, "text": text, "sender": self.cfg.sender, "id": message_id}
        try:
            async with self._session.post(self.cfg.url, json=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                outcome = classify_status(resp.status, parse_retry_after(resp.headers.get("Retry-After"), now))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransientError(f"SMS gateway: {type(exc).__name__}") from None
        if outcome.kind == "transient":
            raise TransientError(f"SMS gateway: {outcome.error}", outcome.retry_after)
        if outcome.kind != "delivered":
            raise PermanentError(f"SMS gateway: {outcome.error}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Notifier:
    def __init__(self, store: Store, directory: Directory, cfg: DispatchConfig, replies: ReplyRegistry,
                 public_base_url: str, max_attempts: int) -> None:
        self.store = store
        self.directory = directory
        self.cfg = cfg
        self.replies = replies
        self.base_url = public_base_url.rstrip("/")
        self.sms = SmsGateway(cfg)
        self.warn = policy.WarnPolicy(fraction=cfg.clocks.warn_fraction, min_seconds=cfg.clocks.warn_min_seconds)
        self.max_attempts = max_attempts
        self.book: Any = None  # the CaseBook, for each reporter's own lookup token (set by dispatch.service)

    async def handle(self, job: Job, report: StoredReport) -> Writes | None:
        payload: NotifyJob = job.payload
        template = payload.template
        case = await self._case(job, report)
        key = f"{report.id}:{template}:{case['id'] if case else ''}"
        if await self.store.fetchone("SELECT 1 FROM notifications WHERE dedupe_key=?", (key,)):
            return None  # already sent (the job is a redelivery)
        channel = report.message.channel
        sender = self.replies.get(channel)
        phone = report.message.reporter.phone
        state, via = "sent", channel
        threaded: ThreadedReply | None = None
        failure: Exception | None = None
        try:
            link_token = await self.book.reporter_token(report.id, case["id"]) if case is not None and self.book else None
            text = self.render(template, payload, report, case, link_token)
            if sender is not None and channel not in SMS_CHANNELS:
                offer = getattr(sender, "threaded_reply", None)
                if offer is not None:
                    threaded = offer(report, text)  # sent below, by in_thread
                else:
                    await sender.send_reply(report, text)
            elif phone and self.sms.configured and (channel in SMS_CHANNELS or self.cfg.notify.sms_fallback):
                via = "sms"
                await self.sms.send(phone, text, f"n{report.id}-{template}-{case['id'] if case else ''}",
                                    self.store.clock.now())
            else:
                state, via = "unreachable", "none"
        except Exception as exc:
            failure = exc
        if threaded is None:
            return self._outcome(job, report, template, case, key, state, via, failure)
        reply = threaded

        async def then(thread: asyncio.Future[None]) -> Writes | None:
            # Also what a stop mid-send records once the thread is done (in_thread): the job stays leased till then.
            failure = thread.exception()
            if failure is None:
                try:
                    await reply.sent()
                except Exception as exc:
                    failure = exc
            return self._outcome(job, report, template, case, key, "sent", via, failure)

        return await in_thread(reply.send, then)

    def _outcome(self, job: Job, report: StoredReport, template: str, case: Any, key: str, state: str, via: str,
                 failure: Exception | None) -> Writes:
        """The job's writes for a send that went (`failure` None) or failed, or its failure raised again to be
        retried while attempts are left."""
        error = None
        if isinstance(failure, TransientError):
            if job.attempts < self.max_attempts:
                raise failure
            state, error = "failed", f"gave up: {failure}"
        elif isinstance(failure, PermanentError):
            state, error = "failed", str(failure)
        elif failure is not None:  # a channel's sender failing oddly: retry, then record; never fail the report
            if job.attempts < self.max_attempts:
                raise TransientError(f"reply sender: {type(failure).__name__}") from failure
            state, error = "failed", f"gave up: {type(failure).__name__}"
        if state != "sent":
            log.info("notify %s for report %d: %s", template, report.id, state)

        async def writes(tx: Tx) -> None:
            now = self.store.clock.now()
            await tx.execute("INSERT OR IGNORE INTO notifications(report_id, case_id, template, dedupe_key, channel,"
                             " state, error, at) VALUES (?,?,?,?,?,?,?,?)",
                             (report.id, case["id"] if case else None, template, key, via, state, error, now))
            await self._clocks(tx, report, template, case, sent=state == "sent", now=now)
            await tx.event(report.id, "reporter_notified", "dispatch",
                           {"template": template, "channel": via, "state": state})

        return writes

    async def _clocks(self, tx: Tx, report: StoredReport, template: str, case: Any, *, sent: bool,
                      now: float) -> None:
        """The reporter-facing clocks this message ends (6.2 acknowledge, 6.4 duplicate notice: 5 minutes from
        receipt, judged now, once per report), and the operator unit's hour for a report held for review (6.3),
        which starts at receipt and ends when the report leaves review (clocks.tick)."""
        kind = RECEIPT_CLOCKS.get(template)
        row = await tx.fetchone("SELECT received_at, status FROM reports WHERE id=?", (report.id,))
        if row is None:
            return
        received_at = float(row["received_at"])
        case_id = case["id"] if case is not None else None
        if kind is not None and sent:
            judged = policy.receipt_clock(kind, received_at, now)
            await tx.execute(
                "INSERT INTO deadlines(case_id, report_id, agency, kind, started_at, due_at, warn_at, state, closed_at)"
                " SELECT ?,?,?,?,?,?,?,?,? WHERE NOT EXISTS (SELECT 1 FROM deadlines WHERE report_id=? AND kind IN"
                " ('acknowledge','duplicate_notice'))",
                (case_id, report.id, policy.OPERATOR_UNIT, judged.kind, judged.started_at, judged.due_at,
                 judged.due_at, "met" if judged.met else "met_late", now, report.id))
        if template == "received" and row["status"] == "review":
            due = received_at + policy.HOUR
            await tx.execute(
                "INSERT INTO deadlines(report_id, agency, kind, started_at, due_at, warn_at) SELECT ?,?,?,?,?,?"
                " WHERE NOT EXISTS (SELECT 1 FROM deadlines WHERE report_id=? AND kind='operator_guidance')",
                (report.id, policy.OPERATOR_UNIT, "operator_guidance", received_at, due,
                 self.warn.warn_at(received_at, due), report.id))

    async def _case(self, job: Job, report: StoredReport) -> Any:
        payload: NotifyJob = job.payload
        if payload.case_id:
            return await self.store.fetchone("SELECT * FROM cases WHERE id=?", (payload.case_id,))
        incident = payload.incident_id or report.incident_id
        if incident:
            return await self.store.fetchone("SELECT * FROM cases WHERE incident_id=?", (incident,))
        return None

    def render(self, template: str, payload: NotifyJob, report: StoredReport, case: Any,
               link_token: str | None = None) -> str:
        language = (report.classification or {}).get("language") or (case["language"] if case else "vi")
        fields: dict[str, Any] = {"reason": payload.reason, "report_ref": payload.report_id}
        if case is not None:
            agency = self.directory.agencies.get(case["agency"])
            name = (agency.name_en if language == "en" else agency.name_vi) if agency else case["agency"]
            place = (report.classification or {}).get("place") or {}
            label = place.get("unit_label")
            if agency is not None and label and agency.id == unit_agency(str(place.get("unit"))):
                name = unit_committee_name(label, language)  # "Ủy ban nhân dân Phường Bình Tiên (P.7, Q.6 cũ)"
            # The agency's result reaches every reporter of the incident: none may read another's details.
            # Reporters read the case's public reference, never its sequential internal id.
            fields.update(case_id=public_ref(case["token"]), link=f"{self.base_url}/cases/{link_token or case['token']}",
                          result=redact(case["result"] or ""), agency=name,
                          dispute_days=self.cfg.reporters.dispute_days)
        if template == "result":
            state = case["state"] if case is not None else None
            template = state if state in ("closed_false", "refused") else "resolved"
        if template in ("ack", "resolved", "closed_false", "refused", "dispute_ack") and case is None:
            raise PermanentError(f"template {template} needs a case")
        return reporter_text(template, language, **fields)
