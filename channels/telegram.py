"""The Telegram channel: a bot taking reports by long polling with our own offset, or by webhook.

Exactly-once intake: each update is applied (to the chat's draft, see channels/telegram_dialogue.py) in the
same transaction that records its update_id and, when polling, the next getUpdates offset. The offset is
only confirmed to Telegram by the following getUpdates call, after that commit; an update fetched but not
committed (crash, storage down) is fetched again. python-telegram-bot's own polling (Application /
Updater) confirms before we store, so it is not used: we call Bot.get_updates ourselves.

Completed drafts become reports (store.submit_batch, idempotency key `<bot id>:<first update_id>`); the
bot's questions and confirmations are `telegram_send:<instance>` jobs of the one queue (ingest/queue.py),
written with the update that caused them and sent after the commit, in order per chat: leased, retried with
backoff (Telegram's retry_after a floor), dead-lettered when Telegram refuses them for good, replayable.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
from aiohttp import web
from telegram import Bot, KeyboardButton, ReplyKeyboardMarkup, ReplyKeyboardRemove
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.request import HTTPXRequest

from config.channels import ChannelEntry, TelegramOptions
from ingest.app import AppContext, Service, register_instance_reply
from ingest.backoff import backoff_delay
from ingest.jobs import TELEGRAM_SEND, TelegramSendJob
from ingest.migrations import Migration
from ingest.pii import pseudonym
from ingest.queue import RetryPolicy
from ingest.errors import AuthError, PermanentError, TransientError
from ingest.leases import run_while_held
from ingest.records import Attachment, Job, from_json, to_json
from ingest.store import Store, StoredReport, Tx
from ingest.untrusted import BodyError, check_tree, loads_json
from ingest.vocabulary import CHAT_TEXTS

from .telegram_dialogue import Draft, Reply, expire, step, to_inbound
from .telegram_parse import BadUpdate, TelegramInput, bot_id_from_token, parse_update, secret_token_ok, update_id_of

log = logging.getLogger(__name__)
PREFIX = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
RAW_TYPE = "application/vnd.telegram-updates+json"
ALLOWED_UPDATES = ["message"]
MAX_MESSAGE_CHARS = 4096
SEEN_KEEP_SECONDS = 7 * 86400  # Telegram keeps undelivered updates for 24 h; a week is ample

COMPONENT = "channels.telegram"
MIGRATIONS: list[Migration] = [
    (
        1,
        """
        -- One open draft per chat (the dialogue), then 'complete' until filed as a report.
        CREATE TABLE telegram_drafts (
            id INTEGER PRIMARY KEY,
            instance TEXT NOT NULL,
            chat_id INTEGER NOT NULL,
            state TEXT NOT NULL,
            data TEXT NOT NULL,
            started_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE UNIQUE INDEX telegram_drafts_open ON telegram_drafts(instance, chat_id) WHERE state != 'complete';
        -- Every update applied, so a webhook redelivery or a replayed batch changes nothing.
        CREATE TABLE telegram_seen (
            bot_id TEXT NOT NULL,
            update_id INTEGER NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (bot_id, update_id)
        );
        -- The bot's questions and confirmations, written with the update that caused them.
        CREATE TABLE telegram_outbox (
            id INTEGER PRIMARY KEY,
            instance TEXT NOT NULL,
            chat_id INTEGER NOT NULL,
            text TEXT NOT NULL,
            keyboard TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX telegram_outbox_due ON telegram_outbox(instance, next_at)
        """,
    ),
    (
        2,
        {"sqlite": """
        -- The bot's messages are jobs of the one queue (ingest/queue.py, kind telegram_send:<instance>, subject
        -- "<instance>/<chat>"): what the old outbox still held moves there, in its order, then the table goes.
        INSERT INTO jobs(stage, report_id, state, attempts, available_at, subject, payload, created_at, updated_at)
            SELECT 'telegram_send:' || instance, NULL, 'ready', attempts, next_at, instance || '/' || chat_id,
                   '{"type":"TelegramSendJob","schema_version":1,"instance":' || json_quote(instance)
                   || ',"chat_id":' || chat_id || ',"text":' || json_quote(text) || ',"keyboard":'
                   || json_quote(keyboard) || '}', created_at, created_at
            FROM telegram_outbox ORDER BY id;
        DROP TABLE telegram_outbox;
        """,
         # A PostgreSQL store is new with the one queue: nothing to move.
         "postgresql": "DROP TABLE telegram_outbox"},
    ),
]

# Messages to one chat go out in the order written; a message whose predecessor waits for a retry waits too.
ORDER_WAIT_SECONDS = 1.0
SEND_POLICY = RetryPolicy(max_attempts=None, base=2.0, cap=600.0)  # retried until sent or refused for good


def quiet_secret_loggers() -> None:
    """httpx logs request URLs, and Telegram puts the bot token in the URL; PTB logs its base URL at DEBUG."""
    for name in ("httpx", "httpcore", "telegram"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


def _seconds(value: int | float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def map_error(exc: TelegramError) -> Exception:
    """PTB errors onto the daemon's error types; messages carry no URL (they never contain the token)."""
    if isinstance(exc, RetryAfter):
        return TransientError("Telegram flood control", retry_after=_seconds(exc.retry_after))
    if isinstance(exc, InvalidToken):
        return AuthError("Telegram rejected the bot token")
    if isinstance(exc, Forbidden):
        return PermanentError("the reporter has blocked the bot or left the chat")
    if isinstance(exc, BadRequest):
        return PermanentError(f"Telegram refused the request: {exc.message[:200]}")
    if isinstance(exc, (NetworkError, Conflict)):
        return TransientError(f"Telegram unreachable: {type(exc).__name__}")
    return TransientError(f"Telegram error: {type(exc).__name__}")


def split_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    rest, out = text.strip(), []
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit)
        cut = cut if cut > limit // 2 else limit
        out.append(rest[:cut])
        rest = rest[cut:].lstrip()
    return out + [rest] if rest else out


