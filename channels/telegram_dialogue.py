"""The Telegram intake dialogue, pure: a draft report per chat, completed by asking for what is missing.

A report needs a description, a place (shared location, venue, or an address in words) and a phone number
to call back. When one is missing the bot asks for it (with a button to share location / phone); the
reporter may answer, or say "bỏ qua" to skip. When nothing is missing, or the draft is too old, the report
is filed and the bot confirms receipt. State lives in the store (channels/telegram.py); this module only
decides.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ingest.app import UnitCandidates
from ingest.clock import iso
from ingest.contacts import find_phones
from ingest.records import Attachment, InboundMessage, Reporter
from ingest.vocabulary import CHAT_TEXTS

from .place_question import PlaceFinder, is_skip, place_missing, with_place
from .telegram_parse import TelegramInput

# What the bot says (the catalogue, ingest/vocabulary.py); the bot speaks Vietnamese.
_SAY = {key: texts["vi"] for key, texts in CHAT_TEXTS.items()}
GREETING = _SAY["greeting"]
ASK_TEXT = _SAY["ask_text"]
ASK_PLACE = _SAY["ask_place_button"]
ASK_PHONE = _SAY["ask_phone"]
BAD_PHONE = f"{_SAY['bad_phone']} {ASK_PHONE}"
ASK_UNIT = _SAY["ask_unit"]
PHOTO_TOO_LARGE = _SAY["photo_too_large"]
CONFIRM = _SAY["confirm"]

@dataclass(frozen=True, slots=True, kw_only=True)
class Draft:
    chat_id: int
    first_update_id: int
    started_at: float
    date: int | None = None
    user_name: str | None = None
    text: str = ""
    address: str | None = None
    lat: float | None = None
    lon: float | None = None
    phone: str | None = None
    photos: tuple[Attachment, ...] = ()
    updates: tuple[dict[str, Any], ...] = ()  # the raw updates, kept as the report's raw input
    state: str = "new"  # ask_text | ask_place | ask_unit | ask_phone | complete
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    chat_id: int
    text: str
    keyboard: str | None = None  # "location", "contact", "remove"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    draft: Draft | None  # None: nothing to keep (e.g. /start)
    replies: tuple[Reply, ...] = ()

    @property
    def complete(self) -> bool:
        return self.draft is not None and self.draft.state == "complete"


def has_place(text: str, found: PlaceFinder | None = None) -> bool:
    """Whether the text already says where (channels/place_question.py decides, for every chat channel)."""
    return not place_missing(text, found=found)


# Given the report's words and GPS, the names of the 2025 units it could be in when they are several, else ():
# published by the classifier on the 2025 map (ctx.published.unit_candidates); None on the 2023 map.


def missing(d: Draft, unit_candidates: UnitCandidates | None = None,
            place_found: PlaceFinder | None = None) -> str | None:
    """The first thing the report still lacks, in the order we ask for it."""
    if not d.text and "text" not in d.skipped:
        return "text"
    if "place" not in d.skipped and place_missing(d.text, lat=d.lat, lon=d.lon, address=d.address, found=place_found):
        return "place"
    if (unit_candidates is not None and "unit" not in d.skipped
            and unit_candidates(_join(d.text, d.address or ""), d.lat, d.lon)):
        return "unit"
    if not d.phone and "phone" not in d.skipped:
        return "phone"
    return None


def _join(a: str, b: str) -> str:
    return f"{a}\n{b}" if a and b else a or b


def step(draft: Draft | None, inp: TelegramInput, raw_update: dict[str, Any], *, now: float,
         photo: Attachment | None = None, dialogue: bool = True,
         unit_candidates: UnitCandidates | None = None, place_found: PlaceFinder | None = None) -> Outcome:
    """Apply one incoming message to the chat's draft; returns the new draft and what to answer."""
    if inp.command == "/start" and draft is None and not inp.text.removeprefix("/start").strip():
        return Outcome(draft=None, replies=(Reply(chat_id=inp.chat_id, text=GREETING),))
    d = draft or Draft(chat_id=inp.chat_id, first_update_id=inp.update_id, started_at=now, date=inp.date,
                       user_name=inp.user_name)
    d = replace(d, updates=d.updates + (raw_update,))
    replies: list[Reply] = []
    if photo is not None:
        d = replace(d, photos=d.photos + (photo,))
    if inp.photo_too_large:
        replies.append(Reply(chat_id=inp.chat_id, text=PHOTO_TOO_LARGE))
    if inp.lat is not None:
        d = replace(d, lat=inp.lat, lon=inp.lon)
    if inp.place_text:
        d = replace(d, address=inp.place_text)
    if inp.phone:
        d = replace(d, phone=inp.phone)
    text = inp.text
    if text.startswith("/"):
        text = text.split(maxsplit=1)[1] if len(text.split(maxsplit=1)) > 1 else ""
    re_ask = False
    if text:
        if is_skip(text) and d.state.startswith("ask_"):
            d = replace(d, skipped=d.skipped + (d.state.removeprefix("ask_"),))
        elif d.state == "ask_place":
            d = replace(d, address=text)  # whatever the reporter calls the place is the place
        elif d.state == "ask_unit":
            # Asked once: the answer joins the address; an operator picks the unit if it still does not decide.
            d = replace(d, address=", ".join(p for p in (d.address, text) if p), skipped=d.skipped + ("unit",))
            if not d.phone and find_phones(text):
                d = replace(d, phone=find_phones(text)[0])
        elif d.state == "ask_phone":
            phones = find_phones(text)
            if phones:
                d = replace(d, phone=phones[0])
            else:
                d = replace(d, text=_join(d.text, text))  # never drop what was said
                re_ask = True
        else:
            d = replace(d, text=_join(d.text, text))
            if not d.phone and find_phones(text):
                d = replace(d, phone=find_phones(text)[0])
    need = missing(d, unit_candidates, place_found) if dialogue else None
    if need is None:
        d = replace(d, state="complete")
        replies.append(Reply(chat_id=d.chat_id, text=CONFIRM, keyboard="remove"))
        return Outcome(draft=d, replies=tuple(replies))
    new_state = f"ask_{need}"
    if new_state != d.state or re_ask:
        units = unit_candidates(_join(d.text, d.address or ""), d.lat, d.lon) if need == "unit" and unit_candidates else ()
        replies.append(_question(d.chat_id, need, bad_phone=re_ask, units=units))
    return Outcome(draft=replace(d, state=new_state), replies=tuple(replies))


