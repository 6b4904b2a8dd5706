"""The delivery sender: drains the outbox to agency webhooks and mailboxes, at least once.

- Each `deliveries` row (what to send, to whom, its outcome) has a `deliver` job in the one queue
  (ingest/queue.py), written in the same transaction: the queue leases it before the attempt, so a crash mid-send
  retries it after the lease, and fences, backs off, dead-letters and replays it as it does every job. The
  `webhook-id` / Message-ID was fixed when the row was written and never changes.
- Only 2xx is success; 410 disables the endpoint; 408/429/5xx, timeouts and resets are retried with full-jitter
  backoff (Retry-After is a floor); other 4xx and redirects are permanent. Past the deadline, a row is
  dead-lettered with an alert and can be replayed.
- Each endpoint has its own connection pool and semaphore (its concurrency limit) and an SSRF-guarded resolver.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiohttp

from config.dispatch import DispatchConfig, EmailTarget, WebhookTarget
from ingest.mail import send_message
from ingest.errors import PermanentError, TransientError
from ingest.jobs import DELIVER, DeliverJob
from ingest.queue import Held, JobKind, RetryPolicy, Settlement, register_kind, shown_to_admins
from ingest.records import Job
from ingest.store import Store, Tx
from ingest.worker import Writes

from . import messages, signing
from .ssrf import BlockedAddress, GuardedResolver, check_url, target_problems

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # "delivered", "transient", "permanent", "gone"
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²", which isdigit() takes and float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def classify_status(status: int, retry_after: float | None) -> Outcome:
    if 200 <= status < 300:
        return Outcome("delivered", status)
    if status == 410:
        return Outcome("gone", status, "410 Gone")
    if status in (408, 425, 429) or status >= 500:
        return Outcome("transient", status, f"HTTP {status}", retry_after)
    if 300 <= status < 400:
        return Outcome("permanent", status, f"HTTP {status}: redirects are not followed")
    return Outcome("permanent", status, f"HTTP {status}")


class DeliverySender:
    name = "dispatch-delivery"

    def __init__(self, store: Store, cfg: DispatchConfig) -> None:
        self.store = store
        self.cfg = cfg
        self._targets: dict[tuple[str, str], WebhookTarget | EmailTarget] = {
            (agency, t.name): t for agency, a in cfg.agencies.items() for t in a.targets}
        self._sems: dict[tuple[str, str], asyncio.Semaphore] = {
            key: asyncio.Semaphore(t.concurrency) for key, t in self._targets.items()}
        self._sessions: dict[tuple[str, str], aiohttp.ClientSession] = {}
        self._smtp_slots = asyncio.Semaphore(4)  # smtplib runs in threads: bound them
        self._down: set[tuple[str, str]] = set()  # endpoints currently failing, to log an outage once
        self._disabled: set[tuple[str, str]] = set()  # endpoints that answered 410, refreshed from the store
        self.sent = 0

    async def run(self) -> None:
        # A target the SSRF guard refuses is a configuration error: said at start (and on reload, which builds a
        # new sender), and each of its deliveries fails at once instead of being retried for days.
        for problem in await asyncio.to_thread(target_problems, self.cfg):
            log.error("configuration error: %s", problem)
        try:
            while True:
                if not await self.run_once():
                    await self.store.queue.wait(DELIVER, self.cfg.delivery.poll_seconds)
        finally:
            await self.close()

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def run_once(self) -> int:
        """Lease the due deliveries and attempt each one (endpoint limits apply); returns how many were attempted."""
        d = self.cfg.delivery
        jobs = await self.store.queue.lease(DELIVER, d.batch, d.lease_seconds)
        if not jobs:
            return 0
        # A stop mid-send (a webhook the agency may have received, its 2xx never read) gives the batch back, due
        # again at once: sent again, it carries the same webhook-id / Message-ID (the row's msg_id, fixed when the
        # row was written), which the agency dedupes on. Not a mail whose SMTP thread is still sending: the stop
        # waits for it and records its outcome (queue.Held), so no other sender can send it at the same time.
        async with self.store.queue.holding(jobs) as held:
            ids = [job.payload.delivery_id for job in jobs]
            marks = ",".join("?" * len(ids))
            rows = {r["id"]: dict(r) for r in await self.store.fetchall(
                f"SELECT * FROM deliveries WHERE id IN ({marks})", ids)}
            self._disabled = {(r["agency"], r["target"])
                              for r in await self.store.fetchall("SELECT agency, target FROM endpoint_state")}
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._attempt(held, job, rows.get(job.payload.delivery_id))) for job in jobs]
            # One transaction (one fsync) records the whole batch's outcomes.
            await self._record([(job, *t.result()) for job, t in zip(jobs, tasks)])
        return len(jobs)

    async def _attempt(self, held: Held, job: Job, row: dict[str, Any] | None
                       ) -> tuple[dict[str, Any] | None, Outcome]:
        if row is None:
            return row, Outcome("permanent", None, "delivery row missing")
        key = (row["agency"], row["target"])
        target = self._targets.get(key)
        if target is None:
            return row, Outcome("permanent", None, "target no longer configured")
        async with self._sems[key]:
            if key in self._disabled:  # a 410 arrived while this row waited for its turn
                return row, Outcome("permanent", None, "endpoint disabled (410 Gone)")
            try:
                if isinstance(target, WebhookTarget):
                    outcome = await self._send_webhook(key, target, row)
                else:
                    outcome = await self._send_email(held, job, target, row)
            except BlockedAddress as exc:
                outcome = Outcome("permanent", None, f"SSRF guard: {exc}")
            if outcome.kind == "gone":
                self._disabled.add(key)  # before the next waiter for this endpoint gets the semaphore
        if outcome.kind == "delivered":
            if key in self._down:
                self._down.discard(key)
                log.info("endpoint %s delivering again", logged_endpoint(*key))
        elif outcome.kind == "transient" and key not in self._down:
            self._down.add(key)
            log.warning("endpoint %s failing: %s", logged_endpoint(*key), shown_to_admins(outcome.error))
        return row, outcome

    # -- webhook ---------------------------------------------------------------------------------
    def _session(self, key: tuple[str, str], target: WebhookTarget) -> aiohttp.ClientSession:
        session = self._sessions.get(key)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(target.allow_private),
                                             limit=target.concurrency, use_dns_cache=False)
            session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                            timeout=aiohttp.ClientTimeout(total=target.timeout_seconds))
            self._sessions[key] = session
        return session

    async def _send_webhook(self, key: tuple[str, str], target: WebhookTarget, row: dict[str, Any]) -> Outcome:
        check_url(target.url, target.allow_private)
        body = row["payload"].encode()
        now = self.store.clock.now()
        # The timestamp is the attempt's; the id is the message's (receivers dedupe on it).
        headers = signing.headers([s.get_secret_value() for s in target.secrets], row["msg_id"], int(now), body)
        headers["user-agent"] = "hcmc1022-dispatch/1"
        try:
            async with self._session(key, target).post(target.url, data=body, headers=headers,
                                                       allow_redirects=False) as resp:
                await resp.read()  # a slow body counts against the timeout too
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), now)
                return classify_status(resp.status, retry_after)
        except BlockedAddress:
            raise
        except TimeoutError:
            return Outcome("transient", None, "timeout")
        except aiohttp.ClientError as exc:
            # Connection refused/reset, server disconnected, payload errors: the peer may recover.
            return Outcome("transient", None, type(exc).__name__)
        except OSError as exc:
            return Outcome("transient", None, type(exc).__name__)

    # -- email -----------------------------------------------------------------------------------
    async def _send_email(self, held: Held, job: Job, target: EmailTarget, row: dict[str, Any]) -> Outcome:
        payload = json.loads(row["payload"])
        attachments = []
        for a in payload["data"].get("attachments") or []:
            try:
                data = await asyncio.to_thread(self.store.blobs.get, a["sha256"])
            except OSError:
                return Outcome("permanent", None, f"attachment {a['sha256'][:12]} missing from the blob store")
            attachments.append((a, data))
        msg = build_email(self.cfg, target, row["msg_id"], payload, attachments)
        async def settle(sent: asyncio.Future[Outcome]) -> None:  # stopped mid-send: this job's outcome alone
            await self._record([(job, row, sent.result())])

        async with self._smtp_slots:
            return await held.in_thread(job, lambda: _smtp_outcome(self.cfg, msg), settle)

    # -- outcomes --------------------------------------------------------------------------------
    async def _record(self, results: list[tuple[Job, dict[str, Any] | None, Outcome]]) -> None:
        d = self.cfg.delivery
        policy = RetryPolicy(max_attempts=None, base=d.backoff_base_seconds, cap=d.backoff_cap_seconds)
        settlements = []
        for job, row, outcome in results:
            if outcome.kind == "delivered" and row is not None:
                settlements.append(Settlement(job, "done", writes=self._delivered(job, row, outcome)))
                self.sent += 1
                continue
            error = outcome.error or "failed"
            plan = self.store.queue.plan_retry(job, error, policy, retry_after=outcome.retry_after,
                                               permanent=outcome.kind != "transient")
            if plan.dead:
                # The kind's on_dead hook marks the row dead and raises the alert, in the same transaction.
                writes = self._gone(job, row) if outcome.kind == "gone" and row is not None else None
                settlements.append(Settlement(job, "dead", plan.error, writes=_then(
                    _attempt_writes(job, outcome), writes)))
            else:
                settlements.append(Settlement(job, "retry", plan.error, plan.delay,
                                              writes=_retry_writes(job, outcome, plan.delay)))
        await self.store.queue.settle(settlements)

    def _delivered(self, job: Job, row: dict[str, Any], outcome: Outcome) -> Writes:
        async def writes(tx: Tx) -> None:
            now = self.store.clock.now()
            await tx.write(
                "UPDATE deliveries SET state='delivered', delivered_at=?, last_status=?, last_error=NULL, attempts=?,"
                " updated_at=? WHERE id=?", (now, outcome.status, job.attempts, now, row["id"]))
            # None of the three reads an outcome: they go with the next statement or the COMMIT (ingest/store.py Tx).
            # Only for the agency holding the case (not a supporter's copy, nor one re-routed since): two statements
            # that read the case themselves, so a batch of deliveries costs no extra round trip per row.
            # Art. 6: the 5-minute forwarding clock stops when the agency has the case.
            holds = "EXISTS (SELECT 1 FROM cases WHERE id=? AND agency=?)"
            await tx.write(
                "UPDATE deadlines SET state=CASE WHEN state='missed' OR due_at<? THEN 'met_late' ELSE 'met' END,"
                " closed_at=? WHERE case_id=? AND agency=? AND kind='forward' AND state IN ('open','missed')"
                f" AND {holds}", (now, now, row["case_id"], row["agency"], row["case_id"], row["agency"]))
            await tx.write(
                "INSERT INTO events(report_id, at, kind, actor, data) SELECT report_id, ?, 'delivered', 'dispatch', ?"
                " FROM cases WHERE id=? AND agency=?",
                (now, json.dumps({"case_id": row["case_id"], "target": row["target"]}, ensure_ascii=False),
                 row["case_id"], row["agency"]))
        return writes

    def _gone(self, job: Job, row: dict[str, Any]) -> Writes:
        """410 Gone: the endpoint is switched off, and everything else queued for it waits as a dead letter,
        replayable once re-enabled."""
        async def writes(tx: Tx) -> None:
            now = self.store.clock.now()
            await tx.execute("INSERT OR REPLACE INTO endpoint_state(agency, target, disabled_at, reason)"
                             " VALUES (?,?,?,?)", (row["agency"], row["target"], now, "410 Gone"))
            await self.store.queue.bury_subject(tx, DELIVER, endpoint_subject(row["agency"], row["target"]),
                                                DISABLED)
            await tx.execute("UPDATE deliveries SET state='dead', last_error=?, updated_at=? WHERE agency=? AND"
                             " target=? AND state IN ('pending','retry')",
                             (DISABLED, now, row["agency"], row["target"]))
        return writes


DISABLED = "endpoint disabled (410 Gone)"


def endpoint_subject(agency: str, target: str) -> str:
    """The `subject` of an endpoint's deliver jobs: what an operator replays or buries by."""
    return f"{agency}/{target}"


