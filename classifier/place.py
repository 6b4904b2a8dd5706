"""Where a report is: district, ward, street, house number and landmark from free text, or district from GPS.

Pure: no I/O after loading. The gazetteer is data (classifier/data/gazetteer.json + the directory's district
aliases and ward names); district polygons come from classifier/data/hcmc-district-boundaries.json.

Precedence, most to least reliable: GPS (app reports) > an explicit district name > a ward name with its
prefix ("phường Bến Nghé", "xã Bình Hưng") > a landmark > a bare ward name > a street that lies in a single
district. Numbered wards ("phường 7") only count when the district is known.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from config.directory import Directory
from ingest.records import Place
from ingest.text import fold

DATA = Path(__file__).with_name("data")
GAZETTEER_PATH = DATA / "gazetteer.json"
BOUNDARIES_PATH = DATA / "hcmc-district-boundaries.json"

# Aliases that are ordinary words or road codes in other contexts: matched only as written (case and
# diacritics), never on folded text. "D1" is also a street name in Bình Thạnh, "quan ba" is "quán bà".
_SPELLED = re.compile(r"^(quận|quan) (một|mot|nhất|nhứt|nhat|hai|ba|bốn|bon|năm|nam|sáu|sau|bảy|bay|tám|tam|chín|chin|mười|muoi)( (một|mot|hai))?$")


# Spelled numbers that are not also everyday words once folded ("quan bay ra" = stalls spill out).
_SAFE_SPELLED = {"nhat", "nhut", "mot", "chin", "muoi"}


def _words(text: str) -> str:
    """Folded text with punctuation turned into spaces, for word-bounded matching."""
    return " " + re.sub(r"[^0-9a-z/]+", " ", fold(text)).strip() + " "


def _key(name: str) -> str:
    return _words(name).strip()


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

    def district_at(self, lat: float, lon: float) -> str | None:
        for poly in self.polygons:
            if poly.contains(lon, lat):
                return poly.district
        return None


def load_gazetteer(directory: Directory, path: Path | None = None,
                   boundaries: Path | None = BOUNDARIES_PATH) -> Gazetteer:
    data = json.loads((path or GAZETTEER_PATH).read_text(encoding="utf-8"))
    aliases: dict[str, str] = {}
    exact: list[tuple[re.Pattern[str], str]] = []
    spelled: list[tuple[str, str]] = []
    for d in directory.districts.values():
        names = {d.name_vi, d.name_en, *d.aliases, *data.get("district_aliases", {}).get(d.id, [])}
        for alias in names:
            if _SPELLED.match(alias.lower()):
                if alias != fold(alias):
                    exact.append((re.compile(r"(?<!\w)" + re.escape(alias) + r"(?!\w)", re.IGNORECASE), d.id))
                if _key(alias).split()[1] in _SAFE_SPELLED:
                    spelled.append((_key(alias), d.id))
            elif len(_key(alias).replace(" ", "")) <= 4 and " " not in alias.strip() and "." not in alias:
                # Q1, q10, GV, PN, D1, TPTD: short codes. Q-codes are safe folded; bare letters only as written.
                if re.fullmatch(r"[qQ]\d+", alias):
                    aliases[_key(alias)] = d.id
                else:
                    exact.append((re.compile(r"(?<![\w/.])" + re.escape(alias) + r"(?![\w/])"), d.id))
            else:
                aliases[_key(alias)] = d.id
    prefixed: list[tuple[str, str, str]] = []
    bare_count: dict[str, set[str]] = {}
    bare_name: dict[str, str] = {}
    numbered: dict[str, set[str]] = {}
    district_keys = set(aliases)
    for d in directory.districts.values():
        for ward in d.wards:
            k = _key(ward)
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
        canonical = _key(s["name"])
        for alias in {s["name"], *s.get("aliases", [])}:
            streets.append((_key(alias), canonical, tuple(s.get("districts", []))))
    landmarks: list[tuple[str, str, str | None]] = []
    for lm in data.get("landmarks", []):
        canonical = _key(lm["name"])
        for alias in {lm["name"], *lm.get("aliases", [])}:
            landmarks.append((_key(alias), canonical, lm.get("district")))
    polygons = tuple(_load_polygons(boundaries, directory)) if boundaries else ()
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


def _load_polygons(path: Path, directory: Directory) -> Iterable[Polygon]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    by_name = {}
    for d in directory.districts.values():
        for alias in (d.name_vi, *d.aliases):
            by_name.setdefault(_key(alias), d.id)
    for unit in data.get("level2s", []):
        district = by_name.get(_key(unit["name"]))
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


_HOUSE = r"(\d{1,4}[a-z]?(?:/\d{1,4}[a-z]?){0,3})"
_WARD_NUM = re.compile(r"(?:\bphuong|\bp\.?)\s*(\d{1,2})\b")
_SPELLED_NUM = {"mot": "1", "hai": "2", "ba": "3", "bon": "4", "nam": "5", "sau": "6", "bay": "7", "tam": "8",
                "chin": "9", "muoi": "10", "muoi mot": "11", "muoi hai": "12", "muoi ba": "13", "muoi bon": "14",
                "muoi lam": "15"}


def find_place(text: str, gazetteer: Gazetteer, *, lat: float | None = None, lon: float | None = None) -> Place:
    """The place a report talks about. GPS, when given and inside the city, decides the district."""
    words = _words(text)
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
    for key, d, name in gazetteer.prefixed_wards:
        pos = _find(words, key)
        if pos >= 0:
            ward_hits.append((pos, -len(key), d, name, True))
            spans.append((pos, pos + len(key) + 1))
    for key, d, name in gazetteer.bare_wards:
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

    for alias, d in gazetteer.district_aliases:
        pos = _find(words, alias)
        if pos >= 0:
            add_hit(pos, len(alias), d)
    for pattern, d in gazetteer.exact_aliases:
        m = pattern.search(text)
        if m:
            add_hit(len(_words(text[:m.start()])) - 1, len(_key(m.group(0))), d)
    if not has_marks:
        for alias, d in gazetteer.spelled_aliases:
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
        number = _ward_number(words)
        if number and number in gazetteer.numbered_wards.get(district, ()):
            ward = f"Phường {number}"

    if lat is not None and lon is not None:
        gps = gazetteer.district_at(lat, lon)
        if gps is not None:
            if gps != district:
                ward = None  # a ward named in text belongs to another district than where the phone was
            district, source = gps, "gps"

    house = _house_number(words, street)
    return Place(district=district, ward=ward, street=street, landmark=landmark, house_number=house,
                 lat=lat, lon=lon, source=source)


def _streets(words: str, gazetteer: Gazetteer) -> tuple[str | None, tuple[str, ...], list[tuple[int, int]]]:
    """The first street named, and the districts consistent with every street named (an intersection of two
    long streets usually pins the district)."""
    found: list[tuple[int, str, tuple[str, ...]]] = []
    spans: list[tuple[int, int]] = []
    taken: set[str] = set()
    for alias, canonical, districts in gazetteer.streets:
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
    best: tuple[int, int, str, str | None] | None = None
    for alias, canonical, district in gazetteer.landmarks:  # longest first: ties keep the longer name
        pos = _find(words, alias)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, pos + len(alias) + 1, canonical, district)
    return (best[2], best[3], (best[0], best[1])) if best else (None, None, None)


def _ward_number(words: str) -> str | None:
    m = re.search(r" (?:phuong|p) ?(\d{1,2}) ", words)
    if m:
        return str(int(m.group(1)))
    m = re.search(r" phuong (muoi (?:mot|hai|ba|bon|lam)|mot|hai|ba|bon|nam|sau|bay|tam|chin|muoi) ", words)
    if m:
        return _SPELLED_NUM.get(m.group(1))
    return None


def _house_number(words: str, street: str | None) -> str | None:
    """House or alley number: "83/16/4 Ba Tháng Hai", "hẻm 280 Quang Trung", "số 12 ..."."""
    if street:
        m = re.search(r" (?:so |hem |kiet |ngo )?" + _HOUSE + r" (?:duong )?" + re.escape(street) + " ", words)
        if m:
            return m.group(1)
    m = re.search(r" (?:hem|kiet|ngo) " + _HOUSE + " ", words)
    if m:
        return "hem " + m.group(1)
    m = re.search(r" so nha " + _HOUSE + " ", words)
    if m:
        return m.group(1)
    return None
