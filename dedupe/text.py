"""Place and wording features computed by dedupe itself from a report's folded text (pure, no I/O).

The classifier gives a canonical Place, but it is right only most of the time and says nothing about the
words two reporters share. Here we fold the text, expand the abbreviations Saigon reporters use for streets
and districts ("CMT8", "3/2", "Q5", "P.13"), spell out spoken numbers after "quận/phường/hẻm" (phone
transcripts say "quận mười"), and pull out the tokens that pin a place: alley and house numbers, street
names after "đường/ngã tư", and word n-grams that later get weighted by how rare they are in the window.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.addresses import ALLEY_NUMBER, SPOKEN_DIGITS, UNIT_LETTERS, read_spoken_number
from ingest.text import fold

# Common abbreviations of HCMC streets and admin words, folded. Street names spell the full form so that
# "CMT8 - DBP" and "Cách Mạng Tháng Tám, Điện Biên Phủ" share tokens.
ABBREVIATIONS: dict[str, str] = {
    "cmt8": "cach mang thang tam",
    "cmtt": "cach mang thang tam",
    "dbp": "dien bien phu",
    "3/2": "ba thang hai",
    "3-2": "ba thang hai",
    "30/4": "ba muoi thang tu",
    "adv": "an duong vuong",
    "htp": "huynh tan phat",
    "nvl": "nguyen van linh",
    "nkkn": "nam ky khoi nghia",
    "ntmk": "nguyen thi minh khai",
    "xvnt": "xo viet nghe tinh",
    "pvd": "pham van dong",
    "nhc": "nguyen huu canh",
    "ltk": "ly thuong kiet",
    "ql": "quoc lo",
    "ql1": "quoc lo 1",
    "ql1a": "quoc lo 1",
    "ql13": "quoc lo 13",
    "ql22": "quoc lo 22",
    "kcn": "khu cong nghiep",
    "gv": "go vap",
    "bt": "binh thanh",
    "tb": "tan binh",
    "pn": "phu nhuan",
    "hcm": "ho chi minh",
    "tphcm": "ho chi minh",
    "sg": "sai gon",
}

# Spoken digits as phone transcripts say them ("tư" is four after a unit word here).
_NUMBER_WORDS = {**SPOKEN_DIGITS, "tu": "4"}
# Words after which a number names a place unit (district, ward, alley, street number).
_UNIT_WORDS = {"quan": "quan", "q": "quan", "phuong": "phuong", "p": "phuong", "hem": "hem", "kiet": "hem",
               "ngo": "hem", "so": "so", "khu pho": "kp", "kp": "kp", "to": "to", "ap": "ap", "tuyen": "tuyen"}

_TOKEN = re.compile(r"[a-z0-9]+(?:/[a-z0-9]+)*|[-,;:()|]")
BREAK = "|"  # punctuation between words: ends a street name, no bigram spans it
_UNIT_NUM = re.compile(rf"^({'|'.join(UNIT_LETTERS)})(\d{{1,2}})$")
_HOUSE = re.compile(rf"^{ALLEY_NUMBER}$")  # 83/16/4, 25/3A

# Words too common in reports to say anything about the place or the problem.
STOPWORDS = frozenset("""
a ad ai alo anh ba bac ban bao bi bo cac cai can cha chi cho chu co con cua da dang day de den di do doan
duoc duong em gan gi gio giup gium gui hay het hien ho hoi hom hon kinh khi khong ko la lai lam len luc luon
ma may minh mn mong moi mot muon nao nay ne nen neu nha nhe nho nhu nhung nua o oi ong qua quy rat roi ra
sang se sao sau so ta tai the thi thay toi tong tren trong tu tui va vao vay ve vi voi vui xin xong da dai
the of the a an and is in on at to for it this that there i we our my please
""".split())


@dataclass(frozen=True, slots=True, kw_only=True)
class TextFeatures:
    """What dedupe reads from one report's text."""

    tokens: tuple[str, ...]  # folded, abbreviations expanded, spoken unit numbers spelled as digits
    grams: frozenset[str]  # content word uni- and bigrams (stopwords dropped), weighted later by rarity
    numbers: frozenset[str]  # place numbers: "hem 25", "so 17", "83/16/4", "quan 5", "phuong 13"
    streets: tuple[tuple[str, ...], ...] = ()  # names after "đường" / "ngã tư": ("nguyen", "huu", "canh")


