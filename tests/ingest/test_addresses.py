"""The base's address reader: the pieces the classifier, dedupe and the chat channels all read the same way."""
from __future__ import annotations

import pytest

from ingest.addresses import address_words, house_number, mentions_place, read_spoken_number, ward_number


@pytest.mark.parametrize("words, value, rest", [
    ("muoi", 10, 1), ("muoi ba", 13, 2), ("hai muoi hai", 22, 3), ("bay muoi", 70, 2), ("ba hem", 3, 1),
])
def test_spoken_numbers(words: str, value: int, rest: int) -> None:
    assert read_spoken_number(words.split(), 0) == (value, rest)


def test_a_reader_may_add_its_own_spoken_digits() -> None:
    with pytest.raises(KeyError):
        read_spoken_number(["tu"], 0)
    assert read_spoken_number(["tu"], 0, {"tu": "4"}) == (4, 1)


@pytest.mark.parametrize("text, number", [
    ("Phường 7, Quận 6", "7"), ("P.07 q6", "7"), ("phường mười ba quận tư", "13"), ("phường muoi lam", "15"),
    ("đường Phường Bình Tiên", None),
])
def test_numbered_wards(text: str, number: str | None) -> None:
    assert ward_number(address_words(text)) == number


def test_house_and_alley_numbers() -> None:
    assert house_number(address_words("vỡ ống trước nhà 83/16/4 Ba Tháng Hai"), "ba thang hai") == "83/16/4"
    assert house_number(address_words("karaoke ồn trong hẻm 280 Quang Trung"), None) == "hem 280"
    assert house_number(address_words("số nhà 12B"), None) == "12b"
    assert house_number(address_words("cây đổ"), None) is None


@pytest.mark.parametrize("text, expected", [
    ("Ống nước vỡ trước nhà 83/16/4 Nguyễn Văn Linh", True),
    ("Ngập nước khu vực P.15", True),
    ("Rác ở đường Lê Văn Sỹ", True),
    ("Có người đổ trộm xà bần ra lề đường ban đêm", False),
    ("Quán ăn lấn chiếm vỉa hè", False),
])
def test_whether_words_name_a_place(text: str, expected: bool) -> None:
    assert mentions_place(text) is expected


def test_district_names_come_from_the_directory() -> None:
    from config.directory import load_directory
    from ingest.addresses import district_names

    names = district_names(load_directory())
    assert {"binh thanh", "thu duc", "go vap", "can gio"} <= names and not any(n.isdigit() for n in names)
    assert mentions_place("Ngập nặng ở Gò Vấp") is True
    # Another directory, other names: nothing is written in code.
    assert mentions_place("Ngập nặng ở Gò Vấp", districts=frozenset({"thu duc"})) is False
