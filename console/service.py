"""Wires the console into the daemon: the public transparency routes (Open311 read API, /public) and the operator
console under /console on ctx.http; and the `user` CLI that manages console logins.

    run_daemon.py user add NAME --role operator|agency|admin [--agency ID] [--password-env VAR]
    run_daemon.py user list
    run_daemon.py user disable NAME

The console runs no background task of its own: `build` returns no services.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p_add = sub.add_parser("add", help="create a login; the password comes from an environment variable, or is "
                                       "asked for when the command runs in a terminal")
    p_add.add_argument("name")
    p_add.add_argument("--role", required=True, choices=auth.ROLES)
    p_add.add_argument("--agency", help="the agency id, for --role agency")
    p_add.add_argument("--password-env", metavar="VAR",
                       help="name of the environment variable holding the password (never on the command line)")
    sub.add_parser("list", help="every login, its role and agency")
    p_dis = sub.add_parser("disable", help="disable a login and end its sessions")
    p_dis.add_argument("name")


async def user_cli(store: Store, settings: Any, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run_daemon.py user", description="console logins")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return await run_cli(store, settings, args)


def ask_password(name: str) -> str | None:
    """The password typed twice at a terminal (not echoed); None when there is no terminal to ask or they differ."""
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass(f"password for {name}: ")
    if first and getpass.getpass("again: ") == first:
        return first
    print("error: the passwords are empty or differ", file=sys.stderr)
    return None


async def run_cli(store: Store, settings: Any, args: argparse.Namespace) -> int:
    try:
        if args.action == "add":
            password = os.environ.get(args.password_env) if args.password_env else ask_password(args.name)
            if not password:
                print(f"error: environment variable {args.password_env} is not set or empty" if args.password_env
                      else "error: give --password-env VAR, or run the command in a terminal to type the password")
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
        if args.action == "list":
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
