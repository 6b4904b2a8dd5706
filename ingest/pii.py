"""Personal data in free text (Decree 13/2023/NĐ-CP; Art. 9 of the regulation): the one redactor.

Everything that shows a report's text outside the operators' own view of it goes through here: the public page,
the Open311 read API, the reporter's lookup page, an agency not authorised to see a confidential reporter, the
console's excerpts. It removes:
- phone numbers, mobile and landline, in any spacing, with 0, 84 or +84 ("(028) 3829 1234", "028.3829.1234",
  "+84 909 123 456"), and short local numbers after a phone word ("sđt 3829 1234");
- identity numbers (CCCD 12 digits, CMND 9 or 12, "079 203 005 678"), passports ("B1234567"), bank accounts
  ("STK 0123 4567 89"): any run of 9 or more digits, and 6 to 8 digits after an identity, account or phone word;
  also spelled out in words, wholly or partly ("không chín không một hai …", "zero nine zero 1234567");
- e-mail addresses, also written to dodge scrapers ("abc at gmail dot com", "abc(a)gmail.com"); social profile links and chat
  handles ("facebook.com/…", "zalo: nguyenvana92"; a plain lower-case word after "fb:" is text: "fb: refused");
- names introduced as such: "tên tôi là …", "tôi tên …", "người báo: …", "tôi là Nguyễn Văn A" (with or without
  diacritics, any case), or after an honorific ("ông Nguyễn Văn A", "chị Lan");
- where the reporter lives: "nhà 12 hẻm …", "địa chỉ: …", "sống tại …" (the incident's place is published from
  the classifier's street and ward, never a house number);
- the reporter's own name, address, e-mail and phone wherever the text repeats them.
A written request for confidentiality ("xin giữ bí mật danh tính", "giu bi mat", "không muốn lộ tên") makes the
report confidential exactly like the app's `confidential` flag (`is_confidential`), on every channel.

Pure functions, no I/O. Over-redaction (an amount of 9+ digits, a year list) is accepted: a missing number costs
the public little, a published ID number cannot be taken back.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Sequence

from .records import InboundMessage
from .text import fold

# What the public reads in place of what was removed.
REDACTED = "[ẩn]"
PHONE_MARK = "[số điện thoại ẩn]"
EMAIL_MARK = "[email ẩn]"
NUMBER_MARK = "[số giấy tờ ẩn]"
NAME_MARK = "[tên ẩn]"
ADDRESS_MARK = "[địa chỉ ẩn]"

# Both address patterns start only where a run of address characters starts: tried from inside a run, the run
# is scanned again to its end for each position, and a 20,000-character description of "1-1-1-…" or one long word
# cost seconds of the event loop on every public page that showed it (quadratic; linear now, same matches).
EMAIL = re.compile(r"(?<![\w.%+\-])[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)+")
# An address written so that scrapers miss it, which people also do when they type it for us: "abc at gmail dot
# com", "abc(at)gmail.com", "abc [a còng] gmail [chấm] com", "abc @ gmail . com". The "at" word must be
# bracketed or spaced and be followed by a dotted domain, so an ordinary "at" in English text stays.
_AT = r"(?:\s*@\s*|\s*[(\[{<]\s*(?:at|a|@|a còng|a cong)\s*[)\]}>]\s*|\s+(?:at|a còng|a cong)\s+)"
_DOT = r"(?:\s?\.\s?|\s*[(\[{<]\s*(?:dot|chấm|cham)\s*[)\]}>]\s*|\s+(?:dot|chấm|cham)\s+)"
OBFUSCATED_EMAIL = re.compile(r"(?<![\w.%+\-])[\w.%+\-]+" + _AT + r"[\w\-]+(?:" + _DOT + r"[A-Za-z]{2,})+(?!\w)",
                              re.IGNORECASE)
# A run of digit groups, groups possibly in brackets, the whole possibly led by "+": "(028) 3829 1234",
# "+84 909.123.456", "079 203 005 678". Groups are joined by one or two spaces, or by a dot, dash (any of the
# dashes a phone's keyboard or autocorrect types: "0909 – 123 – 456"), slash or underscore with up to two spaces
# on each side: "0909 - 123 - 456" is how many people write a number, and "0909/123/456" how some dodge scrapers.
_GROUP = r"(?:\(\s?\+?\d+\s?\)|\d+)"
_JOIN = r"(?:\s{0,2}[.\-\u2010-\u2015\u2212_/\u00b7]{1,2}\s{0,2}|\s{1,2})"
NUMBER = re.compile(r"(?<!\d)\+?" + _GROUP + r"(?:" + _JOIN + _GROUP + r")*(?!\d)")
# Dates ("12/09/2026", "12.09.2026", "09/2026") and ranges of them ("12/09/2026 - 15/09/2026"): those joins would
# make them a 16-digit number, and a report's dates are for the public to read. Days 1-31, months 1-12, years
# 19xx-20xx, so a phone typed in pairs ("09/09/12/34/56") is not one.
_DATE = (r"(?:(?:0?[1-9]|[12]\d|3[01])([./\-])(?:0?[1-9]|1[0-2])\1(?:19|20)\d\d|"
         r"(?:0?[1-9]|1[0-2])/(?:19|20)\d\d)")
DATES = re.compile(_DATE + r"(?:" + _JOIN + _DATE.replace("\\1", "\\2") + r")*")
# A number spelled out, wholly or partly, in Vietnamese or English words ("không chín không một hai ba …",
# "khong chin khong 1234567", "zero nine zero …"): read in the folded text, so with or without diacritics and in any
# case. Such words are ordinary words too ("hai ba năm nay", "năm 2026"), so a run counts only with at least two of
# them and 9 digits in all, the length from which any digit run is hidden.
_SPELLED_DIGIT = (r"(?:khong|linh|mot|hai|ba|bon|tu|nam|lam|sau|bay|tam|chin|"
                  r"zero|oh|one|two|three|four|five|six|seven|eight|nine)(?![^\W_])")
_SPELLED_TOKEN = r"(?:" + _SPELLED_DIGIT + r"|\d+(?!\w))"
SPELLED_NUMBER = re.compile(r"(?<![^\W_])" + _SPELLED_TOKEN + r"(?:[\s,.\-]{1,3}" + _SPELLED_TOKEN + r")+")
_SPELLED_WORD = re.compile(_SPELLED_DIGIT)
_YEAR = re.compile(r"(?<![^\W_])nam[\s,.\-]{1,3}(?:19|20)\d\d(?!\d)")
_SPELLED_BEFORE = re.compile(r"(?<![^\W_])" + _SPELLED_DIGIT + r"[\s,.\-]*$")
PASSPORT = re.compile(r"(?<![\w])[A-Za-z]\s?\d{7,8}(?!\d)")
# Words after which even a short number is personal (folded): identity papers and bank accounts, or phones.
_ID_WORDS = (r"cccd|cmnd|cmt|can cuoc|chung minh|dinh danh|ho chieu|passport|stk|so tk|tai khoan|\btk\b|account|"
             r"ngan hang|\bbank|mssv|ma so|\bmst\b|bhxh|bhyt|\bgplx\b|bang lai|so the")
_PHONE_WORDS = r"sdt|\bdt\b|dien thoai|di dong|phone|\btel\b|hotline|zalo|lien he|\bgoi\b|so may"
# Social profiles and chat handles: "facebook.com/nguyenvana", "zalo.me/0903…", "zalo: nguyenvana92".
PROFILE = re.compile(r"(?<![\w.])(?:https?://)?(?:www\.|m\.)?(?:facebook\.com|fb\.com|fb\.me|zalo\.me|"
                     r"instagram\.com|tiktok\.com|t\.me)/[\w.\-/@?=%]+", re.IGNORECASE)
# The word after "zalo:", "fb:" … is a handle, except the few words a log line's network answer is made of
# ("fb: refused", "zalo: không trả lời"; _is_handle). Anything else is somebody's account, even a short lower-case
# name ("zalo: lan", "fb: huong"), so a word the list does not know is hidden rather than shown.
HANDLE = re.compile(r"(?<!\w)(?:zalo|fb|facebook|face|insta|instagram|ig|tiktok|telegram|tele|skype|nick|nickname)"
                    r"\s*:\s*(@?)([\w.\-]+)", re.IGNORECASE)
NOT_HANDLES = frozenset((
    "refused", "blocked", "sent", "re-sent", "resent", "error", "errors", "failed", "failure", "timeout",
    "timed", "retrying", "retry", "unreachable", "denied", "rejected", "disabled", "unavailable", "ok",
    "khong", "chua", "loi",  # "không …", "chưa …", "lỗi …", folded
))
_CONTEXT = re.compile(rf"(?P<id>{_ID_WORDS})|(?P<phone>{_PHONE_WORDS})")
_AMOUNT = re.compile(r"^\d{1,3}(?:[.,]\d{3})+$")
_CURRENCY = re.compile(r"^\s*(d\b|dong|vnd|trieu|ty|usd|nghin|ngan)")

# Confidentiality asked for in the text (folded): "xin giữ bí mật danh tính", "đề nghị giấu tên", "ẩn danh".
_CONFIDENTIAL = re.compile(
    r"(giu bi mat|bao mat (danh tinh|thong tin|ten|ho ten|ca nhan|nguoi)|giau (ten|danh tinh|thong tin)|"
    r"khong (muon |duoc |nen )?(lo|tiet lo|cong khai|cong bo|de lo|neu) ?(ten|danh tinh|thong tin|ho ten)|"
    r"\ban danh\b|xin dau ten|keep (my )?(name|identity) (confidential|secret|private)|anonymous|"
    r"do not (publish|disclose|share) my (name|identity|details))")

# Phrases that introduce a name (folded, longest first). `any_case`: the name may be typed in lower case
# ("toi ten la nguyen van an"); otherwise only capitalised words count ("Tôi là Nguyễn Văn An", not
# "tôi là người dân ở đây").
_NAME_TRIGGERS: tuple[tuple[str, bool], ...] = tuple(sorted((
    ("ten toi la", True), ("toi ten la", True), ("toi ten", True), ("ten toi", True), ("ten em la", True),
    ("em ten la", True), ("em ten", True), ("ten minh la", True), ("minh ten la", True), ("minh ten", True),
    ("chau ten la", True), ("chau ten", True), ("con ten la", True), ("con ten", True), ("ho ten", True),
    ("ho va ten", True), ("ten nguoi bao", True), ("nguoi bao tin", False), ("nguoi bao", False),
    ("nguoi phan anh", False), ("nguoi gui", False), ("toi la", False), ("em la", False), ("minh la", False),
    ("chau la", False), ("chi la", False), ("anh la", False), ("co la", False), ("my name is", True),
    ("i am", False), ("ten la", True), ("ky ten", False), ("tui ten la", True), ("tui ten", True),
    ("ten tui la", True), ("ten tui", True), ("tui la", False), ("ten", False), ("chi ten", False),
    ("anh ten", False), ("chu ten", False), ("bac ten", False), ("di ten", False),
    # A signature under the closing formula ("Trân trọng,\nNguyễn Văn An").
    ("tran trong", False), ("kinh thu", False), ("than ai", False), ("tran trong cam on", False),
), key=lambda t: -len(t[0])))
# Honorifics before a capitalised name ("ông Canarylong", "chị Lan"); only when written in lower case, so
# place names that begin with one ("cầu Ông Lãnh", "chợ Bà Chiểu") stay.
# Without diacritics only the unambiguous ones: "ba", "co", "di", "cau", "bac" are also "bà/bá", "có", "đi",
# "cầu", "Bắc" before place names ("toi di Cho Ben Thanh", "cau Ong Lanh").
_HONORIFIC = re.compile(r"(?<![\w])(ông|bà|anh|chị|cô|chú|bác|dì|cậu|em|ong|chu|mr\.?|mrs\.?|ms\.?)"
                        r"[ \u00a0]+(?=[^\W\d_])")
# Where the reporter lives ("nhà 12 hẻm …", "địa chỉ: …", "sống tại …"): up to the end of the clause. The place
# of the incident is published from the classifier's street and ward (ingest/public.py), never a house number.
_RESIDENCE = re.compile(
    r"(?<!\w)(dia chi|song o|song tai|ngu o|ngu tai|cu tru|thuong tru|tam tru|o tai nha|"
    r"nha (?:toi|em|minh|tui|chi|anh|con|chau)(?: o| tai| so)?|nha so|nha o|nha(?= ?\d))(?!\w)")
_TRIGGER = re.compile(r"(?<!\w)(" + "|".join(re.escape(t) for t, _ in _NAME_TRIGGERS) + r")(?!\w)")
_ANY_CASE = dict(_NAME_TRIGGERS)
# Triggers that are ordinary words too ("con đường tên Lê Lợi"): they introduce a name only before a colon.
_COLON_ONLY = frozenset({"ten"})
# Words that end a lower-case name ("toi ten la nguyen van an o quan 1"): places, verbs, fillers (folded).
_NAME_STOP = frozenset("""o tai song nha so phan anh xin muon bao va co dang hien la sdt dt dien thoai
so duong pho phuong quan huyen xa ap to khu can ho chung cu gan ben canh truoc sau trong ngoai cua cho nay
the and from at in of living live call phone email gui goi nam tuoi""".split())
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
MAX_NAME_WORDS = 5


def requests_confidentiality(text: str | None) -> bool:
    return bool(text) and _CONFIDENTIAL.search(fold(text or "")) is not None


def is_confidential(message: InboundMessage) -> bool:
    """The app's flag, or a request written in the text or subject, on any channel (Art. 5, 9)."""
    return (message.reporter.confidential or requests_confidentiality(message.text)
            or requests_confidentiality(message.subject))


