"""The 2025 map: reports written as people write (old addresses, new names, both, split wards, former provinces,
with and without diacritics, chat style, GPS) find their new unit, or go to review with the right candidates.

The corpora are test data only (tests/classifier/data/), never training data: `places-2025-reports.jsonl`
(generated once by make_places_2025.py from the Resolution's mapping and a set of writing styles) and
`places-2025-handwritten.jsonl` (written by hand). Each figure printed is also in README ("The 2025 map")."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from classifier.routing.place import load_gazetteer
from classifier.routing.policy import decide
from classifier.routing.wards2025 import UnitMatch, WardMap, load_ward_map, resolve_unit, short_name
from config.directory import OPERATOR_UNIT, load_directory
from ingest.addresses import find_place
from ingest.records import Place

DATA = Path(__file__).with_name("data")
CORPORA = ("places-2025-reports.jsonl", "places-2025-handwritten.jsonl")


@pytest.fixture(scope="module")
def directory_2023():
    return load_directory()


@pytest.fixture(scope="module")
def gaz(directory_2023):
    return load_gazetteer(directory_2023)


@pytest.fixture(scope="module")
def wmap(directory_2023, gaz) -> WardMap:
    return load_ward_map({k: d.name_vi for k, d in directory_2023.districts.items()},
                         street_names=tuple(dict.fromkeys(s for _, s, _ in gaz.streets)))


def _resolve(text: str, gaz, wmap: WardMap, lat=None, lon=None) -> UnitMatch:
    return resolve_unit(text, wmap, find_place(text, gaz, lat=lat, lon=lon))


def _outcome(match: UnitMatch, expected: dict) -> str:
    """right: the expected unit, or review with every expected candidate offered; review: a person decides;
    wrong: another unit, or a unit where the words could not decide, or nothing where a place was named."""
    if "unit" in expected:
        if match.unit == expected["unit"]:
            return "right"
        return "review" if match.unit is None and match.candidates else "wrong"
    if "review" in expected:
        ok = match.unit is None and set(expected["review"]) <= set(match.candidates)
        return "right" if ok else ("review" if match.unit is None and match.candidates else "wrong")
    return "right" if match.unit is None and not match.candidates else "wrong"


@pytest.mark.parametrize("corpus", CORPORA)
def test_reports_as_people_write_find_their_unit(corpus, gaz, wmap, capsys):
    rows = [json.loads(line) for line in (DATA / corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
    outcomes: Counter[str] = Counter()
    wrong = []
    routed = review = 0
    for row in rows:
        match = _resolve(row["text"], gaz, wmap, row.get("lat"), row.get("lon"))
        result = _outcome(match, row["expected"])
        outcomes[result] += 1
        routed += match.unit is not None
        review += match.unit is None and bool(match.candidates)
        if result == "wrong":
            wrong.append((row["id"], row["text"], row["expected"], match.unit, match.candidates[:4]))
    n = len(rows)
    with capsys.disabled():
        print(f"\n{corpus}: {n} reports; to one unit {routed} ({routed / n:.1%}), to review {review} "
              f"({review / n:.1%}); outcome right {outcomes['right']}, review where one unit was expected "
              f"{outcomes['review']}, wrong {outcomes['wrong']}")
    assert outcomes["wrong"] <= n * 0.02, wrong
    assert outcomes["right"] >= n * 0.95, outcomes


def test_corpus_covers_the_required_styles():
    rows = [json.loads(line) for c in CORPORA for line in (DATA / c).read_text(encoding="utf-8").splitlines()]
    styles = Counter(part for r in rows for part in r["style"].split("/"))
    assert len(rows) >= 300
    for style in ("old-numbered", "old-named", "new", "mixed", "split", "former-province", "no-diacritics",
                  "old-district-alone", "former-town-alone", "chat"):
        assert styles[style] >= 2, style
    assert sum("lat" in r for r in rows) >= 4  # GPS in the former provinces and in former TP.HCM


def test_split_old_ward_names_the_candidates_and_a_new_name_picks_one(gaz, wmap):
    alone = _resolve("phường 4 quận 3 có ổ gà", gaz, wmap)
    assert alone.unit is None and set(alone.candidates) == {"ban-co", "xuan-hoa"}
    pinned = _resolve("phường 4 quận 3 (nay là phường Xuân Hòa) có ổ gà", gaz, wmap)
    assert pinned.unit == "xuan-hoa" and pinned.old_ward == "Phường 4" and pinned.old_district == "Quận 3"


def test_an_old_ward_that_kept_its_name_is_the_old_ward_when_its_district_is_named(gaz, wmap):
    # Phường Cầu Ông Lãnh (Quận 1) was split between the new Bến Thành and the new Cầu Ông Lãnh.
    assert _resolve("Phường Cầu Ông Lãnh, Quận 1 ngập", gaz, wmap).candidates == ("ben-thanh", "cau-ong-lanh")
    assert _resolve("phường Cầu Ông Lãnh ngập", gaz, wmap).unit == "cau-ong-lanh"


def test_former_provinces_with_and_without_diacritics(gaz, wmap):
    for text in ("phường 10 TP Vũng Tàu ngập", "p10 vung tau ngap"):
        assert _resolve(text, gaz, wmap).unit == "rach-dua"
    town = _resolve("di an ngap", gaz, wmap)
    assert town.unit is None and set(town.candidates) == {"di-an", "dong-hoa", "tan-dong-hiep"}
    # "Bà Rịa - Vũng Tàu" is the province, not the city of Vũng Tàu.
    assert _resolve("tỉnh Bà Rịa - Vũng Tàu", gaz, wmap) == UnitMatch()


def test_gps_in_a_former_province_gives_its_district_units(gaz, wmap):
    match = _resolve("trụ điện nghiêng", gaz, wmap, lat=10.9804, lon=106.6519)  # Thủ Dầu Một
    assert match.source == "gps" and "thu-dau-mot" in match.candidates and match.unit is None
    assert _resolve("cúp điện", gaz, wmap, lat=8.683, lon=106.609).unit == "con-dao"


def test_labels_show_the_new_unit_with_the_old_name_beside_it(gaz, wmap):
    assert wmap.label(_resolve("P.7, Q.6 ổ gà", gaz, wmap)) == "Phường Bình Tiên (P.7, Q.6 cũ)"
    assert wmap.label(_resolve("phuong binh tien o ga", gaz, wmap)) == "Phường Bình Tiên (Q.6 cũ)"
    assert wmap.label(_resolve("phường Tân Định Q1 cây đổ", gaz, wmap)) == "Phường Tân Định"
    assert wmap.label(UnitMatch(candidates=("di-an",))) is None
    assert short_name("Thành phố Thủ Đức") == "TP Thủ Đức" and short_name("Phường Bến Nghé") == "P. Bến Nghé"


def test_the_2025_directory(directory_2023):
    d = load_directory(None, "2025")
    assert d.structure == "2025" and len(d.units) == 168
    committees = [a for a in d.agencies.values() if a.kind == "ward"]
    assert len(committees) == 168 and d.agencies["ubnd-binh-tien"].name_vi == "Ủy ban nhân dân Phường Bình Tiên"
    assert not [a for a in d.agencies.values() if a.kind == "district"]  # no district committees since 1 July 2025
    # Merged departments replace their predecessors; topics follow them.
    assert "so-gtvt" not in d.agencies and d.topics["public_transport"].agency == "so-xay-dung"
    assert d.topics["pollution"].agency == "so-nn-mt" and d.topics["telecom_cable"].agency == "so-khcn"
    assert d.agency_for("waste", "quan-6", "binh-tien") == "ubnd-binh-tien"
    assert d.agency_for("waste", "quan-6", None) == OPERATOR_UNIT
    assert d.agency_for("waste", None, "no-such-unit") == OPERATOR_UNIT
    # The 2023 map is unchanged and ignores the unit.
    assert directory_2023.agency_for("waste", "quan-6", "binh-tien") == "ubnd-quan-6"
    assert directory_2023.topics["public_transport"].agency == "so-gtvt"


def test_undecided_unit_goes_to_review_on_the_2025_map():
    d = load_directory(None, "2025")
    classes = list(d.topics)
    probs = [1.0 if t == "waste" else 0.0 for t in classes]
    undecided = Place(district="quan-6", unit_candidates=("binh-tien", "binh-tay"))
    c = decide(d, classes, probs, undecided, review_threshold=0.5, safety=0.99)
    assert c.status == "review" and c.agency == OPERATOR_UNIT
    known = decide(d, classes, probs, Place(district="quan-6", unit="binh-tien"), review_threshold=0.5, safety=0.99)
    assert known.status == "routed" and known.agency == "ubnd-binh-tien"
    # A city-wide topic does not need the unit.
    city = [1.0 if t == "water_supply" else 0.0 for t in classes]
    assert decide(d, classes, city, undecided, review_threshold=0.5, safety=0.99).status == "routed"
    # No place at all: the operator unit, as on the 2023 map (Art. 6).
    none = decide(d, classes, probs, Place(), review_threshold=0.5, safety=0.99)
    assert none.status == "routed" and none.agency == OPERATOR_UNIT


def test_structure_is_checked_at_start_and_settable_from_the_environment():
    from config.loader import validate
    from ingest.errors import ConfigError

    assert validate({}, {}).data.structure == "2023"  # the regulation's map stays the default
    assert validate({"data": {"structure": "2025"}}, {}).data.structure == "2025"
    assert validate({}, {"HCMC1022__DATA__STRUCTURE": "2025"}).data.structure == "2025"
    with pytest.raises(ConfigError, match="data.structure"):
        validate({"data": {"structure": "2024"}}, {})
