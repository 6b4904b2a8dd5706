"""Routing rules (Art. 6) and screening (Art. 1.1.c, 3.6): pure policy."""
from __future__ import annotations

import pytest

from classifier.routing.policy import complaint_terms_in, decide, operator_decision
from classifier.routing.screening import Screening, screen
from config.directory import load_directory
from ingest.records import Place


@pytest.fixture(scope="module")
def directory():
    return load_directory()


def one_hot(directory, topic, p=0.95):
    classes = sorted(directory.topics)
    rest = (1 - p) / (len(classes) - 1)
    return classes, [p if c == topic else rest for c in classes]


def test_district_topic_goes_to_the_district_committee(directory):
    c = decide(directory, *one_hot(directory, "waste"), Place(district="go-vap"), review_threshold=0.6)
    assert (c.status, c.agency) == ("routed", "ubnd-go-vap")


def test_district_topic_without_district_goes_to_operator_unit(directory):
    c = decide(directory, *one_hot(directory, "noise"), Place(), review_threshold=0.6)
    assert c.agency == "van-hanh-1022"


def test_suggestion_and_directive_go_to_city_office(directory):
    for topic in ("suggestion", "directive_delay"):
        assert decide(directory, *one_hot(directory, topic), Place(district="quan-1"),
                      review_threshold=0.6).agency == "vp-ubnd"


def test_low_confidence_goes_to_review_with_best_guess(directory):
    c = decide(directory, *one_hot(directory, "drainage", 0.4), Place(), review_threshold=0.6)
    assert c.status == "review" and c.agency == "thoat-nuoc" and c.candidates[0].topic == "drainage"


def test_topics_sharing_an_agency_add_up(directory):
    classes = sorted(directory.topics)
    probs = [0.4 if c in ("public_order", "traffic_order") else 0.2 / (len(classes) - 2) for c in classes]
    c = decide(directory, classes, probs, Place(), review_threshold=0.6)
    assert c.status == "routed" and c.agency == "cong-an-tp" and c.confidence >= 0.8


def test_complaint_is_out_of_scope_with_guidance(directory):
    c = decide(directory, *one_hot(directory, "complaint_denunciation"), Place(), review_threshold=0.6)
    assert c.status == "out_of_scope" and c.agency is None and "Ban Tiếp công dân" in (c.reason or "")


def test_abusive_text_is_rejected_even_when_it_reports_a_real_problem(directory):
    text = "đường trước nhà tao ổ gà cả năm đụ má tụi bây ăn lương của dân"
    assert screen(text).certain
    c = decide(directory, *one_hot(directory, "road_damage"), Place(district="quan-8"), review_threshold=0.6,
               screening=screen(text))
    assert c.status == "rejected" and c.agency is None and "Điều 3.6" in (c.reason or "")


@pytest.mark.parametrize("text", [
    "ống nước bể rồi nước phun lên cao cả thước",
    "cống trong hẻm nghẹt rồi nước thải đen thui",
    "Xe container chạy giờ cấm trên đường Nguyễn Văn Linh",
])
def test_ordinary_reports_are_not_screened_out(text):
    assert screen(text) == Screening()


def test_operator_decision_reroutes_and_rejects(directory):
    prev = decide(directory, *one_hot(directory, "waste", 0.3), Place(district="quan-3"), review_threshold=0.6)
    routed = operator_decision(directory, prev, topic="drainage")
    assert (routed.status, routed.agency) == ("routed", "thoat-nuoc")
    rejected = operator_decision(directory, prev, reject="out_of_scope")
    assert rejected.status == "out_of_scope" and rejected.agency is None
    with pytest.raises(ValueError):
        operator_decision(directory, prev, agency="no-such-agency")


@pytest.mark.parametrize("text", [
    "Tôi muốn tố cáo cán bộ địa chính phường làm sai hồ sơ",
    "toi khieu nai quyet dinh xu phat cua phuong",
    "minh muon to cao to truong thu tien sai",
    "Appeal against a traffic camera fine",
])
def test_complaint_phrases_are_screened(text):
    assert complaint_terms_in(text)


@pytest.mark.parametrize("text", [
    "Cây dầu to cao trước nhà nghiêng hẳn ra đường",  # "to cao" = big and tall, written with diacritics
    "ống nước bể rồi nước phun lên cao cả thước",
    "I want to complain about the noise from the bar",
])
def test_ordinary_reports_are_not_complaints(text):
    assert complaint_terms_in(text) == []


def test_complaint_phrase_is_never_dispatched(directory):
    # The model agrees enough: refused with guidance.
    classes = sorted(directory.topics)
    probs = [0.6 if c == "education" else 0.3 if c == "complaint_denunciation" else 0.1 / (len(classes) - 2)
             for c in classes]
    c = decide(directory, classes, probs, Place(district="quan-6"), review_threshold=0.6, complaint=True)
    assert c.status == "out_of_scope" and c.agency is None and "Ban Tiếp công dân" in (c.reason or "")
    # "I complained to the ward, the pipe is still broken": the model sees a water report; an operator decides.
    c = decide(directory, *one_hot(directory, "water_supply"), Place(district="quan-6"), review_threshold=0.6,
               complaint=True)
    assert c.status == "review" and c.topic == "complaint_denunciation" and c.agency is None
    assert c.candidates[0].topic == "water_supply"
