"""Address suggestions for the report form, offline: districts, wards, streets and landmarks from the bundled
gazetteer (classifier/data/gazetteer.json) and the agency directory's ward list. Pure after loading.

A query matches when each of its words starts a word of the place (diacritics and case ignored), so "ben ng",
"Bến Nghé" and "p ben nghe q1" all find "Phường Bến Nghé, Quận 1".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from config.directory import Directory
from ingest.text import fold

GAZETTEER = Path(__file__).resolve().parent.parent / "classifier" / "data" / "gazetteer.json"
KIND_ORDER = {"district": 0, "ward": 1, "street": 2, "landmark": 3}
MAX_QUERY_CHARS = 80


@dataclass(frozen=True, slots=True)
class Place:
    label: str  # what goes into the address box
    kind: str  # district | ward | street | landmark
    district: str | None  # district id
    words: tuple[str, ...]  # folded words matched against the query
    name_words: tuple[str, ...]  # folded words of the bare name (a match there ranks first)


def _words(text: str) -> tuple[str, ...]:
    return tuple(fold(text).replace(",", " ").replace(".", " ").split())


def build_places(directory: Directory, gazetteer_path: Path = GAZETTEER) -> list[Place]:
    data = json.loads(gazetteer_path.read_text(encoding="utf-8"))
    places: list[Place] = []
    seen: set[str] = set()

    def add(label: str, kind: str, district: str | None, name: str, extra: tuple[str, ...] = ()) -> None:
        key = fold(label)
        if key in seen:
            return
        seen.add(key)
        places.append(Place(label=label, kind=kind, district=district,
                            words=_words(label) + tuple(w for a in extra for w in _words(a)), name_words=_words(name)))

    # Short forms people type for a district ("Q1", "D1"), also found inside its wards' and streets' labels.
    short = {d.id: tuple(a for a in d.aliases if " " not in a and "." not in a) for d in directory.districts.values()}
    for d in directory.districts.values():
        add(d.name_vi, "district", d.id, d.name_vi, d.aliases)
        for ward in d.wards:
            if ward.isascii() and fold(ward) != ward.lower():
                continue
            if ward.isascii() and any(fold(w) == fold(ward) for w in d.wards if not w.isascii()):
                continue  # the unaccented spelling of a ward listed with its accents
            bare = ward.split(" ", 1)[1] if ward.startswith(("Phường ", "Xã ", "Thị trấn ")) else ward
            add(f"{ward}, {d.name_vi}", "ward", d.id, bare, short[d.id])
    for street in data.get("streets", []):
        for district_id in street.get("districts", []):
            d = directory.districts.get(district_id)
            if d is not None:
                add(f"{street['name']}, {d.name_vi}", "street", d.id, street["name"],
                    ("đường",) + tuple(street.get("aliases", [])) + short[d.id])
    for mark in data.get("landmarks", []):
        d = directory.districts.get(mark.get("district") or "")
        label = f"{mark['name']}, {d.name_vi}" if d else mark["name"]
        add(label, "landmark", d.id if d else None, mark["name"], tuple(mark.get("aliases", [])))
    return places


def suggest(places: list[Place], query: str, limit: int = 8) -> list[Place]:
    words = _words(query[:MAX_QUERY_CHARS])
    if not words or sum(len(w) for w in words) < 2:
        return []
    scored: list[tuple[tuple[int, int, int], Place]] = []
    for place in places:
        if not all(any(pw.startswith(w) for pw in place.words) for w in words):
            continue
        name_hit = 0 if place.name_words and place.name_words[0].startswith(words[0]) else 1
        scored.append(((name_hit, KIND_ORDER[place.kind], len(place.label)), place))
    scored.sort(key=lambda item: item[0])
    return [place for _, place in scored[:limit]]
