"""The matching policy on the positives and hard negatives the regulation's examples call for."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import datetime

import numpy as np
import pytest

from dedupe import policy
from dedupe.policy import ReportView
from dedupe.text import extract, tokenize
from ingest.records import Place

from ..conftest import DEV_REPORTS

HOUR = 3600.0
T0 = datetime.fromisoformat("2026-10-05T08:00:00+07:00").timestamp()


@pytest.fixture(scope="module")
def background() -> Counter[str]:
    """Document frequencies over the 700 dev reports: what 'a rare word' means in a real window."""
    df: Counter[str] = Counter()
    with DEV_REPORTS.open(encoding="utf-8") as f:
        for line in f:
            df.update(extract(json.loads(line)["text"]).grams)
    return df


def _vectors(cosine: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros(8, np.float32)
    a[0] = 1.0
    b = np.zeros(8, np.float32)
    b[0], b[1] = cosine, np.sqrt(1 - cosine**2)
    return a, b


def _pair(text_a: str, text_b: str, *, topic_a: str, topic_b: str | None = None, district: str | None = "quan-5",
          district_b: str | None = "same", gap_hours: float = 1.0, cosine: float = 0.86,
          gps_a: tuple[float, float] | None = None, gps_b: tuple[float, float] | None = None,
          street_a: str | None = None, street_b: str | None = None) -> tuple[ReportView, ReportView]:
    va, vb = _vectors(cosine)
    old = ReportView(report_id=1, received_at=T0, topic=topic_a, district=district, text=extract(text_a),
                     place=Place(lat=gps_a[0] if gps_a else None, lon=gps_a[1] if gps_a else None, street=street_a),
                     vector=va)
    new = ReportView(report_id=2, received_at=T0 + gap_hours * HOUR, topic=topic_b or topic_a,
                     district=district if district_b == "same" else district_b, text=extract(text_b),
                     place=Place(lat=gps_b[0] if gps_b else None, lon=gps_b[1] if gps_b else None, street=street_b),
                     vector=vb)
    return new, old


def _decide(background: Counter[str], new: ReportView, old: ReportView) -> policy.Match:
    pair_df = background + Counter(old.all_grams()) + Counter(new.all_grams())
    rarity = policy.rarity_from(lambda g: pair_df.get(g, 0), 702)
    return policy.decide(new, [(old, "INC-000001")], rarity)


def test_same_sinkhole_told_by_a_caller_and_in_chat_shorthand_is_one_incident(background: Counter[str]) -> None:
    new, old = _pair(
        "alo em muốn báo chỗ đường an dương vương ngay ngã tư nguyễn tri phương quận năm có cái hố sụt to lắm",
        "ad oi ngay nga tu ADV - Nguyen Tri Phuong co cai ho bu cha ba 😱 sang nay thay 2 ng te roi",
        topic_a="road_damage", gap_hours=0.9)
    match = _decide(background, new, old)
    assert match.incident_id == "INC-000001", match


def test_fallen_tree_that_cut_power_lines_is_one_incident_across_two_topics(background: Counter[str]) -> None:
    new, old = _pair(
        "Cây lớn bật gốc ngã đổ trên đường Quốc Hương (Thảo Điền), đè lên dây điện, chắn nửa đường.",
        "Cay do de dut day dien tren duong Quoc Huong (Thao Dien), ca khu bi mat dien tu 4h chieu.",
        topic_a="trees", topic_b="electricity", district="thu-duc", gap_hours=0.1)
    assert _decide(background, new, old).incident_id == "INC-000001"


def test_same_problem_on_another_street_stays_apart(background: Counter[str]) -> None:
    a = "Đường Nguyễn Hữu Cảnh ngập sâu khoảng 40cm sau cơn mưa chiều, nhiều xe chết máy."
    b = "Đường Xô Viết Nghệ Tĩnh đoạn chợ Thị Nghè ngập sâu sau cơn mưa, nhiều xe chết máy."
    new, old = _pair(a, b, topic_a="drainage", district="binh-thanh", gap_hours=0.5, cosine=0.93,
                     street_a="nguyen huu canh", street_b="xo viet nghe tinh")
    assert _decide(background, new, old).incident_id is None
    assert policy.hard_negative(new, old, policy.evidence(new, old, lambda g: 1.0)) == "different_street"
    # Without the classifier's streets, the street names read from the texts still count against the pair.
    new, old = _pair(a, "Đường Xô Viết Nghệ Tĩnh đoạn chợ Thị Nghè nước ngập tới bánh xe, cống không thoát kịp",
                     topic_a="drainage", district="binh-thanh", gap_hours=0.5, cosine=0.9)
    assert policy.evidence(new, old, lambda g: 1.0).street_conflict
    assert _decide(background, new, old).incident_id is None


def test_an_intersection_report_joins_reports_from_either_street(background: Counter[str]) -> None:
    new, old = _pair(
        "Đèn tín hiệu giao lộ CMT8 - Điện Biên Phủ chỉ chớp vàng, kẹt xe mọi hướng.",
        "Ngã tư CMT8 - ĐBP đèn hư rồi ae ơi, kẹt cứng ngắc",
        topic_a="traffic_signal", district="quan-3", gap_hours=0.3,
        street_a="cach mang thang tam", street_b="dien bien phu")
    assert _decide(background, new, old).incident_id == "INC-000001"


def test_two_km_along_the_same_long_street_stays_apart(background: Counter[str]) -> None:
    new, old = _pair(
        "Nhiều ổ gà trên đường Nguyễn Văn Linh, xe máy té liên tục.",
        "Ổ gà lớn trên đường Nguyễn Văn Linh, xe máy té liên tục.",
        topic_a="road_damage", district="quan-7", gap_hours=0.5, cosine=0.95,
        gps_a=(10.7290, 106.7180), gps_b=(10.7290, 106.6997))  # ~2 km west along the road
    match = _decide(background, new, old)
    assert match.incident_id is None
    ev = policy.evidence(new, old, lambda g: 1.0)
    assert ev.distance_km is not None and 1.8 < ev.distance_km < 2.2
    assert policy.hard_negative(new, old, ev) == "too_far_apart_on_map"


def test_same_street_with_another_problem_stays_apart(background: Counter[str]) -> None:
    new, old = _pair(
        "Đường Phạm Thế Hiển gần chợ Phạm Thế Hiển mặt đường lún thành rãnh dài, xe máy dằn mạnh.",
        "Đường Phạm Thế Hiển gần chợ Phạm Thế Hiển đèn đường tắt hết, tối om.",
        topic_a="road_damage", topic_b="street_lighting", district="quan-8", gap_hours=2.0, cosine=0.88)
    assert _decide(background, new, old).incident_id is None


def test_same_place_and_problem_eleven_days_later_is_a_new_incident(background: Counter[str]) -> None:
    text = "Nguyễn Hữu Cảnh đoạn gần Landmark 81 ngập 30cm, xe chết máy nhiều"
    new, old = _pair(text, text, topic_a="drainage", district="binh-thanh", gap_hours=11 * 24, cosine=0.99)
    ev = policy.evidence(new, old, lambda g: 1.0)
    assert policy.hard_negative(new, old, ev) == "too_far_apart_in_time"
    assert _decide(background, new, old).incident_id is None
    # The same text an hour later is the same flood.
    new, old = _pair(text, text, topic_a="drainage", district="binh-thanh", gap_hours=1, cosine=0.99)
    assert _decide(background, new, old).incident_id == "INC-000001"


def test_abusive_messages_are_never_grouped(background: Counter[str]) -> None:
    text = "dm cai tong dai 1022 bao ca chuc lan ko thang nao xuong"
    new, old = _pair(text, text, topic_a="abusive", district=None, gap_hours=0.1, cosine=1.0)
    assert _decide(background, new, old).incident_id is None


def test_decide_joins_the_incident_of_the_most_likely_report(background: Counter[str]) -> None:
    new, near = _pair(
        "Cây đổ chắn ngang Võ Văn Tần đoạn Trương Định, các bác né đường này.",
        "Cay me do chan ngang duong Vo Van Tan Q3 gan Truong Dinh, chua thay ai xu ly",
        topic_a="trees", district="quan-3", gap_hours=0.5)
    far = ReportView(report_id=3, received_at=near.received_at, topic="trees", district="quan-3",
                     text=extract("Nhánh cây gãy rơi xuống đường Nam Kỳ Khởi Nghĩa gần Hồ Con Rùa"),
                     vector=near.vector)
    df = background + Counter(near.all_grams()) + Counter(new.all_grams()) + Counter(far.all_grams())
    rarity = policy.rarity_from(lambda g: df.get(g, 0), 703)
    match = policy.decide(new, [(far, "INC-000009"), (near, "INC-000002")], rarity)
    assert (match.incident_id, match.matched_report) == ("INC-000002", 1)


def test_spoken_district_and_abbreviations_fold_to_the_same_tokens() -> None:
    assert tokenize("đường 3/2 quận mười") == ["duong", "ba", "thang", "hai", "quan", "10"]
    assert tokenize("Ngã tư CMT8 - ĐBP, P13 Q3") == ["nga", "tu", "cach", "mang", "thang", "tam", "|", "dien", "bien",
                                                    "phu", "|", "phuong", "13", "quan", "3"]
    assert extract("Ngã tư CMT8 x ĐBP").streets == (("cach", "mang", "thang", "tam"), ("dien", "bien", "phu"))
    assert extract("Hẻm 25 đường số 17, nhà 83/16/4").numbers == {"hem 25", "so 17", "83/16/4"}


def test_a_topic_the_classifier_found_nearly_as_likely_lets_two_topics_group(background: Counter[str]) -> None:
    # Rubbish dumped on the pavement: the classifier hesitated between encroachment and waste for the first
    # report and said waste for the second. Without the alternative the topics are unrelated and stay apart.
    text_a = "Vỉa hè đường Lê Văn Sỹ trước số 212 bị đổ rác thành đống lớn, người đi bộ phải xuống lòng đường."
    text_b = "Đống rác to trên vỉa hè Lê Văn Sỹ trước nhà 212, bốc mùi, lấn hết lối đi."
    new, old = _pair(text_a, text_b, topic_a="sidewalk_encroachment", topic_b="waste", district="quan-3",
                     gap_hours=0.5, cosine=0.9)
    ev = policy.evidence(new, old, lambda g: 1.0)
    assert policy.hard_negative(new, old, ev) == "unrelated_topic"
    alts = policy.alt_topics_of("sidewalk_encroachment", [("sidewalk_encroachment", 0.48), ("waste", 0.41),
                                                          ("traffic_order", 0.05)])
    assert alts == {"waste"}
    hesitant = dataclasses.replace(old, alt_topics=alts)
    assert policy.hard_negative(new, hesitant, policy.evidence(new, hesitant, lambda g: 1.0)) is None
    assert _decide(background, new, hesitant).incident_id == "INC-000001"
    # The "same topic" evidence still compares the top topics: the alternative only lifts the hard negative.
    assert not policy.evidence(new, hesitant, lambda g: 1.0).same_topic
    # A confident classification keeps one topic, and an alternative unrelated to the other report's topics
    # changes nothing: noise next to encroachment/traffic stays apart.
    assert policy.alt_topics_of("waste", [("waste", 0.9), ("sidewalk_encroachment", 0.06)]) == frozenset()
    noisy = dataclasses.replace(new, topic="noise")
    other = dataclasses.replace(old, alt_topics=frozenset({"traffic_order"}))
    assert policy.hard_negative(noisy, other, policy.evidence(noisy, other, lambda g: 1.0)) == "unrelated_topic"
    # The search scope follows: a waste report searches the encroachment block once a report there may be waste.
    known = frozenset({"waste", "sidewalk_encroachment", "noise"})
    assert "sidewalk_encroachment" not in policy.groupable_topics("waste", known)
    assert "sidewalk_encroachment" in policy.groupable_topics(
        "waste", known, block_alts={"sidewalk_encroachment": {"waste"}})
    assert "noise" not in policy.groupable_topics("waste", known, block_alts={"sidewalk_encroachment": {"waste"}})
