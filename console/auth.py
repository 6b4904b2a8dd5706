"""Logins for operators, agency staff and admins: argon2 password hashes, session cookies, CSRF tokens, and the
log of every view of a confidential reporter's personal data (Art. 9).

Roles: `operator` (review, incidents, every case), `agency` (its own agency's cases only), `admin` (everything
and users). The public needs no login and sees only console/public.py.
Session tokens are stored as sha256 digests, so a copy of the database lets nobody log in. argon2 runs on a
thread of its own: it is deliberately slow (about 0.4 s of CPU and 64 MiB a try) and must stall neither the event
loop that acknowledges reports nor the default executor that intake's parsing and blob writes use.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ingest.store import Store

ROLES = ("operator", "agency", "admin")
SESSION_SECONDS = 12 * 3600
COOKIE = "hcmc1022_session"
MIN_PASSWORD = 10
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong username costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


# Password work on one thread of its own, at most MAX_WAITING_LOGINS tries queued for it. On the shared default
# executor, a stranger posting logins with ever new usernames (the throttle counts per username and address) put
# every other to_thread of the daemon behind them: an Open311 report with a photo took 3-5 s instead of 10 ms.
_PASSWORD_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="passwords")
MAX_WAITING_LOGINS = 8
_waiting = 0
T = TypeVar("T")


class UserError(ValueError):
    """A user request that cannot be applied (bad role, short password, unknown user...)."""


class LoginBusy(Exception):
    """Too many password checks are waiting: the caller answers 503 with Retry-After (the client retries)."""


async def _password_work(fn: Callable[..., T], *args: object) -> T:
    global _waiting
    if _waiting >= MAX_WAITING_LOGINS:
        raise LoginBusy()
    _waiting += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_PASSWORD_POOL, fn, *args)
    finally:
        _waiting -= 1


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    id: int
    username: str
    role: str
    agency: str | None
    csrf: str = ""

    @property
    def is_staff(self) -> bool:
        """Operators and admins: every case, review, incidents."""
        return self.role in ("operator", "admin")

    def can_see_case_of(self, agency: str | None) -> bool:
        return self.is_staff or (self.role == "agency" and agency is not None and agency == self.agency)


def _digest(token: str) -> str:
    # A cookie's bytes that are not UTF-8 arrive as lone surrogates: hashed as sent, they match no session (a plain
    # encode() raised, and every console page answered 500 to such a cookie).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


async def create_user(store: Store, username: str, role: str, password: str, agency: str | None = None) -> int:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if role == "agency" and not agency:
        raise UserError("an agency user needs --agency")
    if role != "agency" and agency:
        raise UserError("only agency users belong to an agency")
    if not username or len(username) > 64 or not username.replace(".", "").replace("-", "").replace("_", "").isalnum():
        raise UserError("username: 1 to 64 letters, digits, '.', '-' or '_'")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"passwords must be at least {MIN_PASSWORD} characters")
    hashed = await _password_work(_hasher.hash, password)
    async with store.transaction() as tx:
        if await tx.fetchone("SELECT 1 FROM users WHERE username=?", (username,)):
            raise UserError(f"user {username!r} exists")
        # RETURNING, not lastrowid: the same statement gives the id on SQLite and on PostgreSQL.
        row = await tx.fetchone(
            "INSERT INTO users(username, role, agency, password_hash, created_at) VALUES (?,?,?,?,?) RETURNING id",
            (username, role, agency, hashed, store.clock.now()))
        return int(row["id"])


async def disable_user(store: Store, username: str) -> None:
    """Disable a login and end its sessions at once."""
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT id FROM users WHERE username=?", (username,))
        if row is None:
            raise UserError(f"no user {username!r}")
        await tx.execute("UPDATE users SET disabled=1 WHERE id=?", (row["id"],))
        await tx.execute("DELETE FROM sessions WHERE user_id=?", (row["id"],))


async def login(store: Store, username: str, password: str,
                ttl: float = SESSION_SECONDS) -> tuple[str, User] | None:
    """A new session token and its user, or None; the same answer for an unknown user and a bad password.
    Raises LoginBusy when too many checks wait already."""
    row = await store.fetchone("SELECT * FROM users WHERE username=? AND disabled=0", (username,))
    stored = row["password_hash"] if row and row["password_hash"] else _DUMMY_HASH
    try:
        await _password_work(_hasher.verify, stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    # Hashed before the transaction, off the event loop (it was hashed on the loop, inside the write transaction).
    rehashed = await _password_work(_hasher.hash, password) if _hasher.check_needs_rehash(stored) else None
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    now = store.clock.now()
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
        await tx.execute("INSERT INTO sessions(token_hash, user_id, csrf, created_at, expires_at) VALUES (?,?,?,?,?)",
                         (_digest(token), row["id"], csrf, now, now + ttl))
        if rehashed is not None:
            await tx.execute("UPDATE users SET password_hash=? WHERE id=?", (rehashed, row["id"]))
    return token, User(id=row["id"], username=row["username"], role=row["role"], agency=row["agency"], csrf=csrf)


async def session_user(store: Store, token: str | None) -> User | None:
    if not token:
        return None
    row = await store.fetchone(
        "SELECT u.id, u.username, u.role, u.agency, s.csrf, s.expires_at FROM sessions s JOIN users u ON u.id=s.user_id"
        " WHERE s.token_hash=? AND u.disabled=0", (_digest(token),))
    if row is None or row["expires_at"] < store.clock.now():
        return None
    return User(id=row["id"], username=row["username"], role=row["role"], agency=row["agency"], csrf=row["csrf"])


async def logout(store: Store, token: str) -> None:
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM sessions WHERE token_hash=?", (_digest(token),))


def csrf_ok(user: User, submitted: str | None) -> bool:
    return bool(submitted) and bool(user.csrf) and hmac.compare_digest(
        user.csrf.encode(), (submitted or "").encode("utf-8", "surrogateescape"))


async def log_pii_view(store: Store, user: User, report_id: int, what: str) -> None:
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO pii_access_log(user_id, username, report_id, at, what) VALUES (?,?,?,?,?)",
                         (user.id, user.username, report_id, store.clock.now(), what))
