"""Where a report happened, from every source the report carries: its text, the app's GPS fix, and the address
the reporter registered. Pure; `place.find_place` reads text and GPS, this module adds the reporter's address.

Order (README, "Place"): a district named in the text, or GPS over it, as `find_place` decides; when the text
names no district and says the place is the registered address ("như đã đăng ký", "địa chỉ nhà tôi"), that
address before GPS; when neither text nor GPS gives a district and the text points at home ("trước nhà", "hẻm
nhà em") or names no place at all, the reporter's address. A report with a place in
none of them goes to the operator unit (Art. 6). `Place.source` records which one gave the district: "text",
"gps" or "reporter_address" (public pages never show a place taken from the reporter's own address).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from ingest.addresses import Gazetteer, find_place
from ingest.records import Place
from ingest.text import fold

PHRASES_PATH = Path(__file__).parent.parent / "data" / "reporter_place.json"


@dataclass(frozen=True, slots=True)
class HomePhrases:
    registered: tuple[str, ...]
    home: tuple[str, ...]


@lru_cache(maxsize=4)
def load_phrases(path: Path = PHRASES_PATH) -> HomePhrases:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return HomePhrases(registered=tuple(data.get("registered", ())), home=tuple(data.get("home", ())))


def _words(text: str) -> str:
    return " " + re.sub(r"[^0-9a-z]+", " ", fold(text)).strip() + " "


def points_at(text: str, phrases: HomePhrases | None = None) -> str | None:
    """"registered" when the text says the place is the registered address, "home" when it points at home."""
    phrases = phrases or load_phrases()
    words = _words(text)
    if any(f" {p} " in words for p in phrases.registered):
        return "registered"
    if any(f" {p} " in words for p in phrases.home):
        return "home"
    return None


def names_a_place(place: Place) -> bool:
    return any((place.district, place.ward, place.street, place.landmark))


def locate(text: str, gazetteer: Gazetteer, *, lat: float | None = None, lon: float | None = None,
           reporter_address: str | None = None) -> Place:
    """The report's place; see the module docstring for the order of the sources."""
    from_text = find_place(text, gazetteer)
    with_gps = find_place(text, gazetteer, lat=lat, lon=lon) if lat is not None and lon is not None else from_text
    if not reporter_address or from_text.district is not None:
        return with_gps
    pointer = points_at(text)
    if pointer != "registered" and with_gps.district is not None:
        return with_gps
    if pointer is None and names_a_place(from_text):
        return with_gps  # the text names somewhere we could not pin down: not necessarily the reporter's home
    home = find_place(reporter_address, gazetteer)
    if home.district is None:
        return with_gps
    return replace(home, lat=lat, lon=lon, source="reporter_address")
