"""What a file is by its bytes, not by what its sender says: a declared Content-Type or file name is a claim.

Shared by every channel that stores attachments (channels/email_parse.py, channels/open311_parse.py).
"""
from __future__ import annotations

import re

_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
    (0, b"OggS", "audio/ogg"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"MZ", "application/x-msdownload"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
)


def sniff_type(data: bytes, declared: str) -> str:
    """The type the bytes say they are; a declared type is trusted only for text it cannot contradict."""
    for offset, magic, ctype in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return ctype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "image/heic"
        return "video/mp4"
    if declared.startswith("text/") or declared == "message/rfc822":
        return declared
    return "application/octet-stream"


# What a reporter's photo or video may be; anything else (a script, a page, an SVG with a script in it, a program
# named "anh.jpg") is refused at intake instead of being stored and mailed on to an agency under the type it claims.
MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "video/mp4",
                         "video/webm"})
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def media_type(data: bytes) -> str | None:
    """The sniffed type of a reporter's photo or video, None when the bytes are neither."""
    kind = sniff_type(data, "application/octet-stream")
    return kind if kind in MEDIA_TYPES else None


def safe_filename(name: str | None, limit: int = 120) -> str | None:
    """A file name as a sender gave it, reduced to its last path segment without controls or bidi overrides
    ("../../etc/passwd" -> "passwd", "C:\\x\\a.jpg" -> "a.jpg"), at most `limit` characters; None when nothing is
    left. It only labels an attachment (blobs are named by their sha256), but it reaches agencies' mail clients."""
    if not name:
        return None
    base = _UNSAFE_NAME.sub("", name.replace("\\", "/").rsplit("/", 1)[-1]).strip().lstrip(".")
    return base[-limit:] or None
