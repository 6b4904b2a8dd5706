"""Reading where a report is from its words: the one address reader of the project (pure, no I/O).

Every part that reads an address uses it: the classifier's place finder (the gazetteer matcher below), dedupe's
place features (spoken numbers, alley numbers, unit abbreviations), and the chat channels' place question
(channels/place_question.py), which asks where only when the words name no place. Place names are data, never written here: districts and wards come from the
directory (config/data/agencies.json), streets and landmarks from the gazetteer the caller loads
(classifier/data/gazetteer.json), district polygons from the boundaries file it loads.

Precedence of find_place, most to least reliable: GPS (app reports) > an explicit district name > a ward name
with its prefix ("phường Bến Nghé", "xã Bình Hưng") > a landmark > a bare ward name > a street that lies in a
single district. Numbered wards ("phường 7") only count when the district is known.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from config.directory import Directory, load_directory

from .records import Place
from .text import fold

# -- the pieces of an address, read the same way everywhere ---------------------------------------------------
# A house or alley number: "12", "83/16/4", "25/3A".
HOUSE_NUMBER = r"\d{1,4}[a-z]?(?:/\d{1,4}[a-z]?){0,3}"
# An alley number proper (at least one slash), which alone says "an address": "83/16/4".
ALLEY_NUMBER = r"\d+[a-z]?(?:/\d+[a-z]?)+"
# The one-letter abbreviations of units before a number: "Q5", "P.13".
UNIT_LETTERS = {"q": "quan", "p": "phuong"}
SHORT_UNIT = re.compile(r"\b(?:p|q)\.?\s?\d{1,2}\b")
# Spoken digits, folded ("quận mười", "hẻm hai lăm"); readers add their own variants ("tư" for four).
SPOKEN_DIGITS = {"mot": "1", "hai": "2", "ba": "3", "bon": "4", "nam": "5", "sau": "6", "bay": "7", "tam": "8",
                 "chin": "9", "muoi": "10"}
_SPOKEN_WARD = {**SPOKEN_DIGITS, "muoi mot": "11", "muoi hai": "12", "muoi ba": "13", "muoi bon": "14",
                "muoi lam": "15"}


def read_spoken_number(tokens: list[str], i: int, digits: dict[str, str] = SPOKEN_DIGITS) -> tuple[int, int]:
    """A spoken Vietnamese number up to 99 starting at tokens[i] ("muoi ba" 13, "hai muoi hai" 22), and the
    index after it."""
    first = tokens[i]
    i += 1
    if first == "muoi":
        if i < len(tokens) and tokens[i] in digits and tokens[i] != "muoi":
            unit = int(digits[tokens[i]])
            return 10 + unit, i + 1
        return 10, i
    value = int(digits[first])
    if i < len(tokens) and tokens[i] == "muoi":
        i += 1
        value *= 10
        if i < len(tokens) and tokens[i] in digits and tokens[i] != "muoi":
            value += int(digits[tokens[i]])
            i += 1
    return value, i


# Administrative prefixes of a district's name ("Quận Bình Thạnh", "Huyện Nhà Bè", "Thành phố Thủ Đức"), folded.
_DISTRICT_PREFIX = re.compile(r"^(quan|huyen|thanh pho)\s+")
# Words that name a place on their own (folded), besides the district names.
_PLACE_CUES = ("khu pho", "kp", "chung cu", "nga tu", "nga ba", "nga nam", "vong xoay", "cong vien", "benh vien",
               "so nha")
# Words that name a place only when a proper name or a number follows: "đường Lê Lợi", "quận 7", "chợ Bến
# Thành" — but not "lề đường ban đêm", "quán ăn", "cho", "xả rác".
_NAMED_PLACE_WORDS = re.compile(r"\b(duong|pho|phuong|quan|huyen|hem|ngo|kiet|cho|cau|truong|xa|ap|thon)\b")
_ADDRESS_NUMBER = re.compile(rf"\b{ALLEY_NUMBER}\b|\bso \d+[a-z]?\b")


def district_names(directory: Directory) -> frozenset[str]:
    """The folded proper names of the directory's districts that are names, not numbers ("binh thanh",
    "thu duc"): said alone they name a place."""
    names = (_DISTRICT_PREFIX.sub("", address_key(d.name_vi)) for d in directory.districts.values())
    return frozenset(name for name in names if not name.isdigit())


@cache
def _place_words(districts: frozenset[str] | None) -> re.Pattern[str]:
    # The bundled directory when none is given: the district names are data (config/data/agencies.json).
    names = sorted({*_PLACE_CUES, *(district_names(load_directory()) if districts is None else districts)},
                   key=lambda name: (-len(name), name))
    return re.compile(r"\b(" + "|".join(re.escape(name) for name in names) + r")\b")


def mentions_place(text: str, districts: frozenset[str] | None = None) -> bool:
    """Whether the text has the words of an address: a house number, a named street / ward / district, a
    landmark. No gazetteer needed: the chat channels' judgement when the classifier's place finder is not running.
    `districts`: district_names of the directory in use (the bundled directory's when None)."""
    text = unicodedata.normalize("NFC", text)
    folded = fold(text)
    if _place_words(districts).search(folded) or _ADDRESS_NUMBER.search(folded) or SHORT_UNIT.search(folded):
        return True
    if len(folded) != len(text):  # folding kept positions for Vietnamese; anything else: no guessing
        return False
    for match in _NAMED_PLACE_WORDS.finditer(folded):
        rest = text[match.end():].lstrip(" :,.")
        if rest and (rest[0].isupper() or rest[0].isdigit()):
            return True
    return False


# -- the gazetteer matcher (the classifier's place finder) ----------------------------------------------------
# Aliases that are ordinary words or road codes in other contexts: matched only as written (case and
# diacritics), never on folded text. "D1" is also a street name in Bình Thạnh, "quan ba" is "quán bà".
_SPELLED = re.compile(r"^(quận|quan) (một|mot|nhất|nhứt|nhat|hai|ba|bốn|bon|năm|nam|sáu|sau|bảy|bay|tám|tam|chín|chin|mười|muoi)( (một|mot|hai))?$")


# Spelled numbers that are not also everyday words once folded ("quan bay ra" = stalls spill out).
_SAFE_SPELLED = {"nhat", "nhut", "mot", "chin", "muoi"}


def address_words(text: str) -> str:
    """Folded text with punctuation turned into spaces, between spaces, for word-bounded matching."""
    return " " + re.sub(r"[^0-9a-z/]+", " ", fold(text)).strip() + " "


def address_key(name: str) -> str:
    """A name as the matcher compares it: folded words, single spaces."""
    return address_words(name).strip()


@dataclass(frozen=True, slots=True)
class Polygon:
    district: str
    bbox: tuple[float, float, float, float]  # min lon, min lat, max lon, max lat
    rings: tuple[tuple[tuple[float, float], ...], ...]  # outer ring first, then holes

    def contains(self, lon: float, lat: float) -> bool:
        if not (self.bbox[0] <= lon <= self.bbox[2] and self.bbox[1] <= lat <= self.bbox[3]):
            return False
        inside = False
        for ring in self.rings:  # even-odd rule: holes flip it back
            if _in_ring(ring, lon, lat):
                inside = not inside
        return inside


def _in_ring(ring: tuple[tuple[float, float], ...], x: float, y: float) -> bool:
    inside = False
    n = len(ring)
    j = n - 1
    for i in range(n):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


@dataclass(frozen=True, slots=True)
class Gazetteer:
    """Every name the place finder knows, folded, mapped to district ids."""

    district_aliases: tuple[tuple[str, str], ...]  # (folded alias, district) longest first
    exact_aliases: tuple[tuple[re.Pattern[str], str], ...]  # risky aliases matched as written
    spelled_aliases: tuple[tuple[str, str], ...]  # "quan nhat": matched folded only in diacritic-free text
    prefixed_wards: tuple[tuple[str, str, str], ...]  # (folded "phuong ben nghe", district, ward name)
    bare_wards: tuple[tuple[str, str, str], ...]  # (folded "ben nghe", district, ward name), unique names only
    numbered_wards: dict[str, frozenset[str]]  # district -> {"7", "12", ...}
    streets: tuple[tuple[str, str, tuple[str, ...]], ...]  # (folded alias, canonical, districts) longest first
    landmarks: tuple[tuple[str, str, str | None], ...]  # (folded alias, canonical, district) longest first
    polygons: tuple[Polygon, ...] = field(default=())
    # Per table, its rows by the first word of their name: built on first use (see `named_in`).
    _by_first_word: dict[str, dict[str, list[int]]] = field(default_factory=dict, compare=False, repr=False)

    def named_in(self, table: str, words: str) -> list[Any]:
        """The rows of `table` (a tuple of rows whose first item is a folded name) that may be named in the address
        words `words`, in the table's order: those whose name's first word is one of the words. A name found
        " between spaces " in the words starts with one of its words, so the others cannot be found there: the
        place finder tries a few dozen names of each table per report instead of every one (thousands)."""
        index = self._by_first_word.get(table)
        rows = getattr(self, table)
        if index is None:
            index = {}
            for i, row in enumerate(rows):
                index.setdefault(row[0].split(" ")[0], []).append(i)
            self._by_first_word[table] = index
        hits = [i for word in {*words.split(" ")} for i in index.get(word, ())]
        hits.sort()
        return [rows[i] for i in hits]

    def district_at(self, lat: float, lon: float) -> str | None:
        for poly in self.polygons:
            if poly.contains(lon, lat):
                return poly.district
        return None


def build_gazetteer(directory: Directory, data: dict[str, Any],
                    boundaries: dict[str, Any] | None = None) -> Gazetteer:
    """The matcher's tables from the directory (district aliases, ward names) and gazetteer data (streets,
    landmarks, extra district aliases); `boundaries`: district polygons (GeoJSON-like `level2s`), for GPS."""
    aliases: dict[str, str] = {}
    exact: list[tuple[re.Pattern[str], str]] = []
    spelled: list[tuple[str, str]] = []
    for d in directory.districts.values():
        names = {d.name_vi, d.name_en, *d.aliases, *data.get("district_aliases", {}).get(d.id, [])}
        for alias in names:
            if _SPELLED.match(alias.lower()):
                if alias != fold(alias):
                    exact.append((re.compile(r"(?<!\w)" + re.escape(alias) + r"(?!\w)", re.IGNORECASE), d.id))
                if address_key(alias).split()[1] in _SAFE_SPELLED:
                    spelled.append((address_key(alias), d.id))
            elif len(address_key(alias).replace(" ", "")) <= 4 and " " not in alias.strip() and "." not in alias:
                # Q1, q10, GV, PN, D1, TPTD: short codes. Q-codes are safe folded; bare letters only as written.
                if re.fullmatch(r"[qQ]\d+", alias):
                    aliases[address_key(alias)] = d.id
                else:
                    exact.append((re.compile(r"(?<![\w/.])" + re.escape(alias) + r"(?![\w/])"), d.id))
            else:
                aliases[address_key(alias)] = d.id
    prefixed: list[tuple[str, str, str]] = []
    bare_count: dict[str, set[str]] = {}
    bare_name: dict[str, str] = {}
    numbered: dict[str, set[str]] = {}
    district_keys = set(aliases)
    for d in directory.districts.values():
        for ward in d.wards:
            k = address_key(ward)
            m = re.match(r"^(phuong|xa|thi tran) (.+)$", k)
            if not m:
                continue
            rest = m.group(2)
            if rest.isdigit():
                numbered.setdefault(d.id, set()).add(rest)
                continue
            prefixed.append((k, d.id, _display_ward(ward)))
            if m.group(1) == "phuong":
                prefixed.append((f"p {rest}", d.id, _display_ward(ward)))
                prefixed.append((f"{rest} ward", d.id, _display_ward(ward)))
            elif m.group(1) == "xa":
                prefixed.append((f"{rest} commune", d.id, _display_ward(ward)))
            bare_count.setdefault(rest, set()).add(d.id)
            bare_name[rest] = _display_ward(ward)
    bare = [(k, next(iter(ds)), bare_name[k]) for k, ds in bare_count.items()
            if len(ds) == 1 and " " in k and k not in district_keys]
    streets: list[tuple[str, str, tuple[str, ...]]] = []
    for s in data.get("streets", []):
        canonical = address_key(s["name"])
        for alias in {s["name"], *s.get("aliases", [])}:
            streets.append((address_key(alias), canonical, tuple(s.get("districts", []))))
    landmarks: list[tuple[str, str, str | None]] = []
    for lm in data.get("landmarks", []):
        canonical = address_key(lm["name"])
        for alias in {lm["name"], *lm.get("aliases", [])}:
            landmarks.append((address_key(alias), canonical, lm.get("district")))
    polygons = tuple(_polygons(boundaries, directory)) if boundaries else ()
    by_len = lambda t: -len(t[0])  # noqa: E731 - longest names first so "phu nhuan" wins over "nhuan"
    return Gazetteer(
        district_aliases=tuple(sorted(aliases.items(), key=by_len)),
        exact_aliases=tuple(exact),
        spelled_aliases=tuple(sorted(spelled, key=by_len)),
        prefixed_wards=tuple(sorted(prefixed, key=by_len)),
        bare_wards=tuple(sorted(bare, key=by_len)),
        numbered_wards={k: frozenset(v) for k, v in numbered.items()},
        streets=tuple(sorted(streets, key=by_len)),
        landmarks=tuple(sorted(landmarks, key=by_len)),
        polygons=polygons,
    )


def _display_ward(ward: str) -> str:
    return ward.strip()


def _polygons(data: dict[str, Any], directory: Directory) -> Iterable[Polygon]:
    by_name = {}
    for d in directory.districts.values():
        for alias in (d.name_vi, *d.aliases):
            by_name.setdefault(address_key(alias), d.id)
    for unit in data.get("level2s", []):
        district = by_name.get(address_key(unit["name"]))
        if district is None:
            continue
        coords = unit["coordinates"]
        polys = coords if unit.get("type") == "MultiPolygon" else [coords]
        for poly in polys:
            rings = tuple(tuple((float(x), float(y)) for x, y in ring) for ring in poly)
            xs = [p[0] for p in rings[0]]
            ys = [p[1] for p in rings[0]]
            yield Polygon(district, (min(xs), min(ys), max(xs), max(ys)), rings)


def _find(words: str, key: str, start: int = 0) -> int:
    return words.find(f" {key} ", start)


_HOUSE = f"({HOUSE_NUMBER})"


def find_place(text: str, gazetteer: Gazetteer, *, lat: float | None = None, lon: float | None = None) -> Place:
    """The place a report talks about. GPS, when given and inside the city, decides the district."""
    words = address_words(text)
    has_marks = fold(text) != text.lower()
    district: str | None = None
    ward: str | None = None
    source: str | None = None

    # Longer names that contain a district name ("Hiệp Bình Chánh" ward, "Tân Phú ward" of District 7,
    # "Bến xe Miền Đông mới") shadow the district alias inside them.
    street, street_districts, street_spans = _streets(words, gazetteer)
    landmark, landmark_district, landmark_span = _landmark(words, gazetteer)
    spans = list(street_spans) + ([landmark_span] if landmark_span else [])
    ward_hits: list[tuple[int, int, str, str, bool]] = []  # (pos, -len, district, ward, prefixed)
    for key, d, name in gazetteer.named_in("prefixed_wards", words):
        pos = _find(words, key)
        if pos >= 0:
            ward_hits.append((pos, -len(key), d, name, True))
            spans.append((pos, pos + len(key) + 1))
    for key, d, name in gazetteer.named_in("bare_wards", words):
        pos = _find(words, key)
        if pos >= 0:
            ward_hits.append((pos, -len(key), d, name, False))
            spans.append((pos, pos + len(key) + 1))

    # 1. Explicit district names, earliest mention wins (people name the place before digressing).
    hits: list[tuple[int, int, str]] = []

    def add_hit(pos: int, length: int, d: str) -> None:
        end = pos + length + 1
        if any(s <= pos and end <= e and (e - s) > (end - pos) for s, e in spans):
            return
        hits.append((pos, -length, d))

    for alias, d in gazetteer.named_in("district_aliases", words):
        pos = _find(words, alias)
        if pos >= 0:
            add_hit(pos, len(alias), d)
    for pattern, d in gazetteer.exact_aliases:
        m = pattern.search(text)
        if m:
            add_hit(len(address_words(text[:m.start()])) - 1, len(address_key(m.group(0))), d)
    if not has_marks:
        for alias, d in gazetteer.named_in("spelled_aliases", words):
            pos = _find(words, alias)
            if pos >= 0:
                add_hit(pos, len(alias), d)
    if hits:
        district = min(hits)[2]
        source = "text"

    # 2. Ward names: with their prefix first, then bare unique names; they must agree with a named district.
    for _, _, d, name, prefixed in sorted(ward_hits, key=lambda h: (not h[4], h[0], h[1])):
        if district is None or d == district:
            if district is None and not prefixed and landmark_district:
                break  # a landmark is more specific than a bare ward-like name
            ward, district, source = name, d, "text"
            break
    if district is None and landmark_district:
        district, source = landmark_district, "text"
    if district is None and len(street_districts) == 1:
        district, source = street_districts[0], "text"

    # 3. Numbered wards make sense only inside a known district.
    if ward is None and district is not None:
        number = ward_number(words)
        if number and number in gazetteer.numbered_wards.get(district, ()):
            ward = f"Phường {number}"

    if lat is not None and lon is not None:
        gps = gazetteer.district_at(lat, lon)
        if gps is not None:
            if gps != district:
                ward = None  # a ward named in text belongs to another district than where the phone was
            district, source = gps, "gps"

    house = house_number(words, street)
    return Place(district=district, ward=ward, street=street, landmark=landmark, house_number=house,
                 lat=lat, lon=lon, source=source)


def _streets(words: str, gazetteer: Gazetteer) -> tuple[str | None, tuple[str, ...], list[tuple[int, int]]]:
    """The first street named, and the districts consistent with every street named (an intersection of two
    long streets usually pins the district)."""
    found: list[tuple[int, str, tuple[str, ...]]] = []
    spans: list[tuple[int, int]] = []
    taken: set[str] = set()
    for alias, canonical, districts in gazetteer.named_in("streets", words):
        pos = _find(words, alias)
        if pos >= 0 and not any(s <= pos < e for s, e in spans):
            spans.append((pos, pos + len(alias) + 1))
            if canonical not in taken:
                taken.add(canonical)
                found.append((pos, canonical, districts))
    if found:
        found.sort()
        common = set(found[0][2])
        for _, _, ds in found[1:]:
            if ds and common & set(ds):
                common &= set(ds)
        return found[0][1], tuple(sorted(common)), spans
    # An unknown street: "đường <name>" up to a word that ends a street name.
    m = re.search(r" (?:duong|d) ((?:[a-z]+ ){1,4}?)(?=(?:doan|gan|nga|quan|q|phuong|p|o|bi|co|huyen|tp|thanh|hem|so|truoc|cho|khu|noi|den|tu|va|xa|khuc|dau|cuoi|ngay)\b)",
                  words)
    if m:
        name = m.group(1).strip()
        if 2 <= len(name.split()) <= 4:
            return name, (), []
    return None, (), []


def _landmark(words: str, gazetteer: Gazetteer) -> tuple[str | None, str | None, tuple[int, int] | None]:
    """The first landmark named, and the district of the first one named that lies in one district: a canal or
    a road through several ("kênh Nhiêu Lộc") gives none, and the bridge named after it ("đoạn cầu Kiệu") does."""
    best: tuple[int, int, str, str | None] | None = None
    located: tuple[int, str] | None = None
    for alias, canonical, district in gazetteer.named_in("landmarks", words):  # longest first: ties keep the longer name
        pos = _find(words, alias)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, pos + len(alias) + 1, canonical, district)
        if pos >= 0 and district is not None and (located is None or pos < located[0]):
            located = (pos, district)
    if best is None:
        return None, None, None
    return best[2], located[1] if located else None, (best[0], best[1])


