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


def fold(text: str) -> str:
    """Lower-case, strip Vietnamese diacritics (đ -> d), so 'Quận Gò Vấp' and 'quan go vap' compare equal."""
    decomposed = unicodedata.normalize("NFD", text.lower()).replace("đ", "d")
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def has_diacritics(text: str) -> bool:
    return fold(text) != text.lower()