def logged_endpoint(agency: str, target: str) -> str:
    """An endpoint as logs name it: its subject as the dead-letter page shows it. A target may be named by its
    mailbox ('sawaco/[email ẩn]'), and logs hold no personal data; the delivery's id finds the row."""
    return shown_to_admins(endpoint_subject(agency, target)) or agency


def _then(first: Writes, second: Writes | None) -> Writes:
    async def both(tx: Tx) -> None:
        await first(tx)
        if second is not None:
            await second(tx)
    return both


def _attempt_writes(job: Job, outcome: Outcome) -> Writes:
    async def writes(tx: Tx) -> None:
        await tx.execute("UPDATE deliveries SET last_status=?, attempts=? WHERE id=?",
                         (outcome.status, job.attempts, job.payload.delivery_id))
    return writes


def _retry_writes(job: Job, outcome: Outcome, delay: float) -> Writes:
    async def writes(tx: Tx) -> None:
        now = tx.store.clock.now()
        await tx.execute("UPDATE deliveries SET state='retry', next_at=?, last_status=?, last_error=?, attempts=?,"
                         " updated_at=? WHERE id=?", (now + delay, outcome.status, outcome.error, job.attempts, now,
                                                     job.payload.delivery_id))
    return writes


async def _delivery_dead(tx: Tx, job: Job, error: str) -> None:
    """The `deliver` kind's death: the row is dead, operators are alerted (an endpoint's 410 says so)."""
    row = await tx.fetchone("SELECT * FROM deliveries WHERE id=?", (job.payload.delivery_id,))
    if row is not None:
        await _row_dead(tx, row, error)


