"""Pure parsing of Open311 GeoReport v2 service requests (form, JSON or multipart bodies) into records.

No I/O: the adapter in channels/open311.py reads the body, stores photos and submits.
"""
from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from ingest.records import InboundMessage, Reporter
from ingest.sniff import media_type, safe_filename
from ingest.text import normalize
from ingest.untrusted import MAX_PARTS, BodyError, check_text, decode_charset, loads_json, parse_multipart, single_line

MAX_TEXT_CHARS = 20_000
# An address is a line or two (the portal's field takes 300 characters); 10 MB of it was stored as the reporter's
# address, carried into every agency delivery and read by the place finder on every classification.
MAX_ADDRESS_CHARS = 1_000
MAX_FIELDS = 64  # form fields in one body: Open311 defines about twenty
# The text of one request, all its fields together (photos apart): a description of 20,000 characters is at most
# 180 KB even percent-encoded. Before, a body of 10 MB of fields nobody reads ("zzz": 9 MB) was a 201 and stored
# verbatim with the report, 120 times a minute per client address.
MAX_TEXT_BYTES = 512 * 1024
MAX_LINE_FIELD_CHARS = 320  # name, phone, email, device id: one line each, never a paragraph
# Fields that may reach a mail header or an address (reporter name and email, device id): one line, no controls.
SINGLE_LINE_FIELDS = ("first_name", "last_name", "phone", "email", "device_id", "account_id", "service_code")
# Fields that are text in GeoReport v2: in JSON a number there is refused, not turned into text (a phone sent as
# the number 909123456 has lost its leading 0; a description of `true` describes nothing). lat, long and
# confidential may be numbers or booleans.
TEXT_FIELDS = (*SINGLE_LINE_FIELDS, "description", "address_string", "address_id")


class Open311Error(Exception):
    """A request we refuse; `code` is the HTTP status, `description` is safe to show to the client.

    `field` names the form field at fault and `reason` is a stable key for it, so the web portal can put a
    message in the person's language next to that field (portal/catalogue.py has one text per reason).
    """

    def __init__(self, code: int, description: str, *, field: str | None = None, reason: str = "invalid") -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Photo:
    data: bytes
    content_type: str
    filename: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedRequest:
    message: InboundMessage  # attachments still empty: the adapter fills them after storing photos
    photos: tuple[Photo, ...]


