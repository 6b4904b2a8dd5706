"""Text normalisation and diacritics folding on nasty inputs."""
from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from ingest.text import fold, has_diacritics, normalize

VIETNAMESE = "aăâbcdđeêghiklmnoôơpqrstuưvxyàáảãạằắẳẵặầấẩẫậèéẻẽẹềếểễệìíỉĩịòóỏõọồốổỗộờớởỡợùúủũụừứửữựỳýỷỹỵ"
vietnamese_text = st.text(alphabet=VIETNAMESE + VIETNAMESE.upper() + " ,.0123456789\n\t", max_size=80)


def test_fold_strips_diacritics_and_d_stroke() -> None:
    assert fold("Quận Gò Vấp") == "quan go vap"
    assert fold("ĐƯỜNG Điện Biên Phủ") == "duong dien bien phu"
    assert fold("Nguyễn Văn Linh") == fold("nguyen van linh") == "nguyen van linh"


def test_fold_handles_decomposed_input_from_some_keyboards() -> None:
    decomposed = unicodedata.normalize("NFD", "Bình Thạnh")
    assert decomposed != "Bình Thạnh"
    assert fold(decomposed) == "binh thanh"


def test_has_diacritics() -> None:
    assert has_diacritics("Quận 1") and not has_diacritics("quan 1 😭")


def test_normalize_collapses_spaces_and_drops_blank_lines() -> None:
    assert normalize("  Ống   nước\t\tvỡ  \r\n\r\n\n  trước nhà  ") == "Ống nước vỡ\ntrước nhà"


def test_normalize_keeps_old_mac_line_breaks_as_breaks() -> None:
    # Some SMS gateways and old editors end lines with a bare CR: words must not be glued together.
    assert normalize("Đèn hỏng\rđường tối") == "Đèn hỏng\nđường tối"


def test_normalize_removes_control_characters() -> None:
    assert normalize("a\x00b\x07c\x1bd\x7fe\x9bf") == "abcdef"


def test_normalize_composes_to_nfc_even_across_removed_controls() -> None:
    out = normalize("Que\x00\u0301n 1")  # e, a stray NUL, then a combining acute
    assert out == "Quén 1" and unicodedata.is_normalized("NFC", out)


def test_normalize_keeps_emoji_and_teen_code() -> None:
    assert normalize("ổ gà nhiều quá 😭😭 mng ơi,,,") == "ổ gà nhiều quá 😭😭 mng ơi,,,"


@given(st.text())
def test_normalize_is_idempotent_nfc_and_clean(text: str) -> None:
    out = normalize(text)
    assert normalize(out) == out
    assert unicodedata.is_normalized("NFC", out)
    for line in out.split("\n") if out else ():
        assert line and line == line.strip() and "  " not in line
    assert not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in out)


@given(st.text())
def test_fold_leaves_no_combining_marks(text: str) -> None:
    assert not any(unicodedata.category(c) == "Mn" for c in fold(text))


@given(vietnamese_text)
def test_fold_is_idempotent_and_ascii_on_vietnamese(text: str) -> None:
    folded = fold(text)
    assert fold(folded) == folded
    assert folded.isascii()
    assert len(folded) == len(text)  # one letter folds to one letter: offsets stay usable