class _FoldOne(dict[int, str]):
    """str.translate table: each character to `fold` of it alone, filled on first sight (the Basic Multilingual
    Plane only is remembered, so hostile input cannot grow it past 65,536 entries)."""

    def __missing__(self, code: int) -> str:
        value = fold(chr(code))
        if code < 0x10000:
            self[code] = value
        return value


class _FoldsToOther(dict[int, int | None]):
    """str.translate table keeping only the characters that do not fold to exactly one (a lone combining mark folds
    to none, a Hangul syllable to three): text.translate(it) is empty when the fast path's index is exact."""

    def __missing__(self, code: int) -> int | None:
        value = None if len(fold(chr(code))) == 1 else code
        if code < 0x10000:
            self[code] = value
        return value


_FOLD_ONE = _FoldOne()
_FOLDS_TO_OTHER = _FoldsToOther()


def _folded_with_index(text: str) -> tuple[str, Sequence[int]]:
    """`fold(text)` char by char, with the index in `text` of each folded char, to map matches back.

    Almost always every character folds to exactly one ("Ấ" -> "a", "đ" -> "d"): then one C-level translate and
    the identity index do it. The loop per character (25 ms for a 20,000-character description, run several times
    per report on every public page and list) is left for the rare text with a character that folds to more or
    fewer."""
    if not text.translate(_FOLDS_TO_OTHER):
        return text.translate(_FOLD_ONE), range(len(text))
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        for f in fold(ch):
            out.append(f)
            index.append(i)
    return "".join(out), index


