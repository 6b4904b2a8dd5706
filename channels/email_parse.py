"""Pure parsing of one raw email into the fields of a report: no I/O, no clock beyond a parse deadline.

Owns: header decoding (encoded words, 8-bit headers), charset guessing (declared, wrongly declared,
windows-1258), text from the plain or HTML part, trimming of quoted replies and signatures for
classification, attachment extraction with type sniffing and caps, loop detection (auto-replies,
bounces, bulk mail) and thread references. The raw bytes are never altered: the adapter stores them as is.

Anything we cannot make sense of raises `ParseError` (with a short machine reason) so the adapter can
quarantine the mail for operators; nothing else escapes `parse_email`.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.header
import email.policy
import email.utils
import hashlib
import quopri
import re
import time
import unicodedata
from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser

from ingest.records import Attachment, InboundMessage, Reporter
from ingest.sniff import safe_filename, sniff_type
from ingest.text import normalize


class ParseError(Exception):
    """The mail cannot be turned into a report; `reason` is a short code shown to operators."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseLimits:
    max_header_bytes: int = 64 * 1024
    max_parts: int = 64
    max_depth: int = 8
    max_attachments: int = 10
    max_attachment_bytes: int = 10 * 1024 * 1024
    max_text_chars: int = 50_000
    max_html_bytes: int = 2 * 1024 * 1024
    time_limit: float = 5.0  # seconds of parsing before we give up and quarantine


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachmentPart:
    data: bytes
    content_type: str  # sniffed from the bytes when recognisable, else the declared type
    declared_type: str
    filename: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedEmail:
    message_id: str | None
    idempotency_key: str
    subject: str | None
    sender_email: str | None
    sender_name: str | None
    text: str  # trimmed for classification, NFC
    full_text: str  # the whole body text, NFC
    references: tuple[str, ...] = ()  # In-Reply-To first, then References newest first
    case_token: str | None = None  # "1022-123", "CASE-000123" or "INC-000123" found in the subject
    # For agency answers (never the reporter's identity): the From address alone (Reply-To is anyone's claim),
    # the Authentication-Results headers top to bottom, and the addresses the mail names as its recipients.
    from_email: str | None = None
    auth_results: tuple[str, ...] = ()
    header_recipients: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    attachments: tuple[AttachmentPart, ...] = ()
    skipped_attachments: int = 0  # over the count or size cap; still inside the stored raw message
    defects: tuple[str, ...] = field(default=())

    @property
    def thread_ref(self) -> str | None:
        if self.references:
            return self.references[0]
        return self.case_token


# -- entry point ---------------------------------------------------------------------------------------

def parse_email(raw: bytes, *, limits: ParseLimits = ParseLimits(), envelope_from: str | None = None) -> ParsedEmail:
    """Parse `raw` (RFC 5322 bytes). `envelope_from` is the SMTP MAIL FROM ("" for a null sender)."""
    deadline = time.monotonic() + limits.time_limit
    if not isinstance(raw, (bytes, bytearray)) or not raw.strip():
        raise ParseError("empty")
    raw = bytes(raw)
    _check_header_size(raw, limits.max_header_bytes)
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:  # the stdlib parser is lenient; anything it still raises means hopeless input
        raise ParseError("unparseable") from None
    if not msg.keys():
        raise ParseError("no_headers")
    try:
        return _parse_message(raw, msg, limits, envelope_from, deadline)
    except ParseError:
        raise
    except RecursionError:
        raise ParseError("too_deep") from None
    except (ValueError, LookupError, TypeError, AttributeError, UnicodeError, IndexError) as exc:
        # Hostile input found a corner of the stdlib we did not foresee: quarantine, never crash intake.
        raise ParseError(f"malformed:{type(exc).__name__}") from None


def to_inbound(parsed: ParsedEmail, *, channel_instance: str, received_at: str,
               attachments: tuple[Attachment, ...] = (), extra_flags: tuple[str, ...] = ()) -> InboundMessage:
    flags = tuple(dict.fromkeys(parsed.flags + extra_flags))
    return InboundMessage(
        channel="email",
        channel_instance=channel_instance,
        idempotency_key=parsed.idempotency_key,
        received_at=received_at,
        text=parsed.text,
        subject=parsed.subject,
        reporter=Reporter(name=parsed.sender_name, email=parsed.sender_email, reply_to=parsed.message_id),
        attachments=attachments,
        external_id=parsed.message_id,
        flags=flags,
        thread_ref=parsed.thread_ref,
    )


