"""The case book: creates cases from incidents, forwards them (outbox rows + clocks in one transaction), applies
agency answers, re-routes returned cases and closes them, telling every reporter of the incident.

Decisions come from dispatch/policy.py; this module only reads and writes the store.
"""
from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from config.directory import Directory
from config.dispatch import DispatchConfig
from ingest.clock import iso
from ingest.errors import PermanentError
from ingest.pii import is_confidential, redact_message
from ingest.jobs import DEDUPE, NOTIFY, DedupeJob, DispatchJob, NotifyJob, case_report_subject, closing_subject, \
    reopening_subject
from ingest.records import Job
from ingest.store import Store, StoredReport, Tx
from ingest.worker import Writes

from . import policy
from .calendar import WorkCalendar
from .delivery import DISABLED, enqueue_delivery
from .messages import recurrence_text
from .policy import CITY_OFFICE, DAY, OPERATOR_UNIT, AnswerRejected, CaseView, DeadlineSpec, WarnPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerResult:
    case_id: str
    state: str
    agency: str  # the agency holding the case after the answer (differs after a re-route)
    duplicate: bool = False


class ReporterRejected(ValueError):
    """A reporter's rating or dispute that does not fit the case (no result yet, already rated, too late)."""


# Results a reporter may dispute (a refusal or a merge is not the agency's result).
DISPUTABLE = ("resolved", "closed_false")


class NotFound(LookupError):
    pass


class KeyReused(AnswerRejected):
    """An answer under the idempotency key of another answer (another kind, note, data or case): refused, never
    taken for a repeat of it (the API answers 422, the mailbox makes it a note for operators)."""


class Forbidden(PermissionError):
    pass


def case_id_for(incident_id: str) -> str:
    return "CASE-" + incident_id.removeprefix("INC-")


_REF_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U to misread on the phone


def public_ref(token: str) -> str:
    """The reference reporters read ("mã PA-7K3Q-M9XW"): one-way from the case's random lookup token, so it says
    nothing about how many cases exist, cannot be guessed from another, and cannot be turned into the token.
    Internal ids (CASE-000123) stay for agencies and the console; neither is ever proof of anything."""
    n = int.from_bytes(hashlib.sha256(b"1022-public-ref\0" + token.encode()).digest()[:5], "big")
    chars = "".join(_REF_ALPHABET[(n >> (5 * i)) & 31] for i in range(8))
    return f"PA-{chars[:4]}-{chars[4:]}"


