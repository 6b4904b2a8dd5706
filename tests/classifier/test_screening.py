"""Screening evidence (Art. 3.6): words are read as written, and an ambiguous folded word is never a verdict."""
from __future__ import annotations

from pathlib import Path

import pytest

from classifier.routing.policy import decide
from classifier.routing.screening import Screening, screen
from classifier.training.trainer import load_seed, load_synthetic
from config.directory import load_directory
from ingest.records import Place

CORPUS = Path(__file__).with_name("corpus")


@pytest.fixture(scope="module")
def directory():
    return load_directory()


def confident(directory, topic, p=0.97):
    classes = sorted(directory.topics)
    rest = (1 - p) / (len(classes) - 1)
    return classes, [p if c == topic else rest for c in classes]


@pytest.mark.parametrize("text", [
    "Nhiều người bán hàng không đeo khẩu trang",  # đeo, not đéo
    "mưa xong nước ngập tới đít xe máy",  # đít, not địt
    "mặt đường bị xe ben đập nát",
    "cc Bàu Cát 2 bị cúp nước",  # chung cư followed by its name
    "ko deo khau trang, ko deo bao tay",  # folded, but in its ordinary phrase
    "có con chó chết nằm giữa đường",
    "*lưu ý*: đèn đường hư",  # asterisks for emphasis are no mask
    "*cc Bàu Cát* bị cúp nước",
    "C.C Bàu Cát bị cúp nước",  # letters apart: an abbreviation, not a spelled-out swear word
    "U.B.N.D phường 5 chậm trả hồ sơ",
    "T.P.HCM ngập khắp nơi, Q.1 và P.Tân Định",
    "vỏ lon bia vứt đầy hẻm 12-A",
    "hố sâu 5 d.m giữa đường",  # a unit after a number, spelled or not
    "khu d.u lịch sinh thái bị xả rác",  # two letters: left to the term lists, as plain words
])
def test_ordinary_words_are_no_evidence(text):
    assert screen(text) == Screening()


@pytest.mark.parametrize("text, word", [
    ("xe tải chở vl tới đổ", "vl"),
    ("nuoc len toi dit roi", "dit"),
    ("xe ben dap nat mat hem", "dap nat"),
    ("nuoc yeu qua khong du ma xai nua", None),  # ordinary phrase: nothing at all
    ("khu dat con hoang bi do rac", "con hoang"),  # còn hoang, typed without diacritics
    ("cô giáo chửi học sinh là đồ ngu", "đồ ngu"),  # quoted, not said to us
    ("da nhan DM cho fanpage", "DM"),  # an acronym in capitals
    ("*cc* bi cup nuoc", "*cc*"),  # emphasis, not a mask
    # Spelled out, a word is judged as the word itself (review of ad718ae: these were certain, so rejected):
    ("D.M bọn phường", "D.M"),  # capitals, as "DM"
    ("bảo vệ chửi d.i.t m.e rồi đánh tôi", "d.i.t m.e"),  # what someone else said to the reporter
    ("C.A.C", "C.A.C"),
])
def test_ambiguous_words_are_only_ambiguous(text, word):
    s = screen(text)
    assert s.certain == ()
    assert s.ambiguous == ((word,) if word else ())


@pytest.mark.parametrize("text", [
    "tụi mày đéo làm gì hết",
    "địt mẹ cái tổng đài",
    "dm cai tong dai 1022",
    "Đ** m** cái công trình",  # masked, so meant
    "đ* m* cái tổng đài",
    "useless f***ing idiots",
    "đồ chó má, tao đập nát cái văn phòng",
    "vcl den duong hu 2 tuan",
    # Spelled out letter by letter to slip past a filter (was: the model's doubt only, held for review).
    "d.i.t m.e bon quan lieu",
    "l-o-n, lam an kieu gi vay",
    "v.c.l cái phường này",
])
def test_unambiguous_words_are_certain(text):
    assert screen(text).certain


