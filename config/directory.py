"""The agency directory: agencies, districts (with every alias and ward) and topics, loaded from data.

Routing rules are data an administrator edits (Art. 11.6, 17.3), never code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import ConfigError

BUNDLED = Path(__file__).with_name("data") / "agencies.json"
OPERATOR_UNIT = "van-hanh-1022"


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
class Topic:
    id: str
    category: str
    agency: str | None  # an agency id, "district" for district-scoped topics, None when refused
    description_vi: str
    description_en: str


@dataclass(frozen=True, slots=True)
class Directory:
    agencies: dict[str, Agency]
    districts: dict[str, District]
    topics: dict[str, Topic]

    def agency_for(self, topic_id: str, district: str | None) -> str | None:
        """The responsible agency for a topic at a place (Art. 6), or None for refused topics."""
        topic = self.topics[topic_id]
        if topic.agency != "district":
            return topic.agency
        if district is None:
            return OPERATOR_UNIT
        agency = f"ubnd-{district}"
        return agency if agency in self.agencies else OPERATOR_UNIT


def load_directory(path: Path | None = None) -> Directory:
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
