"""Bounded decoding of bodies from outside, shared by every channel: JSON with a depth cap and strict Unicode,
multipart/form-data with caps on parts and part headers, charsets that must exist and be text codecs, and the
single-line check for fields that may end up in a mail header.

Pure (bytes in, values out, or BodyError). Every step costs time linear in the input and runs in C where the
input is large (bytes.find/count, json, codecs), never a Python loop per byte, so a hostile 10 MB body is
refused or parsed in milliseconds instead of holding the event loop for minutes.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import email.message
import email.parser
import email.policy
import email.utils
import json
import quopri
import re
from dataclasses import dataclass
from typing import Any

MAX_JSON_DEPTH = 32
MAX_PARTS = 64
MAX_PART_HEADER_BYTES = 8 * 1024


class BodyError(ValueError):
    """Input we refuse; `reason` is safe to show to the sender (it never quotes the input)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_text(value: str, what: str = "text") -> str:
    """A string that can be stored and encoded as UTF-8: lone surrogates (JSON's "\\ud800") cannot."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BodyError(f"{what} contains invalid Unicode (a lone surrogate)") from None
    return value


# The largest row id SQLite and PostgreSQL store (a signed 64-bit integer); the driver refuses a larger Python int.
MAX_ROW_ID = 2**63 - 1


def row_id(text: str) -> int | None:
    """A row id (report, dead letter, page number) typed by someone outside, in a URL segment or a query parameter:
    ASCII digits within a 64-bit integer, else None. `str.isdigit()` alone also takes "²" (which `int` refuses) and
    "99999999999999999999" (which the database driver refuses): both were 500s for the client's own input."""
    if not text or len(text) > 19 or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_ROW_ID else None


# CR, LF and the other characters that break a line or a header: C0/C1 controls, DEL, U+2028/U+2029.
_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def single_line(value: str, what: str) -> str:
    """Refuse a control character (CR/LF first of all) in a field meant to be one line (name, email, subject)."""
    if _LINE_BREAKING.search(value):
        raise BodyError(f"{what} must be a single line without control characters")
    return check_text(value, what)


def loads_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads that refuses invalid UTF-8, lone surrogates, non-finite numbers and nesting deeper than max_depth."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError:
        raise BodyError("body is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        raise BodyError(f"JSON object has the key {exc.key[:40]!r} more than once") from None
    except RecursionError:
        # The C decoder counts its own nesting against the recursion limit (about 1,000 levels).
        raise BodyError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError:  # JSONDecodeError, and our own refusal of NaN/Infinity
        raise BodyError("body is not JSON") from None
    check_tree(value, max_depth)
    return value


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different. With {"confidential": true, "confidential": false} json.loads keeps
    the last silently, while a proxy, a WAF or a log reader in front of us may read the first: which one counts
    is the sender's to say, once (RFC 8259 4: names SHOULD be unique; receivers disagree when they are not)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_tree(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Depth and Unicode of every key and string of decoded JSON (iterative: no recursion of ours)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, "a JSON string")
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                raise BodyError(f"JSON nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    check_text(key, "a JSON key")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def decode_charset(data: bytes, charset: str | None, what: str = "text") -> str:
    """Bytes to str in a declared charset; unknown names and non-text codecs (rot13, base64...) are refused."""
    name = (charset or "utf-8").strip().strip('"').lower() or "utf-8"
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        raise BodyError(f"{what}: unknown charset") from None
    if not getattr(info, "_is_text_encoding", True):
        raise BodyError(f"{what}: unknown charset")
    try:
        return check_text(data.decode(info.name), what)
    except (UnicodeError, LookupError, ValueError):
        raise BodyError(f"{what} is not valid {info.name}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str  # lower-case type/subtype; text/plain when the part did not say
    charset: str | None
    data: bytes


_HEADER_PARSER = email.parser.Parser(policy=email.policy.compat32)


def content_type_param(content_type: str, param: str) -> str | None:
    """One parameter of a Content-Type header value (RFC 2045 quoting handled by the email package)."""
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    value = msg.get_param(param)
    if isinstance(value, tuple):  # RFC 2231 encoded
        value = email.utils.collapse_rfc2231_value(value)
    return str(value) if value is not None else None


def parse_multipart(raw: bytes, content_type: str, *, max_parts: int = MAX_PARTS,
                    max_header_bytes: int = MAX_PART_HEADER_BYTES) -> list[FormPart]:
    """The parts of a multipart/form-data body (RFC 7578), at most `max_parts` of them.

    The part count is checked with one bytes.count before anything is split, so a body of 100,000 tiny parts
    costs one scan and a 400, not 100,000 header parses.
    """
    boundary = content_type_param(content_type, "boundary")
    if not boundary or len(boundary) > 70:
        raise BodyError("multipart body without a valid boundary")
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    if raw.count(delimiter) > max_parts + 1:
        raise BodyError(f"more than {max_parts} parts in a multipart body")
    start = raw.find(delimiter)
    if start < 0:
        raise BodyError("multipart body has no parts")
    parts: list[FormPart] = []
    pos = start + len(delimiter)
    while True:
        if raw.startswith(b"--", pos):
            break  # the close delimiter
        line_end = raw.find(b"\n", pos)
        if line_end < 0:
            raise BodyError("multipart body ends inside a part")
        body_start = line_end + 1
        nxt = raw.find(b"\n" + delimiter, body_start)
        if nxt < 0:
            raise BodyError("multipart body is not terminated")
        chunk = raw[body_start:nxt]
        chunk = chunk[:-1] if chunk.endswith(b"\r") else chunk
        parts.append(_form_part(chunk, max_header_bytes))
        pos = nxt + 1 + len(delimiter)
    if not parts:
        raise BodyError("multipart body has no parts")
    return parts


def _form_part(chunk: bytes, max_header_bytes: int) -> FormPart:
    cut, sep = chunk.find(b"\r\n\r\n"), 4
    lf = chunk.find(b"\n\n")
    if lf >= 0 and (cut < 0 or lf < cut):
        cut, sep = lf, 2
    if chunk.startswith((b"\r\n", b"\n")):  # a part with no headers at all
        raise BodyError("multipart part without a name")
    if cut < 0 or cut > max_header_bytes:
        raise BodyError("multipart part headers missing or too long")
    # Browsers send file names as raw UTF-8 in the part headers (RFC 7578 4.2), not as encoded words.
    try:
        head = chunk[:cut].decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("multipart part headers are not valid UTF-8") from None
    headers = _HEADER_PARSER.parsestr(head + "\r\n\r\n", headersonly=True)
    payload = chunk[cut + sep:]
    disposition = headers.get("Content-Disposition", "")
    name = headers.get_param("name", header="content-disposition") if disposition else None
    if isinstance(name, tuple):
        name = email.utils.collapse_rfc2231_value(name)
    if not name:
        raise BodyError("multipart part without a name")
    filename = headers.get_filename()
    encoding = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
    try:
        if encoding == "base64":
            payload = base64.b64decode(payload, validate=False)
        elif encoding == "quoted-printable":
            payload = quopri.decodestring(payload)
    except (binascii.Error, ValueError):
        raise BodyError("multipart part with a broken transfer encoding") from None
    charset = headers.get_content_charset() if headers.get("Content-Type") else None
    return FormPart(name=check_text(str(name), "a part name"),
                    filename=check_text(str(filename), "a file name") if filename is not None else None,
                    content_type=headers.get_content_type(), charset=charset, data=payload)
