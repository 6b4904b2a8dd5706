"""Read-only queries on dispatch's tables (dispatch/schema.py) for the views: the console, the ops metrics and
periodic reports, the portal. Nothing outside dispatch names its tables; they read through these functions, so a
change to the tables is a change here only. Writes stay with the case book (dispatch/cases.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ingest.public import HIDDEN_STATES
from ingest.store import Store
from ingest.untrusted import row_id

# Ids per IN list: well under SQLite's and PostgreSQL's limits on parameters.
_CHUNK = 500


# -- what the public sees of a report ------------------------------------------------------------------------
# The columns ingest.public.public_request reads, with the case of the report's incident when there is one and the
# data of that case's answers (where the agency's after-photos are). The Open311 JSON and XML and the public pages
# all read a report through this one query (console/public.py, portal/views.py add their WHERE).
PUBLIC_SELECT = ("SELECT r.id, r.status, r.topic, r.agency, r.district, r.received_at, r.updated_at, r.record,"
                 " r.classification, r.incident_id, c.agency AS case_agency, c.state AS case_state,"
                 " c.expected_completion, c.id AS case_id, c.report_id AS case_report_id,"
                 " (SELECT json_group_array(a.data) FROM answers a WHERE a.case_id = c.id) AS answer_data"
                 " FROM reports r LEFT JOIN cases c ON c.incident_id = r.incident_id")


async def public_report(store: Store, request_id: str) -> Any:
    """The PUBLIC_SELECT row of one public service request, or None when there is none the public may see."""
    rid = row_id(request_id)
    if rid is None:
        return None
    return await store.fetchone(
        f"{PUBLIC_SELECT} WHERE r.id=? AND r.status NOT IN ({','.join('?' * len(HIDDEN_STATES))})",
        [rid, *sorted(HIDDEN_STATES)])


# -- one case -------------------------------------------------------------------------------------------------
async def case(store: Store, case_id: str) -> Any:
    """The case's row, None when unknown."""
    return await store.fetchone("SELECT * FROM cases WHERE id=?", (case_id,))


async def case_of_incident(store: Store, incident_id: str) -> Any:
    """(id, agency, state) of the incident's case, None when it has none."""
    return await store.fetchone("SELECT id, agency, state FROM cases WHERE incident_id=?", (incident_id,))


async def cases_of_incidents(store: Store, incident_ids: Sequence[str | None]) -> dict[str, Any]:
    """incident -> (id, agency, state) of its case, for those of `incident_ids` that have one."""
    wanted = sorted({i for i in incident_ids if i})
    found: dict[str, Any] = {}
    for at in range(0, len(wanted), _CHUNK):  # a search scans up to thousands of reports
        chunk = wanted[at:at + _CHUNK]
        for row in await store.fetchall(f"SELECT incident_id, id, agency, state FROM cases WHERE incident_id IN"
                                        f" ({','.join('?' * len(chunk))})", chunk):
            found[row["incident_id"]] = row
    return found


async def deadlines_of_case(store: Store, case_id: str) -> list[Any]:
    return await store.fetchall("SELECT * FROM deadlines WHERE case_id=? ORDER BY due_at", (case_id,))


async def next_due(store: Store, case_id: str) -> float | None:
    """When the case's earliest running (or missed) clock falls due, None when none runs."""
    row = await store.fetchone("SELECT MIN(due_at) AS due FROM deadlines WHERE case_id=?"
                               " AND state IN ('open', 'missed')", (case_id,))
    return float(row["due"]) if row is not None and row["due"] is not None else None


async def answers_of_case(store: Store, case_id: str) -> list[Any]:
    return await store.fetchall("SELECT agency, kind, source, note, data, at FROM answers WHERE case_id=? ORDER BY id",
                                (case_id,))


async def deliveries_of_case(store: Store, case_id: str) -> list[Any]:
    return await store.fetchall("SELECT agency, target, kind, event, state, attempts, last_status, last_error,"
                                " delivered_at, created_at FROM deliveries WHERE case_id=? ORDER BY id", (case_id,))


async def notifications_of_reports(store: Store, report_ids: Sequence[int]) -> list[Any]:
    """The messages to reporters about these reports, oldest first."""
    if not report_ids:
        return []
    marks = ",".join("?" * len(report_ids))
    return await store.fetchall(f"SELECT report_id, template, channel, state, at FROM notifications"
                                f" WHERE report_id IN ({marks}) ORDER BY id", list(report_ids))