def _replace(text: str, spans: Iterable[tuple[int, int, str]]) -> str:
    """Replace non-overlapping spans (the earliest, then longest, wins an overlap)."""
    chosen: list[tuple[int, int, str]] = []
    for start, end, mark in sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]))):
        if chosen and start < chosen[-1][1]:
            continue
        chosen.append((start, end, mark))
    for start, end, mark in reversed(chosen):
        text = text[:start] + mark + text[end:]
    return text


# Just before a number: it is the daemon's own (CASE-000123, INC-000123), as LONG_NUMBER below leaves it too. Only
# the daemon's width (6 digits, 7 past a million incidents) is its own: "CASE-0901234567" is a phone number behind
# the prefix, and "INC-079203005678" an ID number, whoever typed them.
_OWN_NUMBER = re.compile(r"(?<![^\W_])(?:INC|CASE)-$")
OWN_DIGITS = (6, 7)


_OWN_LEAD = re.compile(r"\d{6,7}(?!\d)")


def _number_spans(text: str, folded: str, index: list[int]) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for m in NUMBER.finditer(text):
        start, end = m.start(), m.end()
        lead = _OWN_LEAD.match(text, start, end)
        if lead and _OWN_NUMBER.search(text, max(0, start - 5), start):
            # The daemon's own case and incident numbers are nobody's personal data, also after an identity word
            # ("CCCD …; trùng INC-000001" in an agency's note): staff must tell which case a text names. Groups
            # joined to it ("INC-000123 0901234567") are judged on their own.
            rest = NUMBER.search(text, lead.end(), end)
            if rest is None:
                continue
            start, end = rest.start(), rest.end()
        span = _number_span(text, start, end)
        if span is not None:
            spans.append(span)
    for m in PASSPORT.finditer(text):
        spans.append((m.start(), m.end(), NUMBER_MARK))
    return spans


