"""The 2025 map: which of the 168 wards, communes and special zone a report is in, from any era's words.

Since 1 July 2025 (Resolution 1685/NQ-UBTVQH15) Ho Chi Minh City has no districts and includes the former Bình
Dương and Bà Rịa–Vũng Tàu provinces. People keep writing old addresses ("P.7, Q.6"), new ones ("phường Bình
Tiên"), both, or a former province's town ("Dĩ An", "Vung Tau"). This module turns what a text names (plus the
2023 place finder's result and GPS) into one new unit, or the candidate units when the words do not decide
(an old district alone, an old ward that was split among several new units). Pure: no I/O after loading.

Data: config/data/hcmc-2025-wards.json (the units), config/data/hcmc-2025-old-to-new.json (old ward -> new
units), classifier/data/places-2025.json (abbreviations), district polygons of the former provinces.

Precedence, most to least specific: an old ward named with its district (through the mapping; a new unit named
in the same text picks among a split ward's parts) > a new unit's name > an old ward name unique in the whole
city > old districts named or under the GPS point (their units are candidates).
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from config.directory import DATA_DIR
from ingest.addresses import Polygon
from ingest.records import Place
from ingest.text import fold

WARDS_PATH = DATA_DIR / "hcmc-2025-wards.json"
OLD_TO_NEW_PATH = DATA_DIR / "hcmc-2025-old-to-new.json"
ALIASES_PATH = Path(__file__).parent.parent / "data" / "places-2025.json"
FORMER_BOUNDARIES_PATH = Path(__file__).parent.parent / "data" / "former-provinces-district-boundaries.json"
HCMC = "TP.HCM"

_DISTRICT_PREFIX = re.compile(r"^(quan|huyen|thanh pho|thi xa|tp|tx|h) ")
_WARD_PREFIX = re.compile(r"^(phuong|xa|thi tran|dac khu) ")
# A bare unit name right after these words is a road, market, bridge... named after the place, not the place.
_NOT_A_PLACE_BEFORE = ("duong", "d", "cho", "cau", "ben xe", "kcn", "khu", "truong", "benh vien", "bv", "cong vien",
                       "nga tu", "nga ba", "vong xoay", "hem", "kenh", "rach", "song", "cong ty", "ngan hang", "ben", "ga",
                       "tram", "nha ga")


def _words(text: str) -> str:
    return " " + re.sub(r"[^0-9a-z]+", " ", fold(text)).strip() + " "


# Old and new tone placement ("Hoà"/"Hòa", "Thuỷ"/"Thủy") written one way, for comparing names with their marks.
_TONE_PLACEMENT = {f"o{a}": f"{b}a" for a, b in zip("àáảãạ", "òóỏõọ")}
_TONE_PLACEMENT.update({f"o{a}": f"{b}e" for a, b in zip("èéẻẽẹ", "òóỏõọ")})
_TONE_PLACEMENT.update({f"u{a}": f"{b}y" for a, b in zip("ỳýỷỹỵ", "ùúủũụ")})
_TONE = re.compile("|".join(_TONE_PLACEMENT))


def _marked_words(text: str) -> str:
    """Lower-case words with their diacritics: where the writer typed marks, "Tân Quý" is not "Tân Quy", and
    "đọng thành" (water pooling) is not the commune Đông Thạnh."""
    lowered = _TONE.sub(lambda m: _TONE_PLACEMENT[m.group(0)], unicodedata.normalize("NFC", text.lower()))
    return " " + " ".join(re.findall(r"[^\W_]+", lowered)) + " "


def _key(name: str) -> str:
    return _words(name).strip()


def district_key(name: str) -> str:
    """'Quận 6' -> '6', 'Thành phố Thủ Đức' -> 'thu duc': how both the directory and the mapping name it."""
    return _DISTRICT_PREFIX.sub("", _key(name))


@dataclass(frozen=True, slots=True, kw_only=True)
class Unit:
    slug: str
    name: str
    full_name: str
    type: str  # phuong, xa, dac-khu
    former_province: str
    former_districts: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OldWard:
    province: str
    district: str  # "Quận 6"
    ward: str  # "Phường 7"
    units: tuple[str, ...]  # new unit slugs
    split: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitMatch:
    """Where a report is on the 2025 map. `unit` when one unit is certain, else `candidates` (possibly empty)."""

    unit: str | None = None
    candidates: tuple[str, ...] = ()
    old_ward: str | None = None  # the old names the text used, shown beside the new one
    old_district: str | None = None
    source: str | None = None  # "text", "gps"


@dataclass(frozen=True, slots=True)
class WardMap:
    units: dict[str, Unit]
    old_wards: tuple[OldWard, ...]
    district_units: dict[str, tuple[str, ...]]  # "province|district" -> slugs of the units its wards went into
    district_names: dict[str, str]  # "province|district" -> "Quận 6"
    unit_keys: tuple[tuple[str, str], ...]  # (folded prefixed form, slug), longest first
    bare_unit_keys: tuple[tuple[str, str], ...]
    old_ward_keys: tuple[tuple[str, tuple[int, ...]], ...]  # (folded prefixed form, indexes into old_wards)
    numbered: dict[tuple[str, str], int]  # ("province|district", "7") -> index into old_wards
    district_aliases: tuple[tuple[str, str], ...]  # (folded alias, "province|district"), longest first
    shadows: tuple[str, ...]  # names that contain a district name without meaning it ("ba ria vung tau")
    polygons: tuple[Polygon, ...]  # former provinces' districts; Polygon.district holds "province|district"
    hcmc_ids: dict[str, str]  # 2023 directory district id -> "TP.HCM|Quận 6"

    def district_at(self, lat: float, lon: float) -> str | None:
        for poly in self.polygons:
            if poly.contains(lon, lat):
                return poly.district
        return None

    def label(self, match: UnitMatch | None) -> str | None:
        """'Phường Bình Tiên (P.7, Q.6 cũ)': the new unit with the old name people know beside it."""
        if match is None or match.unit is None or match.unit not in self.units:
            return None
        unit = self.units[match.unit]
        old = [short_name(n) for n in (match.old_ward, match.old_district) if n]
        if not old:
            old = [short_name(d) for d in unit.former_districts]
        if not old or (match.old_ward and _key(match.old_ward) == _key(unit.full_name)):
            return unit.full_name
        return f"{unit.full_name} ({', '.join(old)} cũ)"


def short_name(name: str) -> str:
    """How people abbreviate old unit names: 'Phường 7' -> 'P.7', 'Quận 6' -> 'Q.6', 'Thành phố Thủ Đức' -> 'TP Thủ Đức'."""
    for long, short in (("Phường ", "P."), ("Quận ", "Q."), ("Thị trấn ", "TT "), ("Thành phố ", "TP "),
                        ("Huyện ", "H. "), ("Thị xã ", "TX ")):
        if name.startswith(long):
            rest = name[len(long):]
            return short + rest if rest[:1].isdigit() or short.endswith(" ") else f"{short} {rest}"
    return name


def load_ward_map(directory_districts: dict[str, str] | None = None, *, street_names: tuple[str, ...] = (),
                  wards: Path = WARDS_PATH,
                  old_to_new: Path = OLD_TO_NEW_PATH, aliases: Path = ALIASES_PATH,
                  boundaries: Path | None = FORMER_BOUNDARIES_PATH) -> WardMap:
    """`directory_districts`: 2023 district id -> its name ("quan-6" -> "Quận 6"), to read the place finder.
    `street_names`: streets of the gazetteer; a unit named like one ("Hiệp Bình") is matched only with a prefix."""
    unit_rows = json.loads(wards.read_text(encoding="utf-8"))["units"]
    units = {u["slug"]: Unit(slug=u["slug"], name=u["name"], full_name=u["full_name"], type=u["type"],
                             former_province=u["former_province"], former_districts=tuple(u["former_districts"]))
             for u in unit_rows}
    by_code = {u["code"]: u["slug"] for u in unit_rows}
    mapping = json.loads(old_to_new.read_text(encoding="utf-8"))
    rows = [(HCMC, m) for m in mapping["mappings"]]
    for province, entries in mapping["other_former_provinces"].items():
        rows += [(province, m) for m in entries]
    old_wards: list[OldWard] = []
    spellings: list[list[str]] = []
    for province, m in rows:
        old_wards.append(OldWard(province=province, district=m["district"], ward=m["ward"],
                                 units=tuple(by_code[u["code"]] for u in m["new_units"]), split=bool(m["split"])))
        spellings.append([m["ward"], *([m["alt_spelling"]] if m.get("alt_spelling") else [])])

    district_units: dict[str, list[str]] = {}
    district_names: dict[str, str] = {}
    for w in old_wards:
        dk = f"{w.province}|{w.district}"
        district_names[dk] = w.district
        bucket = district_units.setdefault(dk, [])
        bucket += [s for s in w.units if s not in bucket]

    extra = json.loads(aliases.read_text(encoding="utf-8"))
    excluded = {_key(n) for n in (*extra.get("bare_unit_exclusions", []), *street_names)}
    district_alias: dict[str, str] = {}
    for dk, name in district_names.items():
        bare = district_key(name)
        if dk.startswith(HCMC + "|"):
            # The 2023 place finder knows these (Q-codes, spelled numbers); ours only sees the plain forms.
            forms = [name, *(f"{p} {bare}" for p in ("quan", "q", "huyen", "h", "tp", "thanh pho")), bare]
            if bare.isdigit():
                forms = [name, f"q {bare}", f"quan {bare}", f"q{bare}", f"district {bare}"]
        else:
            forms = [name, bare, *(f"{p} {bare}" for p in ("tp", "thanh pho", "huyen", "h", "thi xa", "tx"))]
        for form in forms:
            district_alias.setdefault(_key(form), dk)
    for dk, forms in extra.get("district_aliases", {}).items():
        for form in forms:
            district_alias[_key(form)] = dk

    unit_keys: list[tuple[str, str]] = []
    bare_keys: list[tuple[str, str]] = []
    for u in units.values():
        n = _key(u.name)
        forms = [u.full_name, f"phuong {n}", f"p {n}", f"xa {n}", f"{n} ward", f"{n} commune", f"dac khu {n}"]
        unit_keys += [(_key(f), u.slug) for f in dict.fromkeys(forms)]
        if " " in n and n not in excluded and n not in district_alias:
            bare_keys.append((n, u.slug))

    old_keys: dict[str, list[int]] = {}
    numbered: dict[tuple[str, str], int] = {}
    for i, (w, names) in enumerate(zip(old_wards, spellings)):
        for spelled in names:
            k = _key(spelled)
            m = _WARD_PREFIX.match(k)
            rest = k[m.end():] if m else k
            if rest.isdigit():
                numbered[(f"{w.province}|{w.district}", str(int(rest)))] = i
                continue
            forms = [k]
            if m and m.group(1) == "phuong":
                forms.append(f"p {rest}")
            if m and m.group(1) == "thi tran":
                forms.append(f"tt {rest}")
            for form in forms:
                bucket = old_keys.setdefault(form, [])
                if i not in bucket:
                    bucket.append(i)

    hcmc_ids: dict[str, str] = {}
    for district_id, name in (directory_districts or {}).items():
        for dk in district_names:
            if dk.startswith(HCMC + "|") and district_key(district_names[dk]) == district_key(name):
                hcmc_ids[district_id] = dk

    polygons: list[Polygon] = []
    if boundaries is not None and boundaries.exists():
        by_key = {district_key(n): dk for dk, n in district_names.items() if not dk.startswith(HCMC + "|")}
        by_key.update({district_key(f): dk for dk, fs in extra.get("district_aliases", {}).items() for f in fs})
        for l2 in json.loads(boundaries.read_text(encoding="utf-8"))["level2s"]:
            dk = by_key.get(district_key(l2["name"]))
            if dk is None:
                continue
            polys = l2["coordinates"] if l2.get("type") == "MultiPolygon" else [l2["coordinates"]]
            for poly in polys:
                rings = tuple(tuple((float(x), float(y)) for x, y in ring) for ring in poly)
                xs, ys = [p[0] for p in rings[0]], [p[1] for p in rings[0]]
                polygons.append(Polygon(dk, (min(xs), min(ys), max(xs), max(ys)), rings))

    by_len = lambda t: -len(t[0])  # noqa: E731 - longest first: "phuong binh hung hoa a" before "binh hung hoa"
    return WardMap(
        units=units, old_wards=tuple(old_wards),
        district_units={k: tuple(v) for k, v in district_units.items()}, district_names=district_names,
        unit_keys=tuple(sorted(unit_keys, key=by_len)), bare_unit_keys=tuple(sorted(bare_keys, key=by_len)),
        old_ward_keys=tuple(sorted(((k, tuple(v)) for k, v in old_keys.items()), key=by_len)),
        numbered=numbered, district_aliases=tuple(sorted(district_alias.items(), key=by_len)),
        shadows=("ba ria vung tau", "tinh binh duong", "tinh ba ria", "ho chi minh", "hcm", "sai gon gia dinh"),
        polygons=tuple(polygons), hcmc_ids=hcmc_ids)


def _occurrences(words: str, key: str) -> list[int]:
    out, start = [], 0
    needle = f" {key} "
    while (pos := words.find(needle, start)) >= 0:
        out.append(pos)
        start = pos + 1
    return out


class _Spans:
    """Character spans already explained by a longer name: a shorter name inside one is not a mention."""

    def __init__(self) -> None:
        self.taken: list[tuple[int, int]] = []

    def inside(self, pos: int, key: str) -> bool:
        end = pos + len(key) + 1
        return any(s <= pos and end <= e and (e - s) > (end - pos) for s, e in self.taken)

    def add(self, pos: int, key: str) -> None:
        self.taken.append((pos, pos + len(key) + 1))


# "phường 7", "P.7", "p7"; "F7" is how many people in the city abbreviate phường.
_NUMBERED = re.compile(r" (?:phuong|p|f|ward) ?0?(\d{1,2}) ")
_NUMBERED_GLUED = re.compile(r" (?:p|f) ?0?(\d{1,2}) ?q ?0?(\d{1,2}) ")  # "P7Q6", "f7 q6"


def resolve_unit(text: str, ward_map: WardMap, place: Place | None = None) -> UnitMatch:
    """The 2025 unit a report is in. `place` is the 2023 place finder's result for the same text (district from
    its richer aliases or GPS inside former TP.HCM; lat/lon are read from it too)."""
    words = _words(text)
    marked = _marked_words(text) if fold(text) != text.lower() else None  # None: typed without diacritics
    spans = _Spans()
    for shadow in ward_map.shadows:
        for pos in _occurrences(words, shadow):
            spans.add(pos, shadow)

    # Names of wards and units first: they shadow the district names inside them ("phường Bình Tân").
    old_hits: list[tuple[int, tuple[int, ...]]] = []
    for key, idx in ward_map.old_ward_keys:
        for pos in _occurrences(words, key):
            if not spans.inside(pos, key):
                if marked is not None and len(idx) > 1:
                    # Names equal once folded: keep those written with the very marks used, if any is.
                    exact = tuple(i for i in idx if f" {_bare_marked(ward_map.old_wards[i].ward)} " in marked)
                    idx = exact or idx
                old_hits.append((pos, idx))
                spans.add(pos, key)
    unit_hits: list[tuple[int, str]] = []
    for key, slug in ward_map.unit_keys:
        for pos in _occurrences(words, key):
            if not spans.inside(pos, key):
                unit_hits.append((pos, slug))
                spans.add(pos, key)
    prefixed_units = len(unit_hits)  # "phường X" is strong; a bare "X" may be a road or station named after it
    for key, slug in ward_map.bare_unit_keys:
        for pos in _occurrences(words, key):
            before = words[:pos + 1]
            if spans.inside(pos, key) or any(before.endswith(f" {w} ") for w in _NOT_A_PLACE_BEFORE):
                continue
            if marked is not None and f" {_bare_marked(ward_map.units[slug].name)} " not in marked:
                continue  # a bare name must be written as it is spelled when marks are typed at all
            unit_hits.append((pos, slug))
            spans.add(pos, key)

    districts: list[tuple[int, str]] = []
    for alias, dk in ward_map.district_aliases:
        for pos in _occurrences(words, alias):
            if not spans.inside(pos, alias):
                districts.append((pos, dk))
                spans.add(pos, alias)
    for m in _NUMBERED_GLUED.finditer(words):
        dk = ward_map.hcmc_ids.get(f"quan-{int(m.group(2))}")
        if dk:
            districts.append((m.start(), dk))
    source = "text"
    if place is not None and place.district in ward_map.hcmc_ids:
        dk = ward_map.hcmc_ids[place.district]
        if place.source == "gps":
            districts, source = [(0, dk)], "gps"
        elif not (districts or old_hits or prefixed_units):
            districts.append((len(words), dk))  # an alias only the 2023 finder knows ("quận nhứt", "D1")
    if source != "gps" and place is not None and place.lat is not None and place.lon is not None:
        gps = ward_map.district_at(place.lat, place.lon)
        if gps is not None:
            districts, source = [(0, gps)], "gps"
    named = list(dict.fromkeys(dk for _, dk in sorted(districts)))

    numbers = [str(int(m.group(1))) for m in _NUMBERED.finditer(words)]
    numbers += [str(int(m.group(1))) for m in _NUMBERED_GLUED.finditer(words)]

    def found(i: int, via: str = source) -> UnitMatch:
        old = ward_map.old_wards[i]
        # Where the old ward is named, its name is the old ward, not the new unit that kept the name
        # ("phường Cầu Ông Lãnh, Quận 1" is the old ward, split in two).
        here = {pos for pos, idx in old_hits if i in idx}
        new = [s for pos, s in sorted(unit_hits) if s in old.units and pos not in here]
        if len(old.units) == 1 or new:
            return UnitMatch(unit=new[0] if new else old.units[0], old_ward=old.ward, old_district=old.district,
                             source=via)
        # A split ward: its street would decide, but no public data lists which streets went where.
        return UnitMatch(candidates=old.units, old_ward=old.ward, old_district=old.district, source=via)

    # 1. An old ward with its district (named, or under the GPS point).
    for dk in named:
        for number in numbers:
            i = ward_map.numbered.get((dk, number))
            if i is not None:
                return found(i)
        for _, idx in sorted(old_hits):
            for i in idx:
                w = ward_map.old_wards[i]
                if f"{w.province}|{w.district}" == dk:
                    return found(i)
        # An old ward named without its prefix beside its district ("an phú thủ đức", "Thảo Điền, Thủ Đức").
        for i, w in enumerate(ward_map.old_wards):
            if f"{w.province}|{w.district}" != dk:
                continue
            bare = _WARD_PREFIX.sub("", _key(w.ward))
            # (Not a ward named like its district, "thị trấn Củ Chi": the bare name is the district's.)
            if " " in bare and bare != district_key(w.district) and any(not spans.inside(pos, bare)
                                                          for pos in _occurrences(words, bare)):
                if marked is None or f" {_bare_marked(w.ward)} " in marked:
                    return found(i)
        # A bare old ward name only the 2023 finder recognised.
        if place is not None and place.ward and dk == ward_map.hcmc_ids.get(place.district or ""):
            for i, w in enumerate(ward_map.old_wards):
                if f"{w.province}|{w.district}" == dk and _key(w.ward) == _key(place.ward):
                    return found(i)
    # 2. A new unit's name; with a district named, the first one that lies in it.
    if unit_hits:
        ordered = [s for _, s in sorted(unit_hits)]
        if named:
            inside = [s for s in ordered if any(s in ward_map.district_units[dk] for dk in named)]
            if inside:
                return UnitMatch(unit=inside[0], old_district=ward_map.district_names[named[0]], source="text")
            # A name outside the district named (or under the phone) is an old name, a station, a bridge...:
            # the district decides, below.
        else:
            return UnitMatch(unit=ordered[0], source="text")
    # 3. An old ward name that exists once in the whole city.
    for _, idx in sorted(old_hits):
        if len(idx) == 1:
            return found(idx[0], "text")
    # 4. Old districts only: their units are the candidates.
    if named:
        return _candidates(ward_map, named, source)
    return UnitMatch()


def _bare_marked(name: str) -> str:
    """'Phường Tân Quý' -> 'tân quý', the way _marked_words writes it."""
    return _WARD_PREFIX_MARKED.sub("", _marked_words(name).strip())


_WARD_PREFIX_MARKED = re.compile(r"^(phường|xã|thị trấn|đặc khu) ")


def _candidates(ward_map: WardMap, named: list[str], source: str) -> UnitMatch:
    slugs = tuple(dict.fromkeys(s for dk in named for s in ward_map.district_units[dk]))
    old = ward_map.district_names[named[0]] if len(named) == 1 else None
    if len(slugs) == 1:
        return UnitMatch(unit=slugs[0], old_district=old, source=source)
    return UnitMatch(candidates=slugs, old_district=old, source=source)
