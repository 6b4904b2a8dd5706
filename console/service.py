"""Wires the console into the daemon: the public transparency routes (Open311 read API, /public) and the operator
console under /console on ctx.http; and the `user` CLI that manages console logins.

    run_daemon.py user add NAME --role operator|agency|admin [--agency ID] --password-env VAR
    run_daemon.py user list
    run_daemon.py user disable NAME

The console runs no background task of its own: `build` returns no services.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from config.console import console_settings
from config.directory import load_directory
from ingest.app import AppContext, Service
from ingest.clock import iso
from ingest.store import Store

from . import auth
from .public import add_public_routes
from .views import Console


def build(ctx: AppContext) -> list[Service]:
    add_public_routes(ctx)
    cfg = console_settings(ctx.settings)
    if cfg.enabled and not ctx.route_mode:
        ctx.http.add_routes(Console(ctx, cfg).routes())
    return []


async def user_cli(store: Store, settings: Any, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run_daemon.py user", description="console logins")
    sub = parser.add_subparsers(dest="command", required=True)
    p_add = sub.add_parser("add", help="create a login; the password is read from an environment variable")
    p_add.add_argument("name")
    p_add.add_argument("--role", required=True, choices=auth.ROLES)
    p_add.add_argument("--agency", help="the agency id, for --role agency")
    p_add.add_argument("--password-env", required=True, metavar="VAR",
                       help="name of the environment variable holding the password (never on the command line)")
    sub.add_parser("list", help="every login, its role and agency")
    p_dis = sub.add_parser("disable", help="disable a login and end its sessions")
    p_dis.add_argument("name")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.command == "add":
            password = os.environ.get(args.password_env)
            if not password:
                print(f"error: environment variable {args.password_env} is not set or empty")
                return 2
            if args.agency:
                directory = load_directory(settings.data.agencies, settings.data.structure)
                if args.agency not in directory.agencies:
                    print(f"error: unknown agency {args.agency!r}")
                    return 2
            user_id = await auth.create_user(store, args.name, args.role, password, agency=args.agency)
            print(f"user {args.name} created (id {user_id}, role {args.role}"
                  + (f", agency {args.agency})" if args.agency else ")"))
            return 0
        if args.command == "list":
            rows = await store.fetchall("SELECT username, role, agency, disabled, created_at FROM users ORDER BY username")
            for r in rows:
                state = "disabled" if r["disabled"] else "active"
                print(f"{r['username']}\t{r['role']}\t{r['agency'] or '-'}\t{state}\t{iso(r['created_at'])}")
            print(f"{len(rows)} user(s)")
            return 0
        await auth.disable_user(store, args.name)
        print(f"user {args.name} disabled; its sessions ended")
        return 0
    except auth.UserError as exc:
        print(f"error: {exc}")
        return 1
