"""The one way a service request enters the store, for the app's Open311 API and the web portal alike.

Parse (or take the fields a caller already parsed), refuse with a reason and keep the refused body in quarantine,
store the photos, then submit: the caller acknowledges only after `accept` returns, which is after the commit.
The idempotency key is the client's (the app's `Idempotency-Key` header, the portal form's hidden key), else the
body's sha256.

A client's key names one request (IETF httpapi Idempotency-Key): sent again with the same request it is a retry,
answered with the first report; with a different one it is refused (422), never silently answered with a report
that is not what was sent. "The same request" is the same record: the record stored under the key is the canonical
form of the first request (its text, place, reporter, photos by their bytes' sha256), so a retry in another
encoding (JSON keys in another order, a multipart body with a boundary of its own) is the same; fields that make
no part of a report (the portal's CSRF token) are not compared. The unique index on the key still makes one report
of concurrent requests; the comparison reads the row that index kept, on either store backend.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from ingest.clock import Clock, iso
from ingest.errors import RecordError
from ingest.limits import RateLimited
from ingest.records import Attachment, InboundMessage, from_json
from ingest.store import Store, SubmitResult

from .open311_parse import Open311Error, Photo, parse_body, request_from_fields

INLINE_PARSE_BYTES = 64 * 1024  # larger bodies are parsed on a worker thread


class Intake:
    def __init__(self, store: Store, clock: Clock, service_codes: Callable[[], set[str]], channel_instance: str,
                 max_photos: int, max_photo_bytes: int | None = None) -> None:
        self.store = store
        self.clock = clock
        self.service_codes = service_codes
        self.channel_instance = channel_instance
        self.max_photos = max_photos
        self.max_photo_bytes = max_photo_bytes

    async def accept(self, raw: bytes, content_type: str, *, idempotency_key: str | None,
                     require_service_code: bool = True,
                     parsed: tuple[dict[str, str], list[Photo]] | None = None,
                     device_limit: Callable[[str], float] | None = None) -> SubmitResult:
        """Store one request durably; raises Open311Error (after quarantining the body) when it is refused."""
        try:
            if parsed is not None:
                fields, photos = parsed
            elif len(raw) <= INLINE_PARSE_BYTES:
                fields, photos = parse_body(raw, content_type)
            else:
                # Bounded parsing is linear and fast, but megabytes of JSON still cost milliseconds: on a worker
                # thread, so the event loop keeps answering everyone else meanwhile.
                fields, photos = await asyncio.to_thread(parse_body, raw, content_type)
            request = request_from_fields(
                fields, photos, raw, idempotency_key=idempotency_key, received_at=iso(self.clock.now()),
                service_codes=self.service_codes(), channel_instance=self.channel_instance,
                max_photos=self.max_photos, max_photo_bytes=self.max_photo_bytes,
                require_service_code=require_service_code)
        except Open311Error as exc:
            await self._quarantine(raw, content_type, exc)
            raise
        device = request.message.reporter.reply_to
        if device and device_limit is not None:
            wait = device_limit(device)  # per device id: known only once the body is parsed
            if wait > 0:
                raise RateLimited("device", wait)
        attachments = []
        for photo in request.photos:
            digest = await self.store.put_blob(photo.data, photo.content_type)
            attachments.append(Attachment(sha256=digest, content_type=photo.content_type, size=len(photo.data),
                                          filename=photo.filename))
        message = request.message
        if attachments:
            message = replace(message, attachments=tuple(attachments))
        try:
            result = await self.store.submit(message, raw, content_type or "application/x-www-form-urlencoded")
        except RecordError:
            # Refused alone by the store (its neighbours in the group commit were stored): the client's fault.
            exc = Open311Error(400, "the request cannot be stored as given")
            await self._quarantine(raw, content_type, exc)
            raise exc from None
        if not result.created and idempotency_key is not None and not await self._same_request(result, message):
            exc = Open311Error(422, "this Idempotency-Key was already used for a different request; a new report"
                                    " needs a new key", reason="idempotency_key_reused")
            await self._quarantine(raw, content_type, exc)
            raise exc
        return result

    async def _same_request(self, known: SubmitResult, message: InboundMessage) -> bool:
        """Whether the report stored under the key is the one `message` would make (when it was received apart)."""
        row = await self.store.fetchone("SELECT record FROM reports WHERE id=?", (known.report_id,))
        if row is None:
            return False
        try:
            stored = from_json(InboundMessage, row["record"])
        except (ValueError, TypeError, KeyError):
            return False
        return replace(stored, received_at="") == replace(message, received_at="")

    async def _quarantine(self, raw: bytes, content_type: str, exc: Open311Error) -> None:
        # Kept for inspection (never silently dropped; bounded by the store), refused with a reason to show.
        await self.store.quarantine(self.channel_instance, raw, exc.description,
                                    {"content_type": content_type[:200], "status": exc.code})