def raw_key(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# -- the parts -----------------------------------------------------------------------------------------

def _check_header_size(raw: bytes, cap: int) -> None:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    header_len = min(ends) if ends else len(raw)
    if header_len > cap:
        raise ParseError("header_too_large")


def _parse_message(raw: bytes, msg: Message, limits: ParseLimits, envelope_from: str | None,
                   deadline: float) -> ParsedEmail:
    message_id = _message_id(_header(msg, "Message-ID"))
    subject = _header(msg, "Subject") or None
    sender_name, sender_email = _sender(msg)
    walker = _Walker(limits, deadline)
    walker.walk(msg, 0)
    full_text = walker.body_text()
    _check_deadline(deadline)
    text = normalize(trim_reply(full_text)) or full_text
    if len(text) > limits.max_text_chars:
        text = text[: limits.max_text_chars]
    if not text and not subject and not walker.attachments:
        raise ParseError("no_content")
    refs = _references(msg)
    token = case_token(subject or "")
    defects = tuple(sorted({type(d).__name__ for part in walker.seen for d in getattr(part, "defects", ())}))
    return ParsedEmail(
        message_id=message_id,
        idempotency_key=message_id or raw_key(raw),
        subject=normalize(subject)[:998] if subject else None,
        sender_email=sender_email,
        sender_name=sender_name,
        text=text,
        full_text=full_text,
        references=refs,
        case_token=token,
        from_email=_from_only(msg),
        auth_results=tuple(_all_headers(msg, "Authentication-Results")[:MAX_AUTH_HEADERS]),
        header_recipients=_recipients(msg),
        flags=loop_flags(msg, envelope_from, sender_email, subject or ""),
        attachments=tuple(walker.attachments),
        skipped_attachments=walker.skipped,
        defects=defects,
    )


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise ParseError("parse_timeout")


class _Walker:
    """Collects text and attachments depth-first, with caps on parts, depth and time."""

    def __init__(self, limits: ParseLimits, deadline: float) -> None:
        self.limits = limits
        self.deadline = deadline
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[AttachmentPart] = []
        self.skipped = 0
        self.seen: list[Message] = []

    def walk(self, part: Message, depth: int) -> None:
        _check_deadline(self.deadline)
        if depth > self.limits.max_depth:
            raise ParseError("too_deep")
        self.seen.append(part)
        if len(self.seen) > self.limits.max_parts:
            raise ParseError("too_many_parts")
        ctype = _content_type(part)
        if ctype.startswith("multipart/") and not part.is_multipart():
            recovered = _recover_boundary(part)
            if recovered is not None:
                self.walk(recovered, depth + 1)
                return
            ctype = "text/plain"  # no usable boundary at all: read the body as text
        if part.is_multipart():
            children = part.get_payload()
            if isinstance(children, list):
                if ctype == "multipart/alternative":
                    children = _prefer_plain(children)
                for child in children:
                    if isinstance(child, Message):
                        self.walk(child, depth + 1)
            return
        disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        filename = _filename(part)
        payload = _payload_bytes(part)
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename:
            text = decode_text(payload, _charset(part))
            if ctype == "text/plain":
                self.plain.append(text)
            else:
                self.html.append(text[: self.limits.max_html_bytes])
            return
        if not payload:
            return
        if len(self.attachments) >= self.limits.max_attachments or len(payload) > self.limits.max_attachment_bytes:
            self.skipped += 1
            return
        self.attachments.append(AttachmentPart(data=payload, content_type=sniff_type(payload, ctype),
                                               declared_type=ctype, filename=filename))

    def body_text(self) -> str:
        if any(t.strip() for t in self.plain):
            text = "\n".join(self.plain)
        else:
            text = "\n".join(html_to_text(h) for h in self.html)
        return normalize(text)


_BOUNDARY_LINE = re.compile(r"^--([^\s-][^\r\n]{0,69}?)\s*$", re.MULTILINE)


def _recover_boundary(part: Message) -> Message | None:
    """A multipart whose declared boundary never occurs: retry with the first boundary-like line in it."""
    data = _payload_bytes(part)
    payload = data.decode("ascii", "surrogateescape")
    match = _BOUNDARY_LINE.search(payload)
    if match is None:
        return None
    boundary = match.group(1).removesuffix("--")
    head = f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode("ascii", "surrogateescape")
    rebuilt = email.message_from_bytes(head + data, policy=email.policy.compat32)
    return rebuilt if rebuilt.is_multipart() else None


def _prefer_plain(children: list[Message]) -> list[Message]:
    """In multipart/alternative keep the plain part when there is one (the sender's own words)."""
    plain = [c for c in children if isinstance(c, Message) and _content_type(c) == "text/plain"]
    return plain or children


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:  # a header the stdlib cannot split: treat as opaque bytes
        return "application/octet-stream"


def _payload_bytes(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    if isinstance(raw, str):
        return raw.encode("ascii", "surrogateescape")
    return b""


def _charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:
        return None


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    if not name:
        return None
    # Its last path segment, without controls or bidi overrides ("../../etc/passwd", "\u202egpj.exe"): it is
    # mailed on with the attachment to the agency (ingest/sniff.py, as for the app's photos).
    return safe_filename(normalize(decode_header_value(str(name))), limit=255)


# -- charsets ------------------------------------------------------------------------------------------

# Codecs that "decode" bytes into something that is not the sender's text.
_NOT_TEXT = {"unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined", "palmos"}


def _lookup(name: str | None) -> str | None:
    if not name:
        return None
    name = name.strip().strip("\"'").lower()
    if name in ("unknown-8bit", "x-unknown", "unknown", "8bit", "default"):
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name in _NOT_TEXT or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_text(data: bytes, declared: str | None) -> str:
    """Bytes to NFC text, trusting the declared charset only as far as the bytes allow.

    Order: pure ASCII; valid UTF-8 (a non-ASCII byte string that happens to be valid UTF-8 is almost
    never anything else, so it beats a declared single-byte charset, the usual mislabel); the declared
    charset; windows-1258 (Vietnamese Windows mail); UTF-8 with replacement characters.
    """
    if not data:
        return ""
    if data.isascii():
        return _nfc(data.decode("ascii"))
    codec = _lookup(declared)
    utf8: str | None
    try:
        utf8 = data.decode("utf-8")
    except UnicodeDecodeError:
        utf8 = None
    if codec is not None and codec.startswith(("utf-16", "utf-32")):
        try:
            return _nfc(data.decode(codec))
        except (UnicodeDecodeError, ValueError):
            pass
    if utf8 is not None:
        return _nfc(utf8)
    if codec in _WESTERN and _looks_vietnamese_cp1258(data):
        codec = "cp1258"  # Vietnamese Windows text labelled latin-1 by the sending client
    for candidate in (codec, "cp1258"):
        if candidate is None or candidate == "utf-8":
            continue
        try:
            return _nfc(data.decode(candidate))
        except (UnicodeDecodeError, ValueError, LookupError):
            continue
    return _nfc(data.decode("utf-8", "replace"))


_WESTERN = {None, "ascii", "iso8859-1", "iso8859-15", "cp1252"}
# cp1258 bytes that only Vietnamese uses: combining tones (0xCC 0xEC 0xDE 0xD2 0xF2) and đ ơ ư ă.
_VN_BYTES = frozenset(b"\xcc\xec\xde\xd2\xf2\xd0\xf0\xd5\xf5\xdd\xfd\xc3\xe3")


def _looks_vietnamese_cp1258(data: bytes) -> bool:
    high = [b for b in data if b >= 0x80]
    vn = sum(1 for b in high if b in _VN_BYTES)
    return vn >= 2 and vn * 2 >= len(high)


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _nfc(text: str) -> str:
    # Lone surrogates (from surrogateescape'd 8-bit headers) cannot be encoded later; drop them.
    if not text.isascii():
        text = _SURROGATE.sub("", text)
    return unicodedata.normalize("NFC", text)


_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,40})\?([QqBb])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)\s+(=\?)")