def test_policy_rejects_only_on_certain_evidence(directory):
    place = Place(district="tan-binh")
    ordinary = decide(directory, *confident(directory, "water_supply"), place, review_threshold=0.9,
                      screening=screen("cc o Bau Cat 2 bi cup nuoc tu sang"))
    assert (ordinary.status, ordinary.agency) == ("review", "sawaco")  # never rejected; an operator looks
    assert "«cc»" in (ordinary.note or "") and ordinary.reason is None
    abusive = decide(directory, *confident(directory, "water_supply"), place, review_threshold=0.9,
                     screening=screen("cúp nước hoài, đéo ai lo"))
    assert abusive.status == "rejected" and abusive.agency is None and abusive.reason
    # The model alone, sure enough, also rejects: the word it saw need not be on any list.
    model = decide(directory, *confident(directory, "abusive"), place, review_threshold=0.9,
                   screening=screen("cc Bau Cat 2, tui bay lam an nhu gi"))
    assert model.status == "rejected"
    clean = decide(directory, *confident(directory, "water_supply"), place, review_threshold=0.9,
                   screening=screen("cúp nước từ sáng"))
    assert clean.status == "routed" and clean.note is None


def test_the_test_corpora_are_never_training_data(tmp_path):
    for name in ("ordinary.jsonl", "abusive.jsonl"):
        with pytest.raises(ValueError, match="held-out"):
            load_seed(CORPUS / name)
    with pytest.raises(ValueError, match="held-out"):
        load_synthetic(CORPUS)


def test_the_model_rejects_alone_only_when_the_words_as_written_agree(directory):
    # "Khu cc ... không đeo rọ mõm": the folded lexical features read đeo as đéo; the as-written view does not.
    place = Place(district="quan-6")
    doubted = decide(directory, *confident(directory, "abusive"), place, review_threshold=0.9,
                     screening=screen("Khu cc An Phú có chó thả rông không đeo rọ mõm"), abusive_as_written=0.2)
    assert doubted.status == "review" and doubted.note
    agreed = decide(directory, *confident(directory, "abusive"), place, review_threshold=0.9,
                    screening=Screening(), abusive_as_written=0.9)
    assert agreed.status == "rejected" and agreed.reason


@pytest.mark.parametrize(("text", "excused"), [
    ("một lũ chó hoang sủa cả đêm ở hẻm 12", "lũ chó"),  # stray dogs, not officials
    ("vỉa hè đầy cứt chó", "cứt"),
    ("quán bán đồ ăn hại sức khỏe trước cổng trường", "đồ ăn hại"),  # unhealthy food
    ("người ta vứt đồ vô dụng ra lề đường", "đồ vô dụng"),  # useless things
])
def test_a_written_term_in_an_ordinary_phrase_is_only_ambiguous(text, excused):
    """Red team: each of these was `certain` (rejected) before."""
    s = screen(text)
    assert s.certain == () and excused in s.ambiguous and excused in s.excused


@pytest.mark.parametrize("text", ["hố sâu 5 dm giữa đường", "ho sau khoang 5 dm tren duong",
                                  "bon ngu dan danh ca bang xung dien", "mẹ bà Tư bị té ở vỉa hè"])
def test_units_fishermen_and_someones_mother_are_no_evidence(text):
    assert screen(text) == Screening()


@pytest.mark.parametrize("text", ["lũ chó ở phường ăn tiền", "mẹ bà mày, cúp nước hoài", "dm bọn phường",
                                  "ăn cứt đi bọn ủy ban", "tổ sư bọn điện lực"])
def test_the_insults_beside_those_phrases_stay_certain(text):
    assert screen(text).certain


def test_the_model_alone_never_rejects_words_excused_by_their_phrase(directory):
    classes, p = confident(directory, "abusive", 0.99)
    c = decide(directory, classes, p, Place(district="quan-3"), review_threshold=0.9,
               screening=screen("một lũ chó hoang cắn người"), abusive_as_written=0.99)
    assert c.status == "review" and c.note


@pytest.mark.parametrize("text", ["thang ngu o gam cau Chu Y", "bon ngu o via he cau Cho Y",
                                  "khu đất con hoang vu o Binh Chanh", "bo lao dong thuong binh xa hoi",
                                  "lũ chó trong xóm sợ không dám ra", "bãi đất đầy phân và cứt người"])
def test_sleepers_wasteland_the_ministry_and_the_neighbours_dogs_are_never_certain(text):
    """Red team, third round: each was a certain (rejecting) word before."""
    assert screen(text).certain == ()
