"""Place from every source a report carries: text, GPS, and the reporter's registered address."""
from __future__ import annotations

import pytest

from classifier.routing.locate import locate, points_at
from classifier.routing.place import load_gazetteer
from classifier.routing.policy import decide
from config.directory import load_directory

HOME = "27/8 Bình Tiên, P.7, Q.6"


@pytest.fixture(scope="module")
def directory():
    return load_directory()


@pytest.fixture(scope="module")
def gazetteer(directory):
    return load_gazetteer(directory)


def test_registered_address_is_the_place_when_the_text_says_so(directory, gazetteer):
    text = "Đèn đường trong hẻm tắt cả tuần nay, tối om, địa chỉ nhà tôi như đã đăng ký"
    place = locate(text, gazetteer, reporter_address=HOME)
    assert (place.district, place.source, place.house_number) == ("quan-6", "reporter_address", "27/8")
    classes = sorted(directory.topics)
    c = decide(directory, classes, [0.97 if t == "street_lighting" else 0.001 for t in classes], place,
               review_threshold=0.9)
    assert c.agency == "chieu-sang" and c.place.source == "reporter_address"
    waste = decide(directory, classes, [0.97 if t == "waste" else 0.001 for t in classes], place,
                   review_threshold=0.9)
    assert waste.agency == "ubnd-quan-6"  # the district, not the operator unit
    # Said explicitly, the registered address is believed over where the phone happened to be.
    at_work = locate(text, gazetteer, reporter_address=HOME, lat=10.7769, lon=106.7009)  # District 1
    assert (at_work.district, at_work.source) == ("quan-6", "reporter_address")


@pytest.mark.parametrize("text", [
    "rác không ai lấy mấy ngày rồi, hôi quá",  # names no place
    "rac truoc nha toi 3 ngay chua ai hot",  # points at home, typed without diacritics
    "cái cống trước nhà nghẹt, đường Tân Hòa Đông chỗ gần chợ",  # a street in no single district, plus home
])
def test_home_or_no_place_falls_back_to_the_reporter_address(gazetteer, text):
    place = locate(text, gazetteer, reporter_address=HOME)
    assert (place.district, place.source) == ("quan-6", "reporter_address")


def test_text_and_gps_keep_their_precedence(gazetteer):
    named = locate("ổ gà trước nhà tôi trên đường Lê Văn Việt, TP Thủ Đức", gazetteer, reporter_address=HOME)
    assert (named.district, named.source) == ("thu-duc", "text")
    gps = locate("đèn đường khu này tắt hết", gazetteer, reporter_address=HOME, lat=10.7769, lon=106.7009)
    assert (gps.district, gps.source) == ("quan-1", "gps")
    # A place named but not pinned to a district, not the reporter's home: not the reporter's district.
    elsewhere = locate("kẹt xe ở đường Nguyễn Văn Linh", gazetteer, reporter_address=HOME)
    assert elsewhere.source != "reporter_address"


def test_nowhere_is_nowhere(gazetteer):
    assert locate("rác không ai lấy", gazetteer).district is None
    assert locate("rác không ai lấy", gazetteer, reporter_address="nhà riêng").district is None


@pytest.mark.parametrize("text, kind", [
    ("địa chỉ nhà tôi như đã đăng ký", "registered"),
    ("dia chi nhu da dang ky tren app", "registered"),
    ("cây ngã trước nhà", "home"),
    ("hẻm nhà em ngập", "home"),
    ("đèn đường hư ở ngã tư", None),
])
def test_pointers_at_home(text, kind):
    assert points_at(text) == kind


def test_a_place_from_the_reporters_address_is_never_public(directory, gazetteer):
    from ingest.public import public_address
    from ingest.records import Classification, to_json

    def shown(place):
        return public_address(to_json(Classification(status="routed", topic="waste", category="civic",
                                                     agency="ubnd-quan-6", confidence=1.0, place=place)), directory)

    home = locate("rác trước nhà tôi không ai lấy", gazetteer, reporter_address=HOME)
    assert home.source == "reporter_address" and shown(home) is None
    named = locate("rác ở đường Bình Tiên quận 6 không ai lấy", gazetteer, reporter_address=HOME)
    assert named.source == "text" and "Quận 6" in (shown(named) or "")