def decode_header_value(value: str) -> str:
    """RFC 2047 encoded words and raw 8-bit bytes (surrogate-escaped by the parser) to one NFC line."""
    if not value.isascii() and _ESCAPED_BYTE.search(value):
        value = decode_text(value.encode("ascii", "surrogateescape"), None)
    # Whitespace between two adjacent encoded words is not part of the text (RFC 2047 section 6.2).
    value = _BETWEEN_WORDS.sub(r"\1\2", value)
    text = _ENCODED_WORD.sub(_decode_word, value)
    return _nfc(" ".join(text.split()))


def _decode_word(match: re.Match[str]) -> str:
    charset, encoding, payload = match.group(1), match.group(2).upper(), match.group(3)
    charset = charset.split("*")[0]  # RFC 2231 language suffix
    try:
        if encoding == "B":
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=False)
        else:
            data = quopri.decodestring(payload.replace("_", " ").encode("ascii", "replace"), header=True)
    except (binascii.Error, ValueError):
        return match.group(0)  # a broken word stays as the sender wrote it
    return decode_text(data, charset)


def _header(msg: Message, name: str) -> str:
    # raw_items() keeps 8-bit header bytes (surrogate-escaped) that msg.get() would turn into U+FFFD.
    lname = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == lname and isinstance(value, str):
            return decode_header_value(value)
    return ""


