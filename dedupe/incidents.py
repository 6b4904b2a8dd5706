"""The incident repository: every read and write of the stage's tables (dedupe/schema.py) and of a report's
incident column, for the stage (matching, joining, routing) and for the operators' merge and split alike.

Writes take the caller's transaction (`Tx`), so they commit with the job or decision that causes them. Reads
take a `reader`: the store (its reader connection, off the event loop) or a transaction (which also sees its
own uncommitted writes).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from ingest.records import Place
from ingest.store import Tx


class Reader(Protocol):
    async def fetchall(self, sql: str, params: Sequence[Any] = ...) -> list[Any]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ...) -> Any: ...


def incident_id_for(seq: int) -> str:
    return f"INC-{seq:06d}"


def place_summary(place: Place) -> str:
    """What an incident records of its first report's place (JSON)."""
    summary = {k: getattr(place, k) for k in ("ward", "street", "landmark", "house_number", "lat", "lon")
               if getattr(place, k) is not None}
    return json.dumps(summary, ensure_ascii=False)


# -- reads ----------------------------------------------------------------------------------------
async def incident_of_report(reader: Reader, report_id: int) -> str | None:
    """The incident a report belongs to (any state), None when it has none yet."""
    row = await reader.fetchone("SELECT incident_id FROM incident_reports WHERE report_id=?", (report_id,))
    return row["incident_id"] if row is not None else None


async def open_incidents_of(reader: Reader, report_ids: Sequence[int],
                            district: str | None) -> list[tuple[int, str, str | None]]:
    """(report, its open incident, the report's current topic) for the reports among `report_ids` in an open
    incident whose reports name no district other than `district` (when `district` is given): a report without
    a district must not bridge two incidents of different districts."""
    if not report_ids:
        return []
    marks = ",".join("?" * len(report_ids))
    sql = (f"SELECT m.report_id, m.incident_id, r.topic FROM incident_reports m"
           f" JOIN incidents i ON i.id = m.incident_id JOIN reports r ON r.id = m.report_id"
           f" WHERE m.report_id IN ({marks}) AND i.state = 'open'")
    params: list[Any] = list(report_ids)
    if district is not None:
        sql += (" AND NOT EXISTS (SELECT 1 FROM incident_reports o JOIN reports ro ON ro.id = o.report_id"
                " WHERE o.incident_id = m.incident_id AND ro.district IS NOT NULL AND ro.district != ?)")
        params.append(district)
    return [(r[0], r[1], r[2]) for r in await reader.fetchall(sql, params)]


async def closed_incidents_of(reader: Reader, report_ids: Sequence[int]) -> dict[int, tuple[str, float]]:
    """report -> (its incident, when that closed) for the reports among `report_ids` in a closed incident."""
    if not report_ids:
        return {}
    marks = ",".join("?" * len(report_ids))
    rows = await reader.fetchall(
        f"SELECT m.report_id, m.incident_id, i.closed_at FROM incident_reports m JOIN incidents i"
        f" ON i.id = m.incident_id WHERE m.report_id IN ({marks}) AND i.state = 'closed'", list(report_ids))
    return {r[0]: (r[1], r[2] or 0.0) for r in rows}


async def latest_member_time(reader: Reader) -> float | None:
    """When the latest report that belongs to an incident arrived (None: no report does)."""
    row = await reader.fetchone(
        "SELECT MAX(r.received_at) AS t FROM reports r JOIN incident_reports m ON m.report_id = r.id")
    return row["t"] if row is not None else None


async def members_after(reader: Reader, columns: str, since: float, after: tuple[float, int],
                        limit: int) -> list[Any]:
    """`columns` (of reports r and embeddings e) of up to `limit` reports that belong to an incident, received at
    or after `since` and after `after` (received_at, id), in that order: the window's rows, chunk by chunk."""
    return await reader.fetchall(
        f"SELECT {columns} FROM reports r JOIN incident_reports m ON m.report_id = r.id"
        " LEFT JOIN embeddings e ON e.report_id = r.id"
        " WHERE r.received_at >= ? AND (r.received_at > ? OR (r.received_at = ? AND r.id > ?))"
        " ORDER BY r.received_at, r.id LIMIT ?", (since, after[0], after[0], after[1], limit))


async def joined_since(reader: Reader, since: float, districts: Sequence[str | None] | None
                       ) -> list[tuple[int, str | None]]:
    """(report, its topic now) of the reports with a vector that joined an incident at or after `since` (joined_at:
    also when an operator's review changed the topic of a report that kept its incident, see `rejoined`), of
    `districts` (None in it: reports without one; None: every district)."""
    sql = ("SELECT m.report_id, r.topic FROM incident_reports m JOIN reports r ON r.id = m.report_id"
           " JOIN embeddings e ON e.report_id = m.report_id WHERE m.joined_at >= ?")
    params: list[Any] = [since]
    if districts is not None:
        named = [d for d in districts if d is not None]
        alternatives = [f"r.district IN ({','.join('?' * len(named))})"] if named else []
        if None in districts:
            alternatives.append("r.district IS NULL")
        sql += f" AND ({' OR '.join(alternatives)})"
        params += named
    return [(r[0], r[1]) for r in await reader.fetchall(sql, params)]


