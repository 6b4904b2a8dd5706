"""The regulation's clocks at run time: a warning before each deadline, an escalation after it, the overdue list,
and the escalation digests that tell people.

Deadlines are rows (dispatch/schema.py), started and met by dispatch/cases.py, the notifier and the delivery
sender; this module watches the time. Each tick writes, in the same transaction that marks the clocks warned or
missed (so each clock and level fires once), one digest per agency and recipient: the agency's configured
escalation contacts and the operator unit's. `EscalationSender` sends them (email through the SMTP relay, SMS
through the gateway), with retries. `overdue()` is what the operators' console and the CLI show: the same items.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from config.dispatch import DispatchConfig
from ingest.clock import Clock, iso
from ingest.errors import PermanentError, TransientError
from ingest.mail import send_message
from ingest.pii import redact_ids
from ingest.jobs import ESCALATE, EscalateJob
from ingest.queue import Held, JobKind, RetryPlan, RetryPolicy, register_kind
from ingest.records import Job
from ingest.store import Store, Tx
from ingest.worker import Writes

from . import messages
from .policy import OPERATOR_UNIT

log = logging.getLogger(__name__)

LEVELS = ("warning", "breach")


@dataclass(frozen=True, slots=True, kw_only=True)
class Overdue:
    case_id: str | None  # None: a report still waiting for the operator unit (held for review)
    incident_id: str | None
    report_id: int | None
    agency: str
    kind: str
    due_at: float
    overdue_seconds: float  # negative for a warning not yet due
    case_state: str
    level: str = "breach"


@dataclass(frozen=True, slots=True)
class TickResult:
    warned: int
    escalated: int
    digests: int = 0


async def tick(store: Store, cfg: DispatchConfig | None = None) -> TickResult:
    """Raise the warnings and escalations that are due now; each fires once per deadline. With `cfg`, write the
    digests for the agencies' contacts and the operator unit in the same transaction."""
    now = store.clock.now()
    async with store.transaction() as tx:
        # 6.3: a report held for review stops the operator unit's clock when it leaves review (decided, joined).
        await tx.execute(
            "UPDATE deadlines SET state=CASE WHEN (SELECT updated_at FROM reports r WHERE r.id=deadlines.report_id)"
            " <= due_at THEN 'met' ELSE 'met_late' END,"
            " closed_at=(SELECT updated_at FROM reports r WHERE r.id=deadlines.report_id)"
            " WHERE case_id IS NULL AND kind='operator_guidance' AND state IN ('open','missed')"
            " AND (SELECT status FROM reports r WHERE r.id=deadlines.report_id) != 'review'")
        warn_rows = await tx.fetchall(
            "UPDATE deadlines SET warned_at=? WHERE state='open' AND warned_at IS NULL AND warn_at<=? AND due_at>?"
            " RETURNING id, case_id, report_id, agency, kind, due_at", (now, now, now))
        late_rows = await tx.fetchall(
            "UPDATE deadlines SET state='missed', escalated_at=? WHERE state='open' AND due_at<=?"
            " RETURNING id, case_id, report_id, agency, kind, due_at", (now, now))
        for kind, rows in (("deadline_warning", warn_rows), ("deadline_escalation", late_rows)):
            for row in rows:
                report_id = row["report_id"]
                if report_id is None:
                    case = await tx.fetchone("SELECT report_id FROM cases WHERE id=?", (row["case_id"],))
                    report_id = case["report_id"] if case else None
                await tx.event(report_id, kind, "dispatch",
                               {"case_id": row["case_id"], "agency": row["agency"], "deadline": row["kind"],
                                "due_at": row["due_at"]})
        digests = 0
        if cfg is not None:
            for level, rows in (("warning", warn_rows), ("breach", late_rows)):
                digests += await write_digests(tx, cfg, level, [dict(r) for r in rows], now)
    for row in late_rows:
        log.warning("case %s: %s deadline missed by %s", row["case_id"] or f"report {row['report_id']}",
                    row["kind"], row["agency"])
    return TickResult(len(warn_rows), len(late_rows), digests)


