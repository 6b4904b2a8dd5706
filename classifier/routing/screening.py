"""Screening evidence for Art. 3.6 (vulgar or insulting content): which listed words a report contains, and how
sure each one is. Pure; the verdict is `policy.decide`'s, not this module's.

Words are compared as written. A term written with diacritics matches only those letters ("đéo" is not
"đeo", "địt" is not "đít"); a term typed without them matches only words typed without them, so an accented
ordinary word never meets a folded swear word. Typed without diacritics, many swear words are also ordinary
words or abbreviations ("deo" = đeo, "cc" = chung cư, "vl" = vật liệu, "du ma" = đủ mà): those are
`ambiguous` and never enough on their own. A word masked with asterisks ("đ**", "c*t") is certain: people mask
what they know is obscene. So is one spelled out letter by letter with dots or dashes ("d.i.t m.e", "l-o-n"):
the letters are read as one word, and a listed swear word spelled so is certain; "U.B.N.D", "T.P" stay
ordinary words.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ingest.text import fold

SCREENING_PATH = Path(__file__).parent.parent / "data" / "screening.json"
_TOKEN = re.compile(r"[^\W_]+(?:\*+[^\W_]*)*|\*+[^\W_]+(?:\*+[^\W_]*)*", re.UNICODE)
_MASKED = re.compile(r"^([^\W\d_]{1,3})\*+([^\W\d_]*)$")
# Single letters joined by one dot or dash each, no space: "d.i.t", "đ.m", "l-o-n" (a word spelled out to slip past
# a filter). Matched before _TOKEN, which would read each letter as a word.
# The whole run must be single letters: "12A.D.M", "5-D-M" are codes, no letter of theirs is spelled out.
_SPELLED = re.compile(r"(?<![^\W_])(?<![^\W_][.\-])[^\W\d_](?:[.\-][^\W\d_])+(?![^\W_])(?![.\-][^\W_])\.?")
# A mask hides letters of a word: a letter then asterisks ("đ*", "c*t", "f***ing"), or two letters then asterisks
# inside the word or at least two at its end. Asterisks around a word ("*cc*", "*lưu ý*") are emphasis.
_MASK = re.compile(r"[^\W\d_]\*+[^\W\d_]*|[^\W\d_]{2}(?:\*+[^\W\d_]+|\*{2,})")


@dataclass(frozen=True, slots=True)
class Screening:
    """The evidence found in one report: `certain` words (the report is abusive) and `ambiguous` ones (it may be:
    an operator looks). Each entry is the words as the reporter wrote them."""

    certain: tuple[str, ...] = ()
    ambiguous: tuple[str, ...] = ()
    # Listed words read in an ordinary phrase ("lũ chó hoang", "cứt chó"): evidence the words are NOT abuse,
    # so the model alone (which learnt those words as abuse) may not reject the report either.
    excused: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Token:
    written: str  # lower-case NFC, asterisks kept
    folded: str  # without diacritics and asterisks
    masked: bool
    spelled: bool = False  # its letters were written apart ("d.i.t")

    @property
    def accented(self) -> bool:
        return self.folded != self.written.replace("*", "")


@dataclass(frozen=True, slots=True)
class Terms:
    written: tuple[tuple[str, ...], ...]
    unambiguous: tuple[tuple[str, ...], ...]
    ambiguous: tuple[tuple[str, ...], ...]
    ordinary: tuple[tuple[str, ...], ...]
    profane: tuple[str, ...]
    quoting: tuple[tuple[str, ...], ...]
    units: frozenset[str] = frozenset()


def _split(term: str) -> tuple[str, ...]:
    return tuple(unicodedata.normalize("NFC", term.lower()).split())


@lru_cache(maxsize=4)
def load_terms(path: Path = SCREENING_PATH) -> Terms:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return Terms(written=tuple(_split(t) for t in data.get("written", ())),
                 unambiguous=tuple(_split(t) for t in data.get("unambiguous", ())),
                 ambiguous=tuple(_split(t) for t in data.get("ambiguous", ())),
                 ordinary=tuple(_split(t) for t in data.get("ordinary_context", ())),
                 profane=tuple(data.get("profane_words", ())),
                 quoting=tuple(_split(t) for t in data.get("quoting_words", ())),
                 units=frozenset(data.get("unit_words", ())))


_WORD = re.compile(f"(?P<spelled>{_SPELLED.pattern})|(?P<word>{_TOKEN.pattern})", re.UNICODE)


def _tokens(text: str) -> tuple[list[_Token], list[str], list[int]]:
    """Tokens (lower-case), the same words with their case as typed, and where each starts (NFC text)."""
    out, cased, starts = [], [], []
    for m in _WORD.finditer(text):
        raw = m.group(0)
        if m.lastgroup == "spelled":
            raw = raw.rstrip(".")
            written = re.sub(r"[.\-]", "", raw.lower())
            out.append(_Token(written=written, folded=fold(written), masked=False, spelled=True))
        else:
            written = raw.lower()
            out.append(_Token(written=written, folded=fold(written.replace("*", "")),
                              masked=bool(_MASK.fullmatch(written))))
        cased.append(raw)
        starts.append(m.start())
    return out, cased, starts


def _masked_profane(token: _Token, profane: tuple[str, ...]) -> bool:
    m = _MASKED.match(fold(token.written))
    if not m:
        return False
    head, tail = m.group(1), m.group(2)
    return any(w.startswith(head) and w.endswith(tail) and len(w) > len(head) + len(tail) for w in profane)


_Positions = dict[tuple[str, str], list[int]]


def _positions(tokens: list[_Token]) -> _Positions:
    """Where each word stands, as written and folded: built once per report, so a term of the list that is not
    in the text costs one dictionary lookup instead of a walk over every token (the walk, for every term,
    was the larger part of a report's screening time)."""
    at: _Positions = {}
    for i, t in enumerate(tokens):
        at.setdefault(("written", t.written), []).append(i)
        at.setdefault(("folded", t.folded), []).append(i)
    return at


def _spans(tokens: list[_Token], term: tuple[str, ...], key: str,
           at: _Positions | None = None) -> list[tuple[int, int]]:
    n = len(term)
    starts = (at if at is not None else _positions(tokens)).get((key, term[0]), ())
    return [(i, i + n) for i in starts
            if i + n <= len(tokens) and all(getattr(tokens[i + k], key) == term[k] for k in range(1, n))]


_QUOTE_WINDOW = 6  # tokens before an insult searched for a word that says someone else said it
_QUOTES = "\"“”«»"


def _quoted(tokens: list[_Token], text_before: str, span: tuple[int, int], quoting: tuple[tuple[str, ...], ...]) -> bool:
    """Whether the words at `span` report what someone else said: after "chửi ... là", or inside quotation marks."""
    if sum(text_before.count(q) for q in _QUOTES) % 2 == 1:
        return True
    window = tokens[max(0, span[0] - _QUOTE_WINDOW):span[0]]
    for term in quoting:
        key = "written" if term != tuple(fold(w) for w in term) else "folded"
        if _spans(window, term, key):
            return True
    return False


def _names_a_building(cased: list[str], span: tuple[int, int], tokens: list[_Token]) -> bool:
    """"cc Bàu Cát 2", "cc 312 Lạc Long Quân": chung cư followed by its name or number."""
    if tokens[span[0]].folded != "cc" or span[1] - span[0] != 1 or span[1] >= len(cased):
        return False
    nxt = cased[span[1]]
    return nxt[:1].isupper() or nxt[:1].isdigit()


def screen(text: str, terms: Terms | None = None) -> Screening:
    """The screening evidence in one report's text (subject included by the caller)."""
    terms = terms or load_terms()
    text = unicodedata.normalize("NFC", text)
    tokens, cased, starts = _tokens(text)
    at = _positions(tokens)
    certain: dict[tuple[int, int], str] = {}
    ambiguous: dict[tuple[int, int], str] = {}
    excused: dict[tuple[int, int], str] = {}

    def shown(span: tuple[int, int]) -> str:
        return " ".join(cased[span[0]:span[1]])

    def quoted(span: tuple[int, int]) -> bool:
        return _quoted(tokens, text[:starts[span[0]]], span, terms.quoting)

    ordinary = [s for term in terms.ordinary for s in _spans(tokens, term, "folded", at)]

    def in_ordinary(span: tuple[int, int]) -> bool:
        return any(o[0] <= span[0] and span[1] <= o[1] for o in ordinary)

    for term in terms.written:  # diacritics as written: certain, unless it quotes someone else
        # A written term with no diacritics of its own ("con hoang", "con ngu") is also a folded ordinary
        # phrase ("còn hoang", still wasteland; "còn ngủ"), whatever the rest of the text: only ambiguous
        # (people type one phrase with diacritics and the next without). So is one inside an
        # ordinary phrase ("lũ chó hoang" are stray dogs, "cứt chó" on the pavement): an operator reads it.
        plain = all(fold(w) == w for w in term)
        for span in _spans(tokens, term, "written", at):
            if in_ordinary(span):
                excused[span] = shown(span)
            doubtful = quoted(span) or plain or in_ordinary(span)
            (ambiguous if doubtful else certain)[span] = shown(span)
    def spelled_swear(i: int) -> str | None:
        """A swear word spelled out letter by letter, judged as the word itself would be: "certain", or
        "ambiguous" when quoted or in capitals like an acronym ("C.A.C"); None when it is no such word, has two
        letters (initials: "chị Đ.M"; the term lists judge those as plain words) or is a unit after a number."""
        tok = tokens[i]
        if not tok.spelled or len(tok.folded) < 3 or tok.folded not in terms.profane or in_ordinary((i, i + 1)):
            return None
        if tok.folded in terms.units and i > 0 and tokens[i - 1].folded.replace(",", "").isdigit():
            return None
        if quoted((i, i + 1)) or re.sub(r"[.\-]", "", cased[i]).isupper():
            return "ambiguous"
        return "certain"

    for i, tok in enumerate(tokens):  # masked swear words: certain; spelled-out ones as the word would be
        if tok.masked and _masked_profane(tok, terms.profane):
            certain[(i, i + 1)] = shown((i, i + 1))
        elif (kind := spelled_swear(i)) is not None:
            (certain if kind == "certain" else ambiguous)[(i, i + 1)] = shown((i, i + 1))
    def folded_hits(term_list: tuple[tuple[str, ...], ...]) -> list[tuple[int, int]]:
        out = []
        for term in term_list:
            for span in _spans(tokens, term, "folded", at):
                words = tokens[span[0]:span[1]]
                # A word typed with diacritics is read as written (đeo, đít): a folded term never matches it.
                if any(t.accented for t in words):
                    continue
                if in_ordinary(span):
                    continue
                # "hố sâu 5 dm": a unit of measure after a number.
                if span[1] - span[0] == 1 and words[0].folded in terms.units and span[0] > 0 \
                        and tokens[span[0] - 1].folded.replace(",", "").isdigit():
                    continue
                out.append(span)
        return out

    for span in folded_hits(terms.unambiguous):
        words = cased[span[0]:span[1]]
        # "DM", "CC", "VL" in capitals are acronyms more often than swearing: then they only count as ambiguous.
        if (len(words) == 1 and len(words[0]) <= 3 and words[0].isupper()) or quoted(span):
            ambiguous[span] = shown(span)
        else:
            certain[span] = shown(span)
    for span in folded_hits(terms.ambiguous):
        # "Đ** m**", "d.i.t": meant. A spelled-out abbreviation ("C.C" Bàu Cát, chung cư) is no swear word.
        if any(tokens[k].masked or spelled_swear(k) == "certain" for k in range(*span)):
            certain[span] = shown(span)
        elif _names_a_building(cased, span, tokens):
            continue
        elif not any(s[0] <= span[0] and span[1] <= s[1] for s in certain):
            ambiguous[span] = shown(span)
    return Screening(certain=tuple(dict.fromkeys(certain[s] for s in sorted(certain))),
                     # Each ambiguous phrase once: not inside a certain one, nor inside a longer ambiguous one.
                     ambiguous=tuple(dict.fromkeys(
                         ambiguous[s] for s in sorted(ambiguous)
                         if not any(c[0] < s[1] and s[0] < c[1] for c in certain)
                         and not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in ambiguous))),
                     excused=tuple(dict.fromkeys(excused[s] for s in sorted(excused) if s not in certain)))
