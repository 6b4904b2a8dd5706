"""The Facebook page channel: the Messenger webhook on the daemon's HTTP server, and replies via the Send API.

A POST is answered 200 only after every message of its batch is committed; its signature is checked on the
raw bytes before anything is parsed. Media are fetched before the commit within a time budget (Messenger wants
its answer fast); media that miss the budget become a durable `messenger_media:<name>` job, so the text is
never held back and no media is forgotten.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from config.channels import ChannelEntry, MessengerOptions
from ingest.app import AppContext, Service, register_instance_reply
from ingest.clock import parse_iso
from ingest.errors import AuthError, PermanentError, TransientError
from ingest.records import Attachment, InboundMessage, Job
from ingest.store import Store, StoredReport, SubmitResult, Tx
from ingest.worker import StageWorker, WorkerSettings, Writes

from .messenger_parse import (
    SIGNATURE_HEADER,
    BadPayload,
    MediaRef,
    MessengerEvent,
    parse_webhook,
    send_api_body,
    split_text,
    to_inbound,
    verification_challenge,
    verify_signature,
)

log = logging.getLogger(__name__)
PREFIX = "/webhooks/messenger"
RAW_TYPE = "application/vnd.messenger-event+json"
# Messenger's standard messaging window, with a margin for clock skew and queueing.
REPLY_WINDOW_SECONDS = 23.5 * 3600
QUARANTINE_PREFIX = 64 * 1024


class BodyTooLarge(Exception):
    def __init__(self, prefix: bytes, declared: int | None) -> None:
        self.prefix = prefix
        self.declared = declared


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    data: bytes
    content_type: str


async def fetch_media(session: aiohttp.ClientSession, url: str, max_bytes: int, timeout: float) -> FetchedMedia:
    """GET one attachment URL, refusing more than max_bytes; errors never carry the URL (it is signed)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=True) as resp:
            if resp.status in (404, 410, 403):
                raise PermanentError(f"media fetch answered {resp.status}")
            if resp.status != 200:
                raise TransientError(f"media fetch answered {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise PermanentError("media larger than max_media_bytes")
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                buf += chunk
                if len(buf) > max_bytes:
                    raise PermanentError("media larger than max_media_bytes")
            content_type = resp.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()
            return FetchedMedia(bytes(buf), content_type or "application/octet-stream")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransientError(f"media fetch failed: {type(exc).__name__}") from None


class MessengerChannel:
    def __init__(self, ctx: AppContext, entry: ChannelEntry, options: MessengerOptions) -> None:
        self.ctx = ctx
        self.name = f"messenger:{entry.name}"
        self.instance = entry.name
        self.options = options
        self.store: Store = ctx.store
        self.media_stage = f"messenger_media:{entry.name}"
        self._app_secret = options.app_secret.get_secret_value().encode()
        self._session: aiohttp.ClientSession | None = None
        self.accepting = True

    # -- wiring ------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        path = f"{PREFIX}/{self.instance}"
        return [web.get(path, self.handle_get), web.post(path, self.handle_post)]

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(raise_for_status=False)
        return self._session

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self.accepting = False
            await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- webhook -----------------------------------------------------------------------------------
    async def handle_get(self, request: web.Request) -> web.Response:
        challenge = verification_challenge(request.query, self.options.verify_token.get_secret_value())
        if challenge is None:
            return web.Response(status=403, text="verification failed")
        return web.Response(text=challenge)

    async def _read_bounded(self, request: web.Request) -> bytes:
        limit = self.options.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise BodyTooLarge(b"", declared)
        buf = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            buf += chunk
            if len(buf) > limit:
                raise BodyTooLarge(bytes(buf[:QUARANTINE_PREFIX]), declared)
        return bytes(buf)

    async def handle_post(self, request: web.Request) -> web.Response:
        if not self.accepting:
            return web.Response(status=503, text="shutting down, retry later")
        try:
            raw = await self._read_bounded(request)
        except BodyTooLarge as exc:
            await self.store.quarantine(self.instance, exc.prefix, "body larger than max_body_bytes",
                                        {"content_length": exc.declared, "status": 413})
            return web.Response(status=413, text="body too large")
        signature = request.headers.get(SIGNATURE_HEADER)
        if not verify_signature(self._app_secret, raw, signature):
            reason = "missing signature" if not signature else "signature mismatch"
            await self.store.quarantine(self.instance, raw[:QUARANTINE_PREFIX], reason,
                                        {"status": 401 if not signature else 403})
            log.warning("messenger %s: refused a POST: %s", self.instance, reason)
            return web.Response(status=401 if not signature else 403, text=reason)
        try:
            batch = parse_webhook(raw)
        except BadPayload as exc:
            await self.store.quarantine(self.instance, raw, str(exc), {"status": 400})
            return web.Response(status=400, text=str(exc))
        try:
            await self.ingest(list(batch.events))
        except Exception as exc:  # storage down: Messenger redelivers on a non-2xx, so nothing is lost
            log.error("messenger %s: could not commit a batch: %s", self.instance, type(exc).__name__)
            return web.Response(status=503, text="temporarily unavailable, retry later")
        return web.Response(text="EVENT_RECEIVED")

    async def ingest(self, events: list[MessengerEvent]) -> None:
        """Fetch what media fit in the budget, commit every event, queue the media that did not fit."""
        fetched, late = await self._fetch_within_budget(events)
        now = self.ctx.clock.now()
        items: list[tuple[InboundMessage, bytes, str]] = []
        for event in events:
            attachments = tuple(fetched.get(event.mid, ()))
            items.append((to_inbound(event, instance=self.instance, now=now, attachments=attachments),
                          event.raw, RAW_TYPE))

        async def queue_late_media(tx: Tx, results: list[SubmitResult]) -> None:
            # In the reports' own transaction: a crash cannot keep a report and forget the media still to fetch.
            for event, result in zip(events, results):
                if result.created and late.get(event.mid):
                    await tx.enqueue(self.media_stage, result.report_id,
                                     {"media": [{"kind": r.kind, "url": r.url} for r in late[event.mid]]})

        await self.store.submit_batch(items, then=queue_late_media)

    async def _fetch_within_budget(
        self, events: list[MessengerEvent]
    ) -> tuple[dict[str, list[Attachment]], dict[str, list[MediaRef]]]:
        wanted = [(event.mid, ref) for event in events for ref in event.media]
        fetched: dict[str, list[Attachment]] = {}
        late: dict[str, list[MediaRef]] = {}
        if not wanted:
            return fetched, late
        # The same mid may come twice in a batch (redelivery): fetch once.
        already = await self._known_mids({mid for mid, _ in wanted})
        wanted = [(mid, ref) for mid, ref in wanted if mid not in already]
        tasks = {asyncio.ensure_future(self._fetch_and_store(ref)): (mid, ref) for mid, ref in wanted}
        if not tasks:
            return fetched, late
        done, pending = await asyncio.wait(tasks, timeout=self.options.media_budget_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task, (mid, ref) in tasks.items():
            if task in done and task.exception() is None:
                fetched.setdefault(mid, []).append(task.result())
            elif task in done and isinstance(task.exception(), PermanentError):
                log.info("messenger %s: media dropped: %s", self.instance, task.exception())
            else:
                late.setdefault(mid, []).append(ref)
        return fetched, late

    async def _known_mids(self, mids: set[str]) -> set[str]:
        if not mids:
            return set()
        marks = ",".join("?" * len(mids))
        rows = await self.store.fetchall(
            f"SELECT idem_key FROM reports WHERE channel='messenger' AND idem_key IN ({marks})", list(mids))
        return {r["idem_key"] for r in rows}

    async def _fetch_and_store(self, ref: MediaRef) -> Attachment:
        media = await fetch_media(self.session(), ref.url, self.options.max_media_bytes,
                                  timeout=max(self.options.send_timeout_seconds, 1.0))
        digest = await self.store.put_blob(media.data, media.content_type)
        return Attachment(sha256=digest, content_type=media.content_type, size=len(media.data),
                          filename=f"{ref.kind}")

    # -- late media job ----------------------------------------------------------------------------
    async def handle_media_job(self, job: Job, report: StoredReport) -> Writes:
        added: list[dict[str, Any]] = []
        for item in job.payload.get("media", []):
            ref = MediaRef(kind=str(item["kind"]), url=str(item["url"]))
            try:
                attachment = await self._fetch_and_store(ref)
            except PermanentError as exc:
                added.append({"kind": ref.kind, "error": str(exc)})
                continue
            added.append({"kind": ref.kind, "sha256": attachment.sha256,
                          "content_type": attachment.content_type, "size": attachment.size})

        async def writes(tx: Any) -> None:
            for data in added:
                await tx.event(report.id, "attachment_added" if "sha256" in data else "attachment_lost",
                               "messenger", data)
        return writes

    # -- replies -----------------------------------------------------------------------------------
    async def send_reply(self, report: StoredReport, text: str) -> None:
        psid = report.message.reporter.reply_to
        if not psid:
            raise PermanentError("report has no Messenger recipient")
        age = self.ctx.clock.now() - parse_iso(report.message.received_at)
        within = age < REPLY_WINDOW_SECONDS
        for chunk in split_text(text):
            await self._send(send_api_body(psid, chunk, within_window=within, tag=self.options.late_reply_tag))

    async def _send(self, body: dict[str, Any]) -> None:
        url = f"{self.options.graph_base_url.rstrip('/')}/{self.options.graph_version}/me/messages"
        params = {"access_token": self.options.page_token.get_secret_value()}
        try:
            async with self.session().post(
                url, params=params, json=body,
                timeout=aiohttp.ClientTimeout(total=self.options.send_timeout_seconds),
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                try:
                    payload = await resp.json(content_type=None)
                except ValueError:
                    payload = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"Send API unreachable: {type(exc).__name__}") from None
        if status == 200:
            return
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        code = error.get("code") if isinstance(error, dict) else None
        if code == 190 or status == 401:
            raise AuthError(f"Send API rejected the page token (HTTP {status}, code {code})")
        if status == 429 or status >= 500 or code in (1, 2, 4, 17, 32, 613):
            raise TransientError(f"Send API busy (HTTP {status}, code {code})", retry_after)
        raise PermanentError(f"Send API refused the message (HTTP {status}, code {code})")


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


@dataclass
class _MediaWorkerService:
    name: str
    worker: StageWorker

    async def run(self) -> None:
        try:
            await self.worker.run()
        finally:
            self.worker.stop()


def build(ctx: AppContext, entry: ChannelEntry, options: MessengerOptions) -> list[Service]:
    channel = MessengerChannel(ctx, entry, options)
    ctx.http.add_routes(channel.routes())
    register_instance_reply(ctx, "messenger", entry.name, channel)
    q = ctx.settings.queue
    worker = StageWorker(ctx.store, channel.media_stage, channel.handle_media_job,
                         WorkerSettings(batch=4, lease_seconds=q.lease_seconds, max_attempts=q.max_attempts))
    return [channel, _MediaWorkerService(name=f"{channel.name}:media", worker=worker)]