async def _delivery_undecodable(tx: Tx, job: Job, error: str) -> None:
    """The death of a `deliver` job whose payload no longer decodes (its lease buried it): which row it carried is
    not readable, but its subject names the endpoint, and a row of that endpoint still waiting that no other job
    of the endpoint carries can only have been this job's. That row dies as any dead delivery does (state dead,
    alert); left 'pending', nothing would ever send it and the case timeline would say so forever.

    The endpoint's jobs and its waiting rows are read by one statement (queue.uncarried): read by two on PostgreSQL,
    a case another instance routed to the endpoint in between (row and job committed together) showed its row
    without its job, and was marked dead with a false alert, then sent anyway."""
    agency, _, target = (job.subject or "").partition("/")
    if not target or endpoint_subject(agency, target) != job.subject:
        return
    for delivery_id in await tx.store.queue.uncarried(
            tx, DELIVER, job.subject, "SELECT id FROM deliveries WHERE agency=? AND target=?"
            " AND state IN ('pending','retry')", (agency, target), "delivery_id"):
        row = await tx.fetchone("SELECT * FROM deliveries WHERE id=?", (delivery_id,))
        if row is not None:
            await _row_dead(tx, row, error)


async def _row_dead(tx: Tx, row: Any, error: str) -> None:
    """A delivery row given up: dead with its error, and the alert operators act on."""
    now = tx.store.clock.now()
    await tx.execute("UPDATE deliveries SET state='dead', last_error=?, updated_at=? WHERE id=?",
                     (error, now, row["id"]))
    case = await tx.fetchone("SELECT report_id FROM cases WHERE id=?", (row["case_id"],))
    alert: dict[str, Any] = {"alert": "endpoint_disabled" if error == "410 Gone" else "delivery_dead",
                             "case_id": row["case_id"], "agency": row["agency"], "target": row["target"],
                             "msg_id": row["msg_id"], "error": error}
    await tx.event(case["report_id"] if case else None, "alert", "dispatch", alert)
    log.warning("delivery %d (%s) to endpoint %s dead: %s", row["id"], row["msg_id"],
                logged_endpoint(row["agency"], row["target"]), shown_to_admins(error))


