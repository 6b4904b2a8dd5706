"""Operator decisions on incidents: merge two incidents, split reports off into a new one (CLI for now).

Each decision is recorded in `incident_decisions` (who, when, what) and as an event on every report it
moves. A split re-evaluates routing for the part that leaves: its first report (by arrival) is put back to
`routed` and a `dispatch` job opens a case for the new incident, unless every leaving report is still in
review (the review decision will route it through the `dedupe` re-entry).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from config.schema import Settings
from ingest.store import Store, Tx

from .service import incident_id_for


class IncidentError(ValueError):
    """An operator request that cannot be applied (unknown incident, report not a member...)."""


async def merge(store: Store, keep: str, absorb: str, actor: str) -> int:
    """Move every report of `absorb` into `keep`; returns how many reports moved."""
    if keep == absorb:
        raise IncidentError("cannot merge an incident into itself")
    async with store.transaction() as tx:
        await _open_incident(tx, keep)
        b = await _open_incident(tx, absorb)
        now = store.clock.now()
        members = [r["report_id"] for r in await tx.fetchall(
            "SELECT report_id FROM incident_reports WHERE incident_id=? ORDER BY report_id", (absorb,))]
        await tx.execute("UPDATE incident_reports SET incident_id=?, how='merge', joined_at=? WHERE incident_id=?",
                         (keep, now, absorb))
        await tx.execute("UPDATE reports SET incident_id=?, updated_at=? WHERE incident_id=?", (keep, now, absorb))
        await tx.execute(
            "UPDATE incidents SET last_report_at=MAX(last_report_at, ?), first_report_id=CASE WHEN created_at > ?"
            " THEN ? ELSE first_report_id END, created_at=MIN(created_at, ?),"
            " dispatch_report_id=COALESCE(dispatch_report_id, ?) WHERE id=?",
            (b["last_report_at"], b["created_at"], b["first_report_id"], b["created_at"], b["dispatch_report_id"],
             keep))
        await tx.execute("UPDATE incidents SET state='merged', merged_into=? WHERE id=?", (keep, absorb))
        await _record(tx, "merge", actor, absorb, keep, members)
        if b["dispatch_report_id"] is not None:
            # The absorbed incident's case (if one was opened) is dispatch's to move or close, and its agency's to
            # hear about: handed over through the queue, in this transaction, like every stage hand-off.
            await tx.enqueue("dispatch", int(b["dispatch_report_id"]),
                             {"incident_id": absorb, "merged_into": keep, "actor": actor})
    return len(members)


async def split(store: Store, incident_id: str, report_ids: list[int], actor: str) -> str:
    """Move `report_ids` out of `incident_id` into a new incident; returns the new incident id."""
    if not report_ids:
        raise IncidentError("no reports given")
    async with store.transaction() as tx:
        await _open_incident(tx, incident_id)
        marks = ",".join("?" * len(report_ids))
        rows = await tx.fetchall(
            f"SELECT r.id, r.status, r.received_at, r.topic, r.district FROM reports r"
            f" JOIN incident_reports m ON m.report_id = r.id WHERE m.incident_id=? AND r.id IN ({marks})"
            f" ORDER BY r.received_at, r.id", (incident_id, *report_ids))
        if len(rows) != len(set(report_ids)):
            found = {r["id"] for r in rows}
            raise IncidentError(f"not members of {incident_id}: {sorted(set(report_ids) - found)}")
        total = await tx.fetchone("SELECT COUNT(*) AS n FROM incident_reports WHERE incident_id=?", (incident_id,))
        if total is not None and total["n"] == len(rows):
            raise IncidentError("a split must leave at least one report in the incident")
        seq_row = await tx.fetchone("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM incidents")
        seq = int(seq_row["seq"]) if seq_row is not None else 1
        new_id = incident_id_for(seq)
        first = rows[0]
        now = store.clock.now()
        await tx.execute(
            "INSERT INTO incidents(id, seq, first_report_id, topic, district, created_at, last_report_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (new_id, seq, first["id"], first["topic"], first["district"], first["received_at"],
             rows[-1]["received_at"]))
        ids = [r["id"] for r in rows]
        await tx.execute(f"UPDATE incident_reports SET incident_id=?, how='split', joined_at=?"
                         f" WHERE report_id IN ({marks})", (new_id, now, *ids))
        await tx.execute(f"UPDATE reports SET incident_id=?, updated_at=? WHERE id IN ({marks})", (new_id, now, *ids))
        # The incident left behind keeps its case; its dates shrink to the reports that stayed.
        await tx.execute(
            "UPDATE incidents SET last_report_at=(SELECT MAX(r.received_at) FROM reports r JOIN incident_reports m"
            " ON m.report_id=r.id WHERE m.incident_id=?) WHERE id=?", (incident_id, incident_id))
        # Re-evaluate routing for the part that leaves: the first report not in review opens a case.
        lead = next((r for r in rows if r["status"] != "review"), None)
        if lead is not None:
            await tx.execute("UPDATE reports SET status='routed', updated_at=? WHERE id=?", (now, lead["id"]))
            await tx.execute("UPDATE incidents SET dispatch_report_id=? WHERE id=?", (lead["id"], new_id))
            await tx.enqueue("dispatch", lead["id"], {"incident_id": new_id})
        await _record(tx, "split", actor, incident_id, new_id, ids)
    return new_id


async def _open_incident(tx: Tx, incident_id: str) -> Any:
    row = await tx.fetchone("SELECT * FROM incidents WHERE id=?", (incident_id,))
    if row is None:
        raise IncidentError(f"unknown incident {incident_id}")
    if row["state"] != "open":
        raise IncidentError(f"incident {incident_id} is {row['state']}")
    return row


async def _record(tx: Tx, kind: str, actor: str, source: str, target: str, report_ids: list[int]) -> None:
    await tx.execute("INSERT INTO incident_decisions(kind, actor, at, source, target, report_ids) VALUES (?,?,?,?,?,?)",
                     (kind, actor, tx.store.clock.now(), source, target, json.dumps(report_ids)))
    for rid in report_ids:
        await tx.event(rid, f"incident_{kind}", actor, {"from": source, "to": target})


# -- CLI -----------------------------------------------------------------------------------------
def add_arguments(ap: argparse.ArgumentParser) -> None:
    """`incident list | show ID | merge KEEP ABSORB --actor X | split ID --reports 1,2 --actor X`."""
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="open incidents, most recent first")
    ls.add_argument("--limit", type=int, default=50)
    sh = sub.add_parser("show", help="one incident, its reports and decisions")
    sh.add_argument("incident")
    mg = sub.add_parser("merge", help="merge the second incident into the first")
    mg.add_argument("keep")
    mg.add_argument("absorb")
    mg.add_argument("--actor", required=True)
    sp = sub.add_parser("split", help="move reports into a new incident")
    sp.add_argument("incident")
    sp.add_argument("--reports", required=True, help="comma-separated report ids")
    sp.add_argument("--actor", required=True)


async def incident_cli(store: Store, settings: Settings, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="incident")
    add_arguments(ap)
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return await run_cli(store, settings, args)


async def run_cli(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    del settings  # the CLI needs nothing from config yet; kept for the uniform call
    try:
        if args.cmd == "list":
            rows = await store.fetchall(
                "SELECT i.id, i.topic, i.district, i.last_report_at, i.dispatch_report_id, COUNT(m.report_id) AS n"
                " FROM incidents i LEFT JOIN incident_reports m ON m.incident_id = i.id WHERE i.state='open'"
                " GROUP BY i.id ORDER BY i.last_report_at DESC LIMIT ?", (args.limit,))
            for r in rows:
                case = "case" if r["dispatch_report_id"] is not None else "no case"
                print(f"{r['id']}  {r['n']:3d} reports  {r['topic'] or '-'}  {r['district'] or '-'}  {case}")
            return 0
        if args.cmd == "show":
            inc = await store.fetchone("SELECT * FROM incidents WHERE id=?", (args.incident,))
            if inc is None:
                print(f"unknown incident {args.incident}")
                return 1
            print(f"{inc['id']}  {inc['state']}  topic={inc['topic']}  district={inc['district']}  place={inc['place']}"
                  + (f"  merged into {inc['merged_into']}" if inc["merged_into"] else ""))
            for r in await store.fetchall(
                    "SELECT r.id, r.status, r.channel, m.how, m.score FROM incident_reports m JOIN reports r"
                    " ON r.id = m.report_id WHERE m.incident_id=? ORDER BY r.received_at", (args.incident,)):
                print(f"  report {r['id']}  {r['status']}  {r['channel']}  {r['how']}  score={r['score']:.2f}")
            for d in await store.fetchall(
                    "SELECT * FROM incident_decisions WHERE source=? OR target=? ORDER BY at", (args.incident,) * 2):
                print(f"  {d['kind']} by {d['actor']}: {d['source']} -> {d['target']} reports {d['report_ids']}")
            return 0
        if args.cmd == "merge":
            moved = await merge(store, args.keep, args.absorb, args.actor)
            print(f"merged {args.absorb} into {args.keep}: {moved} report(s) moved")
            return 0
        ids = [int(x) for x in args.reports.split(",") if x.strip()]
        new_id = await split(store, args.incident, ids, args.actor)
        print(f"split {len(ids)} report(s) from {args.incident} into {new_id}")
        return 0
    except (IncidentError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
