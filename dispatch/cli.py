"""`run_daemon.py dispatch ...`: the overdue list, dead deliveries, and replaying them."""
from __future__ import annotations

import argparse
from typing import Any

from config.dispatch import dispatch_settings
from ingest.clock import iso
from ingest.store import Store

from .clocks import overdue
from .delivery import replay_deliveries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p_over = sub.add_parser("overdue", help="running deadlines past due, most overdue first")
    p_over.add_argument("--agency")
    p_del = sub.add_parser("deliveries", help="list outbox rows")
    p_del.add_argument("--dead", action="store_true", help="only dead letters")
    p_del.add_argument("--limit", type=int, default=100)
    p_rep = sub.add_parser("replay-deliveries", help="put dead letters back in the outbox (same webhook-id)")
    p_rep.add_argument("ids", nargs="*", type=int)
    p_rep.add_argument("--agency")


async def dispatch_cli(store: Store, settings: Any, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dispatch")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return await run_cli(store, settings, args)


async def run_cli(store: Store, settings: Any, args: argparse.Namespace) -> int:
    if args.action == "overdue":
        items = await overdue(store, agency=args.agency)
        for o in items:
            print(f"{o.case_id}\t{o.agency}\t{o.kind}\tdue {iso(o.due_at)}\t{o.overdue_seconds / 3600:.1f} h late"
                  f"\t{o.case_state}")
        print(f"{len(items)} overdue")
        return 0
    if args.action == "deliveries":
        sql = "SELECT id, msg_id, case_id, agency, target, state, attempts, last_status, last_error FROM deliveries"
        sql += " WHERE state='dead'" if args.dead else ""
        rows = await store.fetchall(sql + " ORDER BY id DESC LIMIT ?", (args.limit,))
        for r in rows:
            print(f"{r['id']}\t{r['msg_id']}\t{r['case_id']}\t{r['agency']}/{r['target']}\t{r['state']}"
                  f"\tattempts={r['attempts']}\t{r['last_status'] or ''}\t{r['last_error'] or ''}")
        print(f"{len(rows)} deliveries")
        return 0
    cfg = dispatch_settings(settings)
    n = await replay_deliveries(store, ids=args.ids or None, agency=args.agency,
                                deadline_seconds=cfg.delivery.deadline_seconds)
    print(f"{n} deliveries replayed")
    return 0