async def members_by_id(reader: Reader, columns: str, report_ids: Sequence[int]) -> list[Any]:
    """`columns` (of reports r and embeddings e) of those of `report_ids` that belong to an incident, in
    received_at order (as members_after gives them)."""
    marks = ",".join("?" * len(report_ids))
    return await reader.fetchall(
        f"SELECT {columns} FROM reports r JOIN incident_reports m ON m.report_id = r.id"
        f" LEFT JOIN embeddings e ON e.report_id = r.id WHERE r.id IN ({marks}) ORDER BY r.received_at, r.id",
        list(report_ids))


async def get(reader: Reader, incident_id: str) -> Any:
    """The incident's row, None when unknown."""
    return await reader.fetchone("SELECT * FROM incidents WHERE id=?", (incident_id,))


async def member_ids(reader: Reader, incident_id: str) -> list[int]:
    rows = await reader.fetchall("SELECT report_id FROM incident_reports WHERE incident_id=? ORDER BY report_id",
                                 (incident_id,))
    return [r["report_id"] for r in rows]


async def members_among(reader: Reader, incident_id: str, report_ids: Sequence[int]) -> list[Any]:
    """The rows (id, status, received_at, topic, district) of those of `report_ids` that belong to the
    incident, by arrival."""
    marks = ",".join("?" * len(report_ids))
    return await reader.fetchall(
        f"SELECT r.id, r.status, r.received_at, r.topic, r.district FROM reports r"
        f" JOIN incident_reports m ON m.report_id = r.id WHERE m.incident_id=? AND r.id IN ({marks})"
        f" ORDER BY r.received_at, r.id", (incident_id, *report_ids))


async def members_with_status(reader: Reader, incident_id: str, status: str) -> list[int]:
    """The incident's reports whose status is `status`, by id."""
    rows = await reader.fetchall("SELECT r.id FROM incident_reports m JOIN reports r ON r.id = m.report_id"
                                 " WHERE m.incident_id=? AND r.status=? ORDER BY r.id", (incident_id, status))
    return [r["id"] for r in rows]


async def members_received_after(reader: Reader, incident_id: str, at: float, statuses: Sequence[str]) -> list[Any]:
    """(id, status, district) of the incident's reports received after `at` whose status is one of `statuses`, by
    arrival."""
    marks = ",".join("?" * len(statuses))
    return await reader.fetchall(
        f"SELECT r.id, r.status, r.district FROM incident_reports m JOIN reports r ON r.id = m.report_id"
        f" WHERE m.incident_id=? AND r.received_at > ? AND r.status IN ({marks}) ORDER BY r.received_at, r.id", (incident_id, at, *statuses))


async def other_member_topics(reader: Reader, incident_id: str, report_id: int) -> list[str | None]:
    """The current topics of the incident's reports other than `report_id`."""
    rows = await reader.fetchall("SELECT r.topic FROM incident_reports m JOIN reports r ON r.id = m.report_id"
                                 " WHERE m.incident_id=? AND r.id!=?", (incident_id, report_id))
    return [r["topic"] for r in rows]


async def count_members(reader: Reader, incident_id: str) -> int:
    row = await reader.fetchone("SELECT COUNT(*) AS n FROM incident_reports WHERE incident_id=?", (incident_id,))
    return int(row["n"]) if row is not None else 0


async def list_open(reader: Reader, limit: int) -> list[Any]:
    """Open incidents, most recent first, with their number of reports."""
    return await reader.fetchall(
        "SELECT i.id, i.topic, i.district, i.last_report_at, i.dispatch_report_id, COUNT(m.report_id) AS n"
        " FROM incidents i LEFT JOIN incident_reports m ON m.incident_id = i.id WHERE i.state='open'"
        " GROUP BY i.id ORDER BY i.last_report_at DESC LIMIT ?", (limit,))


async def member_rows(reader: Reader, incident_id: str) -> list[Any]:
    """The incident's reports (id, status, channel, how, score) by arrival."""
    return await reader.fetchall(
        "SELECT r.id, r.status, r.channel, m.how, m.score FROM incident_reports m JOIN reports r"
        " ON r.id = m.report_id WHERE m.incident_id=? ORDER BY r.received_at", (incident_id,))


async def decisions_about(reader: Reader, incident_id: str) -> list[Any]:
    """Operators' merge and split decisions naming the incident, oldest first."""
    return await reader.fetchall("SELECT * FROM incident_decisions WHERE source=? OR target=? ORDER BY at",
                                 (incident_id, incident_id))


