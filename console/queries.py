"""Read-only views the console composes from the committed tables: a case timeline, search, incident listings.

Decisions are never made here: they go through classifier.review.decisions, dedupe.operations and dispatch.cases.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dedupe import incidents
from dispatch import queries as dispatch_queries
from dispatch.delivery import endpoint_subject
from ingest.clock import iso
from ingest.contacts import find_phones, normalize_phone
from ingest.pii import is_confidential, redact, redact_ids
from ingest.public import redact_text
from ingest.queue import shown_to_admins
from ingest.records import InboundMessage, from_json
from ingest.store import Store
from ingest.untrusted import row_id
from ingest.text import fold
from ingest.vocabulary import alert_text, console_text

# Search filters the structured columns in SQL, then text and phone in Python over at most this many of the
# most recent matching reports (no full-text index; the console is used by a few dozen people).
SEARCH_SCAN_LIMIT = 20000


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEntry:
    at: float
    who: str
    what: str
    detail: str = ""
    report_id: int | None = None

    @property
    def when(self) -> str:
        return iso(self.at)


# Keys whose values are the daemon's own ids (CASE-000123, INC-000123, a report number, an escalation digest's or a
# job's row id in an operator alert): no personal data, and redacting them (long numbers: an alert's
# escalation_id=12345 read "[ẩn]") would leave staff unable to tell which case, report, digest or job a detail names.
OWN_IDS = re.compile(r"(?:^|_)(?:case|incident|report|escalation|job)_id$")


def _shown(key: str, value: Any) -> str:
    """One value of an event's data as staff see it: the daemon's ids and times as they are (a deadline's `due_at`,
    an epoch number, as a date: redacted it read as a hidden ID number), anything else through the redaction
    (which leaves the daemon's CASE-/INC- numbers of a move, a merge or a recurrence readable)."""
    if OWN_IDS.search(key):
        return str(value)
    if key.endswith("_at") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso(value)
    return shown_to_admins(str(value)) or ""


def _compact(data: str | None, drop: Sequence[str] = ()) -> str:
    """An event's or answer's data as one line for staff: every value as the dead-letter page shows an error
    (ingest/queue.py shown_to_admins), since an error, a text or an address quoted there can name the reporter."""
    try:
        obj = json.loads(data or "{}")
    except ValueError:
        return ""
    if not isinstance(obj, dict):
        return shown_to_admins(str(obj)) or ""
    return ", ".join(f"{k}={_shown(k, v)}" for k, v in obj.items() if k not in drop and v not in (None, "", [], {}))


def _endpoint(delivery: Any) -> str:
    """A delivery's endpoint as the dead-letter page shows its subject: a target may be named by an e-mail
    address."""
    return shown_to_admins(endpoint_subject(delivery["agency"], delivery["target"])) or ""


async def case_timeline(store: Store, case: Any) -> list[TimelineEntry]:
    """Every event of a case, who did it and when: the reports of its incident arriving, pipeline and operator
    events, agency answers, outbox deliveries, messages to reporters and incident merges/splits."""
    members = await store.fetchall("SELECT id, channel, received_at FROM reports WHERE incident_id=? ORDER BY id",
                                   (case["incident_id"],))
    ids = sorted({int(r["id"]) for r in members} | {int(case["report_id"])})
    marks = ",".join("?" * len(ids))
    out = [TimelineEntry(at=r["received_at"], who=console_text("channel_who", channel=r["channel"]), what="received",
                         report_id=r["id"])
           for r in members]
    # agency_answer, delivered and reporter_notified events repeat rows shown below in more detail.
    for e in await store.fetchall(
            f"SELECT report_id, at, kind, actor, data FROM events WHERE report_id IN ({marks})"
            " AND kind NOT IN ('agency_answer','delivered','reporter_notified','incident_merge','incident_split')"
            " ORDER BY at, id", ids):
        out.append(TimelineEntry(at=e["at"], who=e["actor"], what=e["kind"], detail=_compact(e["data"]),
                                 report_id=e["report_id"]))
    for a in await dispatch_queries.answers_of_case(store, case["id"]):
        # The note is what the agency's staff typed: it can quote the reporter's phone, e-mail or ID number. Whole
        # (not cut as an error is), with the daemon's CASE-/INC- numbers it names readable.
        detail = "; ".join(x for x in (redact_ids(a["note"] or ""), _compact(a["data"], drop=("photos",))) if x)
        photos = json.loads(a["data"] or "{}").get("photos") or []
        if photos:
            detail += console_text("photo_count", n=len(photos))
        out.append(TimelineEntry(at=a["at"], who=f"{a['agency']} ({a['source']})", what=f"answer: {a['kind']}",
                                 detail=detail))
    for d in await dispatch_queries.deliveries_of_case(store, case["id"]):
        endpoint = _endpoint(d)
        out.append(TimelineEntry(at=d["created_at"], who="dispatch", what=f"outbox: {d['event']}",
                                 detail=f"→ {endpoint} ({d['kind']})"))
        if d["delivered_at"]:
            out.append(TimelineEntry(at=d["delivered_at"], who=endpoint,
                                     what="delivered", detail=f"after {d['attempts']} attempt(s)"))
        elif d["state"] != "pending" or d["attempts"]:
            out.append(TimelineEntry(at=d["created_at"], who=endpoint,
                                     what=f"delivery {d['state']}",
                                     # An endpoint's answer quoted in the error can name the reporter (a
                                     # phone, an e-mail, a chat id): staff read it as the dead-letter page shows it.
                                     detail=f"attempts={d['attempts']} status={d['last_status'] or '-'} "
                                            f"{shown_to_admins(d['last_error']) or ''}".strip()))
    for n in await dispatch_queries.notifications_of_reports(store, ids):
        out.append(TimelineEntry(at=n["at"], who="dispatch", what=f"reporter message: {n['template']}",
                                 detail=f"{n['channel']}, {n['state']}", report_id=n["report_id"]))
    for m in await incidents.decisions_about(store, case["incident_id"]):
        out.append(TimelineEntry(at=m["at"], who=m["actor"], what=f"incident {m['kind']}",
                                 detail=f"{m['source']} → {m['target']}, reports {m['report_ids']}"))
    out.sort(key=lambda t: t.at)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One operator alert as the alerts page lists it: what it concerns (its case, else its incident, else its report;
    none for a dead delivery or digest without a case) and its details redacted as a timeline's are."""
    at: float
    kind: str
    label: str
    actor: str
    case_id: str | None
    incident_id: str | None
    report_id: int | None
    detail: str

    @property
    def when(self) -> str:
        return iso(self.at)


async def alerts(store: Store, *, limit: int, offset: int = 0) -> list[Alert]:
    """The operators' alerts (events of kind 'alert'), newest first: also those attached to no report, which no case
    timeline shows. An alert names its case (a delivery's), its incident (dedupe's) or only its report; the case of
    that incident or report's incident is looked up, so each links to the case page when there is one."""
    rows = await store.fetchall("SELECT e.report_id, e.at, e.actor, e.data, r.incident_id AS report_incident"
                                " FROM events e LEFT JOIN reports r ON r.id = e.report_id WHERE e.kind='alert'"
                                " ORDER BY e.at DESC, e.id DESC LIMIT ? OFFSET ?", (limit, offset))
    datas = []
    for row in rows:
        try:
            data = json.loads(row["data"] or "{}")
        except ValueError:
            data = {}
        datas.append(data if isinstance(data, dict) else {})
    incident_of = [str(d.get("incident_id") or "") or row["report_incident"] for row, d in zip(rows, datas)]
    cases = await dispatch_queries.cases_of_incidents(store, incident_of)
    out = []
    for row, data, incident in zip(rows, datas, incident_of):
        case = cases.get(incident) if incident else None
        kind = str(data.get("alert") or "")
        out.append(Alert(at=row["at"], kind=kind, label=alert_text(kind), actor=row["actor"],
                         case_id=str(data.get("case_id") or "") or (case["id"] if case else None),
                         incident_id=incident, report_id=row["report_id"],
                         detail=_compact(row["data"], drop=("alert",))))
    return out


def _excerpt(record: dict[str, Any], confidential: bool) -> str:
    if confidential:
        return redact_text(from_json(InboundMessage, record))
    return redact(record.get("text") or "")


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchHit:
    report_id: int
    received_at: float
    status: str
    agency: str | None
    district: str | None
    incident_id: str | None
    case_id: str | None
    excerpt: str  # contacts redacted: lists never show personal data
    confidential: bool
    phone_match: bool


async def search(store: Store, *, text: str = "", phone: str = "", agency: str = "", district: str = "",
                 status: str = "", only_case_agency: str | None = None, hide_confidential_phone: bool = False,
                 limit: int = 50, offset: int = 0) -> list[SearchHit]:
    """Reports matching every given filter, newest first.

    `only_case_agency` restricts to reports whose incident's case that agency holds (agency staff);
    `hide_confidential_phone` drops confidential reporters from phone matches (staff not authorised to
    know who they are must not learn it by searching their number).
    """
    where, args = ["1=1"], []
    if district:
        where.append("r.district = ?")
        args.append(district)
    needle = text.strip()
    if needle.upper().startswith("INC-"):
        where.append("r.incident_id = ?")
        args.append(needle.upper())
        needle = ""
    elif needle.upper().startswith("CASE-"):
        # The case's reports are its incident's (dispatch says which incident).
        found = await dispatch_queries.case(store, needle.upper())
        if found is None:
            return []
        where.append("r.incident_id = ?")
        args.append(found["incident_id"])
        needle = ""
    elif needle.isdigit():
        rid = row_id(needle)
        if rid is None:
            return []  # no report has that number (too long for an id, or digits of another script)
        where.append("r.id = ?")
        args.append(rid)
        needle = ""
    wanted_phone = normalize_phone(phone) if phone.strip() else None
    if phone.strip() and wanted_phone is None:
        return []
    # Filters on the case (its agency, its state) are applied below, over the scanned reports' cases.
    by_case = bool(agency or status or only_case_agency is not None)
    rows = await store.fetchall(
        "SELECT r.id, r.received_at, r.status, r.agency, r.district, r.incident_id, r.record FROM reports r"
        f" WHERE {' AND '.join(where)} ORDER BY r.received_at DESC, r.id DESC LIMIT ?",
        [*args, SEARCH_SCAN_LIMIT if (needle or wanted_phone or by_case) else limit + offset])
    cases = await dispatch_queries.cases_of_incidents(store, [r["incident_id"] for r in rows])
    folded = fold(needle)
    hits: list[SearchHit] = []
    for r in rows:
        case = cases.get(r["incident_id"])
        if agency and (case["agency"] if case else r["agency"]) != agency:
            continue
        if status and r["status"] != status and (case is None or case["state"] != status):
            continue
        if only_case_agency is not None and (case is None or case["agency"] != only_case_agency):
            continue
        record = json.loads(r["record"])
        body = record.get("text") or ""
        reporter = record.get("reporter") or {}
        confidential = bool(reporter.get("confidential")) or is_confidential(from_json(InboundMessage, r["record"]))
        if folded and folded not in fold(f"{record.get('subject') or ''} {body}"):
            continue
        phone_match = False
        if wanted_phone:
            own = normalize_phone(reporter.get("phone") or "")
            phone_match = own == wanted_phone or wanted_phone in find_phones(body)
            if not phone_match or (confidential and hide_confidential_phone):
                continue
        hits.append(SearchHit(report_id=r["id"], received_at=r["received_at"], status=r["status"], agency=r["agency"],
                              district=r["district"], incident_id=r["incident_id"],
                              case_id=case["id"] if case else None,
                              excerpt=" ".join(_excerpt(record, confidential).split())[:160],
                              confidential=confidential,
                              phone_match=phone_match))
        if len(hits) >= offset + limit:
            break
    return hits[offset:]