def _say(key: str) -> str:
    return CHAT_TEXTS[key]["vi"]


def _markup(keyboard: str | None) -> Any:
    if keyboard == "location":
        return ReplyKeyboardMarkup([[KeyboardButton(_say("button_location"), request_location=True)],
                                    [_say("button_skip")]], resize_keyboard=True, one_time_keyboard=True)
    if keyboard == "contact":
        return ReplyKeyboardMarkup([[KeyboardButton(_say("button_phone"), request_contact=True)],
                                    [_say("button_skip")]], resize_keyboard=True, one_time_keyboard=True)
    if keyboard == "remove":
        return ReplyKeyboardRemove()
    return None


class TelegramChannel:
    def __init__(self, ctx: AppContext, entry: ChannelEntry, options: TelegramOptions, *,
                 bot: Bot | None = None) -> None:
        quiet_secret_loggers()
        self.ctx = ctx
        self.instance = entry.name
        self.name = f"telegram:{entry.name}"
        self.options = options
        self.store: Store = ctx.store
        token = self._token = options.bot_token.get_secret_value()
        self.bot_id = bot_id_from_token(token)
        poll = options.poll_timeout_seconds
        self.bot = bot or Bot(
            token, base_url=options.base_url, base_file_url=options.base_file_url,
            request=HTTPXRequest(connection_pool_size=8, read_timeout=20.0),
            get_updates_request=HTTPXRequest(connection_pool_size=1, read_timeout=poll + 10.0),
        )
        self.cursor_name = f"telegram:{entry.name}:offset"
        self._lock = asyncio.Lock()  # one batch at a time: drafts are read and written per chat
        self.send_kind = f"{TELEGRAM_SEND}:{self.instance}"
        self._init_lock = asyncio.Lock()
        self._files: httpx.AsyncClient | None = None
        self.accepting = True
        self.stopped_reason: str | None = None

    # -- wiring ------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        if self.options.mode != "webhook":
            return []
        return [web.post(f"{PREFIX}/{self.instance}", self.handle_webhook)]

    async def ensure_initialized(self) -> None:
        async with self._init_lock:
            try:
                await self.bot.initialize()  # getMe; a no-op once done
            except TelegramError as exc:
                raise map_error(exc) from None

    async def run(self) -> None:
        try:
            await self._start()
            async with asyncio.TaskGroup() as tg:
                if self.options.mode == "polling":
                    # One instance polls a bot (getUpdates answers one caller); the others take over its lease
                    # within seconds when it dies.
                    tg.create_task(run_while_held(self.ctx.leases.lease(self.cursor_name), self.poll_forever))
                tg.create_task(self._outbox_forever())
                tg.create_task(self._sweep_forever())
        except* AuthError as group:
            # Credentials rejected: stop this adapter and say so once, no hot retry loop.
            self.stopped_reason = str(group.exceptions[0])
            log.error("telegram %s stopped: %s", self.instance, self.stopped_reason)
        finally:
            self.accepting = False
            await self.close()

    async def _start(self) -> None:
        attempt = 0
        while True:
            try:
                await self.ensure_initialized()
                break
            except TransientError:
                attempt += 1
                if attempt == 1:
                    log.warning("telegram %s: Bot API unreachable, retrying", self.instance)
                await self.ctx.clock.sleep(backoff_delay(attempt, base=1.0, cap=60.0))
        try:
            if self.options.mode == "webhook" and self.options.webhook_url:
                secret = self.options.webhook_secret.get_secret_value() if self.options.webhook_secret else None
                await self.bot.set_webhook(self.options.webhook_url, secret_token=secret,
                                           allowed_updates=ALLOWED_UPDATES)
            elif self.options.mode == "polling":
                # getUpdates is refused while a webhook is set; pending updates are kept.
                await self.bot.delete_webhook(drop_pending_updates=False)
        except TelegramError as exc:
            raise map_error(exc) from None
        await self.flush_complete()  # drafts completed just before a crash
        await self.store.queue.rename_subjects(self.send_kind, lambda job: self.chat_subject(job.payload.chat_id))

    def chat_subject(self, chat_id: int) -> str:
        """The queue subject of the bot's messages to one chat: one per chat (they go out in order), but not the
        chat id, which administrators would read on the dead-letter page (Decree 13): a pseudonym keyed by the
        bot token, a secret of this bot's instances only. A new token renames the waiting jobs at start."""
        return f"{self.instance}/{pseudonym(str(chat_id), self._token, 'chat')}"

    async def close(self) -> None:
        if self._files is not None:
            await self._files.aclose()
            self._files = None
        try:
            await self.bot.shutdown()
        except TelegramError:
            pass

    # -- polling -----------------------------------------------------------------------------------
    async def poll_forever(self) -> None:
        failures = 0
        while True:
            try:
                got = await self.poll_once()
                if failures:
                    log.info("telegram %s: Bot API reachable again", self.instance)
                failures = 0
                if not got and self.options.poll_timeout_seconds == 0:
                    await self.ctx.clock.sleep(1.0)
            except TransientError as exc:
                failures += 1
                if failures == 1:
                    log.warning("telegram %s: polling failed: %s", self.instance, exc)
                await self.ctx.clock.sleep(backoff_delay(failures, base=1.0, cap=60.0, retry_after=exc.retry_after))

    async def poll_once(self) -> int:
        """One getUpdates from our stored offset; the batch and the next offset commit together."""
        offset = await self.store.get_cursor(self.cursor_name)
        timeout = self.options.poll_timeout_seconds
        try:
            updates = await self.bot.get_updates(offset=offset, timeout=timeout, allowed_updates=ALLOWED_UPDATES,
                                                 read_timeout=timeout + 10.0)
        except TelegramError as exc:
            raise map_error(exc) from None
        if not updates:
            return 0
        raws = [json.loads(u.to_json()) for u in updates]
        next_offset = max(u.update_id for u in updates) + 1
        await self.process(raws, cursor=next_offset)
        return len(raws)

    # -- webhook -----------------------------------------------------------------------------------
    async def handle_webhook(self, request: web.Request) -> web.Response:
        if not self.accepting:
            return web.Response(status=503, text="shutting down, retry later")
        expected = self.options.webhook_secret.get_secret_value() if self.options.webhook_secret else ""
        given = request.headers.get(SECRET_HEADER)
        raw = await self._read_bounded(request)
        if raw is None:
            await self.store.quarantine(self.instance, b"", "body larger than max_body_bytes",
                                        {"content_length": request.content_length, "status": 413})
            return web.Response(status=413, text="body too large")
        if not secret_token_ok(given, expected):
            reason = "missing secret token" if not given else "wrong secret token"
            await self.store.quarantine(self.instance, raw[:65536], reason, {"status": 401})
            log.warning("telegram %s: refused a webhook call: %s", self.instance, reason)
            return web.Response(status=401, text=reason)
        try:
            update = loads_json(raw)
            update_id_of(update)
        except (BodyError, BadUpdate) as exc:
            reason = exc.reason if isinstance(exc, BodyError) else str(exc)
            await self.store.quarantine(self.instance, raw, reason, {"status": 400})
            return web.Response(status=400, text=reason)
        try:
            await self.process([update], cursor=None)
        except Exception as exc:  # Telegram redelivers on a non-2xx; no detail to the client
            log.error("telegram %s: could not commit an update: %s", self.instance, type(exc).__name__)
            return web.Response(status=503, text="temporarily unavailable, retry later")
        return web.Response(status=200)

    async def _read_bounded(self, request: web.Request) -> bytes | None:
        limit = self.options.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        buf = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            buf += chunk
            if len(buf) > limit:
                return None
        return bytes(buf)

    # -- intake ------------------------------------------------------------------------------------
    async def process(self, updates: list[dict[str, Any]], cursor: int | None) -> None:
        """Apply a batch of raw updates exactly once; raises TransientError if it could not (nothing applied)."""
        async with self._lock:
            parsed: list[tuple[int, dict[str, Any], TelegramInput | None]] = []
            for raw in updates:
                try:
                    # Polled updates were decoded by the HTTP client, not by loads_json: same bounds here.
                    check_tree(raw)
                    update_id = update_id_of(raw)
                except BodyError as exc:
                    await self.store.quarantine(self.instance, repr(raw)[:65536].encode("utf-8", "replace"),
                                                exc.reason, {})
                    continue
                except BadUpdate as exc:
                    await self.store.quarantine(self.instance, json.dumps(raw).encode(), str(exc), {})
                    continue
                try:
                    parsed.append((update_id, raw, parse_update(raw, max_photo_bytes=self.options.max_photo_bytes)))
                except BadUpdate as exc:
                    await self.store.quarantine(self.instance, json.dumps(raw, ensure_ascii=False).encode(),
                                                str(exc), {"update_id": update_id})
                    parsed.append((update_id, raw, None))
            seen = await self._seen({uid for uid, _, _ in parsed})
            photos: dict[int, Attachment | None] = {}
            for uid, _, inp in parsed:
                if inp is not None and inp.photo_file_id and uid not in seen:
                    photos[uid] = await self._fetch_photo(inp.photo_file_id)
            now = self.ctx.clock.now()
            async with self.store.transaction() as tx:
                for uid, raw, inp in parsed:
                    cur = await tx.execute("INSERT OR IGNORE INTO telegram_seen VALUES (?,?,?)", (self.bot_id, uid, now))
                    if cur.rowcount != 1 or inp is None:
                        continue  # already applied, or nothing to apply
                    photo = photos.get(uid)
                    if inp.photo_file_id and photo is None:
                        inp = replace(inp, photo_file_id=None, photo_too_large=True)
                    await self._apply(tx, inp, raw, photo, now)
                if cursor is not None:
                    await tx.set_cursor(self.cursor_name, cursor)
        await self.flush_complete()

    async def _apply(self, tx: Tx, inp: TelegramInput, raw: dict[str, Any], photo: Attachment | None,
                     now: float) -> None:
        row = await tx.fetchone("SELECT id, data FROM telegram_drafts WHERE instance=? AND chat_id=?"
                                " AND state!='complete'", (self.instance, inp.chat_id))
        draft = from_json(Draft, row["data"]) if row else None
        outcome = step(draft, inp, raw, now=now, photo=photo, dialogue=self.options.dialogue,
                       unit_candidates=self.ctx.published.unit_candidates,
                       place_found=self.ctx.published.place_found)
        if outcome.draft is not None:
            await self._save_draft(tx, row["id"] if row else None, outcome.draft, now)
        await self._queue_replies(tx, outcome.replies, now)

    async def _save_draft(self, tx: Tx, draft_id: int | None, draft: Draft, now: float) -> None:
        if draft_id is None:
            await tx.execute(
                "INSERT INTO telegram_drafts(instance, chat_id, state, data, started_at, updated_at)"
                " VALUES (?,?,?,?,?,?)", (self.instance, draft.chat_id, draft.state, to_json(draft),
                                          draft.started_at, now))
        else:
            await tx.execute("UPDATE telegram_drafts SET state=?, data=?, updated_at=? WHERE id=?",
                             (draft.state, to_json(draft), now, draft_id))

    async def _queue_replies(self, tx: Tx, replies: tuple[Reply, ...], now: float) -> None:
        for reply in replies:
            await tx.enqueue(self.send_kind, None, TelegramSendJob(instance=self.instance, chat_id=reply.chat_id,
                                                                   text=reply.text, keyboard=reply.keyboard),
                             subject=self.chat_subject(reply.chat_id))

    async def _seen(self, ids: set[int]) -> set[int]:
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = await self.store.fetchall(
            f"SELECT update_id FROM telegram_seen WHERE bot_id=? AND update_id IN ({marks})", [self.bot_id, *ids])
        return {r["update_id"] for r in rows}

    async def _fetch_photo(self, file_id: str) -> Attachment | None:
        """getFile then download with a byte bound; None when Telegram says it cannot be had."""
        try:
            info = await self.bot.get_file(file_id)
        except TelegramError as exc:
            mapped = map_error(exc)
            if isinstance(mapped, PermanentError):
                log.info("telegram %s: photo unavailable: %s", self.instance, type(exc).__name__)
                return None
            raise mapped from None
        limit = self.options.max_photo_bytes
        if info.file_size and info.file_size > limit or not info.file_path:
            return None
        if self._files is None:
            self._files = httpx.AsyncClient(timeout=30.0, follow_redirects=False)
        buf = bytearray()
        try:
            # file_path is the full download URL (it holds the token): never logged, never in an error.
            async with self._files.stream("GET", info.file_path) as resp:
                if resp.status_code in (400, 404):
                    return None
                if resp.status_code != 200:
                    raise TransientError(f"file download answered {resp.status_code}")
                async for chunk in resp.aiter_bytes():
                    buf += chunk
                    if len(buf) > limit:
                        return None
        except httpx.HTTPError as exc:
            raise TransientError(f"file download failed: {type(exc).__name__}") from None
        content_type = "image/jpeg"  # Telegram re-encodes every `photo` as JPEG
        digest = await self.store.put_blob(bytes(buf), content_type)
        return Attachment(sha256=digest, content_type=content_type, size=len(buf), filename="photo.jpg")

    async def flush_complete(self) -> int:
        """File completed drafts as reports (idempotent), then forget the drafts."""
        rows = await self.store.fetchall(
            "SELECT id, data FROM telegram_drafts WHERE instance=? AND state='complete' ORDER BY id", (self.instance,))
        if not rows:
            return 0
        items = []
        for row in rows:
            draft = from_json(Draft, row["data"])
            raw = json.dumps(list(draft.updates), ensure_ascii=False).encode()
            items.append((to_inbound(draft, bot_id=self.bot_id, instance=self.instance), raw, RAW_TYPE))
        await self.store.submit_batch(items)
        ids = [row["id"] for row in rows]
        async with self.store.transaction() as tx:
            await tx.execute(f"DELETE FROM telegram_drafts WHERE id IN ({','.join('?' * len(ids))})", ids)
        return len(rows)

    # -- timers ------------------------------------------------------------------------------------
    async def expire_drafts(self) -> int:
        """File drafts the reporter left unanswered for dialogue_timeout_seconds."""
        now = self.ctx.clock.now()
        async with self._lock:
            async with self.store.transaction() as tx:
                rows = await tx.fetchall(
                    "SELECT id, data FROM telegram_drafts WHERE instance=? AND state!='complete' AND updated_at<?",
                    (self.instance, now - self.options.dialogue_timeout_seconds))
                for row in rows:
                    outcome = expire(from_json(Draft, row["data"]))
                    assert outcome.draft is not None
                    await self._save_draft(tx, row["id"], outcome.draft, now)
                    await self._queue_replies(tx, outcome.replies, now)
                await tx.execute("DELETE FROM telegram_seen WHERE bot_id=? AND at<?",
                                 (self.bot_id, now - SEEN_KEEP_SECONDS))
        if rows:
            await self.flush_complete()
        return len(rows)

    async def _sweep_forever(self) -> None:
        period = min(60.0, self.options.dialogue_timeout_seconds / 4)
        while True:
            await self.ctx.clock.sleep(period)
            try:
                await self.expire_drafts()
            except Exception as exc:  # the next sweep retries; the drafts are safe in the store
                log.error("telegram %s: draft sweep failed: %s", self.instance, type(exc).__name__)

    # -- the bot's messages (queue kind telegram_send:<instance>) --------------------------------------
    async def send_outbox(self) -> int:
        """Send the bot's due questions/confirmations in order; returns how many were sent or dead-lettered."""
        queue = self.store.queue
        jobs = await queue.lease(self.send_kind, 50, 60.0)
        done = 0
        blocked: set[int] = set()  # keep per-chat order: after a failure, later messages to that chat wait
        # A stop mid-send gives back the messages not yet finished, due again at once (each chat's order is kept by
        # _behind_a_retry). The Bot API has no idempotency key: a message Telegram took before the stop, its answer
        # never read, is shown twice. So it would be after its lease expired; given back, it is only sooner.
        async with queue.holding(jobs):
            waiting = await self._behind_a_retry(jobs)
            for i, job in enumerate(jobs):
                msg: TelegramSendJob = job.payload
                if job.id in waiting or msg.chat_id in blocked:
                    await queue.release([job], delay=waiting.get(job.id, ORDER_WAIT_SECONDS))
                    continue
                try:
                    await self.ensure_initialized()
                    await self.bot.send_message(chat_id=msg.chat_id, text=msg.text,
                                                reply_markup=_markup(msg.keyboard))
                except (TelegramError, TransientError, PermanentError) as exc:
                    mapped = map_error(exc) if isinstance(exc, TelegramError) else exc
                    if isinstance(mapped, AuthError):
                        await queue.release(jobs[i:])
                        raise mapped from None
                    if isinstance(mapped, TransientError):
                        blocked.add(msg.chat_id)
                        await queue.retry_or_dead(job, type(exc).__name__, SEND_POLICY,
                                                  retry_after=mapped.retry_after)
                        continue
                    log.warning("telegram %s: bot message dead-lettered: %s", self.instance, type(exc).__name__)
                    await queue.retry_or_dead(job, f"{type(exc).__name__}: refused by Telegram", SEND_POLICY,
                                              permanent=True)
                    done += 1
                    continue
                await queue.finish(job)
                done += 1
        return done

    async def _behind_a_retry(self, jobs: list[Job]) -> dict[int, float]:
        """The leased messages whose chat has an earlier message still waiting for its retry, or still being sent
        by another instance, each with the seconds until that retry (they are given back until then, so the chat
        reads them in order)."""
        first = await self.store.queue.first_waiting(self.send_kind, sorted({j.subject for j in jobs if j.subject}),
                                                     exclude=[j.id for j in jobs])
        now = self.ctx.clock.now()
        return {j.id: max(ORDER_WAIT_SECONDS, first[j.subject][1] - now) for j in jobs
                if j.subject in first and first[j.subject][0] < j.id}

    async def _outbox_forever(self) -> None:
        while True:
            await self.send_outbox()
            await self.store.queue.wait(self.send_kind, 5.0)

    # -- replies -----------------------------------------------------------------------------------
    async def send_reply(self, report: StoredReport, text: str) -> None:
        chat = report.message.reporter.reply_to
        if not chat or not chat.lstrip("-").isdigit():
            raise PermanentError("report has no Telegram chat to answer")
        await self.ensure_initialized()
        for chunk in split_text(text):
            try:
                await self.bot.send_message(chat_id=int(chat), text=chunk)
            except TelegramError as exc:
                raise map_error(exc) from None


def build(ctx: AppContext, entry: ChannelEntry, options: TelegramOptions) -> list[Service]:
    channel = TelegramChannel(ctx, entry, options)
    ctx.http.add_routes(channel.routes())
    register_instance_reply(ctx, "telegram", entry.name, channel)
    return [channel]
