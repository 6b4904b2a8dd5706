"""Text normalisation shared by every stage: NFC, whitespace, and diacritics folding for matching."""
from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")
# C0 and C1 controls and DEL; CR, LF, TAB and NEL stay so that every kind of line break still splits lines.
_CONTROL = dict.fromkeys(c for c in (*range(32), *range(127, 160)) if chr(c) not in "\n\t\r\x85")


def normalize(text: str) -> str:
    """NFC with control characters removed and runs of spaces collapsed; line breaks are kept."""
    # Controls go first: one between a letter and its combining mark would otherwise block composition.
    text = unicodedata.normalize("NFC", text.translate(_CONTROL))
    lines = [_SPACE.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


class _NonspacingMarks(dict[int, int | None]):
    """str.translate table deleting every nonspacing mark (category Mn) and keeping every other character,
    filled per code point on first sight: a C-level lookup per character instead of a Python-level category
    test (fold runs ~30 times per report and was the largest pure-Python cost of routing). Only the Basic
    Multilingual Plane is remembered, so hostile input cannot grow the table past 65,536 entries."""

    def __missing__(self, code: int) -> int | None:
        value = None if unicodedata.category(chr(code)) == "Mn" else code
        if code < 0x10000:
            self[code] = value
        return value


_DROP_MARKS = _NonspacingMarks()


def fold(text: str) -> str:
    """Lower-case, strip Vietnamese diacritics (đ -> d), so 'Quận Gò Vấp' and 'quan go vap' compare equal."""
    lowered = text.lower()
    if lowered.isascii():  # nothing to decompose, no marks: the common case for text typed without diacritics
        return lowered
    return unicodedata.normalize("NFD", lowered).replace("đ", "d").translate(_DROP_MARKS)


def has_diacritics(text: str) -> bool:
    return fold(text) != text.lower()