async def recurrence(reader: Tx | Store, previous_incident: str | None, since: float) -> dict[str, Any] | None:
    """What an incident opened at `since` repeats, for operators and the agency: the closed incident
    `previous_incident` (dedupe's recurrence link), its case, how that was closed and how long before ("reported
    again 3 days after it was closed as resolved"); None when it repeats nothing. Read from the previous case:
    the incident closed with it."""
    if not previous_incident:
        return None
    row = await reader.fetchone("SELECT id, state, closed_at FROM cases WHERE incident_id=?", (previous_incident,))
    closed_at = row["closed_at"] if row is not None else None
    days = max(0, int((since - (closed_at or since)) // DAY))
    closed_as = row["state"] if row is not None and closed_at is not None else "resolved"
    return {"incident_id": previous_incident, "case_id": row["id"] if row is not None else None,
            "closed_as": closed_as, "closed_at": iso(closed_at) if closed_at else None, "days_after_close": days,
            "summary_vi": recurrence_text(days, closed_as, "vi"), "summary_en": recurrence_text(days, closed_as, "en")}


async def case_recurrence(reader: Tx | Store, case: Any) -> dict[str, Any] | None:
    """`recurrence` of the case's incident (the link the case keeps from its dispatch job)."""
    return await recurrence(reader, case["recurrence_of"], float(case["received_at"]))


class CaseBook:
    def __init__(self, store: Store, directory: Directory, cfg: DispatchConfig, calendar: WorkCalendar,
                 public_base_url: str, *, record_only: bool = False) -> None:
        self.store = store
        # Batch routing records cases without delivering them: a missing target there is not worth a warning.
        self.record_only = record_only
        self.directory = directory
        self.cfg = cfg
        self.calendar = calendar
        self.warn = WarnPolicy(fraction=cfg.clocks.warn_fraction, min_seconds=cfg.clocks.warn_min_seconds)
        self.base_url = public_base_url.rstrip("/")

    def photo_required(self, topic: str, category: str) -> bool:
        """Whether a resolved case of `topic` must carry a photo of the site (config; default: infrastructure)."""
        topics = self.cfg.evidence.photo_topics
        return topic in topics if topics is not None else category == "infrastructure"

    # -- the dispatch stage ----------------------------------------------------------------------
    async def handle_dispatch(self, job: Job, report: StoredReport) -> Writes | None:
        payload: DispatchJob = job.payload
        if payload.merged_into:
            return self._merge_writes(str(payload.incident_id), payload.merged_into, payload.actor or "operator")
        named = payload.incident_id or report.incident_id
        if not named:
            raise PermanentError("dispatch job without an incident")
        row = await self.store.fetchone("SELECT topic, category, agency, district, received_at FROM reports WHERE id=?",
                                        (report.id,))
        assert row is not None
        cls = report.classification or {}
        topic = row["topic"] or cls.get("topic") or "unknown"
        category = row["category"] or cls.get("category") or "civic"
        agency = row["agency"] or cls.get("agency") or OPERATOR_UNIT
        if agency not in self.directory.agencies:
            agency = OPERATOR_UNIT
        district = row["district"] or (cls.get("place") or {}).get("district")
        language = cls.get("language") or "vi"
        received_at = float(row["received_at"])

        async def writes(tx: Tx) -> None:
            # The report's incident as it is now, not the one the job was queued for: an operator may have merged
            # that one away since (dedupe/operations.py moves its reports and retires it). A case opened on the
            # retired incident would be a second case of one problem, created and then merged away at its agency.
            current = await tx.fetchone("SELECT incident_id FROM reports WHERE id=?", (report.id,))
            incident_id = (current["incident_id"] if current is not None else None) or named
            existing = await tx.fetchone("SELECT id, report_id, state FROM cases WHERE incident_id=?",
                                         (incident_id,))
            if existing is not None:
                # Idempotent: the incident already has its case (a replayed or repeated job). Another report still
                # waiting for its routing is a duplicate of an open case; of a closed one it shares the result, as
                # every reporter of the incident did (Art. 7.4): never a duplicate of a case no longer handled. A
                # report that already has its outcome (closed with the result, a duplicate) is told nothing again.
                if existing["report_id"] != report.id:
                    closed = existing["state"] in policy.CLOSED_STATES
                    # (One in review stays the operator's to decide, as when a case closes: see _close.)
                    waiting = "('routed')" if closed else "('routed','review')"
                    cur = await tx.execute(f"UPDATE reports SET status=?, updated_at=? WHERE id=? AND status IN"
                                           f" {waiting}", ("closed" if closed else "duplicate",
                                                           self.store.clock.now(), report.id))
                    if cur.rowcount:
                        await tx.enqueue(NOTIFY, report.id, NotifyJob(
                            template="result" if closed else "duplicate_ack", incident_id=incident_id,
                            case_id=existing["id"]))
                return
            now = self.store.clock.now()
            case_id = case_id_for(incident_id)
            await tx.write(
                "INSERT INTO cases(id, incident_id, report_id, token, topic, category, agency, district, language,"
                " state, tried, received_at, forwarded_at, created_at, updated_at, recurrence_of)"
                " VALUES (?,?,?,?,?,?,?,?,?,'forwarded',?,?,?,?,?,?)",
                (case_id, incident_id, report.id, secrets.token_urlsafe(16), topic, category, agency, district,
                 language, json.dumps([agency]), received_at, now, now, now, payload.recurrence_of))
            await tx.write("UPDATE reports SET status='dispatched', updated_at=? WHERE id=?", (now, report.id))
            await self._forward(tx, case_id, report, agency, category, "case.created",
                                first=policy.forward_deadline(received_at, self.warn), received_at=received_at)
            # 6.3: a report held for review was waiting on the operator unit from receipt: its hour ends now.
            await tx.write("UPDATE deadlines SET state=CASE WHEN state='missed' OR due_at<? THEN 'met_late' ELSE 'met' END,"
                           " closed_at=? WHERE report_id=? AND case_id IS NULL AND kind='operator_guidance'"
                           " AND state IN ('open','missed')", (now, now, report.id))
            await tx.write("UPDATE deadlines SET case_id=? WHERE report_id=? AND case_id IS NULL", (case_id, report.id))
            event = {"case_id": case_id, "agency": agency}
            repeats = await recurrence(tx, payload.recurrence_of, received_at)
            if repeats is not None:
                event["recurrence_of"] = repeats["incident_id"]
                event["recurrence"] = repeats["summary_vi"]
            if incident_id != named:
                # Merged since: the kept incident may name its own report (its dispatch job waiting, now a duplicate).
                await self._tell_case_report(tx, incident_id, report.id)
            await tx.event(report.id, "case_created", "dispatch", event)
            await tx.enqueue(NOTIFY, report.id, NotifyJob(template="ack", case_id=case_id, incident_id=incident_id))

        return writes

    def _merge_writes(self, absorbed: str, kept: str, actor: str) -> Writes:
        """An operator merged incident `absorbed` into `kept` (dedupe.operations.merge). Its case, if any, moves
        to the kept incident (where its report is now: `kept`, or what `kept` was merged into since) when that has
        none; otherwise it closes as `merged` and its agency is told which
        case now carries the incident, so nobody handles the same thing twice."""

        async def writes(tx: Tx) -> None:
            case = await tx.fetchone("SELECT * FROM cases WHERE incident_id=?", (absorbed,))
            if case is None or case["state"] in policy.CLOSED_STATES:
                return
            now = self.store.clock.now()
            # Where the case's report is now, not the incident this job was queued for: an operator may have merged
            # that one away too since (a second merge, whose job found no case to move yet when it ran first: a
            # retry, another instance). Moved there, the case would run on an incident merged away, holding no
            # report, while the one holding them has none. As a dispatch job follows its report (handle_dispatch).
            current = await tx.fetchone("SELECT incident_id FROM reports WHERE id=?", (case["report_id"],))
            into = current["incident_id"] if current is not None and current["incident_id"] not in (None, absorbed) \
                else kept
            target = await tx.fetchone("SELECT id FROM cases WHERE incident_id=?", (into,))
            if target is None:
                await tx.execute("UPDATE cases SET incident_id=?, updated_at=? WHERE id=?", (into, now, case["id"]))
                await self._tell_case_report(tx, into, case["report_id"])
                await tx.event(case["report_id"], "case_moved", actor, {"case_id": case["id"], "from": absorbed,
                                                                       "to": into})
                return
            await tx.execute("UPDATE cases SET state='merged', closed_at=?, result=?, updated_at=? WHERE id=?",
                             (now, f"merged into {target['id']}", now, case["id"]))
            await tx.execute("UPDATE deadlines SET state='cancelled', closed_at=? WHERE case_id=?"
                             " AND state IN ('open','missed')", (now, case["id"]))
            await tx.event(case["report_id"], "case_merged", actor, {"case_id": case["id"], "into": target["id"]})
            report = await self.store.get_report(case["report_id"])
            assert report is not None
            await self._deliver(tx, case, report, case["agency"], "case.merged", [], None,
                                extra={"merged_into_case": target["id"], "merged_into_incident": into})

        return writes

    @staticmethod
    async def _tell_case_report(tx: Tx, incident_id: str, report_id: int) -> None:
        """The case of `incident_id` carries `report_id` from now: dedupe records it as the incident's case report
        (which stays with the incident when it is split, and routing reads), through its queue."""
        await tx.enqueue(DEDUPE, report_id, DedupeJob(incident_id=incident_id, case_report=True), need_id=False,
                         subject=case_report_subject(incident_id))

    async def _forward(self, tx: Tx, case_id: str, report: StoredReport, agency: str, category: str, event: str,
                       *, first: DeadlineSpec | None = None, return_reason: str | None = None,
                       coordination: bool = False, received_at: float | None = None,
                       extra: dict[str, Any] | None = None) -> None:
        """Start the agency's clocks and write one outbox row per target of the agency."""
        now = self.store.clock.now()
        specs = [first] if first else [policy.forward_deadline(now, self.warn)]
        specs += policy.agency_deadlines(category=category, agency=agency, at=now, calendar=self.calendar,
                                         warn=self.warn, coordination=coordination, received_at=received_at)
        for spec in specs:
            await tx.write("INSERT INTO deadlines(case_id, agency, kind, started_at, due_at, warn_at)"
                           " VALUES (?,?,?,?,?,?)", (case_id, agency, spec.kind, spec.started_at, spec.due_at,
                                                     spec.warn_at))
        case = await tx.fetchone("SELECT * FROM cases WHERE id=?", (case_id,))
        assert case is not None
        deadlines = [{"kind": s.kind, "due_at": iso(s.due_at)} for s in specs]
        await self._deliver(tx, case, report, agency, event, deadlines, return_reason, extra)

    async def _deliver(self, tx: Tx, case: sqlite3.Row, report: StoredReport, agency: str, event: str,
                       deadlines: list[dict[str, Any]], return_reason: str | None,
                       extra: dict[str, Any] | None = None) -> None:
        """One outbox row per target of `agency` carrying `event` about `case`."""
        case_id = case["id"]
        now = self.store.clock.now()
        targets = self.cfg.agencies.get(agency)
        if targets is None or not targets.targets:
            # Nobody to deliver to: the clocks still run, so the case shows up as overdue, and operators are told.
            await tx.event(report.id, "alert", "dispatch", {"alert": "no_targets", "case_id": case_id,
                                                            "agency": agency})
            if not self.record_only:
                log.warning("case %s: agency %s has no dispatch targets configured", case_id, agency)
            return
        payload = self.agency_payload(case, report, agency, event, deadlines, return_reason,
                                      with_reporter=targets.receives_confidential,
                                      recurrence=await case_recurrence(tx, case))
        if extra:
            payload["data"].update(extra)
        body = json.dumps(payload, ensure_ascii=False)
        disabled = {r["target"] for r in await tx.fetchall("SELECT target FROM endpoint_state WHERE agency=?",
                                                           (agency,))}
        deadline = now + self.cfg.delivery.deadline_seconds
        for target in targets.targets:
            off = target.name in disabled
            state, error = ("dead", DISABLED) if off else ("pending", None)
            row = await tx.fetchone(
                "INSERT INTO deliveries(msg_id, case_id, agency, target, kind, event, payload, state, next_at,"
                " deadline_at, last_error, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                ("msg_" + secrets.token_hex(12), case_id, agency, target.name, target.kind, event, body, state, now,
                 deadline, error, now, now))
            await enqueue_delivery(tx, int(row["id"]), agency, target.name, deadline, disabled=off)

    def agency_payload(self, case: sqlite3.Row, report: StoredReport, agency: str, event: str,
                       deadlines: list[dict[str, Any]], return_reason: str | None, *,
                       with_reporter: bool, recurrence: dict[str, Any] | None = None) -> dict[str, Any]:
        msg = report.message
        cls = report.classification or {}
        reporter: dict[str, Any]
        # The app's flag or a request written in the text ("xin giữ bí mật danh tính"), on every channel.
        confidential = is_confidential(msg)
        if confidential and not with_reporter:
            reporter = {"confidential": True}  # Art. 9: no name, no contacts, no reply address
        else:
            r = msg.reporter
            reporter = {"name": r.name, "phone": r.phone, "email": r.email, "address": r.address,
                        "confidential": confidential}
        text = msg.text
        if confidential and not with_reporter:
            text = redact_message(msg)
        topic = self.directory.topics.get(case["topic"])
        district = self.directory.districts.get(case["district"]) if case["district"] else None
        place = dict(cls.get("place") or {})
        place.pop("type", None)
        place.pop("schema_version", None)
        return {
            "type": event,
            "timestamp": iso(self.store.clock.now()),
            "data": {
                "case_id": case["id"],
                "incident_id": case["incident_id"],
                "agency": agency,
                "topic": case["topic"],
                "topic_name": topic.description_vi if topic else case["topic"],
                "category": case["category"],
                "district": case["district"],
                # On the 2025 map, the unit with the old names beside it ("Phường Bình Tiên (P.7, Q.6 cũ)").
                "district_name": place.get("unit_label") or (district.name_vi if district else None),
                "place": place,
                "text": text,
                "subject": msg.subject,
                "channel": msg.channel,
                "received_at": iso(case["received_at"]),
                "reporter": reporter,
                "attachments": [{"sha256": a.sha256, "content_type": a.content_type, "size": a.size,
                                 "filename": a.filename} for a in msg.attachments],
                "deadlines": deadlines,
                "return_reason": return_reason,
                "previous_agencies": json.loads(case["tried"])[:-1],
                "recurrence": recurrence,
                "answer_url": f"{self.base_url}/api/v1/agency/cases/{case['id']}/answers",
            },
        }

    # -- agency answers --------------------------------------------------------------------------
    async def apply_answer(self, agency: str, case_id: str, kind: str, data: dict[str, Any], *, source: str,
                           idem_key: str | None = None, note: str | None = None, staff: bool = False) -> AnswerResult:
        """Record one answer and apply its effects atomically. Raises NotFound, Forbidden, AnswerRejected.

        One rule for every answer path (agency API token, agency mailbox, console): an agency acts only on the
        cases it holds, and another agency's case is NotFound exactly like a missing one (nothing tells a prober
        it exists). Only `staff` (an operator or admin logged into the console, acting as the operator unit) may
        act on any case; the operator unit's API token and mailbox are scoped like every other agency's.
        """
        async with self.store.transaction() as tx:
            return await self.apply_answer_in(tx, agency, case_id, kind, data, source=source, idem_key=idem_key,
                                              note=note, staff=staff)

    async def apply_answer_in(self, tx: Tx, agency: str, case_id: str, kind: str, data: dict[str, Any], *,
                              source: str, idem_key: str | None = None, note: str | None = None,
                              staff: bool = False) -> AnswerResult:
        """`apply_answer` in the caller's transaction (the agency email reply job applies it in its own). On a
        raise the caller must undo what was written (a savepoint), as the transaction of `apply_answer` does."""
        if idem_key:
            seen = await tx.fetchone("SELECT a.case_id, a.kind, a.note, a.data, c.state, c.agency FROM answers a"
                                     " JOIN cases c ON c.id=a.case_id WHERE a.idem_key=?", (idem_key,))
            if seen is not None:
                # A repeat only if it is the same answer: a client reusing its key for the next answer was told
                # "duplicate" (200) while the case stayed as it was.
                if (seen["case_id"], seen["kind"], seen["note"], seen["data"]) != (
                        case_id, kind, note, json.dumps(data, ensure_ascii=False)):
                    raise KeyReused("this Idempotency-Key was already used for a different answer")
                return AnswerResult(case_id=seen["case_id"], state=seen["state"], agency=seen["agency"],
                                    duplicate=True)
        case = await tx.fetchone("SELECT * FROM cases WHERE id=?", (case_id,))
        oversees = staff and agency == OPERATOR_UNIT
        if case is not None and case["agency"] != agency and not oversees:
            supporter = await tx.fetchone("SELECT * FROM case_supporters WHERE case_id=? AND agency=? AND state"
                                          " NOT IN ('done','withdrawn')", (case_id, agency))
            if supporter is not None:
                return await self._supporter_answer(tx, case, agency, kind, data, source, idem_key, note)
        if case is None or (case["agency"] != agency and not oversees):
            raise NotFound(case_id)
        if kind == "refused" and agency != OPERATOR_UNIT:
            raise Forbidden("only the operator unit refuses cases")
        if kind == "reassigned" and agency not in (OPERATOR_UNIT, CITY_OFFICE):
            raise Forbidden("only the operator unit and the City Office forward cases to a named agency")
        now = self.store.clock.now()
        view = CaseView(id=case_id, category=case["category"], agency=case["agency"], state=case["state"],
                        forwarded_at=case["forwarded_at"], complex=bool(case["complex"]),
                        coordination=bool(case["coordination"]))
        effect = policy.answer_effect(view, kind, data, now, self.calendar, self.warn,
                                      photo_required=self.photo_required(case["topic"], case["category"]))
        await tx.execute("INSERT INTO answers(case_id, agency, kind, source, idem_key, note, data, at)"
                         " VALUES (?,?,?,?,?,?,?,?)", (case_id, agency, kind, source, idem_key, note,
                                                       json.dumps(data, ensure_ascii=False), now))
        await tx.event(case["report_id"], "agency_answer", agency, {"case_id": case_id, "kind": kind,
                                                                    "source": source})
        await self._meet(tx, case, effect.meets, now)
        for kind_, due in effect.reschedule.items():
            await tx.execute("UPDATE deadlines SET due_at=?, warn_at=?, state=CASE WHEN state='missed'"
                             " AND ?>? THEN 'open' ELSE state END WHERE case_id=? AND kind=? AND state IN"
                             " ('open','missed')", (due, self.warn.warn_at(case["forwarded_at"], due), due, now,
                                                    case_id, kind_))
        if effect.cancel_all:
            await tx.execute("UPDATE deadlines SET state='cancelled', closed_at=? WHERE case_id=?"
                             " AND state IN ('open','missed')", (now, case_id))
        for j in effect.judged:
            await tx.execute("INSERT INTO deadlines(case_id, agency, kind, started_at, due_at, warn_at, state,"
                             " closed_at) VALUES (?,?,?,?,?,?,?,?)",
                             (case_id, case["agency"], j.kind, j.started_at, j.due_at, j.due_at,
                              "met" if j.met else "met_late", now))
            if not j.met:
                await tx.event(case["report_id"], "deadline_escalation", "dispatch",
                               {"case_id": case_id, "kind": j.kind, "agency": case["agency"], "late": True})
        if effect.new_deadlines:
            # A new expected completion replaces the previous one.
            await tx.execute("UPDATE deadlines SET state='cancelled', closed_at=? WHERE case_id=?"
                             " AND kind='completion' AND state IN ('open','missed')", (now, case_id))
            for spec in effect.new_deadlines:
                await tx.execute("INSERT INTO deadlines(case_id, agency, kind, started_at, due_at, warn_at)"
                                 " VALUES (?,?,?,?,?,?)", (case_id, case["agency"], spec.kind, spec.started_at,
                                                           spec.due_at, spec.warn_at))
        await tx.execute(
            "UPDATE cases SET state=?, complex=MAX(complex, ?), coordination=MAX(coordination, ?),"
            " expected_completion=COALESCE(?, expected_completion), updated_at=? WHERE id=?",
            (effect.state, int(effect.set_complex), int(effect.set_coordination), effect.expected_completion,
             now, case_id))
        if effect.set_category:
            await tx.execute("UPDATE cases SET category=? WHERE id=?", (effect.set_category, case_id))
        holder = case["agency"]
        if effect.reroute:
            holder = await self._reroute(tx, case, kind, data, note, to=effect.reroute_to)
            supporters = [a for a in data.get("supporting") or [] if a != holder]
            if kind == "reassigned" and supporters:
                # The coordinating unit names a lead (the holder) and supporting agencies (Art. 7.1, 7.3).
                await tx.execute("UPDATE cases SET coordination=1 WHERE id=?", (case_id,))
                report = await self.store.get_report(case["report_id"])
                assert report is not None
                await self._add_supporters(tx, case_id, supporters, report)
        if effect.closes:
            await self._close(tx, case, effect.state, note, now)
        return AnswerResult(case_id=case_id, state=effect.state, agency=holder)

    async def _supporter_answer(self, tx: Tx, case: sqlite3.Row, agency: str, kind: str, data: dict[str, Any],
                                source: str, idem_key: str | None, note: str | None) -> AnswerResult:
        """A supporting agency's answer on a coordinated case: its own clocks and part, never the case's result
        (the lead's answer resolves the case). `resolved` ends its part; `returned` withdraws it."""
        if kind not in policy.SUPPORTER_KINDS:
            raise AnswerRejected(f"a supporting agency answers one of {', '.join(policy.SUPPORTER_KINDS)}")
        if case["state"] in policy.CLOSED_STATES:
            raise AnswerRejected("the case is closed")
        now = self.store.clock.now()
        await tx.execute("INSERT INTO answers(case_id, agency, kind, source, idem_key, note, data, at)"
                         " VALUES (?,?,?,?,?,?,?,?)", (case["id"], agency, kind, source, idem_key, note,
                                                       json.dumps(data, ensure_ascii=False), now))
        await tx.event(case["report_id"], "agency_answer", agency, {"case_id": case["id"], "kind": kind,
                                                                    "source": source, "role": "supporting"})
        part = policy.supporter_state(kind)
        meets = frozenset(k for k, kinds in policy.MEETS.items() if kind in kinds)
        if kind in ("in_progress", "progress_report") and data.get("expected_completion"):
            meets |= {"fix", "answer"}
        marks = ",".join("?" * len(meets))
        if meets:
            await tx.execute(
                f"UPDATE deadlines SET state=CASE WHEN state='missed' OR due_at<? THEN 'met_late' ELSE 'met' END,"
                f" closed_at=? WHERE case_id=? AND agency=? AND state IN ('open','missed') AND kind IN ({marks})",
                (now, now, case["id"], agency, *sorted(meets)))
        if part in ("done", "withdrawn"):
            await tx.execute("UPDATE deadlines SET state='cancelled', closed_at=? WHERE case_id=? AND agency=?"
                             " AND state IN ('open','missed')", (now, case["id"], agency))
        await tx.execute("UPDATE case_supporters SET state=?, answered_at=? WHERE case_id=? AND agency=?",
                         (part, now, case["id"], agency))
        return AnswerResult(case_id=case["id"], state=case["state"], agency=case["agency"])

    async def _add_supporters(self, tx: Tx, case_id: str, supporters: list[str], report: StoredReport,
                              event: str = "case.support", extra: dict[str, Any] | None = None) -> None:
        """Deliver the case to each supporting agency with its own clocks (a coordinated case, Art. 7.1, 7.3), as
        `event` (a dispute sends the supporters `case.disputed`, `extra` carrying the dispute); a supporter named
        again takes its part up anew."""
        now = self.store.clock.now()
        for agency in supporters:
            if agency not in self.directory.agencies:
                raise AnswerRejected(f"unknown supporting agency {agency!r}")
            await tx.execute("INSERT INTO case_supporters(case_id, agency, forwarded_at) VALUES (?,?,?)"
                             " ON CONFLICT(case_id, agency) DO UPDATE SET state='forwarded', forwarded_at=excluded"
                             ".forwarded_at, answered_at=NULL", (case_id, agency, now))
            case = await tx.fetchone("SELECT * FROM cases WHERE id=?", (case_id,))
            assert case is not None
            specs = policy.agency_deadlines(category=case["category"], agency=agency, at=now,
                                            calendar=self.calendar, warn=self.warn, coordination=True)
            for spec in specs:
                await tx.execute("INSERT INTO deadlines(case_id, agency, kind, started_at, due_at, warn_at)"
                                 " VALUES (?,?,?,?,?,?)", (case_id, agency, spec.kind, spec.started_at,
                                                           spec.due_at, spec.warn_at))
            await self._deliver(tx, case, report, agency, event,
                                [{"kind": s.kind, "due_at": iso(s.due_at)} for s in specs], None,
                                {**(extra or {}), "role": "supporting", "lead_agency": case["agency"]})
            await tx.event(case["report_id"], "case_supporter_added", "dispatch",
                           {"case_id": case_id, "agency": agency, "lead": case["agency"]})

    async def _meet(self, tx: Tx, case: sqlite3.Row, kinds: frozenset[str], now: float) -> None:
        if not kinds:
            return
        marks = ",".join("?" * len(kinds))
        await tx.execute(
            f"UPDATE deadlines SET state=CASE WHEN state='missed' OR due_at<? THEN 'met_late' ELSE 'met' END, closed_at=?"
            f" WHERE case_id=? AND agency=? AND state IN ('open','missed') AND kind IN ({marks})",
            (now, now, case["id"], case["agency"], *sorted(kinds)))

    async def _reroute(self, tx: Tx, case: sqlite3.Row, kind: str, data: dict[str, Any], note: str | None,
                       to: str | None = None) -> str:
        tried = json.loads(case["tried"])
        if to is not None:
            target = to
        elif kind == "reassigned":
            target = str(data.get("agency") or "")
            if target not in self.directory.agencies:
                raise AnswerRejected(f"unknown agency {target!r}")
        else:
            report = await self.store.get_report(case["report_id"])
            cls = (report.classification if report else None) or {}
            district = case["district"]

            def resolve(topic: str) -> str | None:
                return self.directory.agency_for(topic, district) if topic in self.directory.topics else None

            target = policy.next_agency(cls.get("candidates") or [], tried, resolve)
        report = await self.store.get_report(case["report_id"])
        assert report is not None
        tried.append(target)
        now = self.store.clock.now()
        await tx.execute("UPDATE cases SET agency=?, tried=?, state='forwarded', forwarded_at=?, complex=0,"
                         " expected_completion=NULL, updated_at=? WHERE id=?",
                         (target, json.dumps(tried), now, now, case["id"]))
        reason = str(data.get("reason") or note or "")
        await self._forward(tx, case["id"], report, target, case["category"], "case.rerouted",
                            return_reason=reason or None, coordination=bool(case["coordination"]))
        await tx.event(case["report_id"], "case_rerouted", case["agency"],
                       {"case_id": case["id"], "from": case["agency"], "to": target, "reason": reason})
        return target

    @staticmethod
    async def _next_state_version(tx: Tx, case_id: str, assignments: str, params: tuple[Any, ...]) -> int:
        """Apply `assignments` (a closing or a reopening) to the case and return its state version, one more than
        before: in the same statement, so two changes of one case (two instances) never get the same one."""
        row = await tx.fetchone(f"UPDATE cases SET {assignments}, state_version=state_version+1 WHERE id=?"
                                " RETURNING state_version", (*params, case_id))
        return int(row["state_version"])

    async def _close(self, tx: Tx, case: sqlite3.Row, state: str, note: str | None, now: float) -> None:
        version = await self._next_state_version(tx, case["id"], "closed_at=?, result=?", (now, note))
        # The incident closes with its case: a later report of the same place and problem is a recurrence
        # (a new incident, a new case), not a duplicate of something already handled. Dedupe owns the incident and
        # closes it from its own queue, ahead of any report queued after this commit.
        await tx.enqueue(DEDUPE, case["report_id"], DedupeJob(incident_id=case["incident_id"], incident_state="closed",
                                                              closed_as=state, at=now, version=version),
                         subject=closing_subject(case["incident_id"]))
        # A report still in operator review is not closed here: the operator's decision is still to come (it may
        # reject it, or route it elsewhere); routed after this, it shares the closed incident's result through
        # dedupe (route_member), and the review queue keeps it until then.
        rows = await tx.fetchall("SELECT id FROM reports WHERE incident_id=? AND status NOT IN"
                                 " ('rejected','out_of_scope','ignored','review')", (case["incident_id"],))
        for row in rows:
            await tx.execute("UPDATE reports SET status='closed', updated_at=? WHERE id=?", (now, row["id"]))
            # Art. 7.4: every reporter of the incident gets the result and the lookup link.
            await tx.enqueue(NOTIFY, row["id"], NotifyJob(template="result", case_id=case["id"]))
        await tx.event(case["report_id"], "case_closed", case["agency"], {"case_id": case["id"], "state": state})

    # -- reads -----------------------------------------------------------------------------------
    async def case_by_token(self, token: str) -> sqlite3.Row | None:
        """The case behind a lookup link: a reporter's own token, or the case's (older links)."""
        row = await self.store.fetchone("SELECT c.* FROM reporter_links l JOIN cases c ON c.id=l.case_id"
                                        " WHERE l.token=?", (token,))
        return row if row is not None else await self.store.fetchone("SELECT * FROM cases WHERE token=?", (token,))

    async def reporter_token(self, report_id: int, case_id: str) -> str:
        """This reporter's own lookup token for the case (made once): rating and dispute are theirs alone."""
        async with self.store.transaction() as tx:
            await tx.execute("INSERT OR IGNORE INTO reporter_links(report_id, case_id, token, created_at)"
                             " VALUES (?,?,?,?)", (report_id, case_id, secrets.token_urlsafe(16),
                                                   self.store.clock.now()))
            row = await tx.fetchone("SELECT token FROM reporter_links WHERE report_id=?", (report_id,))
        return str(row["token"])

    async def reporter_of(self, token: str) -> int:
        """The report a lookup token stands for; a case's own token (older links) stands for its first report."""
        row = await self.store.fetchone("SELECT report_id FROM reporter_links WHERE token=?", (token,))
        if row is None:
            row = await self.store.fetchone("SELECT report_id FROM cases WHERE token=?", (token,))
        if row is None:
            raise NotFound(token)
        return int(row["report_id"])

    async def _case_of_report(self, tx: Tx, report_id: int) -> sqlite3.Row:
        case = await tx.fetchone(
            "SELECT c.* FROM reports r JOIN cases c ON c.incident_id=r.incident_id WHERE r.id=?", (report_id,))
        if case is None:
            case = await tx.fetchone("SELECT c.* FROM reporter_links l JOIN cases c ON c.id=l.case_id"
                                     " WHERE l.report_id=?", (report_id,))
        if case is None:
            raise NotFound(str(report_id))
        return case

    async def rate(self, token: str, score: int, comment: str | None) -> str:
        """A rating through a lookup token (see `rate_report`); returns the case id."""
        return await self.rate_report(await self.reporter_of(token), score, comment)

    async def rate_report(self, report_id: int, score: int, comment: str | None) -> str:
        """Art. 7.4: the reporter of `report_id` rates the handling, once, and only once there is a result.
        Raises NotFound, ReporterRejected (no result yet, already rated, score out of range)."""
        if not 1 <= score <= 5:
            raise ReporterRejected("score must be from 1 to 5")
        async with self.store.transaction() as tx:
            case = await self._case_of_report(tx, report_id)
            if case["closed_at"] is None or case["state"] not in ("resolved", "closed_false", "refused"):
                raise ReporterRejected("there is no result to rate yet")
            if await tx.fetchone("SELECT 1 FROM ratings WHERE report_id=?", (report_id,)):
                raise ReporterRejected("this report is already rated")
            await tx.execute("INSERT INTO ratings(case_id, report_id, score, comment, at) VALUES (?,?,?,?,?)",
                             (case["id"], report_id, score, comment, self.store.clock.now()))
            await tx.event(report_id, "rating", "reporter", {"case_id": case["id"], "score": score})
            return str(case["id"])

    async def dispute(self, report_id: int, reason: str, *, source: str,
                      case_id: str | None = None) -> str:
        """The reporter of `report_id` disputes the result within `[dispatch.reporters] dispute_days`: the case
        reopens at the same agency, with the dispute attached to a new delivery, and a new answer clock; the
        incident reopens, so its reports wait for the new result. Returns the case id. Raises NotFound,
        ReporterRejected (no result, result too old, nothing written)."""
        async with self.store.transaction() as tx:
            return await self.dispute_in(tx, report_id, reason, source=source, case_id=case_id)

    async def dispute_in(self, tx: Tx, report_id: int, reason: str, *, source: str,
                         case_id: str | None = None) -> str:
        """`dispute` in the caller's transaction (the reporter follow-up job disputes in its own); on a raise the
        caller undoes what was written."""
        reason = " ".join(reason.split())[:4000]
        if not reason:
            raise ReporterRejected("a dispute needs the reporter's reason")
        case = await self._case_of_report(tx, report_id)
        if case_id is not None and case["id"] != case_id:
            raise NotFound(case_id)
        now = self.store.clock.now()
        if case["closed_at"] is None or case["state"] not in DISPUTABLE:
            raise ReporterRejected("there is no result to dispute")
        if now - case["closed_at"] > self.cfg.reporters.dispute_days * DAY:
            raise ReporterRejected(f"a result can be disputed within {self.cfg.reporters.dispute_days:g} days")
        await tx.execute("INSERT INTO disputes(case_id, report_id, text, source, at) VALUES (?,?,?,?,?)",
                         (case["id"], report_id, reason, source, now))
        previous = {"state": case["state"], "result": case["result"], "closed_at": iso(case["closed_at"])}
        version = await self._next_state_version(
            tx, case["id"], "state='forwarded', closed_at=NULL, forwarded_at=?, complex=0, expected_completion=NULL,"
            " updated_at=?", (now, now))
        # The incident reopens with the case (dedupe applies it from its queue), so new reports join it again.
        await tx.enqueue(DEDUPE, case["report_id"], DedupeJob(incident_id=case["incident_id"], incident_state="open",
                                                              version=version),
                         subject=reopening_subject(case["incident_id"]))
        # Its reporters wait for the new result again, each report as before the closing: the one that opened the
        # case forwarded, the others duplicates of it (Art. 6.4; ingest/records.py REPORT_STATES). Each reporter
        # sees the case open again (their lookup shows the case's state) and gets the next result.
        await tx.execute("UPDATE reports SET status=CASE WHEN id=? THEN 'dispatched' ELSE 'duplicate' END,"
                         " updated_at=? WHERE incident_id=? AND status='closed'",
                         (case["report_id"], now, case["incident_id"]))
        await tx.event(report_id, "case_disputed", "reporter", {"case_id": case["id"], "source": source,
                                                               "previous": previous})
        report = await self.store.get_report(case["report_id"])
        assert report is not None
        told = {"dispute": {"text": reason, "at": iso(now), "previous": previous}}
        await self._forward(tx, case["id"], report, case["agency"], case["category"], "case.disputed",
                            coordination=bool(case["coordination"]), extra=told)
        # A coordinated case reopens at its supporting agencies too (their parts were closed with it): each is told
        # as the lead is, with new clocks; one that withdrew (not its matter) stays out, and so does one no longer in
        # the directory (merged or dissolved since): the reporter's dispute must still reach the others.
        rows = await tx.fetchall("SELECT agency FROM case_supporters WHERE case_id=? AND state!='withdrawn'"
                                 " ORDER BY agency", (case["id"],))
        supporters = [r["agency"] for r in rows if r["agency"] in self.directory.agencies]
        for gone in sorted({r["agency"] for r in rows} - set(supporters)):
            log.warning("case %s: supporting agency %s is no longer in the directory; the dispute skips it",
                        case["id"], gone)
        await self._add_supporters(tx, case["id"], supporters, report, "case.disputed", told)
        await tx.enqueue(NOTIFY, report_id, NotifyJob(template="dispute_ack", case_id=case["id"]))
        return str(case["id"])
