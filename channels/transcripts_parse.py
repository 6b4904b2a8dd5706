"""Pure parsing of call-centre transcript files (JSON or plain text) into records. Formats: README.md."""
from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

from ingest.clock import parse_iso
from ingest.records import InboundMessage, Reporter
from ingest.text import normalize
from ingest.untrusted import BodyError, loads_json, single_line

HEADER_KEYS = {"call-id", "received-at", "name", "phone", "email", "address", "confidential", "agent", "lat", "lon"}


class TranscriptError(Exception):
    """The file cannot be accepted; the message is written beside it in `rejected/NAME.error`."""


def parse_transcript(raw: bytes, *, filename: str, channel_instance: str, default_received_at: str) -> InboundMessage:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TranscriptError("not valid UTF-8") from None
    if text.lstrip().startswith("{"):
        fields = _from_json(text)
    else:
        fields = _from_text(text)
    body = normalize(str(fields.get("text") or ""))
    if not body:
        raise TranscriptError("the transcript has no text")
    received_at = str(fields.get("received_at") or default_received_at)
    try:
        parse_iso(received_at)
    except ValueError:
        raise TranscriptError(f"received_at is not an ISO 8601 time: {received_at!r}") from None
    reporter = fields.get("reporter") or {}
    if not isinstance(reporter, dict):
        raise TranscriptError("reporter must be an object")
    for key in ("name", "phone", "email"):  # may reach a mail header: one line each
        if isinstance(reporter.get(key), str):
            try:
                single_line(reporter[key], f"reporter {key}")
            except BodyError as exc:
                raise TranscriptError(exc.reason) from None
    lat, lon = fields.get("lat"), fields.get("lon")
    try:
        lat = float(lat) if lat not in (None, "") else None
        lon = float(lon) if lon not in (None, "") else None
    except (TypeError, ValueError):
        raise TranscriptError("lat and lon must be numbers") from None
    return InboundMessage(
        channel="phone",
        channel_instance=channel_instance,
        idempotency_key=hashlib.sha256(raw).hexdigest(),
        received_at=received_at,
        text=body,
        reporter=Reporter(
            name=_opt(reporter.get("name")), phone=_opt(reporter.get("phone")), email=_opt(reporter.get("email")),
            address=_opt(reporter.get("address")), confidential=_truthy(reporter.get("confidential")),
        ),
        lat=lat,
        lon=lon,
        external_id=_opt(fields.get("call_id")) or filename,
    )


def _from_json(text: str) -> dict[str, Any]:
    try:
        data = loads_json(text)
    except BodyError as exc:
        raise TranscriptError(f"malformed JSON: {exc.reason}") from None
    if not isinstance(data, dict):
        raise TranscriptError("JSON transcript must be an object")
    return data


def _from_text(text: str) -> dict[str, Any]:
    """`Key: value` header lines, a blank line, then the transcript; no header block means all text."""
    lines = text.splitlines()
    header: dict[str, str] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            if header:
                return _header_fields(header, "\n".join(lines[i + 1:]))
            break
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() not in HEADER_KEYS:
            break
        header[key.strip().lower()] = value.strip()
    return {"text": text}


def _header_fields(header: dict[str, str], body: str) -> dict[str, Any]:
    return {
        "text": body,
        "call_id": header.get("call-id"),
        "received_at": header.get("received-at"),
        "lat": header.get("lat"),
        "lon": header.get("lon"),
        "reporter": {k: header.get(k) for k in ("name", "phone", "email", "address", "confidential")},
    }


def _opt(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None


_YES = frozenset(("1", "true", "yes", "y", "on", "x", "có", "co"))
_NO = frozenset(("", "0", "false", "no", "n", "off", "none", "không", "khong"))


def _truthy(value: Any) -> bool:
    """The confidential flag as agents type it ("có", "on", "x" for ticked). Anything else rejects the file: read
    as "no", a typo ("ture") published the call's content and place."""
    if value is None or isinstance(value, bool):
        return bool(value)
    text = unicodedata.normalize("NFC", str(value)).strip().lower()  # "có" typed as o + combining acute too
    if text in _YES or text in _NO:
        return text in _YES
    raise TranscriptError(f"confidential must be yes (có) or no (không), not {text[:40]!r}")