def _number_span(text: str, start: int, end: int) -> tuple[int, int, str] | None:
    """The mark for the digit run text[start:end], or None when it is nobody's personal data."""
    raw = text[start:end]
    if DATES.fullmatch(raw):
        return None
    digits = "".join(ch for ch in raw if ch.isdecimal())
    n = len(digits)
    if n < 6:
        return None
    # The nearest context word in the 30 characters before says what a number is.
    context = [c.lastgroup for c in _CONTEXT.finditer(fold(text[max(0, start - 30):start]))]
    nearest = context[-1] if context else None
    account = nearest == "id"
    is_phone = not account and ((digits.startswith("0") and n in (10, 11))
                                or (digits.startswith("84") and n in (11, 12)))
    if not is_phone and _AMOUNT.match(raw.strip()) and _CURRENCY.match(fold(text[end:end + 8])):
        return None  # "12.500.000.000 đồng": an amount, not an account
    if not is_phone and n < 9:
        # Short numbers are personal only after an identity, account or phone word.
        if nearest is None:
            return None
        is_phone = nearest == "phone"
    return start, end, PHONE_MARK if is_phone else NUMBER_MARK


def _spelled_number_spans(folded: str, index: Sequence[int]) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for m in SPELLED_NUMBER.finditer(folded):
        run = m.group()
        # "năm 2024, năm 2025": the year said as years are, not digits of a number (review of 47d8016: two of
        # them made 10 "digits" and were hidden from public pages).
        # Only where "năm" is not itself a digit of the number ("không chín không năm 2012 345": five, then 2012).
        # (The few characters before it are enough, and keep a run of many years linear.)
        years = sum(1 for y in _YEAR.finditer(run) if not _SPELLED_BEFORE.search(run[max(0, y.start() - 12):y.start()]))
        words = len(_SPELLED_WORD.findall(run)) - years
        digits = words + sum(len(d) for d in re.findall(r"\d+", run)) - 4 * years
        if words < 2 or digits < 9:
            continue
        # As for digits: after an identity or account word it is that number, else one led by 0 is a phone.
        context = [c.lastgroup for c in _CONTEXT.finditer(folded[max(0, m.start() - 30):m.start()])]
        lead = run.split(None, 1)[0].strip(",.-")
        is_phone = (context[-1:] != ["id"]) and (lead in ("khong", "zero", "oh") or lead.startswith("0"))
        mark = PHONE_MARK if is_phone else NUMBER_MARK
        spans.append((index[m.start()], index[m.end() - 1] + 1, mark))
    return spans