def recipients(cfg: DispatchConfig, agency: str) -> list[tuple[str, str]]:
    """(channel, address) of who hears about `agency`'s clocks: its own contacts, then the operator unit's."""
    out: list[tuple[str, str]] = []
    for who in dict.fromkeys((agency, OPERATOR_UNIT)):
        a = cfg.agencies.get(who)
        if a is None:
            continue
        out += [("email", x) for x in a.escalation.email] + [("sms", x) for x in a.escalation.sms]
    return list(dict.fromkeys(out))


async def write_digests(tx: Tx, cfg: DispatchConfig, level: str, rows: list[dict[str, Any]], now: float) -> int:
    """One escalation row per agency and recipient, carrying every clock of that agency at this level."""
    by_agency: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_agency[row["agency"]].append({"case_id": row["case_id"], "report_id": row["report_id"],
                                         "kind": row["kind"], "due_at": row["due_at"]})
    written = 0
    for agency, items in sorted(by_agency.items()):
        targets = recipients(cfg, agency)
        if not targets:
            log.warning("%s of %d clock(s) of %s: no escalation contact configured", level, len(items), agency)
            continue
        body = json.dumps(items, ensure_ascii=False)
        for channel, address in targets:
            row = await tx.fetchone(
                "INSERT INTO escalations(agency, level, channel, recipient, items, next_at, created_at)"
                " VALUES (?,?,?,?,?,?,?) RETURNING id", (agency, level, channel, address, body, now, now))
            await tx.enqueue(ESCALATE, None, EscalateJob(escalation_id=int(row["id"])), subject=f"{agency}/{channel}")
            written += 1
    return written


async def overdue(store: Store, now: float | None = None, agency: str | None = None,
                  include_warnings: bool = False) -> list[Overdue]:
    """Every running deadline past due (escalated or not yet ticked), most overdue first; with
    `include_warnings`, also those already warned about and not yet due (what the digests said)."""
    now = store.clock.now() if now is None else now
    cond = "d.due_at<=?" if not include_warnings else "(d.due_at<=? OR d.warned_at IS NOT NULL)"
    sql = ("SELECT d.case_id, d.report_id, COALESCE(c.incident_id, r.incident_id) AS incident_id, d.agency, d.kind,"
           " d.due_at, COALESCE(c.state, r.status) AS state FROM deadlines d LEFT JOIN cases c ON c.id=d.case_id"
           " LEFT JOIN reports r ON r.id=d.report_id"
           f" WHERE d.state IN ('open','missed') AND {cond}")
    params: list[object] = [now]
    if agency:
        sql += " AND d.agency=?"
        params.append(agency)
    rows = await store.fetchall(sql + " ORDER BY d.due_at", params)
    return [Overdue(case_id=r["case_id"], report_id=r["report_id"], incident_id=r["incident_id"], agency=r["agency"],
                    kind=r["kind"], due_at=r["due_at"], overdue_seconds=now - r["due_at"],
                    case_state=r["state"] or "", level="breach" if r["due_at"] <= now else "warning")
            for r in rows]


class DeadlineTicker:
    name = "dispatch-clocks"
    singleton = "dispatch-clocks"  # one instance ticks the clocks (run_daemon wraps it in a leader lease)

    def __init__(self, store: Store, clock: Clock, interval: float, cfg: DispatchConfig | None = None) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self.cfg = cfg

    async def run(self) -> None:
        while True:
            try:
                await tick(self.store, self.cfg)
            except Exception:  # a failed tick is retried at the next one; the clocks are rows, nothing is lost
                log.exception("deadline tick failed")
            await self.clock.sleep(self.interval)