def parse_body(raw: bytes, content_type: str, *, max_parts: int = MAX_PARTS) -> tuple[dict[str, str], list[Photo]]:
    """Fields and uploaded files of a form-encoded, JSON or multipart body, bounded in parts, depth and Unicode."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime != "multipart/form-data" and len(raw) > MAX_TEXT_BYTES:
        raise Open311Error(413, f"a request without photos is at most {MAX_TEXT_BYTES // 1024} KB")
    try:
        if mime == "application/json":
            data = loads_json(raw)
            if not isinstance(data, dict):
                raise Open311Error(400, "JSON body must be an object")
            if len(data) > MAX_FIELDS:
                raise Open311Error(400, f"more than {MAX_FIELDS} fields")
            for name in TEXT_FIELDS:
                if data.get(name) is not None and not isinstance(data[name], str):
                    raise Open311Error(400, f"{name} must be a string", field=name, reason="invalid")
            return {k: _scalar(v) for k, v in data.items() if v is not None}, []
        if mime in ("application/x-www-form-urlencoded", ""):
            text = raw.decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                              max_num_fields=MAX_FIELDS, errors="strict")
            fields = {check_text(k, "a field name"): check_text(v, "a field") for k, v in pairs}
            if len(fields) != len(pairs):
                raise Open311Error(400, f"the field {_repeated(k for k, _ in pairs)!r} is given more than once")
            return fields, []
        if mime == "multipart/form-data":
            return _parse_multipart(raw, content_type, max_parts)
    except BodyError as exc:
        raise Open311Error(400, exc.reason) from None
    except UnicodeDecodeError:
        raise Open311Error(400, "body is not valid UTF-8") from None
    except ValueError as exc:
        raise Open311Error(400, f"malformed {mime or 'form'} body") from exc
    raise Open311Error(415, f"unsupported content type {mime!r}: use form, JSON or multipart")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError("nested values are not accepted")


def _parse_multipart(raw: bytes, content_type: str, max_parts: int) -> tuple[dict[str, str], list[Photo]]:
    parts = parse_multipart(raw, content_type, max_parts=max_parts)
    # RFC 7578 4.6: a `_charset_` field names the default charset of the text fields.
    default = next((p.data.decode("ascii", "replace").strip() for p in parts if p.name == "_charset_"), None)
    fields: dict[str, str] = {}
    photos: list[Photo] = []
    text_bytes = sum(len(p.data) for p in parts if p.filename is None and p.name != "media")
    if text_bytes > MAX_TEXT_BYTES:
        raise Open311Error(413, f"the text fields of a request are at most {MAX_TEXT_BYTES // 1024} KB")
    for part in parts:
        if part.filename == "" and not part.data:
            continue  # a browser's file input left empty sends a nameless, empty part: no photo
        if part.filename is not None or part.name == "media":
            photos.append(Photo(data=part.data, content_type=part.content_type, filename=part.filename))
        elif part.name != "_charset_":
            if part.name in fields:
                raise Open311Error(400, f"the field {part.name[:40]!r} is given more than once")
            fields[part.name] = decode_charset(part.data, part.charset or default, f"field {part.name[:40]!r}")
    return fields, photos


def _repeated(names: Iterable[str]) -> str:
    """The first field name given twice: a field is one value (as JSON's keys, ingest/untrusted.py), never the
    first for one reader and the last for another."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name[:40]
        seen.add(name)
    return ""


def parse_request(raw: bytes, content_type: str, *, idempotency_key: str | None, received_at: str,
                  service_codes: set[str], channel_instance: str, max_photos: int,
                  max_photo_bytes: int | None = None, require_service_code: bool = True) -> ParsedRequest:
    fields, photos = parse_body(raw, content_type)
    return request_from_fields(
        fields, photos, raw, idempotency_key=idempotency_key, received_at=received_at, service_codes=service_codes,
        channel_instance=channel_instance, max_photos=max_photos, max_photo_bytes=max_photo_bytes,
        require_service_code=require_service_code)


def request_from_fields(fields: dict[str, str], photos: list[Photo], raw: bytes, *, idempotency_key: str | None,
                        received_at: str, service_codes: set[str], channel_instance: str, max_photos: int,
                        max_photo_bytes: int | None = None, require_service_code: bool = True) -> ParsedRequest:
    """The record of an already-parsed body. The app must name a service (GeoReport v2 requires it); the web
    portal's topic is only a hint (`require_service_code=False`): the classifier decides."""
    for field_name in SINGLE_LINE_FIELDS:
        value = fields.get(field_name, "")
        try:
            single_line(value, field_name)
        except BodyError as exc:
            raise Open311Error(400, exc.reason, field=field_name, reason="invalid") from None
        if len(value) > MAX_LINE_FIELD_CHARS:
            raise Open311Error(400, f"{field_name} is longer than {MAX_LINE_FIELD_CHARS} characters",
                               field=field_name, reason="too_long")
    code = fields.get("service_code", "").strip()
    if not code and require_service_code:
        raise Open311Error(400, "service_code is required", field="service_code", reason="required")
    if code and code not in service_codes:
        raise Open311Error(404, f"unknown service_code {code!r}: see services.json", field="service_code",
                           reason="unknown")
    text = normalize(fields.get("description", ""))
    if not _shows_something(text):
        raise Open311Error(400, "description is required", field="description", reason="required")
    if len(text) > MAX_TEXT_CHARS:
        raise Open311Error(400, f"description is longer than {MAX_TEXT_CHARS} characters", field="description",
                           reason="too_long")
    lat, lon = _coordinate(fields, "lat", -90, 90), _coordinate(fields, "long", -180, 180)
    if (lat is None) != (lon is None):
        raise Open311Error(400, "lat and long must be given together", field="lat", reason="pair")
    address = normalize(fields.get("address_string", "")) or None
    if address is not None and len(address) > MAX_ADDRESS_CHARS:
        raise Open311Error(400, f"address_string is longer than {MAX_ADDRESS_CHARS} characters",
                           field="address_string", reason="too_long")
    if lat is None and address is None and not fields.get("address_id"):
        raise Open311Error(400, "a location is required: lat and long, or address_string", field="address_string",
                           reason="location_required")
    if len(photos) > max_photos:
        raise Open311Error(400, f"at most {max_photos} photos per request", field="media", reason="too_many")
    checked = []
    for photo in photos:
        # By its bytes: a declared "image/png" may be a script, a page, an SVG with a script or a program, which
        # was stored and mailed on to the agency under the type and file name it claimed.
        if max_photo_bytes is not None and len(photo.data) > max_photo_bytes:
            raise Open311Error(413, f"each photo must be at most {max_photo_bytes} bytes", field="media",
                               reason="too_large")
        kind = media_type(photo.data)
        if kind is None:
            raise Open311Error(400, "media must be a photo or video (JPEG, PNG, GIF, WebP, HEIC, MP4, WebM)",
                               field="media", reason="not_image")
        checked.append(Photo(data=photo.data, content_type=kind, filename=safe_filename(photo.filename)))
    photos = checked
    name = " ".join(p for p in (fields.get("last_name", "").strip(), fields.get("first_name", "").strip()) if p)
    reporter = Reporter(
        name=name or None,
        phone=fields.get("phone", "").strip() or None,
        email=fields.get("email", "").strip() or None,
        address=address,
        confidential=_flag(fields, "confidential"),
        reply_to=fields.get("device_id") or None,
    )
    key = idempotency_key or hashlib.sha256(raw).hexdigest()
    message = InboundMessage(
        channel="app",
        channel_instance=channel_instance,
        idempotency_key=key,
        received_at=received_at,
        text=text,
        reporter=reporter,
        lat=lat,
        lon=lon,
        service_code=code or None,
        external_id=fields.get("account_id") or None,
    )
    return ParsedRequest(message=message, photos=tuple(photos))


def _shows_something(text: str) -> bool:
    """Whether any character of `text` is seen: a description of zero-width spaces, joiners and bidi marks alone
    (Unicode categories C* and Z*) was stored and classified as a report of nothing."""
    return any(not unicodedata.category(ch).startswith(("C", "Z")) for ch in text)


def _coordinate(fields: dict[str, str], name: str, low: float, high: float) -> float | None:
    value = fields.get(name, "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise Open311Error(400, f"{name} must be a number", field=name, reason="number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise Open311Error(400, f"{name} is out of range", field=name, reason="range")
    return number


_YES = frozenset(("1", "true", "yes", "on"))
_NO = frozenset(("", "0", "false", "no", "off"))


def _flag(fields: dict[str, str], name: str) -> bool:
    """A yes/no field as clients send it: padded (" true"), any case, a number (JSON 1.0 arrives as "1.0"). Anything
    else is refused: read as "no", a request for confidentiality typed oddly published the report."""
    value = fields.get(name, "").strip().lower()
    if value in _YES or value in _NO:
        return value in _YES
    try:
        number = float(value)
    except ValueError:
        number = None
    if number in (0.0, 1.0):  # 1, 1.0, 0e0; "2", "0.5" or "nan" says neither yes nor no
        return number == 1.0
    raise Open311Error(400, f"{name} must be true or false", field=name, reason="invalid")


def error_body(code: int, description: str) -> list[dict[str, Any]]:
    return [{"code": code, "description": description}]