async def _delivery_replayed(tx: Tx, job: Job, _: str) -> None:
    """A replayed delivery goes out again with the same webhook-id; its endpoint is re-enabled."""
    now = tx.store.clock.now()
    row = await tx.fetchone("SELECT * FROM deliveries WHERE id=?", (job.payload.delivery_id,))
    if row is None:
        return
    await tx.execute("UPDATE deliveries SET state='pending', attempts=0, next_at=?, deadline_at=?, updated_at=?"
                     " WHERE id=?", (now, job.deadline_at or row["deadline_at"], now, row["id"]))
    await tx.execute("DELETE FROM endpoint_state WHERE agency=? AND target=?", (row["agency"], row["target"]))
    case = await tx.fetchone("SELECT report_id FROM cases WHERE id=?", (row["case_id"],))
    await tx.event(case["report_id"] if case else None, "deliveries_replayed", "operator",
                   {"case_id": row["case_id"]})


register_kind(JobKind(DELIVER, on_dead=_delivery_dead, on_replay=_delivery_replayed,
                      on_undecodable=_delivery_undecodable, replay_deadline=3 * 86400.0))


def reply_address(mailbox: str, token: str) -> str:
    name, addr = email.utils.parseaddr(mailbox)
    local, at, domain = addr.rpartition("@")
    if not at:
        return mailbox
    return email.utils.formataddr((name, f"{local.partition('+')[0]}+{token}@{domain}")) if name \
        else f"{local.partition('+')[0]}+{token}@{domain}"