async def list_cases(store: Store, *, agency: str = "", state: str = "", district: str = "", open_only: bool = False,
                     limit: int, offset: int = 0) -> list[Any]:
    """Cases, the most recently forwarded first, filtered by whichever of the filters are given."""
    where, args = ["1=1"], []
    for column, value in (("agency", agency), ("state", state), ("district", district)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if open_only:
        where.append("closed_at IS NULL")
    return await store.fetchall(f"SELECT * FROM cases WHERE {' AND '.join(where)} ORDER BY forwarded_at DESC"
                                " LIMIT ? OFFSET ?", [*args, limit, offset])


# -- counts for the metrics -----------------------------------------------------------------------------------
async def case_counts(store: Store) -> list[Any]:
    """(state, n) per case state."""
    return await store.fetchall("SELECT state, COUNT(*) AS n FROM cases GROUP BY state ORDER BY state")


async def delivery_counts(store: Store) -> list[Any]:
    """(agency, state, n): outbox rows per agency and state."""
    return await store.fetchall("SELECT agency, state, COUNT(*) AS n FROM deliveries GROUP BY agency, state"
                                " ORDER BY agency, state")


async def delivery_failed_attempts(store: Store) -> list[Any]:
    """(agency, n): failed delivery attempts per agency."""
    # A delivered row failed every attempt but its last, an undelivered one with an error every attempt. (A row
    # being sent is no state of its own since dispatch migration 4: its `deliver` job is leased, the row keeps
    # the attempts recorded by the last outcome.)
    return await store.fetchall(
        "SELECT agency, SUM(CASE WHEN delivered_at IS NOT NULL THEN MAX(attempts-1, 0)"
        " WHEN last_error IS NOT NULL THEN attempts ELSE 0 END) AS n FROM deliveries GROUP BY agency ORDER BY agency")


async def deadline_counts(store: Store, now: float) -> list[Any]:
    """(agency, kind, open, overdue): running clocks, and those past due and not met, per agency and kind."""
    # Only running and missed clocks: the (state, due_at) index keeps this off the met majority. Counts are
    # CASE sums, not sums of comparisons: PostgreSQL has no sum of booleans.
    return await store.fetchall(
        "SELECT agency, kind, SUM(CASE WHEN state='open' THEN 1 ELSE 0 END) AS open,"
        " SUM(CASE WHEN state='missed' OR (state='open' AND due_at<=?) THEN 1 ELSE 0 END) AS overdue"
        " FROM deadlines WHERE state IN ('open','missed') GROUP BY agency, kind", (now,))


# -- figures for the periodic reports -------------------------------------------------------------------------
async def cases_received(store: Store, start: float, end: float) -> list[Any]:
    """(agency, case_id) of the cases that reached an agency in [start, end): first forwarded, or re-routed to it."""
    return await store.fetchall(
        "SELECT agency, id AS case_id FROM cases WHERE forwarded_at>=? AND forwarded_at<?"
        " UNION SELECT agency, case_id FROM deadlines WHERE kind!='forward' AND case_id IS NOT NULL"
        " AND started_at>=? AND started_at<?", (start, end, start, end))


async def answer_counts(store: Store, start: float, end: float, closing: Sequence[str]) -> list[Any]:
    """(agency, handled, answered, returned): cases acted on, closed with one of `closing`, sent back."""
    marks = ",".join("?" * len(closing))
    return await store.fetchall(
        "SELECT agency,"
        " COUNT(DISTINCT CASE WHEN kind!='returned' THEN case_id END) AS handled,"
        f" COUNT(DISTINCT CASE WHEN kind IN ({marks}) THEN case_id END) AS answered,"
        " COUNT(DISTINCT CASE WHEN kind='returned' THEN case_id END) AS returned"
        " FROM answers WHERE at>=? AND at<? GROUP BY agency", (*closing, start, end))


async def deadline_tallies(store: Store, start: float, end: float, now: float) -> list[Any]:
    """(agency, kind, on_time, late): each clock counts once, a met one in the period it was met, a late one in
    the period it fell due."""
    return await store.fetchall(
        "SELECT agency, kind,"
        " SUM(CASE WHEN state='met' AND COALESCE(closed_at, due_at)>=? AND COALESCE(closed_at, due_at)<?"
        " THEN 1 ELSE 0 END) AS on_time,"
        " SUM(CASE WHEN due_at>=? AND due_at<? AND (state IN ('missed','met_late') OR (state='open' AND due_at<?))"
        " THEN 1 ELSE 0 END) AS late"
        " FROM deadlines WHERE state!='cancelled' GROUP BY agency, kind", (start, end, start, end, now))


async def rating_counts(store: Store, start: float, end: float) -> list[Any]:
    """(agency, score, n): reporters' ratings given in [start, end) on the cases each agency holds."""
    return await store.fetchall(
        "SELECT c.agency, r.score, COUNT(*) AS n FROM ratings r JOIN cases c ON c.id=r.case_id"
        " WHERE r.at>=? AND r.at<? GROUP BY c.agency, r.score", (start, end))
