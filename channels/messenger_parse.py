"""Pure Messenger webhook logic: the signature check, the subscription handshake, and batch parsing.

No I/O here: bytes and query parameters in, events and records out. The adapter (channels/messenger.py)
does the HTTP, the media fetches and the commit.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ingest.clock import iso
from ingest.records import Attachment, InboundMessage, Reporter
from ingest.text import normalize
from ingest.untrusted import BodyError, loads_json

SIGNATURE_HEADER = "X-Hub-Signature-256"
# Attachment types whose payload carries a downloadable URL.
MEDIA_TYPES = frozenset({"image", "audio", "video", "file"})
MAX_TEXT_CHARS = 20_000


class BadPayload(ValueError):
    """The body is signed but not a Messenger page webhook we can read; the reason is safe to show."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaRef:
    kind: str  # image, audio, video, file
    url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessengerEvent:
    """One `messaging` item carrying a message from a person to the page."""

    mid: str
    sender_id: str  # page-scoped id (PSID): where replies go
    page_id: str
    timestamp_ms: int | None
    text: str
    lat: float | None = None
    lon: float | None = None
    media: tuple[MediaRef, ...] = ()
    reply_to_mid: str | None = None
    raw: bytes  # the event's own JSON, kept as the report's raw input


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedBatch:
    events: tuple[MessengerEvent, ...]
    skipped: int  # deliveries, reads, echoes of our own messages, postbacks: nothing to report


def verify_signature(app_secret: bytes, raw: bytes, header: str | None) -> bool:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body keyed by the app secret>`, constant time."""
    if not header or not app_secret:
        return False
    scheme, _, given = header.strip().partition("=")
    if scheme.lower() != "sha256" or not given:
        return False
    expected = hmac.new(app_secret, raw, hashlib.sha256).hexdigest()
    # Compare as bytes so a non-ASCII header cannot raise, and always over the full length.
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8", "replace"))


def verification_challenge(params: Mapping[str, str], verify_token: str) -> str | None:
    """The challenge to echo for a valid `hub.mode=subscribe` handshake, else None."""
    if params.get("hub.mode") != "subscribe" or not verify_token:
        return None
    given = params.get("hub.verify_token", "")
    if not hmac.compare_digest(given.encode(), verify_token.encode()):
        return None
    challenge = params.get("hub.challenge")
    return challenge if challenge else None


def parse_webhook(raw: bytes) -> ParsedBatch:
    """Every entry and every messaging event of a (verified) page webhook body."""
    try:
        body = loads_json(raw)
    except BodyError as exc:
        raise BadPayload(exc.reason) from None
    if not isinstance(body, dict):
        raise BadPayload("body is not a JSON object")
    if body.get("object") != "page":
        raise BadPayload("object is not 'page'")
    entries = body.get("entry")
    if not isinstance(entries, list):
        raise BadPayload("entry is not a list")
    events: list[MessengerEvent] = []
    skipped = 0
    for entry in entries:
        if not isinstance(entry, dict):
            raise BadPayload("entry item is not an object")
        page_id = str(entry.get("id", ""))
        items = entry.get("messaging") or []
        if not isinstance(items, list):
            raise BadPayload("messaging is not a list")
        for item in items:
            event = _event(item, page_id)
            if event is None:
                skipped += 1
            else:
                events.append(event)
    return ParsedBatch(events=tuple(events), skipped=skipped)


def _event(item: Any, page_id: str) -> MessengerEvent | None:
    if not isinstance(item, dict):
        raise BadPayload("messaging item is not an object")
    message = item.get("message")
    if not isinstance(message, dict) or message.get("is_echo"):
        return None  # delivery, read, postback, reaction, or our own message echoed back
    mid = message.get("mid")
    sender = item.get("sender")
    if not isinstance(mid, str) or not mid or len(mid) > 512:
        raise BadPayload("message without a valid mid")
    if not isinstance(sender, dict) or not sender.get("id"):
        raise BadPayload("message without sender.id")
    text = message.get("text") or ""
    if not isinstance(text, str):
        raise BadPayload("message.text is not a string")
    lat = lon = None
    media: list[MediaRef] = []
    attachments = message.get("attachments") or []
    if not isinstance(attachments, list):
        raise BadPayload("message.attachments is not a list")
    for att in attachments:
        if not isinstance(att, dict):
            raise BadPayload("attachment is not an object")
        kind = att.get("type")
        payload = att.get("payload") or {}
        if not isinstance(payload, dict):
            raise BadPayload("attachment payload is not an object")
        if kind == "location":
            coords = payload.get("coordinates") or {}
            try:
                lat, lon = float(coords["lat"]), float(coords["long"])
            except (KeyError, TypeError, ValueError):
                raise BadPayload("location attachment without coordinates.lat/long") from None
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise BadPayload("location coordinates out of range")
        elif kind in MEDIA_TYPES:
            url = payload.get("url")
            if isinstance(url, str) and url.startswith(("https://", "http://")):
                media.append(MediaRef(kind=kind, url=url))
        # fallback/template attachments (shared links) carry nothing to fetch; the raw keeps them.
    timestamp = item.get("timestamp")
    reply_to = message.get("reply_to")
    return MessengerEvent(
        mid=mid,
        sender_id=str(sender["id"]),
        page_id=page_id,
        timestamp_ms=timestamp if isinstance(timestamp, int) and timestamp > 0 else None,
        text=normalize(text[:MAX_TEXT_CHARS]),
        lat=lat,
        lon=lon,
        media=tuple(media),
        reply_to_mid=reply_to.get("mid") if isinstance(reply_to, dict) else None,
        raw=json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode(),
    )


def to_inbound(event: MessengerEvent, *, instance: str, now: float,
               attachments: tuple[Attachment, ...] = ()) -> InboundMessage:
    sent_at = event.timestamp_ms / 1000 if event.timestamp_ms else now
    # A sender clock far in the future is not trusted as the receipt time.
    received_at = iso(min(sent_at, now))
    return InboundMessage(
        channel="messenger",
        channel_instance=instance,
        idempotency_key=event.mid,
        received_at=received_at,
        text=event.text,
        reporter=Reporter(reply_to=event.sender_id),
        lat=event.lat,
        lon=event.lon,
        attachments=attachments,
        external_id=event.mid,
    )


def split_text(text: str, limit: int = 2000) -> list[str]:
    """Messenger refuses texts over 2000 characters: cut at line or word breaks, never mid-word if avoidable."""
    chunks: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = rest.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        chunks.append(rest)
    return chunks


def send_api_body(recipient_id: str, text: str, *, within_window: bool, tag: str) -> dict[str, Any]:
    """A Send API request body; outside the 24 h window a message tag is required."""
    body: dict[str, Any] = {"recipient": {"id": recipient_id}, "message": {"text": text}}
    if within_window:
        body["messaging_type"] = "RESPONSE"
    else:
        body["messaging_type"] = "MESSAGE_TAG"
        body["tag"] = tag
    return body