class EscalationSender:
    """Sends the escalation digests, each an `escalate` job of the one queue (ingest/queue.py): email through the
    SMTP relay, SMS through the gateway; retried with backoff on transient failures, dead-lettered (state `failed`,
    kept for operators, replayable) on permanent ones or after `max_attempts`."""

    name = "dispatch-escalations"
    singleton = "dispatch-escalations"  # one instance sends the digests

    def __init__(self, store: Store, cfg: DispatchConfig, directory: Any, sms: Any, *,
                 max_attempts: int = 8) -> None:
        self.store = store
        self.cfg = cfg
        self.directory = directory
        self.sms = sms  # dispatch.notify.SmsGateway
        self.policy = RetryPolicy(max_attempts=max_attempts, base=cfg.delivery.backoff_base_seconds,
                                  cap=cfg.delivery.backoff_cap_seconds)

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("escalation sender failed; retrying")
            await self.store.queue.wait(ESCALATE, self.cfg.delivery.poll_seconds)

    async def run_once(self) -> int:
        queue = self.store.queue
        jobs = await queue.lease(ESCALATE, 64, self.cfg.delivery.lease_seconds)
        # A stop mid-send gives back the digests not yet finished, due again at once: one the gateway took before
        # the stop goes again under the same SMS id (escalation_key, from the row), which it dedupes on.
        # Not an email whose SMTP thread is still sending: the stop waits for it and records its outcome
        # (queue.Held), so no other sender can send it at the same time.
        async with queue.holding(jobs) as held:
            for job in jobs:
                row = await self.store.fetchone("SELECT * FROM escalations WHERE id=?", (job.payload.escalation_id,))
                try:
                    if row is None:
                        raise PermanentError("escalation row missing")
                    await self._send(held, job, row)
                except (TransientError, PermanentError) as exc:
                    await self._record(job, exc)
                    continue
                await self._record(job, None)
        return len(jobs)

    async def _record(self, job: Job, error: BaseException | None) -> None:
        """A digest's attempt: sent (`error` None), or retried or dead by its error; any other error is raised (the
        job keeps its lease and counted attempt)."""
        queue = self.store.queue
        if error is None:
            await queue.finish(job, _escalation_sent(job))
            return
        if not isinstance(error, (TransientError, PermanentError)):
            raise error
        plan = queue.plan_retry(job, str(error), self.policy, permanent=isinstance(error, PermanentError),
                                retry_after=error.retry_after if isinstance(error, TransientError) else None)
        # Its death (the last attempt, or a permanent refusal) is the kind's on_dead: the row given up, the
        # operators alerted, one log line (_row_given_up).
        await queue.fail(job, plan.error, retry_in=plan.delay, dead=plan.dead,
                         writes=_escalation_retry(job, str(error), plan))

    async def _send(self, held: Held, job: Job, row: Any) -> None:
        items = json.loads(row["items"])
        agency = self.directory.agencies.get(row["agency"])
        name = agency.name_vi if agency else row["agency"]
        subject, text = messages.escalation_digest(name, row["level"], items)
        if row["channel"] == "sms":
            if not self.sms.configured:
                raise PermanentError("no SMS gateway configured")
            await self.sms.send(row["recipient"], messages.escalation_sms(name, row["level"], items),
                                escalation_key(row), self.store.clock.now())
            return
        msg = EmailMessage()
        msg["From"] = self.cfg.smtp.from_addr
        msg["To"] = row["recipient"]
        msg["Subject"] = subject
        msg["Message-ID"] = _message_id(row, self.cfg.smtp.message_id_domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text)

        async def settle(sent: asyncio.Future[None]) -> None:  # stopped mid-send: recorded as below
            await self._record(job, sent.exception())

        await held.in_thread(job, lambda: send_message(self.cfg.smtp, msg), settle)


def escalation_key(row: Any) -> str:
    """The key a digest is sent under, the same on every attempt (a retry, a send given back at a stop after the
    gateway took it): the SMS id the gateway dedupes on, and the local part of the email's Message-ID (_message_id).
    From the row alone: its id, and its creation time, so that a store started afresh, whose ids begin again, does
    not name a new digest as an old one (which a gateway would drop as a duplicate)."""
    return f"esc{row['id']}.{int(row['created_at'])}"


def _message_id(row: Any, domain: str) -> str:
    """The digest email's Message-ID: `escalation_key` under our domain, so receivers see one message. Not
    `<1022.r…>` nor `<msg_…>`: a reply to it must not pass for a reporter's thread (channels/email_intake.py) or an
    agency's answer (ingest/agency_mail.py)."""
    return f"<1022.{escalation_key(row)}@{domain}>"


def _escalation_sent(job: Job) -> Writes:
    async def writes(tx: Tx) -> None:
        now = tx.store.clock.now()
        await tx.execute("UPDATE escalations SET state='sent', attempts=?, last_error=NULL, next_at=?, sent_at=?"
                         " WHERE id=?", (job.attempts, now, now, job.payload.escalation_id))
    return writes


