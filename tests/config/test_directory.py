"""The agency directory is data: the bundled file loads, broken files are refused with what is wrong."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.directory import BUNDLED, OPERATOR_UNIT, load_directory
from ingest.errors import ConfigError


def _data() -> dict:
    return json.loads(BUNDLED.read_text(encoding="utf-8"))


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "agencies.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_bundled_directory_loads_with_topics_districts_and_routing() -> None:
    d = load_directory(None)
    assert OPERATOR_UNIT in d.agencies
    assert "quan-10" in d.districts and "binh-chanh" in d.districts
    assert d.agency_for("drainage", "quan-10") == "thoat-nuoc"
    district_topics = [t.id for t in d.topics.values() if t.agency == "district"]
    assert district_topics
    # A district-scoped topic goes to that district's people's committee, or to operators with no place known.
    assert d.agency_for(district_topics[0], "quan-10") == "ubnd-quan-10"
    assert d.agency_for(district_topics[0], None) == OPERATOR_UNIT


def test_a_topic_with_an_unknown_agency_is_refused(tmp_path: Path) -> None:
    data = _data()
    data["topics"][0]["agency"] = "so-khong-ton-tai"
    with pytest.raises(ConfigError, match=rf"topics\.{data['topics'][0]['id']}\.agency: unknown agency"):
        load_directory(_write(tmp_path, data))


def test_all_problems_are_listed_together(tmp_path: Path) -> None:
    data = _data()
    data["topics"][0]["agency"] = "nobody"
    district_agency = next(a for a in data["agencies"] if a.get("district"))
    district_agency["district"] = "quan-99"
    data["agencies"] = [a for a in data["agencies"] if a["id"] != OPERATOR_UNIT]
    with pytest.raises(ConfigError) as exc:
        load_directory(_write(tmp_path, data))
    message = str(exc.value)
    assert "unknown agency 'nobody'" in message
    assert "unknown district 'quan-99'" in message
    assert OPERATOR_UNIT in message


@pytest.mark.parametrize("content", ["{not json", "[]", '{"agencies": []}', '{"agencies": [{"id": "x"}], '
                                     '"districts": [], "topics": []}'])
def test_unreadable_directory_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "agencies.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match="agency directory unreadable"):
        load_directory(path)


def test_missing_directory_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unreadable"):
        load_directory(tmp_path / "absent.json")
