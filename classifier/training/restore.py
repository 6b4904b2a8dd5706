"""Diacritics restoration and chat-abbreviation expansion for reports typed without diacritics.

A third of the reports are typed without diacritics ("nuoc may bi mat 3 ngay"). The multilingual embedder
understands accented Vietnamese far better than folded text, so before embedding such a report we put the
diacritics back: a `Restorer` learns, from accented texts (training reports, topic descriptions, the directory
and the gazetteer), which accented form each folded word takes, most often in the context of its neighbours
(accented bigram counts), and rewrites the folded text with the most likely sequence of accented forms: a
Viterbi search over each word's candidate forms under an interpolated bigram model, so that one confident
pair settles its neighbours ("do an vat" -> "đồ ăn vặt", not the locally frequent "đó"). Words it has never
seen stay as written (and cut the chain); text that is mostly not Vietnamese (English reports) is untouched.
A text with only a word or two accented ("xe tải chay ẩu") counts as typed without diacritics: its accented words
are kept as typed and constrain their neighbours, and it teaches the restorer nothing (5-fold CV agency 0.973 ->
0.974; 4 of the 700 dev reports are typed so).
Against the earlier greedy vote per word (neighbouring pairs x3 + unigram): word accuracy on 300 held-out
accented texts stripped of their diacritics 0.79 -> 0.91; 5-fold CV no-diacritics agency accuracy 0.942 -> 0.951.

`expand_shorthand` rewrites generic Vietnamese chat conventions ("ko" -> "khong", "dc" -> "duoc") word by word;
restoration applies it first. Pure compute; no I/O.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest.text import fold, has_diacritics

# Generic Vietnamese chat shorthand, folded. Only expansions with one reading are listed: "k"/"ko" (không),
# not "a"/"e" (anh/em, also words of their own) nor "v" (vậy/và/về), nor "hong" (southern "không", but in
# reports far more often hỏng/hông/hổng and the Hồng of street names: "Lê Hồng Phong"). "bt" is "bình thường"
# ("sáng bt", "vẫn bt"), not "biết", in what reporters write.
ABBREVIATIONS: dict[str, str] = {
    "k": "khong", "ko": "khong", "kh": "khong", "hok": "khong", "khg": "khong", "kg": "khong",
    "kô": "khong", "dc": "duoc", "dk": "duoc", "ng": "nguoi", "nc": "nuoc", "j": "gi", "r": "roi",
    "vs": "voi", "mik": "minh", "mk": "minh", "bt": "binh thuong", "bik": "biet", "ntn": "nhu the nao", "trc": "truoc",
    "cx": "cung", "cg": "cung", "dt": "dien thoai", "sdt": "so dien thoai", "hqua": "hom qua",
    "hnay": "hom nay", "ns": "noi", "lm": "lam", "bn": "bao nhieu", "bh": "bay gio", "h": "gio", "tg": "thoi gian",
    "nt": "nhan tin", "ok": "ok", "uh": "u", "z": "vay", "zay": "vay", "wa": "qua", "qa": "qua", "ms": "moi",
    "thik": "thich", "iu": "yeu", "ck": "chong", "vk": "vo", "tp": "thanh pho", "p": "phuong", "q": "quan",
}
_TOKEN = re.compile(r"\w+", re.UNICODE)


def expand_shorthand(token: str) -> str:
    """One word with chat shorthand expanded ("ko" -> "khong"); other words unchanged."""
    # A lone capital is an initial in a name ("Thị H.", "Anna K"), except the ward and district markers.
    if len(token) == 1 and token.isupper() and token not in "PQ":
        return token
    return ABBREVIATIONS.get(token.lower(), token)


def _pairs(tokens: Sequence[str]) -> Iterable[tuple[str, str]]:
    return zip(tokens, tokens[1:])


@dataclass
class Restorer:
    """Folded word -> counts of the accented forms seen in training text, and counts of accented word pairs."""

    min_known: float = 0.6  # share of a text's words that must be known Vietnamese before it is restored
    # A text is restored when fewer than this share of its words carry diacritics: chat users often accent only
    # a word or two ("xe tai chay ẩu"); those words are kept as typed and anchor their neighbours.
    max_accented: float = 0.3
    bigram_weight: float = 0.8  # interpolation weight of the bigram estimate against the unigram one
    unigrams: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    pair_counts_: Counter[tuple[str, str]] = field(default_factory=Counter)

    def fit(self, texts: Iterable[str]) -> Restorer:
        for text in texts:
            if self._mostly_folded(text):
                continue  # folded text teaches nothing about diacritics, and half-accented text wrong forms
            words = [unicodedata.normalize("NFC", w.lower()) for w in _TOKEN.findall(text)]
            for w in words:
                if not w.isdigit():
                    self.unigrams[fold(w)][w] += 1
            self.pair_counts_.update(_pairs(words))
        # A plain dict: lookups of unknown words do not grow the table.
        self.unigrams = {k: Counter(v) for k, v in self.unigrams.items()}
        return self._count_words()

    def _count_words(self) -> Restorer:
        self.word_counts_: Counter[str] = Counter()
        for forms in self.unigrams.values():
            self.word_counts_.update(forms)
        self.total_ = max(1, sum(self.word_counts_.values()))
        return self

    def state(self) -> dict[str, Any]:
        """The fitted counts as JSON values, in their insertion order: `_decode` breaks ties between equally
        likely forms by that order, so a restored model must keep it to restore the same text."""
        return {"min_known": self.min_known, "max_accented": self.max_accented, "bigram_weight": self.bigram_weight,
                "unigrams": [[folded, list(forms.items())] for folded, forms in self.unigrams.items()],
                "pairs": [[a, b, n] for (a, b), n in self.pair_counts_.items()]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Restorer:
        out = cls(min_known=float(state["min_known"]), max_accented=float(state["max_accented"]),
                  bigram_weight=float(state["bigram_weight"]))
        out.unigrams = {str(folded): Counter({str(w): int(n) for w, n in forms}) for folded, forms in state["unigrams"]}
        out.pair_counts_ = Counter({(str(a), str(b)): int(n) for a, b, n in state["pairs"]})
        return out._count_words()

    def _log_transition(self, prev: str | None, word: str) -> float:
        p_uni = (self.word_counts_.get(word, 0) + 0.5) / (self.total_ + 0.5 * len(self.word_counts_))
        if prev is None:
            return math.log(p_uni)
        n_prev = self.word_counts_.get(prev, 0)
        p_bi = self.pair_counts_.get((prev, word), 0) / n_prev if n_prev else 0.0
        return math.log(self.bigram_weight * p_bi + (1 - self.bigram_weight) * p_uni)

    def _mostly_folded(self, text: str) -> bool:
        if not has_diacritics(text):
            return True
        words = [w for w in _TOKEN.findall(text) if not w.isdigit()]
        return sum(fold(w) != w.lower() for w in words) < self.max_accented * len(words)

    def _candidates(self, word: str) -> Iterable[str] | None:
        """The accented forms a typed word may stand for: itself if typed with diacritics, None if unknown."""
        if word.isdigit():
            return None
        if fold(word) != word:
            return (word,)
        return self.unigrams.get(word)

    def _decode(self, options: Sequence[Iterable[str] | None]) -> list[str | None]:
        """The most likely accented form of each word, given each word's candidate forms (None: unknown word or
        a number, kept as written)."""
        out: list[str | None] = [None] * len(options)
        i = 0
        while i < len(options):
            if options[i] is None:
                i += 1
                continue
            j = i  # a run of known words, decoded together
            while j < len(options) and options[j] is not None:
                j += 1
            best: dict[str, tuple[float, list[str]]] = {
                w: (self._log_transition(None, w), [w]) for w in options[i]}
            for k in range(i + 1, j):
                step: dict[str, tuple[float, list[str]]] = {}
                for w in options[k]:
                    score, path = max(((s + self._log_transition(p, w), path) for p, (s, path) in best.items()),
                                      key=lambda t: t[0])
                    step[w] = (score, path + [w])
                best = step
            for k, w in enumerate(max(best.values(), key=lambda t: t[0])[1], start=i):
                out[k] = w
            i = j
        return out

    def restore(self, text: str) -> str:
        """The text with diacritics put back; unchanged if mostly typed with diacritics or not Vietnamese."""
        if not self._mostly_folded(text):
            return text
        # Shorthand first, so "tp" becomes the two words "thanh pho", each restored in context.
        text = _TOKEN.sub(lambda m: expand_shorthand(m.group()), text)
        spans = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
        if not spans:
            return text
        words = [unicodedata.normalize("NFC", text[a:b].lower()) for a, b in spans]
        options = [self._candidates(w) for w in words]
        known = sum(1 for w, o in zip(words, options) if o is not None or w.isdigit())
        if known < self.min_known * len(words):
            return text
        decoded = self._decode(options)
        out, last = [], 0
        for i, (a, b) in enumerate(spans):
            out.append(text[last:a])
            original = text[a:b]
            choice = decoded[i]
            if choice is None:  # unknown word: keep it as written
                choice = original
            out.append(_match_case(original, choice))
            last = b
        out.append(text[last:])
        return "".join(out)


def _match_case(original: str, replacement: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement
