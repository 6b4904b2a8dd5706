"""Pure Telegram update parsing: a Bot API `Update` (as JSON) in, the few facts a report needs out.

Works on the wire format (dicts), so webhook bodies and polled updates go through the same code.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from ingest.contacts import normalize_phone
from ingest.text import normalize

MAX_TEXT_CHARS = 20_000


class BadUpdate(ValueError):
    """Not a Bot API update we can read; the reason is safe to show and to keep."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TelegramInput:
    update_id: int
    chat_id: int
    user_id: int | None
    user_name: str | None
    date: int | None  # unix seconds, as Telegram sends it
    text: str = ""  # message text, or a photo's caption
    command: str | None = None  # "/start" etc., without the @botname suffix
    lat: float | None = None
    lon: float | None = None
    place_text: str | None = None  # a venue's title and address
    phone: str | None = None  # from a shared contact
    photo_file_id: str | None = None
    photo_too_large: bool = False


def update_id_of(update: Any) -> int:
    if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
        raise BadUpdate("update without an integer update_id")
    return int(update["update_id"])


def parse_update(update: Any, *, max_photo_bytes: int) -> TelegramInput | None:
    """The message of an update; None for updates that carry no report (edits, channel posts, callbacks)."""
    update_id = update_id_of(update)
    message = update.get("message")
    if message is None:
        return None
    if not isinstance(message, dict):
        raise BadUpdate("message is not an object")
    chat = message.get("chat")
    if not isinstance(chat, dict) or not isinstance(chat.get("id"), int):
        raise BadUpdate("message without chat.id")
    if chat.get("type", "private") != "private":
        return None  # reports are taken in private chats only: group talk is not addressed to us
    sender = message.get("from") if isinstance(message.get("from"), dict) else {}
    name = " ".join(str(sender[k]) for k in ("first_name", "last_name") if sender.get(k)) or None
    date = message.get("date")
    fields: dict[str, Any] = {}
    text = message.get("text")
    if text is None:
        text = message.get("caption")
    if text is not None:
        if not isinstance(text, str):
            raise BadUpdate("message text is not a string")
        text = normalize(text[:MAX_TEXT_CHARS])
        if text.startswith("/"):
            word = text.split(maxsplit=1)[0]
            fields["command"] = word.split("@", 1)[0].lower()
        fields["text"] = text
    location = message.get("location")
    venue = message.get("venue")
    if isinstance(venue, dict):
        location = venue.get("location", location)
        fields["place_text"] = ", ".join(str(venue[k]) for k in ("title", "address") if venue.get(k)) or None
    if location is not None:
        try:
            lat, lon = float(location["latitude"]), float(location["longitude"])
        except (KeyError, TypeError, ValueError):
            raise BadUpdate("location without latitude/longitude") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise BadUpdate("location out of range")
        fields["lat"], fields["lon"] = lat, lon
    contact = message.get("contact")
    if isinstance(contact, dict) and contact.get("phone_number"):
        fields["phone"] = normalize_phone(str(contact["phone_number"])) or str(contact["phone_number"])[:32]
    photos = message.get("photo")
    if isinstance(photos, list) and photos:
        best = best_photo(photos, max_photo_bytes)
        if best is None:
            fields["photo_too_large"] = True
        else:
            fields["photo_file_id"] = best
    return TelegramInput(
        update_id=update_id,
        chat_id=int(chat["id"]),
        user_id=sender.get("id") if isinstance(sender.get("id"), int) else None,
        user_name=name,
        date=date if isinstance(date, int) else None,
        **fields,
    )


def best_photo(sizes: list[Any], max_bytes: int) -> str | None:
    """The largest PhotoSize within the byte bound (Telegram lists sizes smallest first)."""
    fitting = [s for s in sizes if isinstance(s, dict) and s.get("file_id")
               and int(s.get("file_size") or 0) <= max_bytes]
    if not fitting:
        return None
    best = max(fitting, key=lambda s: (int(s.get("width", 0)) * int(s.get("height", 0)), int(s.get("file_size") or 0)))
    return str(best["file_id"])


def bot_id_from_token(token: str) -> str:
    """A bot token is `<bot id>:<secret>`; the id alone is public and keys our idempotency."""
    head, sep, _ = token.partition(":")
    if not sep or not head.isdigit():
        raise ValueError("bot token is not of the form <id>:<secret>")
    return head


def secret_token_ok(header: str | None, expected: str) -> bool:
    """`X-Telegram-Bot-Api-Secret-Token` against the configured secret, in constant time."""
    if not header or not expected:
        return False
    return hmac.compare_digest(header.encode("utf-8", "replace"), expected.encode())
