"""Diacritics restoration learned from accented text, and chat-shorthand expansion."""
from __future__ import annotations

from classifier.training.restore import Restorer, expand_shorthand

TRAINING = [
    "Đèn đường hẻm 12 bị hư, tối om mấy ngày nay.",
    "Nước máy bị mất từ sáng, không có nước sinh hoạt.",
    "Bàn ghế quán bán hàng lấn chiếm vỉa hè.",
    "Người bán hàng rong bày bán trên vỉa hè.",
    "Cái bàn bị vứt ngoài đường.",
]


def test_restores_words_learned_from_accented_text_in_context():
    r = Restorer().fit(TRAINING)
    assert r.restore("Den duong hem 12 bi hu, toi om") == "Đèn đường hẻm 12 bị hư, tối om"
    # "ban" is "bán" after "hàng"/before "hàng" but "bàn" before "ghế": the neighbours decide.
    assert r.restore("ban ghe lan chiem via he") == "bàn ghế lấn chiếm vỉa hè"
    assert r.restore("nguoi ban hang rong") == "người bán hàng rong"


def test_shorthand_is_expanded_before_restoring_and_unknown_words_stay():
    r = Restorer().fit(TRAINING)
    assert r.restore("ko co nuoc may") == "không có nước máy"
    assert " ".join(map(expand_shorthand, "nha ko co dc nc".split())) == "nha khong co duoc nuoc"
    assert r.restore("den duong xyz bi hu") == "đèn đường xyz bị hư"


def test_text_with_diacritics_or_in_english_is_left_alone():
    r = Restorer().fit(TRAINING + ["Ở đây có một cái hố."])
    assert r.restore("Đèn duong bị hư") == "Đèn duong bị hư"
    english = "The street light on my road has been broken for a week"
    assert r.restore(english) == english


def test_folded_training_text_teaches_nothing():
    r = Restorer().fit(["den duong bi hu"])
    assert r.restore("den duong bi hu") == "den duong bi hu"


def test_a_frequent_form_does_not_override_the_pair_it_sits_in():
    # "đó" is ten times as common as "đồ", but "ăn" after it only ever follows "đồ": the whole sequence decides.
    r = Restorer().fit(["Đó là cái hố sâu."] * 10 + ["Đồ ăn vặt bán trước cổng trường."])
    assert r.restore("do an vat truoc cong truong") == "đồ ăn vặt trước cổng trường"
    assert r.restore("do la cai ho") == "đó là cái hố"


def test_text_with_only_a_word_or_two_accented_is_restored_around_them():
    # Chat users often accent one word ("xe chạy ẩu"); the rest is still folded and must not reach the
    # embedder as it was typed. The accented word stays exactly as typed.
    r = Restorer().fit(TRAINING)
    assert r.restore("den duong hem 12 bi hư, toi om") == "đèn đường hẻm 12 bị hư, tối om"
    assert r.restore("Nuoc may bi mat tu sáng") == "Nước máy bị mất từ sáng"


def test_half_accented_training_text_teaches_no_folded_forms():
    r = Restorer().fit(TRAINING + ["den duong hem bi hư"] * 5)
    assert r.restore("den duong hem 12 bi hu") == "đèn đường hẻm 12 bị hư"


def test_names_and_initials_are_not_read_as_chat_shorthand():
    r = Restorer().fit(["Đường Lê Hồng Phong bị ngập.", "Đèn đường hỏng mấy ngày.", "Bà Nguyễn Thị H ở phường 5."])
    assert r.restore("duong Le Hong Phong bi ngap") == "đường Lê Hồng Phong bị ngập"
    assert r.restore("den duong hong may ngay") == "đèn đường hỏng mấy ngày"
    assert r.restore("ba Nguyen Thi H o P 5") == "bà Nguyễn Thị H ở phường 5"
