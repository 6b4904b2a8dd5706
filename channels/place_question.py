"""Asking a chat reporter where it happened, the same way on every chat channel (Art. 6). Pure.

Only a report placed nowhere (its words, the GPS fix, the reporter's address) goes to the operator unit; on a
chat channel the bot asks first. This module decides whether to ask, what to ask, and what an answer gives;
each channel keeps its own state and sending (Telegram files a draft once it is complete, Messenger holds the
stored report's classification until the answer or the end of the wait).

Whether a text names a place is the classifier's own judgement when it runs: it publishes `place.found`
(text, lat, lon -> bool: a district from the gazetteer's districts, wards, streets and landmarks, or the GPS
fix over one) as `AppContext.published.place_found`. Without it, the base's address reader (`ingest.addresses.mentions_place`)
looks for the words of an address; no place names are written here, they live in the directory and the
gazetteer.
"""
from __future__ import annotations

from dataclasses import dataclass

from ingest.addresses import mentions_place
from ingest.app import PlaceFinder
from ingest.text import fold
from ingest.vocabulary import CHAT_TEXTS


ASK_PLACE = CHAT_TEXTS["ask_place"]["vi"]
PLACE_LABEL = CHAT_TEXTS["place_label"]["vi"]

SKIP_WORDS = {"bo qua", "/skip", "skip", "khong", "ko", "khong biet", "khong ro"}


def place_missing(text: str, *, lat: float | None = None, lon: float | None = None, address: str | None = None,
                  found: PlaceFinder | None = None) -> bool:
    """True when nothing the reporter gave says where: no GPS, no address, and no place in the words."""
    if lat is not None or address:
        return False
    if found is not None:
        return not found(text, lat, lon)
    return not mentions_place(text)


def is_skip(text: str) -> bool:
    return fold(text).strip(" .!") in SKIP_WORDS


@dataclass(frozen=True, slots=True)
class PlaceAnswer:
    """What a reply to the question gives: a shared location, the place in words, or a refusal to say."""
    address: str | None = None
    lat: float | None = None
    lon: float | None = None
    skipped: bool = False


def read_answer(text: str, lat: float | None = None, lon: float | None = None) -> PlaceAnswer:
    """Whatever the reporter calls the place is the place; "bỏ qua" says they do not know."""
    text = text.strip()
    if text and is_skip(text) and lat is None:
        return PlaceAnswer(skipped=True)
    return PlaceAnswer(address=text or None, lat=lat, lon=lon)


def with_place(text: str, address: str | None) -> str:
    """The report's text with the place given in answer on its own line, where the classifier reads it."""
    if not address:
        return text
    line = f"{PLACE_LABEL}: {address}"
    return f"{text}\n{line}" if text else line
