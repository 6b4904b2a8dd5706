"""The delivery sender: drains the outbox to agency webhooks and mailboxes, at least once.

- A row is leased (`sending`, lease_until) before the attempt, so a crash mid-send retries it after the lease;
  the `webhook-id` / Message-ID was fixed when the row was written and never changes.
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
from ingest.backoff import backoff_delay
from ingest.mail import send_message
from ingest.errors import PermanentError, TransientError
from ingest.store import Store, Tx

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
    if value.isdigit():
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
                    await self.store.wait_for_work("deliveries", self.cfg.delivery.poll_seconds)
        finally:
            await self.close()

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def run_once(self) -> int:
        """Lease the due rows and attempt each one (endpoint limits apply); returns how many were attempted."""
        now = self.store.clock.now()
        d = self.cfg.delivery
        async with self.store.transaction() as tx:
            await tx.execute("UPDATE deliveries SET state='retry', lease_until=NULL WHERE state='sending'"
                             " AND lease_until<?", (now,))
            rows = await tx.fetchall(
                "UPDATE deliveries SET state='sending', lease_until=?, attempts=attempts+1, updated_at=?"
                " WHERE id IN (SELECT id FROM deliveries WHERE state IN ('pending','retry') AND next_at<=?"
                " ORDER BY next_at, id LIMIT ?) RETURNING *", (now + d.lease_seconds, now, now, d.batch))
            self._disabled = {(r["agency"], r["target"])
                              for r in await tx.fetchall("SELECT agency, target FROM endpoint_state")}
        if not rows:
            return 0
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._attempt(dict(row))) for row in rows]
        # One transaction (one fsync) records the whole batch's outcomes.
        await self._record([t.result() for t in tasks])
        return len(rows)

    async def _attempt(self, row: dict[str, Any]) -> tuple[dict[str, Any], Outcome]:
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
                    outcome = await self._send_email(target, row)
            except BlockedAddress as exc:
                outcome = Outcome("permanent", None, f"SSRF guard: {exc}")
            if outcome.kind == "gone":
                self._disabled.add(key)  # before the next waiter for this endpoint gets the semaphore
        if outcome.kind == "delivered":
            if key in self._down:
                self._down.discard(key)
                log.info("endpoint %s/%s delivering again", *key)
        elif outcome.kind == "transient" and key not in self._down:
            self._down.add(key)
            log.warning("endpoint %s/%s failing: %s", key[0], key[1], outcome.error)
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
    async def _send_email(self, target: EmailTarget, row: dict[str, Any]) -> Outcome:
        payload = json.loads(row["payload"])
        attachments = []
        for a in payload["data"].get("attachments") or []:
            try:
                data = await asyncio.to_thread(self.store.blobs.get, a["sha256"])
            except OSError:
                return Outcome("permanent", None, f"attachment {a['sha256'][:12]} missing from the blob store")
            attachments.append((a, data))
        msg = build_email(self.cfg, target, row["msg_id"], payload, attachments)
        async with self._smtp_slots:
            try:
                await asyncio.to_thread(_smtp_send, self.cfg, msg)
            except TransientError as exc:
                return Outcome("transient", None, str(exc), exc.retry_after)
            except PermanentError as exc:
                return Outcome("permanent", None, str(exc))
        return Outcome("delivered", 250)

    # -- outcomes --------------------------------------------------------------------------------
    async def _record(self, results: list[tuple[dict[str, Any], Outcome]]) -> None:
        now = self.store.clock.now()
        async with self.store.transaction() as tx:
            for row, outcome in results:
                await self._record_one(tx, row, outcome, now)

    async def _record_one(self, tx: Tx, row: dict[str, Any], outcome: Outcome, now: float) -> None:
        key = (row["agency"], row["target"])
        case = await tx.fetchone("SELECT report_id, agency FROM cases WHERE id=?", (row["case_id"],))
        report_id = case["report_id"] if case else None
        if outcome.kind == "delivered":
            cur = await tx.execute(
                "UPDATE deliveries SET state='delivered', delivered_at=?, last_status=?, last_error=NULL,"
                " lease_until=NULL, updated_at=? WHERE id=? AND state='sending'",
                (now, outcome.status, now, row["id"]))
            if cur.rowcount and case is not None and case["agency"] == row["agency"]:
                # Art. 6: the 5-minute forwarding clock stops when the agency has the case.
                await tx.execute(
                    "UPDATE deadlines SET state=CASE WHEN state='missed' OR due_at<? THEN 'met_late' ELSE 'met' END,"
                    " closed_at=? WHERE case_id=? AND agency=? AND kind='forward' AND state IN ('open','missed')",
                    (now, now, row["case_id"], row["agency"]))
                await tx.event(report_id, "delivered", "dispatch", {"case_id": row["case_id"],
                                                                    "target": row["target"]})
            self.sent += 1
        elif outcome.kind == "transient" and now < row["deadline_at"]:
            delay = backoff_delay(row["attempts"], base=self.cfg.delivery.backoff_base_seconds,
                                  cap=self.cfg.delivery.backoff_cap_seconds, retry_after=outcome.retry_after)
            await tx.execute(
                "UPDATE deliveries SET state='retry', next_at=?, last_status=?, last_error=?, lease_until=NULL,"
                " updated_at=? WHERE id=? AND state='sending'",
                (min(now + delay, row["deadline_at"]), outcome.status, outcome.error, now, row["id"]))
        else:
            reason = outcome.error or "failed"
            if outcome.kind == "transient":
                reason = f"delivery deadline passed; last error: {reason}"
            await tx.execute(
                "UPDATE deliveries SET state='dead', last_status=?, last_error=?, lease_until=NULL, updated_at=?"
                " WHERE id=? AND state='sending'", (outcome.status, reason, now, row["id"]))
            alert: dict[str, Any] = {"alert": "delivery_dead", "case_id": row["case_id"], "agency": row["agency"],
                                     "target": row["target"], "msg_id": row["msg_id"], "error": reason}
            if outcome.kind == "gone":
                await tx.execute("INSERT OR REPLACE INTO endpoint_state(agency, target, disabled_at, reason)"
                                 " VALUES (?,?,?,?)", (*key, now, "410 Gone"))
                # Everything else queued for the endpoint waits as a dead letter, replayable once re-enabled.
                await tx.execute("UPDATE deliveries SET state='dead', last_error='endpoint disabled (410 Gone)',"
                                 " updated_at=? WHERE agency=? AND target=? AND state IN ('pending','retry')",
                                 (now, *key))
                alert["alert"] = "endpoint_disabled"
            await tx.event(report_id, "alert", "dispatch", alert)
            log.warning("delivery %s to %s/%s dead: %s", row["msg_id"], row["agency"], row["target"], reason)

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


def _smtp_send(cfg: DispatchConfig, msg: EmailMessage) -> None:
    send_message(cfg.smtp, msg)


async def replay_deliveries(store: Store, *, ids: list[int] | None = None, agency: str | None = None,
                            deadline_seconds: float = 3 * 86400.0) -> int:
    """Put dead letters back in the outbox (same webhook-id), re-enabling their endpoints; returns the count."""
    now = store.clock.now()
    sql = ("UPDATE deliveries SET state='pending', attempts=0, next_at=?, deadline_at=?, lease_until=NULL,"
           " updated_at=? WHERE state='dead'")
    params: list[Any] = [now, now + deadline_seconds, now]
    if ids:
        sql += f" AND id IN ({','.join('?' * len(ids))})"
        params += ids
    if agency:
        sql += " AND agency=?"
        params.append(agency)
    async with store.transaction() as tx:
        rows = await tx.fetchall(sql + " RETURNING agency, target, case_id", params)
        for pair in {(r["agency"], r["target"]) for r in rows}:
            await tx.execute("DELETE FROM endpoint_state WHERE agency=? AND target=?", pair)
        for case_id in {r["case_id"] for r in rows}:
            case = await tx.fetchone("SELECT report_id FROM cases WHERE id=?", (case_id,))
            await tx.event(case["report_id"] if case else None, "deliveries_replayed", "operator",
                           {"case_id": case_id})
        tx.after_commit(lambda: store._wake("deliveries"))
    return len(rows)