def _all_headers(msg: Message, name: str) -> list[str]:
    lname = name.lower()
    return [decode_header_value(v) for k, v in msg.raw_items() if k.lower() == lname and isinstance(v, str)]


# -- addresses, ids, threads ---------------------------------------------------------------------------

MAX_AUTH_HEADERS = 20  # more Authentication-Results than this is not a real relay chain
RECIPIENT_HEADERS = ("To", "Cc", "Delivered-To", "X-Original-To")
MAX_RECIPIENTS = 50


def _from_only(msg: Message) -> str | None:
    """The single From address; None when From is missing or names several mailboxes (then nobody is proven)."""
    # The address is read from the header as sent, before RFC 2047 decoding: an encoded word may only hold a
    # display name, and decoding first would turn "=?utf-8?q?hopthu=40sawaco.com.vn?=" (text, which a DMARC
    # relay does not read as an address) into the agency's address.
    values = [" ".join(v.split()) for k, v in msg.raw_items() if k.lower() == "from" and isinstance(v, str)]
    if len(values) != 1:
        return None
    try:
        pairs = [(n, a) for n, a in email.utils.getaddresses(values) if a]
    except Exception:
        return None
    if len(pairs) != 1 or "@" not in pairs[0][1] or len(pairs[0][1]) > 320 or "=?" in pairs[0][1]:
        return None
    return pairs[0][1].strip().lower()


def _recipients(msg: Message) -> tuple[str, ...]:
    values = [v for h in RECIPIENT_HEADERS for v in _all_headers(msg, h)]
    try:
        addrs = [a.strip().lower() for _, a in email.utils.getaddresses(values) if a and len(a) <= 320]
    except Exception:
        return ()
    return tuple(dict.fromkeys(addrs))[:MAX_RECIPIENTS]


_MSGID = re.compile(r"<([^<>\s]{1,900}@[^<>\s]{1,250})>")


def _message_id(value: str) -> str | None:
    match = _MSGID.search(value or "")
    return f"<{match.group(1)}>" if match else None


def _references(msg: Message) -> tuple[str, ...]:
    refs: list[str] = []
    in_reply = _MSGID.findall(_header(msg, "In-Reply-To"))
    refs.extend(f"<{m}>" for m in in_reply[:1])
    references = _MSGID.findall(_header(msg, "References"))
    refs.extend(f"<{m}>" for m in reversed(references[-20:]))
    return tuple(dict.fromkeys(refs))


# "[1022-42]", "[CASE-000123]", and the dispatch emails' own "[1022 #CASE-000123]" (dispatch/messages.py).
_CASE_TOKEN = re.compile(r"\[\s*(?:1022\s*#\s*)?((?:1022-[A-Za-z0-9]{1,20})|(?:(?:INC|CASE)-\d{1,12}))\s*\]",
                         re.IGNORECASE)


def case_token(subject: str) -> str | None:
    match = _CASE_TOKEN.search(subject)
    return match.group(1).upper() if match else None


def _sender(msg: Message) -> tuple[str | None, str | None]:
    for header in ("Reply-To", "From", "Sender"):
        value = _header(msg, header)
        if not value:
            continue
        try:
            name, addr = email.utils.parseaddr(value)
        except Exception:
            continue
        if addr and "@" in addr and len(addr) <= 320:
            if header == "Reply-To":
                # The display name is the person's, taken from From when Reply-To has none.
                from_name, _ = email.utils.parseaddr(_header(msg, "From"))
                name = name or from_name
            return (normalize(name)[:200] or None), addr.strip().lower()
    return None, None