async def open_page(reader: Reader, limit: int, offset: int = 0) -> list[Any]:
    """One page of open incidents for the console, most recent first, with their place and number of reports."""
    return await reader.fetchall(
        "SELECT i.id, i.topic, i.district, i.place, i.created_at, i.last_report_at, COUNT(m.report_id) AS n"
        " FROM incidents i LEFT JOIN incident_reports m ON m.incident_id = i.id WHERE i.state='open'"
        " GROUP BY i.id ORDER BY i.last_report_at DESC LIMIT ? OFFSET ?", (limit, offset))


async def member_reports(reader: Reader, incident_id: str) -> list[Any]:
    """The incident's reports with their record and how they joined (id, status, channel, received_at, record,
    how, score), by arrival."""
    return await reader.fetchall(
        "SELECT r.id, r.status, r.channel, r.received_at, r.record, m.how, m.score FROM incident_reports m"
        " JOIN reports r ON r.id = m.report_id WHERE m.incident_id=? ORDER BY r.received_at, r.id", (incident_id,))


async def recurrences_of(reader: Reader, incident_id: str) -> list[Any]:
    """(id, created_at) of the incidents recorded as recurrences of this one, oldest first."""
    return await reader.fetchall("SELECT id, created_at FROM incidents WHERE recurrence_of=? ORDER BY created_at",
                                 (incident_id,))


# -- writes ---------------------------------------------------------------------------------------
async def create(tx: Tx, *, first_report_id: int, topic: str | None, district: str | None, created_at: float,
                 last_report_at: float, place: str = "{}", recurrence_of: str | None = None) -> str:
    """Open a new incident numbered after the last one; returns its id.

    `first_report_id` (with `created_at`, `topic`, `district`, `place`) records the report that opened it and is
    never updated when that report leaves (a review decision moving it elsewhere, a split): it is history, like a
    retired incident's row, not "a report it holds". Nothing decides or shows anything by it: the console,
    portal and dispatch never read it, and `absorb` only carries it over to the kept incident. Members are read
    from incident_reports; the report whose case it is, from dispatch_report_id. Anything that needs the earliest
    report held must read it from there, not from this column."""
    while True:
        row = await tx.fetchone("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM incidents")
        seq = int(row["seq"]) if row is not None else 1
        incident_id = incident_id_for(seq)
        cur = await tx.execute(
            "INSERT INTO incidents(id, seq, first_report_id, topic, district, place, created_at, last_report_at,"
            " recurrence_of) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (incident_id, seq, first_report_id, topic, district, place, created_at, last_report_at,
             recurrence_of))
        if cur.rowcount == 1:
            return incident_id
        # Another instance opened an incident with this number at the same time (in another district: the
        # insert waited for its commit): the next number.


async def join(tx: Tx, report_id: int, incident_id: str, received_at: float, *, score: float = 1.0,
               matched_report: int | None = None, how: str = "auto") -> None:
    """Make the report a member of the incident (moving it if it had one)."""
    now = tx.store.clock.now()
    # Nothing here reads an outcome: the three go with the transaction's next statement (ingest/store.py Tx).
    await tx.write(
        "INSERT INTO incident_reports(report_id, incident_id, joined_at, score, matched_report, how)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT(report_id) DO UPDATE SET incident_id=excluded.incident_id,"
        " joined_at=excluded.joined_at, score=excluded.score, matched_report=excluded.matched_report,"
        " how=excluded.how",
        (report_id, incident_id, now, score, matched_report, how))
    await tx.write("UPDATE reports SET incident_id=?, updated_at=? WHERE id=?", (incident_id, now, report_id))
    await tx.write("UPDATE incidents SET last_report_at=MAX(last_report_at, ?) WHERE id=?",
                   (received_at, incident_id))


async def rejoined(tx: Tx, report_id: int) -> None:
    """The report keeps its incident after an operator's review (its topic may have changed): its joined_at moves
    to now, so other instances' windows read it again (joined_since) and index it under its topic now."""
    await tx.write("UPDATE incident_reports SET joined_at=? WHERE report_id=?", (tx.store.clock.now(), report_id))


async def routing_state(tx: Tx, incident_id: str) -> Any:
    """The incident's state, the report that opened its case (dispatch_report_id; NULL: no case yet) and the
    closed incident it repeats (recurrence_of)."""
    return await tx.fetchone("SELECT dispatch_report_id, state, recurrence_of FROM incidents WHERE id=?",
                             (incident_id,))


def _newer(version: int | None) -> tuple[str, tuple[Any, ...]]:
    """The SQL condition (and its parameters) under which a closing or reopening of state version `version` is
    newer than the last one the incident applied: a larger version; a job without one (queued before versions
    existed, so before every versioned change) only while no versioned change was applied."""
    return ("state_version = 0", ()) if version is None else ("state_version < ?", (version,))


