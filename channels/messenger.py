"""The Facebook page channel: the Messenger webhook on the daemon's HTTP server, and replies via the Send API.

A POST is answered 200 only after every message of its batch is committed; its signature is checked on the
raw bytes before anything is parsed. Media are fetched before the commit within a time budget (Messenger wants
its answer fast); media that miss the budget become a durable `messenger_media:<name>` job, so the text is
never held back and no media is forgotten.

A report placed nowhere (Art. 6; channels/place_question.py decides, as for Telegram) is stored as any other,
but its classification waits `place_wait_seconds` while a durable `messenger_ask:<name>` job asks the reporter
where. The sender's next message within the wait is the answer: it fills the report's place (its raw kept on
the report's timeline) and the classification runs at once. Without an answer the report is classified as it
is when the wait ends, and goes to the operator unit as before.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web

from config.channels import ChannelEntry, MessengerOptions
from ingest.app import AppContext, Service, register_instance_reply
from ingest.clock import parse_iso
from ingest.errors import AuthError, PermanentError, TransientError
from ingest.jobs import CLASSIFY, MESSENGER_ASK, MESSENGER_MEDIA, MessengerAskJob, MessengerMediaJob
from ingest.jobs import MediaRef as MediaJobRef
from ingest.pii import redact_ids
from ingest.records import Attachment, InboundMessage, Job, from_json, to_json
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
from .place_question import ASK_PLACE, place_missing, read_answer, with_place

log = logging.getLogger(__name__)
PREFIX = "/webhooks/messenger"
RAW_TYPE = "application/vnd.messenger-event+json"
# Messenger's standard messaging window, with a margin for clock skew and queueing.
REPLY_WINDOW_SECONDS = 23.5 * 3600
QUARANTINE_PREFIX = 64 * 1024

COMPONENT = "channels.messenger"
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        -- A stored report whose classification waits for the reporter to say where (state open), then
        -- answered (answer_mid: the message that answered, so its redelivery changes nothing) or unsent.
        CREATE TABLE messenger_place_questions (
            report_id INTEGER PRIMARY KEY,
            instance TEXT NOT NULL,
            psid TEXT NOT NULL,
            asked_at REAL NOT NULL,
            until REAL NOT NULL,
            state TEXT NOT NULL,
            answer_mid TEXT
        );
        CREATE INDEX messenger_place_open ON messenger_place_questions(instance, psid) WHERE state = 'open';
        CREATE UNIQUE INDEX messenger_place_answer ON messenger_place_questions(answer_mid)
            WHERE answer_mid IS NOT NULL
        """,
    ),
]


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
        self.media_stage = f"{MESSENGER_MEDIA}:{entry.name}"
        self.ask_stage = f"{MESSENGER_ASK}:{entry.name}"
        self._lock = asyncio.Lock()  # one batch at a time: an answer is matched to its open question once
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
        """Fetch what media fit in the budget, commit every event, queue the media that did not fit; a
        report placed nowhere waits for the answer to the place question, and an answer fills its report."""
        async with self._lock:
            fetched, late = await self._fetch_within_budget(events)
            now = self.ctx.clock.now()
            # Asked only where the classifier's place finder runs: it is the one that would send the report
            # to the operator unit (without it no question is ever open). One open question per reporter.
            found = self.ctx.published.place_found if self.options.ask_place else None
            answers, reports, asking = (await self._sort_answers(events, now) if found is not None
                                        else ([], list(events), set()))
            ask = {e.mid for e in reports
                   if found is not None and e.sender_id not in asking
                   and place_missing(e.text, lat=e.lat, lon=e.lon, found=found)}
            items: list[tuple[InboundMessage, bytes, str]] = []
            for event in reports:
                attachments = tuple(fetched.get(event.mid, ()))
                items.append((to_inbound(event, instance=self.instance, now=now, attachments=attachments),
                              event.raw, RAW_TYPE))

            async def then(tx: Tx, results: list[SubmitResult]) -> None:
                # In the reports' own transaction: a crash cannot keep a report and forget the media still to
                # fetch, its question, or an answer.
                for event, result in zip(reports, results):
                    if result.created and late.get(event.mid):
                        await self._queue_media(tx, result.report_id, late[event.mid])
                asked: set[str] = set()
                for event, result in zip(reports, results):
                    if result.created and event.mid in ask and event.sender_id not in asked:
                        asked.add(event.sender_id)
                        await self._hold_for_place(tx, result.report_id, event.sender_id, now)
                for event, report_id in answers:
                    await self._apply_answer(tx, report_id, event, tuple(fetched.get(event.mid, ())), now)
                    if late.get(event.mid):
                        await self._queue_media(tx, report_id, late[event.mid])

            await self.store.submit_batch(items, then=then)

    async def _queue_media(self, tx: Tx, report_id: int, refs: list[MediaRef]) -> None:
        await tx.enqueue(self.media_stage, report_id,
                         MessengerMediaJob(media=tuple(MediaJobRef(kind=r.kind, url=r.url) for r in refs)))

    async def _sort_answers(self, events: list[MessengerEvent], now: float
                            ) -> tuple[list[tuple[MessengerEvent, int]], list[MessengerEvent], set[str]]:
        """Which events answer an open place question (sender's first message with words or a location after
        it was asked), which are reports; and the senders with a question still open after this batch."""
        senders = sorted({e.sender_id for e in events})
        mids = sorted({e.mid for e in events})
        if not senders:
            return [], [], set()
        open_rows = await self.store.fetchall(
            f"SELECT report_id, psid FROM messenger_place_questions WHERE instance=? AND state='open' AND until>?"
            f" AND psid IN ({','.join('?' * len(senders))})", [self.instance, now, *senders])
        pending = {r["psid"]: r["report_id"] for r in open_rows}
        answered = {r["answer_mid"] for r in await self.store.fetchall(
            f"SELECT answer_mid FROM messenger_place_questions WHERE answer_mid IN ({','.join('?' * len(mids))})",
            mids)}
        stored = await self._known_mids(set(mids))
        answers: list[tuple[MessengerEvent, int]] = []
        reports: list[MessengerEvent] = []
        for event in events:
            if event.mid in answered:
                continue  # a redelivered answer: already on its report
            if (event.mid not in stored and event.sender_id in pending
                    and (event.text.strip() or event.lat is not None)):
                answers.append((event, pending.pop(event.sender_id)))
                answered.add(event.mid)
            else:
                reports.append(event)
        return answers, reports, set(pending)

    async def _hold_for_place(self, tx: Tx, report_id: int, psid: str, now: float) -> None:
        until = now + self.options.place_wait_seconds
        await tx.store.queue.reschedule(tx, CLASSIFY, report_id, until)
        await tx.execute("INSERT INTO messenger_place_questions(report_id, instance, psid, asked_at, until, state)"
                         " VALUES (?,?,?,?,?,'open')", (report_id, self.instance, psid, now, until))
        await tx.enqueue(self.ask_stage, report_id, MessengerAskJob())

    async def _apply_answer(self, tx: Tx, report_id: int, event: MessengerEvent,
                            attachments: tuple[Attachment, ...], now: float) -> None:
        await tx.execute("UPDATE messenger_place_questions SET state='answered', answer_mid=? WHERE report_id=?",
                         (event.mid, report_id))
        answer = read_answer(event.text, event.lat, event.lon)
        await tx.event(report_id, "place_answer", "reporter",
                       {"mid": event.mid, "skipped": answer.skipped, "raw": event.raw.decode("utf-8", "replace")})
        row = await tx.fetchone("SELECT record FROM reports WHERE id=? AND status='received'", (report_id,))
        if row is None:  # classified meanwhile (the wait ended): the answer stays on the timeline for operators
            return
        message = from_json(InboundMessage, row["record"])
        message = replace(message, attachments=message.attachments + attachments)
        if not answer.skipped:
            message = replace(message, text=with_place(message.text, answer.address))
            if message.lat is None and answer.lat is not None:
                message = replace(message, lat=answer.lat, lon=answer.lon)
        await tx.execute("UPDATE reports SET record=?, updated_at=? WHERE id=?", (to_json(message), now, report_id))
        # Due now: the classify worker finds it at its next look (it polls the queue about every second).
        await tx.store.queue.reschedule(tx, CLASSIFY, report_id, now)

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
        payload: MessengerMediaJob = job.payload
        for item in payload.media:
            ref = MediaRef(kind=item.kind, url=item.url)
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

    # -- place question job ------------------------------------------------------------------------
    async def handle_ask_job(self, job: Job, report: StoredReport) -> Writes | None:
        """Send the place question; if it cannot be sent, the report is classified now, as it is."""
        row = await self.store.fetchone("SELECT state FROM messenger_place_questions WHERE report_id=?",
                                        (report.id,))
        if row is None or row["state"] != "open":
            return None  # answered (or given up) before the question went out
        try:
            await self._send(send_api_body(report.message.reporter.reply_to or "", ASK_PLACE, within_window=True,
                                           tag=self.options.late_reply_tag))
        except (PermanentError, AuthError, TransientError) as exc:
            if isinstance(exc, TransientError) and job.attempts < self.ctx.settings.queue.max_attempts:
                raise  # retried with backoff, the report still waiting
            # The error quotes the Send API's answer (its error code, as the peer wrote it): logs hold no personal
            # data, whatever a peer (or a proxy in between) puts there.
            log.info("messenger %s: place question not sent: %s", self.instance, redact_ids(str(exc)))
            error = str(exc)[:200]

            async def give_up(tx: Tx) -> None:
                now = self.ctx.clock.now()
                await tx.execute("UPDATE messenger_place_questions SET state='unsent' WHERE report_id=?"
                                 " AND state='open'", (report.id,))
                await tx.store.queue.reschedule(tx, CLASSIFY, report.id, now)
                await tx.event(report.id, "place_question_unsent", "messenger", {"error": error})
            return give_up

        async def asked(tx: Tx) -> None:
            await tx.event(report.id, "place_asked", "messenger", {})
        return asked

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
class _WorkerService:
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
    asker = StageWorker(ctx.store, channel.ask_stage, channel.handle_ask_job,
                        WorkerSettings(batch=4, lease_seconds=q.lease_seconds, max_attempts=q.max_attempts))
    return [channel, _WorkerService(name=f"{channel.name}:media", worker=worker),
            _WorkerService(name=f"{channel.name}:ask", worker=asker)]