# -- loops ---------------------------------------------------------------------------------------------

_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response)|out of (the )?office|autoreply|abwesenheit|"
    r"trả lời tự động|thư trả lời tự động|vắng mặt)\b", re.IGNORECASE)
_DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"}


def loop_flags(msg: Message, envelope_from: str | None, sender_email: str | None, subject: str) -> tuple[str, ...]:
    """Why this mail must be stored but never answered nor routed (RFC 3834 and common practice)."""
    flags: list[str] = []
    auto = _header(msg, "Auto-Submitted").lower()
    if auto and not auto.startswith("no"):
        flags.append("auto_reply")
    if any(_header(msg, h) for h in ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Auto-Reply")):
        flags.append("auto_reply")
    precedence = _header(msg, "Precedence").lower()
    if precedence in ("bulk", "junk", "list"):
        flags.append("bulk")
    elif precedence == "auto_reply":
        flags.append("auto_reply")
    if _header(msg, "List-Id") or _header(msg, "List-Unsubscribe"):
        flags.append("bulk")
    if envelope_from is not None and envelope_from.strip("<> ") == "":
        flags.append("bounce")
    from_addr = email.utils.parseaddr(_header(msg, "From"))[1].lower()
    for addr in (from_addr, sender_email or ""):
        if addr.split("@")[0] in _DAEMONS:
            flags.append("bounce")
    if _content_type(msg) == "multipart/report":
        report_type = (msg.get_param("report-type") or "")
        report_type = report_type.lower() if isinstance(report_type, str) else ""
        flags.append("receipt" if report_type == "disposition-notification" else "bounce")
    if _AUTO_SUBJECT.match(subject):
        flags.append("auto_reply")
    return tuple(dict.fromkeys(flags))


# -- body text -----------------------------------------------------------------------------------------

_CUT_MARKERS = [
    re.compile(r"^on\b.{0,300}\bwrote:?$", re.IGNORECASE),
    re.compile(r"^vào\b.{0,300}\bđã viết:?$", re.IGNORECASE),
    re.compile(r"^-{2,}\s*(original message|forwarded message|thư gốc|tin nhắn gốc)\s*-{2,}$", re.IGNORECASE),
    re.compile(r"^_{10,}$"),
    re.compile(r"^(sent from my|gửi từ|được gửi từ|get outlook for)\b", re.IGNORECASE),
    re.compile(r"^(from|từ):\s.+", re.IGNORECASE),  # Outlook quote block, only when a Sent/Date line follows
]
_OUTLOOK_NEXT = re.compile(r"^(sent|date|gửi|ngày|to|đến):\s", re.IGNORECASE)


def trim_reply(text: str) -> str:
    """Drop quoted replies, forwarded history and the signature; what remains is the reporter's own words."""
    lines = text.splitlines()
    kept: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped in ("--", "-- "):
            break
        if stripped.startswith(">"):
            continue
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if _cuts(stripped, nxt) or (nxt.lower().startswith("wrote:") and stripped.lower().startswith("on ")):
            break
        kept.append(line)
    return "\n".join(kept)


def _cuts(line: str, nxt: str) -> bool:
    for i, marker in enumerate(_CUT_MARKERS):
        if marker.match(line):
            return i != len(_CUT_MARKERS) - 1 or bool(_OUTLOOK_NEXT.match(nxt))
    return False


_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol",
               "section", "article", "header", "footer", "hr", "pre"}
_SKIP_TAGS = {"script", "style", "head", "title"}


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.quote = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag == "blockquote":
            self.quote += 1  # quoted history in HTML replies
        if tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self.skip:
            self.skip -= 1
        elif tag == "blockquote" and self.quote:
            self.quote -= 1
        if tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip and not self.quote:
            self.out.append(data)


def html_to_text(markup: str) -> str:
    parser = _HtmlText()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # HTMLParser is lenient; a failure still leaves what was read so far
        pass
    return "".join(parser.out)


# -- attachments ---------------------------------------------------------------------------------------

# The one sniffer (ingest/sniff.py), shared with the Open311 and portal intake.