def build_email(cfg: DispatchConfig, target: EmailTarget, msg_id: str, payload: dict[str, Any],
                attachments: list[tuple[dict[str, Any], bytes]]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = cfg.smtp.from_addr
    msg["To"] = ", ".join(target.to)
    if target.cc:
        msg["Cc"] = ", ".join(target.cc)
    if cfg.smtp.reply_to:
        # The answer comes back to `box+msg_…@domain`: the random delivery id is the reply token that proves a
        # mail answers this dispatch (dispatch/answers.py), even when the agency's client drops In-Reply-To.
        msg["Reply-To"] = reply_address(cfg.smtp.reply_to, msg_id)
    msg["Subject"] = messages.agency_subject(payload)
    # Stable across retries, so an agency's mail system sees one message and replies thread to it.
    msg["Message-ID"] = f"<{msg_id}@{cfg.smtp.message_id_domain}>"
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies back to us
    msg["X-1022-Case"] = payload["data"]["case_id"]
    msg.set_content(messages.agency_text(payload))
    msg.add_alternative(messages.agency_html(payload), subtype="html")
    for meta, data in attachments:
        maintype, _, subtype = (meta.get("content_type") or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=meta.get("filename") or meta["sha256"][:16])
    return msg


def _smtp_outcome(cfg: DispatchConfig, msg: EmailMessage) -> Outcome:
    """Send in the calling (worker) thread; the relay's answer as an outcome."""
    try:
        send_message(cfg.smtp, msg)
    except TransientError as exc:
        return Outcome("transient", None, str(exc), exc.retry_after)
    except PermanentError as exc:
        return Outcome("permanent", None, str(exc))
    return Outcome("delivered", 250)


async def enqueue_delivery(tx: Tx, delivery_id: int, agency: str, target: str, deadline: float, *,
                           disabled: bool = False) -> None:
    """The `deliver` job of a new outbox row, in the row's own transaction; born dead (replayable) when its
    endpoint is switched off (the row is written dead by the caller)."""
    job_id = await tx.enqueue(DELIVER, None, DeliverJob(delivery_id=delivery_id), deadline=deadline,
                              subject=endpoint_subject(agency, target))
    if disabled:
        await tx.store.queue.bury(tx, [job_id], DISABLED)


async def replay_deliveries(store: Store, *, ids: list[int] | None = None, agency: str | None = None,
                            deadline_seconds: float = 3 * 86400.0) -> int:
    """Put dead deliveries back in the outbox (same webhook-id), re-enabling their endpoints; returns the count.
    `ids` are delivery ids (as `run_daemon.py dispatch deliveries` lists them)."""
    job_ids: list[int] = []
    if ids:
        wanted = set(ids)
        job_ids = [d.id for d in await store.queue.dead_letters(DELIVER, limit=1_000_000)
                   if d.payload is not None and d.payload.delivery_id in wanted]
        if not job_ids:
            return 0
    return await store.queue.replay(DELIVER, job_ids, subject_prefix=f"{agency}/" if agency else None,
                                    deadline_seconds=deadline_seconds)
