"""The agency directory: agencies, districts (with every alias and ward) and topics, loaded from data.

Routing rules are data an administrator edits (Art. 11.6, 17.3), never code.
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

DATA_DIR = Path(__file__).with_name("data")
BUNDLED = DATA_DIR / "agencies.json"
WARDS_2025 = DATA_DIR / "hcmc-2025-wards.json"
EDITS_2025 = DATA_DIR / "directory-2025.json"
OPERATOR_UNIT = "van-hanh-1022"
STRUCTURES = ("2023", "2025")


@dataclass(frozen=True, slots=True, kw_only=True)
class Agency:
    id: str
    name_vi: str
    name_en: str
    kind: str
    scope: str
    district: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class District:
    id: str
    name_vi: str
    name_en: str
    aliases: tuple[str, ...]
    wards: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Unit:
    """A ward, commune or special zone of the 2025 map (config/data/hcmc-2025-wards.json)."""

    slug: str
    name: str  # "Bình Tiên"
    full_name: str  # "Phường Bình Tiên"
    type: str  # phuong, xa, dac-khu
    former_province: str
    former_districts: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Topic:
    id: str
    category: str
    agency: str | None  # an agency id, "district" for district-scoped topics, None when refused
    description_vi: str
    description_en: str

    @property
    def name_vi(self) -> str:
        """The topic's short name: its Vietnamese description up to the colon (the Open311 service_name)."""
        return self.description_vi.split(":")[0]


@dataclass(frozen=True, slots=True)
class Directory:
    agencies: dict[str, Agency]
    districts: dict[str, District]
    topics: dict[str, Topic]
    structure: str = "2023"
    units: dict[str, Unit] = field(default_factory=dict)  # slug -> unit; empty under "2023"

    # Names shown to people (console, Open311) for ids kept in records; an unknown id is shown as it is.
    def agency_name(self, agency_id: str | None) -> str:
        agency = self.agencies.get(agency_id or "")
        return agency.name_vi if agency else agency_id or ""

    def district_name(self, district_id: str | None) -> str:
        """A 2023 district's name, or on the 2025 map a unit's full name (its slug is the place's id)."""
        district = self.districts.get(district_id or "")
        if district is not None:
            return district.name_vi
        unit = self.units.get(district_id or "")
        return unit.full_name if unit else district_id or ""

    def topic_name(self, topic_id: str | None) -> str:
        topic = self.topics.get(topic_id or "")
        return topic.name_vi if topic else topic_id or ""

    def agency_for(self, topic_id: str, district: str | None, unit: str | None = None) -> str | None:
        """The responsible agency for a topic at a place (Art. 6), or None for refused topics. Local topics go to
        the district committee on the 2023 map, to the unit's committee on the 2025 map (`unit` = its slug)."""
        topic = self.topics[topic_id]
        if topic.agency != "district":
            return topic.agency
        if self.structure == "2025":
            return unit_agency(unit) if unit is not None and unit_agency(unit) in self.agencies else OPERATOR_UNIT
        if district is None:
            return OPERATOR_UNIT
        agency = f"ubnd-{district}"
        return agency if agency in self.agencies else OPERATOR_UNIT


def unit_agency(slug: str) -> str:
    return f"ubnd-{slug}"


def load_units(path: Path = WARDS_2025) -> dict[str, Unit]:
    rows = json.loads(path.read_text(encoding="utf-8"))["units"]
    return {u["slug"]: Unit(slug=u["slug"], name=u["name"], full_name=u["full_name"], type=u["type"],
                            former_province=u["former_province"], former_districts=tuple(u["former_districts"]))
            for u in rows}


def _to_2025(directory: Directory, units: dict[str, Unit], edits: dict[str, Any]) -> Directory:
    """The data edit of directory-2025.json: district committees out, unit committees in, merged departments."""
    agencies = {k: a for k, a in directory.agencies.items() if a.kind != "district"}
    renamed: dict[str, str] = {}
    for merge in edits.get("merges", []):
        into = merge["into"]
        for old in merge["replaces"]:
            agencies.pop(old, None)
            renamed[old] = into["id"]
        agencies[into["id"]] = Agency(id=into["id"], name_vi=into["name_vi"], name_en=into["name_en"],
                                      kind=into["kind"], scope=into["scope"], district=None)
    spec = edits["unit_agency"]
    for u in units.values():
        agency_id = spec["id"].format(slug=u.slug)
        agencies[agency_id] = Agency(
            id=agency_id, name_vi=spec["name_vi"].format(full_name=u.full_name),
            name_en=spec["name_en"].format(name=fold_name(u.name), type_en=spec["type_en"][u.type]),
            kind="ward", scope="ward", district=None)
    topics = {k: replace(t, agency=renamed.get(t.agency or "", t.agency)) for k, t in directory.topics.items()}
    return Directory(agencies, directory.districts, topics, "2025", units)


def fold_name(name: str) -> str:
    """'Bình Tiên' -> 'Binh Tien' for English names."""
    return "".join(c for c in unicodedata.normalize("NFD", name.replace("Đ", "D").replace("đ", "d"))
                   if unicodedata.category(c) != "Mn")


def load_directory(path: Path | None = None, structure: str = "2023") -> Directory:
    """The directory of `path` (default: the bundled one), turned into the 2025 one when structure is "2025"."""
    directory = _load_2023(path)
    if structure not in STRUCTURES:
        raise ConfigError(f"data.structure: {structure!r} is not one of {', '.join(STRUCTURES)}")
    if structure == "2023":
        return directory
    try:
        units = load_units()
        edits = json.loads(EDITS_2025.read_text(encoding="utf-8"))
        return _to_2025(directory, units, edits)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{EDITS_2025}: 2025 directory unreadable: {type(exc).__name__}: {exc}") from None


def _load_2023(path: Path | None = None) -> Directory:
    source = Path(path) if path else BUNDLED
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        agencies = {a["id"]: Agency(id=a["id"], name_vi=a["name_vi"], name_en=a["name_en"], kind=a["kind"],
                                    scope=a["scope"], district=a.get("district")) for a in data["agencies"]}
        districts = {d["id"]: District(id=d["id"], name_vi=d["name_vi"], name_en=d["name_en"],
                                       aliases=tuple(d.get("aliases", ())), wards=tuple(d.get("wards", ())))
                     for d in data["districts"]}
        topics = {t["id"]: Topic(id=t["id"], category=t["category"], agency=t.get("agency"),
                                 description_vi=t.get("description_vi", ""), description_en=t.get("description_en", ""))
                  for t in data["topics"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{source}: agency directory unreadable: {type(exc).__name__}: {exc}") from None
    problems = []
    for t in topics.values():
        if t.agency not in (None, "district") and t.agency not in agencies:
            problems.append(f"topics.{t.id}.agency: unknown agency {t.agency!r}")
    for a in agencies.values():
        if a.district is not None and a.district not in districts:
            problems.append(f"agencies.{a.id}.district: unknown district {a.district!r}")
    if OPERATOR_UNIT not in agencies:
        problems.append(f"agencies: the operator unit {OPERATOR_UNIT!r} is missing")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return Directory(agencies, districts, topics)
