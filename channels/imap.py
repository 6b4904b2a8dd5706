"""The IMAP poller: one mailbox account, its blocking imapclient calls on one dedicated thread.

Owns the fetch / commit / move cycle. Messages are read with BODY.PEEK[] (nothing marked \\Seen), stored
with the mailbox cursor (UIDVALIDITY + last UID) in one transaction, and only then moved to the processed
folder (MOVE, or COPY + \\Deleted + EXPUNGE where MOVE is missing). A crash anywhere loses nothing:
before the commit the mail is still in the folder above the cursor; after it, at or below the cursor, and
the next cycle moves it. A UIDVALIDITY change re-reads the folder; the idempotency key (Message-ID, else
sha256 of the raw mail) drops what was already stored. Waits with IDLE where offered, else polls; network
failures reconnect with backoff; rejected credentials stop the account (logged once, no retry loop).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from config.channels import ChannelEntry, ImapOptions
from ingest.app import AppContext, Service
from ingest.backoff import backoff_delay
from ingest.clock import Clock
from ingest.errors import AuthError
from ingest.store import Store

from .email_intake import RAW_TYPE, EmailIntake, Prepared, limits_from
from .email_reply import register_reply_sender

log = logging.getLogger(__name__)

T = TypeVar("T")
DELETED = b"\\Deleted"


class Mailbox:
    """The blocking side: every method runs on the account's own thread."""

    def __init__(self, options: ImapOptions, *, use_move: bool = True) -> None:
        self.options = options
        self.use_move = use_move
        self.client: IMAPClient | None = None

    def connect(self) -> None:
        o = self.options
        client = IMAPClient(o.host, port=o.port, ssl=o.ssl, timeout=o.timeout_seconds)
        try:
            if o.starttls and not o.ssl:
                client.starttls(ssl.create_default_context())
            try:
                client.login(o.username, o.password.get_secret_value())
            except LoginError:
                raise AuthError(f"IMAP login rejected for {o.username}") from None
            if not client.folder_exists(o.processed_folder):
                client.create_folder(o.processed_folder)
        except BaseException:
            _quietly(client.shutdown)
            raise
        self.client = client

    def select(self) -> int:
        info = self._c().select_folder(self.options.folder)
        return int(info[b"UIDVALIDITY"])

    def uids(self) -> list[int]:
        return sorted(int(u) for u in self._c().search("ALL"))

    def fetch(self, uids: list[int], max_bytes: int, header_cap: int) -> dict[int, tuple[bytes, bool]]:
        """uid -> (raw, complete). Oversize mail yields only its first `header_cap` bytes, for quarantine."""
        client = self._c()
        sizes = client.fetch(uids, ["RFC822.SIZE"])
        small = [u for u in uids if u in sizes and int(sizes[u].get(b"RFC822.SIZE", 0)) <= max_bytes]
        large = [u for u in uids if u in sizes and u not in small]
        out: dict[int, tuple[bytes, bool]] = {}
        if small:
            for uid, data in client.fetch(small, ["BODY.PEEK[]"]).items():
                body = data.get(b"BODY[]")
                if isinstance(body, bytes):
                    out[int(uid)] = (body, True)
        if large:
            for uid, data in client.fetch(large, [f"BODY.PEEK[]<0.{header_cap}>"]).items():
                body = data.get(b"BODY[]<0>")
                out[int(uid)] = (body if isinstance(body, bytes) else b"", False)
        return out

    def move(self, uids: list[int]) -> None:
        if not uids:
            return
        client = self._c()
        target = self.options.processed_folder
        if self.use_move and client.has_capability("MOVE"):
            client.move(uids, target)
            return
        client.copy(uids, target)
        client.add_flags(uids, [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            client.expunge()  # without UIDPLUS this also removes other \Deleted mail in the folder

    def can_idle(self) -> bool:
        return self.options.idle and self._c().has_capability("IDLE")

    def idle_wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait in IDLE until the folder changes, `seconds` pass or `stop` is set; True if mail arrived."""
        client = self._c()
        client.idle()
        arrived = False
        try:
            deadline = time.monotonic() + seconds
            # Short slices so a shutdown is noticed within a second.
            while not stop.is_set() and time.monotonic() < deadline:
                responses = client.idle_check(timeout=1.0)
                if any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                    arrived = True
                    break
        finally:
            client.idle_done()
        return arrived

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            _quietly(client.logout)
            _quietly(client.shutdown)

    def _c(self) -> IMAPClient:
        if self.client is None:
            raise ConnectionError("not connected")
        return self.client


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # closing a broken connection: nothing left to save
        pass


class ImapService:
    def __init__(self, name: str, store: Store, intake: EmailIntake, options: ImapOptions,
                 clock: Clock | None = None, *, use_move: bool = True) -> None:
        self.name = name
        self.store = store
        self.intake = intake
        self.options = options
        self.clock = clock or store.clock
        self.mailbox = Mailbox(options, use_move=use_move)
        self.cursor_name = f"imap:{name}:{options.folder}"
        self.singleton = self.cursor_name  # one instance polls a mailbox folder (a leader lease, run_daemon)
        self.state = "starting"  # connected, waiting, retrying, auth_failed: for operators and tests
        self.cycles = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"imap-{name}")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run(self) -> None:
        attempt = 0
        try:
            while True:
                try:
                    await self._call(self.mailbox.connect)
                    if attempt:
                        log.warning("%s: IMAP reachable again after %d attempt(s)", self.name, attempt)
                    attempt = 0
                    self.state = "connected"
                    while True:
                        await self.cycle()
                        await self.wait_for_mail()
                except AuthError:
                    self.state = "auth_failed"
                    log.error("%s: IMAP credentials rejected; account stopped until the config is fixed", self.name)
                    await self._call(self.mailbox.close)
                    await asyncio.Event().wait()  # parked: no retry loop against a server that says no
                except Exception as exc:  # network, protocol or storage trouble: reconnect later
                    attempt += 1
                    self.state = "retrying"
                    if attempt == 1:
                        log.warning("%s: IMAP cycle failed (%s); reconnecting with backoff", self.name,
                                    type(exc).__name__)
                    await self._call(self.mailbox.close)
                    await self.clock.sleep(backoff_delay(attempt, base=self.options.backoff_base,
                                                         cap=self.options.backoff_cap))
        finally:
            self._stop.set()
            # Let a running IDLE slice finish, then log out on the same thread.
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._pool, self.mailbox.close))
            self._pool.shutdown(wait=False)

    async def cycle(self) -> int:
        """Store every message above the cursor and move stored ones away; returns how many were new."""
        uidvalidity = await self._call(self.mailbox.select)
        cursor = await self.store.get_cursor(self.cursor_name) or {}
        last = int(cursor.get("last_uid", 0))
        if cursor and cursor.get("uidvalidity") != uidvalidity:
            log.warning("%s: UIDVALIDITY changed, re-reading %s", self.name, self.options.folder)
            last = 0
        uids = await self._call(self.mailbox.uids)
        # At or below the cursor: committed already, the move was interrupted. Finish it.
        await self._call(self.mailbox.move, [u for u in uids if u <= last])
        created = 0
        pending = [u for u in uids if u > last]
        for start in range(0, len(pending), self.options.fetch_batch):
            batch = pending[start:start + self.options.fetch_batch]
            created += await self._store_batch(uidvalidity, batch)
        self.cycles += 1
        return created

    async def _store_batch(self, uidvalidity: int, batch: list[int]) -> int:
        fetched = await self._call(self.mailbox.fetch, batch, self.options.max_message_bytes,
                                   self.options.max_header_bytes)
        prepared: list[Prepared] = []
        for uid in batch:
            if uid not in fetched:
                continue  # expunged by someone else meanwhile
            raw, complete = fetched[uid]
            if not complete:
                await self.intake.quarantine(raw, "oversize")
                continue
            outcome = await self.intake.prepare(raw)
            if isinstance(outcome, Prepared):
                prepared.append(outcome)
        results = await self.store.submit_batch(
            [(p.message, p.raw, RAW_TYPE) for p in prepared],
            cursor=(self.cursor_name, {"uidvalidity": uidvalidity, "last_uid": max(batch)}),
            then=self.intake.queue_jobs(prepared))
        await self._call(self.mailbox.move, [u for u in batch if u in fetched])
        return sum(1 for r in results if r.created)

    async def wait_for_mail(self) -> None:
        self.state = "waiting"
        if await self._call(self.mailbox.can_idle):
            await self._call(self.mailbox.idle_wait, self._stop, self.options.idle_seconds)
        else:
            await self.clock.sleep(self.options.poll_seconds)


def build(ctx: AppContext, entry: ChannelEntry, options: ImapOptions) -> Service:
    intake = EmailIntake(ctx.store, entry.name, limits_from(options),
                         trusted_authserv_ids=options.trusted_authserv_ids)
    if options.reply is not None:
        register_reply_sender(ctx, options.reply)
    return ImapService(entry.name, ctx.store, intake, options, ctx.clock)