def _name_spans(text: str, folded: str, index: list[int]) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for m in _TRIGGER.finditer(folded):
        any_case = _ANY_CASE[m.group(1)]
        pos = index[m.end() - 1] + 1  # in `text`, just after the trigger
        rest = text[pos:pos + 120]
        lead = re.match(r"[\s:,\-–—]*(?:(?:là|la)\b)?[\s:\-–—]*", rest, re.IGNORECASE)
        assert lead is not None
        colon = ":" in lead.group()
        if m.group(1) in _COLON_ONLY and not colon:
            continue
        cursor = lead.end()
        words: list[tuple[int, int]] = []
        capitalised: bool | None = None
        while len(words) < MAX_NAME_WORDS:
            w = _WORD.match(rest, cursor)
            if w is None:
                break
            word = w.group()
            upper = word[0].isupper()
            if capitalised is None:
                capitalised = upper
                if not upper and not (any_case or colon):
                    break
            if capitalised and not upper:
                break
            if not capitalised and fold(word) in _NAME_STOP:
                break
            words.append((w.start(), w.end()))
            gap = re.match(r"[ \u00a0]+", rest[w.end():])
            if gap is None:
                break  # punctuation or a line break ends the name
            cursor = w.end() + gap.end()
        if words:
            spans.append((pos + words[0][0], pos + words[-1][1], NAME_MARK))
    return spans