async def close(tx: Tx, incident_id: str, closed_as: str, at: float, version: int | None) -> bool:
    """Close the incident with its case (`closed_as`: the case's final state, at `at`) when this closing is newer
    than the last change it applied; also when it is closed already (a later closing of the case, after a dispute
    whose reopening is older: this one's date and result are the case's). False: stale, or not open or closed."""
    newer, params = _newer(version)
    cur = await tx.execute(
        f"UPDATE incidents SET state='closed', closed_at=?, closed_as=?, state_version=COALESCE(?, state_version)"
        f" WHERE id=? AND state IN ('open', 'closed') AND {newer}", (at, closed_as, version, incident_id, *params))
    return cur.rowcount == 1


async def reopen(tx: Tx, incident_id: str, version: int | None) -> bool:
    """Open the incident again (its case reopened) when this reopening is newer than the last change it applied;
    False: stale, or not open or closed."""
    newer, params = _newer(version)
    cur = await tx.execute(
        f"UPDATE incidents SET state='open', closed_at=NULL, closed_as=NULL, state_version=COALESCE(?, state_version)"
        f" WHERE id=? AND state IN ('open', 'closed') AND {newer}", (version, incident_id, *params))
    return cur.rowcount == 1


async def set_dispatch_report(tx: Tx, incident_id: str, report_id: int) -> None:
    await tx.write("UPDATE incidents SET dispatch_report_id=? WHERE id=?", (report_id, incident_id))


async def absorb(tx: Tx, keep: str, absorbed: Any) -> None:
    """Move every report of the incident row `absorbed` into `keep`, which takes the earlier first report and
    dates and, when it has none, the absorbed case; `absorbed` is marked merged into `keep`."""
    now = tx.store.clock.now()
    source = absorbed["id"]
    await tx.execute("UPDATE incident_reports SET incident_id=?, how='merge', joined_at=? WHERE incident_id=?",
                     (keep, now, source))
    await tx.execute("UPDATE reports SET incident_id=?, updated_at=? WHERE incident_id=?", (keep, now, source))
    await tx.execute(
        "UPDATE incidents SET last_report_at=MAX(last_report_at, ?), first_report_id=CASE WHEN created_at > ?"
        " THEN ? ELSE first_report_id END, created_at=MIN(created_at, ?),"
        " dispatch_report_id=COALESCE(dispatch_report_id, ?) WHERE id=?",
        (absorbed["last_report_at"], absorbed["created_at"], absorbed["first_report_id"], absorbed["created_at"],
         absorbed["dispatch_report_id"], keep))
    await tx.execute("UPDATE incidents SET state='merged', merged_into=? WHERE id=?", (keep, source))


async def move(tx: Tx, report_ids: Sequence[int], incident_id: str, how: str) -> None:
    """Move the reports into the incident (an operator's decision: `how` says which)."""
    now = tx.store.clock.now()
    marks = ",".join("?" * len(report_ids))
    await tx.execute(f"UPDATE incident_reports SET incident_id=?, how=?, joined_at=?"
                     f" WHERE report_id IN ({marks})", (incident_id, how, now, *report_ids))
    await tx.execute(f"UPDATE reports SET incident_id=?, updated_at=? WHERE id IN ({marks})",
                     (incident_id, now, *report_ids))


async def retire_if_empty(tx: Tx, incident_id: str, into: str) -> bool:
    """Mark an open incident that holds no report and has no case merged into `into`, where its reports went;
    False when it holds a report, has a case or is not open."""
    cur = await tx.execute(
        "UPDATE incidents SET state='merged', merged_into=? WHERE id=? AND state='open' AND dispatch_report_id IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM incident_reports WHERE incident_id=?)", (into, incident_id, incident_id))
    return cur.rowcount == 1


async def refresh_last_report(tx: Tx, incident_id: str) -> None:
    """Set the incident's last report time from the reports it holds now."""
    await tx.execute(
        "UPDATE incidents SET last_report_at=(SELECT MAX(r.received_at) FROM reports r JOIN incident_reports m"
        " ON m.report_id=r.id WHERE m.incident_id=?) WHERE id=?", (incident_id, incident_id))


async def record_decision(tx: Tx, kind: str, actor: str, source: str, target: str, report_ids: list[int]) -> None:
    """An operator's merge or split, in `incident_decisions` and as an event on every report it moved."""
    await tx.execute("INSERT INTO incident_decisions(kind, actor, at, source, target, report_ids) VALUES (?,?,?,?,?,?)",
                     (kind, actor, tx.store.clock.now(), source, target, json.dumps(report_ids)))
    for rid in report_ids:
        await tx.event(rid, f"incident_{kind}", actor, {"from": source, "to": target})
