"""Photos an agency attaches to its answer: uploaded (multipart parts or base64 in JSON) or named by URL and
fetched here through the SSRF guard (only public addresses unless `[dispatch.evidence] fetch_allow_private`),
bounded in size and time, and accepted only when their bytes are an image (JPEG, PNG, WebP). Stored in the blob
store; the public pages show them re-encoded without metadata (portal/photos.py)."""
from __future__ import annotations

import json
import re
from typing import Any

import aiohttp

from config.dispatch import DispatchConfig
from ingest.errors import PermanentError

from .ssrf import BlockedAddress, GuardedResolver, check_url

MAX_PHOTO_BYTES = 10 * 1024 * 1024
_SHA = re.compile(r"^[0-9a-f]{64}$")


class PhotoRejected(PermanentError):
    """The photo is not an image, too large, or could not be fetched; the answer is refused with the reason."""


def image_type(raw: bytes) -> str | None:
    """The image type by its magic bytes (a declared Content-Type is a claim, not proof)."""
    if raw.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


def checked(raw: bytes) -> tuple[bytes, str]:
    if len(raw) > MAX_PHOTO_BYTES:
        raise PhotoRejected("photo larger than 10 MB")
    kind = image_type(raw)
    if kind is None:
        raise PhotoRejected("not an image (JPEG, PNG or WebP)")
    return raw, kind


async def fetch_photo(url: str, cfg: DispatchConfig) -> tuple[bytes, str]:
    """GET `url` through the SSRF guard, without redirects, at most 10 MB within the configured time."""
    allow = cfg.evidence.fetch_allow_private
    try:
        check_url(url, allow)
    except BlockedAddress as exc:
        raise PhotoRejected(f"photo URL refused: {exc}") from None
    except ValueError:  # a malformed host ("http://[..."), refused before any connection
        raise PhotoRejected("photo URL is not a valid URL") from None
    timeout = aiohttp.ClientTimeout(total=cfg.evidence.fetch_timeout_seconds)
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow), limit=4)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session, \
                session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise PhotoRejected(f"photo URL answered {resp.status}")
            raw = await resp.content.read(MAX_PHOTO_BYTES + 1)
    except PhotoRejected:
        raise
    except BlockedAddress as exc:
        raise PhotoRejected(f"photo URL refused: {exc}") from None
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise PhotoRejected(f"photo URL unreachable ({type(exc).__name__})") from None
    return checked(raw)


async def answer_photos(store: Any, case_id: str | None) -> list[str]:
    """The blob keys of every photo attached to the case's answers, oldest first, each once: the one reading of
    dispatch's answers that the console (operators) and the portal (stripped, for the public) both use."""
    if not case_id:
        return []
    out: list[str] = []
    for row in await store.fetchall("SELECT data FROM answers WHERE case_id=? ORDER BY id", (case_id,)):
        try:
            data = json.loads(row["data"] or "{}")
        except ValueError:
            continue
        photos = data.get("photos") if isinstance(data, dict) else None
        out += [p for p in photos or [] if isinstance(p, str) and _SHA.match(p) and p not in out]
    return out
