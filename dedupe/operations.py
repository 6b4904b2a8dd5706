"""Operator decisions on incidents: merge two incidents, split reports off into a new one (CLI for now).

Each decision is recorded in `incident_decisions` (who, when, what) and as an event on every report it
moves. A split re-evaluates routing for the part that leaves: its first report (by arrival) is put back to
`routed` and a `dispatch` job opens a case for the new incident, unless every leaving report is still in
review (the review decision will route it through the `dedupe` re-entry). The report that opened the incident's
case never leaves it (split the others off instead).
"""
from __future__ import annotations

import argparse
from typing import Any

from config.schema import Settings
from ingest.jobs import DISPATCH, DispatchJob
from ingest.store import Store, Tx

from . import incidents


class IncidentError(ValueError):
    """An operator request that cannot be applied (unknown incident, report not a member...)."""


async def merge(store: Store, keep: str, absorb: str, actor: str) -> int:
    """Move every report of `absorb` into `keep`; returns how many reports moved."""
    if keep == absorb:
        raise IncidentError("cannot merge an incident into itself")
    async with store.transaction() as tx:
        await _open_incident(tx, keep)
        b = await _open_incident(tx, absorb)
        members = await incidents.member_ids(tx, absorb)
        await incidents.absorb(tx, keep, b)
        await incidents.record_decision(tx, "merge", actor, absorb, keep, members)
        if b["dispatch_report_id"] is not None:
            # The absorbed incident's case (if one was opened) is dispatch's to move or close, and its agency's to
            # hear about: handed over through the queue, in this transaction, like every stage hand-off.
            await tx.enqueue(DISPATCH, int(b["dispatch_report_id"]),
                             DispatchJob(incident_id=absorb, merged_into=keep, actor=actor))
    return len(members)


async def split(store: Store, incident_id: str, report_ids: list[int], actor: str) -> str:
    """Move `report_ids` out of `incident_id` into a new incident; returns the new incident id."""
    if not report_ids:
        raise IncidentError("no reports given")
    async with store.transaction() as tx:
        source = await _open_incident(tx, incident_id)
        rows = await incidents.members_among(tx, incident_id, report_ids)
        if len(rows) != len(set(report_ids)):
            found = {r["id"] for r in rows}
            raise IncidentError(f"not members of {incident_id}: {sorted(set(report_ids) - found)}")
        if await incidents.count_members(tx, incident_id) == len(rows):
            raise IncidentError("a split must leave at least one report in the incident")
        if source["dispatch_report_id"] in {r["id"] for r in rows}:
            # The case stays with the incident and carries this report (its text, place and reporter went to the
            # agency): moved, it would open a second case as well, the first report of two. Splitting the other
            # reports off makes the same two groups.
            raise IncidentError(f"report {source['dispatch_report_id']} opened the incident's case and stays with"
                                " it: split off the other reports instead")
        first = rows[0]
        new_id = await incidents.create(tx, first_report_id=first["id"], topic=first["topic"],
                                        district=first["district"], created_at=first["received_at"],
                                        last_report_at=rows[-1]["received_at"])
        ids = [r["id"] for r in rows]
        await incidents.move(tx, ids, new_id, "split")
        # The incident left behind keeps its case; its dates shrink to the reports that stayed.
        await incidents.refresh_last_report(tx, incident_id)
        # Re-evaluate routing for the part that leaves: the first report not in review opens a case.
        lead = next((r for r in rows if r["status"] != "review"), None)
        if lead is not None:
            await tx.execute("UPDATE reports SET status='routed', updated_at=? WHERE id=?",
                             (store.clock.now(), lead["id"]))
            await incidents.set_dispatch_report(tx, new_id, lead["id"])
            await tx.enqueue(DISPATCH, lead["id"], DispatchJob(incident_id=new_id))
        await incidents.record_decision(tx, "split", actor, incident_id, new_id, ids)
    return new_id


async def _open_incident(tx: Tx, incident_id: str) -> Any:
    row = await incidents.get(tx, incident_id)
    if row is None:
        raise IncidentError(f"unknown incident {incident_id}")
    if row["state"] != "open":
        raise IncidentError(f"incident {incident_id} is {row['state']}")
    return row


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
            for r in await incidents.list_open(store, args.limit):
                case = "case" if r["dispatch_report_id"] is not None else "no case"
                print(f"{r['id']}  {r['n']:3d} reports  {r['topic'] or '-'}  {r['district'] or '-'}  {case}")
            return 0
        if args.cmd == "show":
            inc = await incidents.get(store, args.incident)
            if inc is None:
                print(f"unknown incident {args.incident}")
                return 1
            print(f"{inc['id']}  {inc['state']}  topic={inc['topic']}  district={inc['district']}  place={inc['place']}"
                  + (f"  merged into {inc['merged_into']}" if inc["merged_into"] else ""))
            for r in await incidents.member_rows(store, args.incident):
                print(f"  report {r['id']}  {r['status']}  {r['channel']}  {r['how']}  score={r['score']:.2f}")
            for d in await incidents.decisions_about(store, args.incident):
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