def tokenize(text: str) -> list[str]:
    raw = _TOKEN.findall(fold(text).replace("đ", "d"))
    out: list[str] = []
    for tok in raw:
        if not tok[0].isalnum():
            tok = BREAK
        if tok in ABBREVIATIONS:
            out.extend(ABBREVIATIONS[tok].split())
            continue
        m = _UNIT_NUM.match(tok)
        if m:
            out.extend((UNIT_LETTERS[m.group(1)], m.group(2)))
            continue
        out.append(tok)
    # "quan muoi" / "phuong muoi ba" / "hem hai lam" -> digits, only right after a unit word so that
    # "nam" (year, south) or "ba" (mother, three) elsewhere stay words.
    spelled: list[str] = []
    i = 0
    while i < len(out):
        tok = out[i]
        spelled.append(tok)
        i += 1
        if tok in ("quan", "phuong", "hem") and i < len(out) and out[i] in _NUMBER_WORDS:
            value, i = read_spoken_number(out, i, _NUMBER_WORDS)
            spelled.append(str(value))
    return spelled


def extract(text: str) -> TextFeatures:
    tokens = tokenize(text)
    # Unigrams without stopwords; bigrams over the full sequence, since street names are made of common
    # syllables ("hồ thị kỷ" -> "ho thi", "thi ky"); rarity weighting later discounts the generic ones.
    grams = {t for t in tokens if t not in STOPWORDS and not t.isdigit() and t != BREAK}
    grams.update(f"{a} {b}" for a, b in zip(tokens, tokens[1:])
                 if not (a in STOPWORDS and b in STOPWORDS) and not (a.isdigit() and b.isdigit())
                 and BREAK not in (a, b))
    numbers: set[str] = set()
    for i, tok in enumerate(tokens):
        if _HOUSE.match(tok):
            numbers.add(tok)
        elif tok in ("hem", "so", "quan", "phuong") and i + 1 < len(tokens) and tokens[i + 1][:1].isdigit():
            numbers.add(f"{tok} {tokens[i + 1]}")
    return TextFeatures(tokens=tuple(tokens), grams=frozenset(grams), numbers=frozenset(numbers),
                        streets=street_names(tokens))


_STREET_CUES = {("duong",), ("nga", "tu"), ("nga", "ba"), ("giao", "lo"), ("goc",), ("pho",), ("tuyen",)}
_NUMERALS = {"mot", "hai", "ba", "bon", "nam", "sau", "bay", "tam", "chin", "muoi", "so"}
# Words that end a street name: function words, plus the words reports put right after a street.
_NAME_BREAK = frozenset(
    "| doan khuc ngay truoc gan o tai tren qua cho toi den tu ve thi thanh huong chieu hem kiet ngap ket xe bi "
    "co la cay nuoc luon nha cong cau nguoi mat lon nhieu sang dem va voi x nay kia do day roi nhe nha ne a "
    "oi ma con cung dang vua moi rat qua bao hu hong be dut do sut ho o ga".split())
_SEPARATORS = {"x", "va", "voi"}
# Cues by their first word: most tokens start no cue, and a dict miss is far cheaper than trying every cue
# (the window rebuild runs this over 140,000 reports). No two cues can match at the same token.
_CUES_BY_FIRST: dict[str, tuple[tuple[str, ...], ...]] = {}
for _cue in sorted(_STREET_CUES):
    _CUES_BY_FIRST[_cue[0]] = _CUES_BY_FIRST.get(_cue[0], ()) + (_cue,)


def street_names(tokens: list[str] | tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Street names a report mentions, as token tuples, read after a cue ("đường X", "ngã tư X - Y")."""
    names: list[tuple[str, ...]] = []
    i = 0
    n = len(tokens)
    while i < n:
        cues = _CUES_BY_FIRST.get(tokens[i])
        cue = next((c for c in cues if tuple(tokens[i:i + len(c)]) == c), None) if cues else None
        if cue is None:
            i += 1
            continue
        i += len(cue)
        # After an intersection cue a second name may follow a separator ("ngã tư CMT8 x ĐBP").
        for _ in range(2 if cue != ("duong",) else 1):
            name: list[str] = []
            while i < n and len(name) < 5 and tokens[i] not in _NAME_BREAK:
                name.append(tokens[i])
                i += 1
            if len(name) >= 2:
                names.append(tuple(name))
            if i < n and tokens[i] in _SEPARATORS | {BREAK}:
                i += 1
                continue
            if not name:
                break
    return tuple(dict.fromkeys(names))


def same_street(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two read names denote one street: equal up to the shorter one, with at least two syllables (names read
    greedily may carry a trailing word), and three when both have three ("nguyen huu canh" != "nguyen huu tho")."""
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return common >= 2 and common >= min(3, len(a), len(b))