def _question(chat_id: int, need: str, *, bad_phone: bool = False, units: tuple[str, ...] = ()) -> Reply:
    if need == "text":
        return Reply(chat_id=chat_id, text=ASK_TEXT)
    if need == "unit":
        shown = ", ".join(units[:8]) + (", …" if len(units) > 8 else "")
        return Reply(chat_id=chat_id, text=ASK_UNIT.format(units=shown))
    if need == "place":
        return Reply(chat_id=chat_id, text=ASK_PLACE, keyboard="location")
    return Reply(chat_id=chat_id, text=BAD_PHONE if bad_phone else ASK_PHONE, keyboard="contact")


def expire(d: Draft) -> Outcome:
    """A draft the reporter left unfinished is filed with what it has: what was said is never lost."""
    return Outcome(draft=replace(d, state="complete"),
                   replies=(Reply(chat_id=d.chat_id, text=CONFIRM, keyboard="remove"),))


def to_inbound(d: Draft, *, bot_id: str, instance: str) -> InboundMessage:
    text = with_place(d.text, d.address)
    return InboundMessage(
        channel="telegram",
        channel_instance=instance,
        idempotency_key=f"{bot_id}:{d.first_update_id}",
        received_at=iso(d.date if d.date else d.started_at),
        text=text,
        reporter=Reporter(name=d.user_name, phone=d.phone, reply_to=str(d.chat_id)),
        lat=d.lat,
        lon=d.lon,
        attachments=d.photos,
        external_id=str(d.first_update_id),
    )
