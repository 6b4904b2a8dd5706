"""Phone numbers and emails found in free text, and their redaction for anything public (Art. 9)."""
from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ingest.contacts import find_emails, find_phones, normalize_phone
from ingest.pii import redact


def test_phones_with_separators_and_country_code() -> None:
    text = ("Liên hệ 0903.123.456 hoặc 0903 123 457, zalo 090-312-3458; "
            "anh Tư +84 90 312 3459, chị Ba 84-903-123-460, số cũ 0903123456.")
    assert find_phones(text) == ["0903123456", "0903123457", "0903123458", "0903123459", "0903123460"]


def test_not_phones() -> None:
    # Too short, too long, or part of a longer number (an account or a house number run).
    assert find_phones("Hẻm 83/16/4, mã hồ sơ 123456789012, số 090312345, năm 2026") == []
    assert find_phones("biển số 51F-12345") == []


def test_phone_glued_to_letters() -> None:
    assert find_phones("SĐT:0903123456,gọi giúp") == ["0903123456"]


def test_normalize_phone() -> None:
    assert normalize_phone("+84 903 123 456") == "0903123456"
    assert normalize_phone("0903-123-456") == "0903123456"
    assert normalize_phone("12345") is None


def test_emails_are_found_and_lowercased_once() -> None:
    text = "Gửi Nguyen.Van.A+1022@Gmail.com, cc nguyen.van.a+1022@gmail.com và to.dan_pho@quan1.hochiminhcity.gov.vn."
    assert find_emails(text) == ["nguyen.van.a+1022@gmail.com", "to.dan_pho@quan1.hochiminhcity.gov.vn"]


def test_redact_removes_every_contact() -> None:
    text = "Gọi 0903.123.456 hoặc +84 90 312 3459, email 0903123456@gmail.com. Ổ gà ở số 12 Lê Lợi."
    out = redact(text)
    assert "0903" not in out and "3459" not in out and "@" not in out
    assert out.endswith("Ổ gà ở số 12 Lê Lợi.")
    assert out.count("[số điện thoại ẩn]") == 2 and out.count("[email ẩn]") == 1


words = st.text(alphabet="aăâbcdđeêghiklmnoôơpqrstuưvxyàáạảãếệộ ,.:", min_size=0, max_size=30)
separators = st.sampled_from(["", " ", ".", "-"])


@st.composite
def phones(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["0", "+84", "84", "+84 ", "84-"]))
    first = draw(st.sampled_from("35789"))
    rest = draw(st.lists(st.sampled_from("0123456789"), min_size=8, max_size=8))
    digits = [first, *rest]
    sep = draw(separators)
    groups = [digits[:2], digits[2:5], digits[5:]] if draw(st.booleans()) else [digits[:3], digits[3:6], digits[6:]]
    return prefix + sep.join("".join(g) for g in groups)


@given(before=words, phone=phones(), after=words)
def test_any_written_phone_is_found_and_redacted(before: str, phone: str, after: str) -> None:
    text = f"{before} {phone} {after}"
    expected = "0" + re.sub(r"\D", "", phone)[-9:]
    assert find_phones(text) == [expected]
    out = redact(text)
    assert find_phones(out) == []
    assert re.sub(r"\D", "", out) == ""  # the words carry no digits: none of the number may remain


@given(st.text())
def test_redact_never_raises_and_leaves_nothing_findable(text: str) -> None:
    out = redact(text)
    assert find_phones(out) == [] and find_emails(out) == []