def _honorific_spans(text: str) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for m in _HONORIFIC.finditer(text):
        if not m.group(1)[0].islower():
            continue
        cursor, words = m.end(), []
        while len(words) < MAX_NAME_WORDS:
            w = _WORD.match(text, cursor)
            if w is None or not w.group()[0].isupper():
                break
            words.append((w.start(), w.end()))
            gap = re.match(r"[ \u00a0]+", text[w.end():])
            if gap is None:
                break
            cursor = w.end() + gap.end()
        if words:
            spans.append((words[0][0], words[-1][1], NAME_MARK))
    return spans


def _residence_spans(text: str, folded: str, index: list[int]) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for m in _RESIDENCE.finditer(folded):
        start = index[m.end() - 1] + 1
        clause = re.match(r"[\s:\-–]*([^,.;\n()]{1,80})", text[start:])
        if clause is None or not clause.group(1).strip():
            continue
        # "nhà" alone counts only before a house number ("nhà 12 hẻm …"), not "trước nhà bị ngập".
        if m.group(1) == "nha" and not clause.group(1).lstrip()[:1].isdigit():
            continue
        spans.append((start + clause.start(1), start + clause.end(1), ADDRESS_MARK))
    return spans


# Characters that show nothing (zero-width spaces and joiners, soft hyphen, word joiner, bidi controls, BOM: Unicode
# category Cf): typed inside a number or an address ("0909\u200b123\u200b456") they split it for a pattern and not
# for a reader, and a right-to-left override makes a page show text in another order than it is stored.
class _Invisible(dict[int, int | None]):
    """str.translate table deleting those, filled per code point on first sight (as ingest/text.py's marks table:
    the Basic Multilingual Plane only is remembered, so hostile input cannot grow it past 65,536 entries)."""

    def __missing__(self, code: int) -> int | None:
        value = None if unicodedata.category(chr(code)) == "Cf" else code
        if code < 0x10000:
            self[code] = value
        return value


_INVISIBLE = _Invisible()


def _readable(text: str) -> str:
    """What the patterns read and the public sees: NFKC (fullwidth "＠" and digits, compatibility spaces become
    the plain ones) without invisible characters."""
    return unicodedata.normalize("NFKC", text.translate(_INVISIBLE))