def _escalation_retry(job: Job, error: str, plan: RetryPlan) -> Writes:
    """The digest's row after a failed attempt (its death, if it was the last, is the kind's on_dead below)."""
    async def writes(tx: Tx) -> None:
        now = tx.store.clock.now()
        if plan.dead:
            await tx.execute("UPDATE escalations SET attempts=? WHERE id=?", (job.attempts, job.payload.escalation_id))
        else:
            await tx.execute("UPDATE escalations SET attempts=?, last_error=?, next_at=? WHERE id=?",
                             (job.attempts, error, now + plan.delay, job.payload.escalation_id))
    return writes


async def _escalation_dead(tx: Tx, job: Job, error: str) -> None:
    await _row_given_up(tx, job.payload.escalation_id, error)


async def _row_given_up(tx: Tx, escalation_id: int, error: str) -> None:
    """A digest given up: failed, kept for operators (a replay of its job sends it again), and an `escalation_dead`
    alert where operators see the others (a dead delivery's): an event on the report of each case (or report held
    for review) whose clock it carried, on that case's console timeline. Nobody was told of those clocks, so
    someone must. The recipient is left out (the timeline is read by agencies' staff too); the log line names the
    digest by its row, the error redacted (a gateway's answer quoted in it can hold a phone number or address)."""
    await tx.execute("UPDATE escalations SET state='failed', last_error=? WHERE id=?", (f"gave up: {error}",
                                                                                       escalation_id))
    row = await tx.fetchone("SELECT agency, level, channel, items FROM escalations WHERE id=?", (escalation_id,))
    if row is None:
        return
    items = json.loads(row["items"] or "[]")
    reports: dict[int | None, list[str]] = {}
    for item in items:
        report_id = item.get("report_id")
        if report_id is None and item.get("case_id"):
            case = await tx.fetchone("SELECT report_id FROM cases WHERE id=?", (item["case_id"],))
            report_id = case["report_id"] if case else None
        reports.setdefault(report_id, []).append(item.get("kind") or "")
    for report_id, kinds in sorted(reports.items(), key=lambda r: (r[0] is None, r[0] or 0)):
        await tx.event(report_id, "alert", "dispatch",
                       {"alert": "escalation_dead", "escalation_id": escalation_id, "agency": row["agency"],
                        "level": row["level"], "channel": row["channel"], "deadlines": kinds, "error": error})
    log.warning("escalation %d (%s of %d clock(s) of %s by %s) given up: %s", escalation_id, row["level"],
                len(items), row["agency"], row["channel"], redact_ids(error))


async def _escalation_undecodable(tx: Tx, job: Job, error: str) -> None:
    """The death of an `escalate` job whose payload no longer decodes (its lease buried it): which row it carried is
    not readable, but its subject names the agency and channel, and a pending row of theirs that no other job of
    the subject carries can only have been this job's (each row is written with its job). It is given up as a dead
    digest is; left 'pending', nothing would ever send it or say it failed (as dispatch/delivery.py does for a
    delivery).

    The subject's jobs and its pending rows are read by one statement (queue.uncarried): read by two on PostgreSQL, a
    digest another instance committed in between (row and job together) showed its row without its job, and was
    given up here, alerted on, and sent all the same."""
    agency, _, channel = (job.subject or "").partition("/")
    if not channel:
        return
    for escalation_id in await tx.store.queue.uncarried(
            tx, ESCALATE, job.subject, "SELECT id FROM escalations WHERE agency=? AND channel=? AND state='pending'",
            (agency, channel), "escalation_id"):
        await _row_given_up(tx, escalation_id, error)


async def _escalation_replayed(tx: Tx, job: Job, _: str) -> None:
    await tx.execute("UPDATE escalations SET state='pending', attempts=0, next_at=? WHERE id=?",
                     (tx.store.clock.now(), job.payload.escalation_id))


register_kind(JobKind(ESCALATE, on_dead=_escalation_dead, on_replay=_escalation_replayed,
                      on_undecodable=_escalation_undecodable))


def due_text(ts: float) -> str:
    return iso(ts)