def ward_number(words: str) -> str | None:
    """The number of a numbered ward ("phường 7", "P.7", "phường mười ba") in address words."""
    m = re.search(r" (?:phuong|p) ?(\d{1,2}) ", words)
    if m:
        return str(int(m.group(1)))
    m = re.search(r" phuong (muoi (?:mot|hai|ba|bon|lam)|mot|hai|ba|bon|nam|sau|bay|tam|chin|muoi) ", words)
    if m:
        return _SPOKEN_WARD.get(m.group(1))
    return None


@lru_cache(maxsize=4096)
def _house_on(street: str) -> re.Pattern[str]:
    # Compiled once per street: through re's own cache of 512 patterns, shared with every other module, a report's
    # street pattern was mostly compiled again (re's parser was the top frame of the place finder).
    return re.compile(r" (?:so |hem |kiet |ngo )?" + _HOUSE + r" (?:duong )?" + re.escape(street) + " ")


def house_number(words: str, street: str | None) -> str | None:
    """House or alley number: "83/16/4 Ba Tháng Hai", "hẻm 280 Quang Trung", "số 12 ..."."""
    if street:
        m = _house_on(street).search(words)
        if m:
            return m.group(1)
    m = re.search(r" (?:hem|kiet|ngo) " + _HOUSE + " ", words)
    if m:
        return "hem " + m.group(1)
    m = re.search(r" so nha " + _HOUSE + " ", words)
    if m:
        return m.group(1)
    return None