def _is_handle(at: str, word: str) -> bool:
    """Whether the word after a network's name ("zalo: …", "fb: …") is somebody's handle: always, unless it is one
    of the words a network's answer in a log line is made of (NOT_HANDLES) and written without "@"."""
    word = word.strip(".-")
    if not word:
        return False
    return bool(at) or fold(word).lower() not in NOT_HANDLES


def redact(text: str) -> str:
    """The text with every kind of personal data above replaced by a marker."""
    if not text:
        return text
    text = _readable(text)
    spans = [(m.start(), m.end(), EMAIL_MARK) for m in EMAIL.finditer(text)]
    spans += [(m.start(), m.end(), EMAIL_MARK) for m in OBFUSCATED_EMAIL.finditer(text)]
    spans += [(m.start(), m.end(), REDACTED) for m in PROFILE.finditer(text)]
    spans += [(m.start(2), m.end(2), REDACTED) for m in HANDLE.finditer(text) if _is_handle(m.group(1), m.group(2))]
    folded, index = _folded_with_index(text)
    spans += _number_spans(text, folded, index)
    spans += _spelled_number_spans(folded, index)
    spans += _name_spans(text, folded, index)
    spans += _honorific_spans(text)
    spans += _residence_spans(text, folded, index)
    return _replace(text, spans)


# A run of 5 or more digits not part of a word: a chat or user id (Telegram's have 8 to 10 digits; `redact` leaves
# those below 9 digits without a word saying what they are), an account, a record number. Shorter numbers stay
# (an HTTP status, a count, seconds), so an error still says what went wrong. The daemon's own case and incident
# numbers (CASE-000123, INC-000123: in queue subjects, moves and merges) are nobody's personal data and stay.
LONG_NUMBER = re.compile(r"(?<![^\W_])((?:INC|CASE)-)?(\d{5,})(?![^\W_])")


def _long_number(m: re.Match[str]) -> str:
    prefix, digits = m.group(1), m.group(2)
    return m.group() if prefix and len(digits) in OWN_DIGITS else (prefix or "") + REDACTED


def redact_ids(text: str) -> str:
    """`redact`, and every long number too: for texts that quote a peer's answer or an exception (a job's last
    error), where a number is far more often somebody's id than something people need to read."""
    return LONG_NUMBER.sub(_long_number, redact(text)) if text else text


def redact_value(text: str, value: str | None) -> str:
    """Remove `value` from `text`, also when typed without diacritics, in another case or spacing."""
    if not value or len(value.strip()) < 3:
        return text
    text = _readable(text)
    words = fold(_readable(value)).split()
    if not words:
        return text
    pattern = re.compile(r"(?<!\w)" + r"[\s,.\-]+".join(re.escape(w) for w in words) + r"(?!\w)")
    folded, index = _folded_with_index(text)
    spans = [(index[m.start()], index[m.end() - 1] + 1, REDACTED) for m in pattern.finditer(folded)
             if m.end() > m.start()]
    return _replace(text, spans)


def redact_message(message: InboundMessage, text: str | None = None) -> str:
    """`text` (default: the report's own) with personal data removed, and the reporter's own name, address,
    e-mail and phone wherever it repeats them."""
    out = message.text if text is None else text
    r = message.reporter
    for value in (r.name, r.address, r.email, r.phone):
        out = redact_value(out, value)
    return redact(out)


def pseudonym(value: str, key: str, prefix: str) -> str:
    """A stable stand-in for a chat id, phone or address where people read it (operators' job lists, logs):
    `prefix-` and 12 letters of an HMAC keyed by a secret the caller holds, so the same value always reads the
    same (an admin finds every job of one chat) but cannot be turned back into it, not even by trying every
    phone number. Letters only, so `redact` never takes it for a number."""
    digest = hmac.new(key.encode(), value.encode(), hashlib.sha256).digest()
    return prefix + "-" + "".join(chr(ord("a") + b % 26) for b in digest[:12])
