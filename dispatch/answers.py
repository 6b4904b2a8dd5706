"""Agency answers that arrive as replies to the dispatch email.

`parse_email_reply` is pure: it finds the case (subject token `[1022 #CASE-…]`, or the In-Reply-To/References
Message-ID of the dispatch mail) and the answer (keywords in the reply's own text, Vietnamese with or without
diacritics, or English). `apply_email_reply` checks the sender against the agency's addresses and applies it.

For the email channel engineer:

    outcome = await dispatch.answers.apply_email_reply(
        store, settings,
        from_addr="Phòng QLĐT <qldt@quan1.gov.vn>",  # the From header as received
        subject=msg["Subject"], in_reply_to=msg["In-Reply-To"], references=msg.get_all("References") or [],
        body=plain_text_part, attachments=(Attachment, ...),  # attachments already stored with store.put_blob
        message_id=msg["Message-ID"])                          # makes a redelivered mail a no-op
    outcome.status in {"applied", "duplicate", "unmatched", "unauthorised", "rejected"}

"unmatched" means the mail is not an answer to a case (treat it as a new report or quarantine it).
"""
from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config.directory import Directory, load_directory
from config.dispatch import dispatch_settings
from ingest.clock import VN_TZ
from ingest.records import Attachment
from ingest.store import Store
from ingest.text import fold

from .calendar import load_calendar
from .cases import AnswerResult, CaseBook, Forbidden, NotFound
from .policy import OPERATOR_UNIT, AnswerRejected

SUBJECT_TOKEN = re.compile(r"\[1022\s*#\s*(CASE-[A-Za-z0-9-]+)\]")
MSG_ID = re.compile(r"<(msg_[0-9a-f]+)@[^>]+>")
QUOTE_START = re.compile(r"^(on .+ wrote:|vào .+ đã viết:|-----\s*original message|from:\s)", re.I)

# Earliest match in the reply's own text wins; phrases are folded (no diacritics, lower case).
KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("returned", ("khong thuoc tham quyen", "khong thuoc chuc nang", "tra lai", "not ours",
                  "not our responsibility", "wrong agency")),
    ("false_report", ("phan anh sai", "phan anh khong dung", "khong co su viec", "khong dung su that",
                      "false report")),
    ("progress_report", ("bao cao tien do", "progress report")),
    ("in_progress", ("dang xu ly", "dang khac phuc", "in progress")),
    ("resolved", ("da xu ly xong", "da khac phuc xong", "da hoan thanh", "resolved", "fixed")),
    ("safety_measures", ("rao chan", "bien bao canh bao", "safety measures", "cordoned")),
    ("verified", ("xac minh dung", "da xac minh", "verified")),
    ("acknowledged", ("da tiep nhan", "acknowledged", "received")),
)

DATE_PATTERNS = (
    re.compile(r"(?P<h>\d{1,2})[:h](?P<mi>\d{2})?\s*(?:ngay\s*)?(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{4})"),
    re.compile(r"(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{4})(?:\s*(?:luc\s*)?(?P<h>\d{1,2})[:h](?P<mi>\d{2})?)?"),
    re.compile(r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})(?:[ t](?P<h>\d{2}):(?P<mi>\d{2}))?"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedReply:
    case_id: str | None
    msg_ids: tuple[str, ...]
    kind: str | None
    note: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailReplyOutcome:
    status: str  # applied, duplicate, unmatched, unauthorised, rejected
    case_id: str | None = None
    kind: str | None = None
    detail: str | None = None


def own_text(body: str) -> str:
    """The reply's own lines: quoted text and the quoted original below it are dropped."""
    lines = []
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith(">") or QUOTE_START.match(stripped):
            break
        lines.append(stripped)
    return "\n".join(lines).strip()


def parse_expected(folded: str) -> float | None:
    for pattern in DATE_PATTERNS:
        m = pattern.search(folded)
        if m:
            try:
                dt = datetime(int(m["y"]), int(m["m"]), int(m["d"]), int(m["h"] or 17), int(m["mi"] or 0),
                              tzinfo=VN_TZ)
            except ValueError:
                continue
            return dt.timestamp()
    return None


def parse_email_reply(subject: str | None, in_reply_to: str | None, references: Sequence[str], body: str
                      ) -> ParsedReply:
    m = SUBJECT_TOKEN.search(subject or "")
    case_id = m.group(1) if m else None
    msg_ids = tuple(dict.fromkeys(MSG_ID.findall(" ".join([in_reply_to or "", *references]))))
    text = own_text(body)
    folded = fold(text)
    best: tuple[int, int, str, str] | None = None
    for priority, (kind, phrases) in enumerate(KEYWORDS):
        for phrase in phrases:
            pos = folded.find(phrase)
            if pos >= 0 and (best is None or (pos, priority) < best[:2]):
                best = (pos, priority, kind, phrase)
    if best is None:
        return ParsedReply(case_id=case_id, msg_ids=msg_ids, kind=None, note=text)
    _, _, kind, phrase = best
    data: dict[str, Any] = {}
    if kind in ("in_progress", "progress_report"):
        expected = parse_expected(folded)
        if expected is not None:
            data["expected_completion"] = expected
    if kind == "returned":
        # The reason: what follows the keyword (after a colon or dash), else the whole reply.
        after = text[best[0] + len(phrase):].lstrip(" :-–—.,").strip()
        data["reason"] = after or text
        if "kiem tra thuc dia" in folded or "field check" in folded:
            data["field_check"] = True
    return ParsedReply(case_id=case_id, msg_ids=msg_ids, kind=kind, note=text, data=data)


_DIRECTORY: dict[str, Directory] = {}


async def apply_email_reply(store: Store, settings: Any, *, from_addr: str, subject: str | None, body: str,
                            in_reply_to: str | None = None, references: Sequence[str] = (),
                            attachments: Sequence[Attachment] = (), message_id: str | None = None,
                            directory: Directory | None = None) -> EmailReplyOutcome:
    """Map a parsed reply to an agency answer and apply it (see the module docstring)."""
    parsed = parse_email_reply(subject, in_reply_to, references, body)
    case_id = parsed.case_id
    if case_id is None and parsed.msg_ids:
        marks = ",".join("?" * len(parsed.msg_ids))
        row = await store.fetchone(f"SELECT case_id FROM deliveries WHERE msg_id IN ({marks})", parsed.msg_ids)
        case_id = row["case_id"] if row else None
    if case_id is None:
        return EmailReplyOutcome(status="unmatched")
    case = await store.fetchone("SELECT agency FROM cases WHERE id=?", (case_id,))
    if case is None:
        return EmailReplyOutcome(status="unmatched", case_id=case_id)
    cfg = dispatch_settings(settings)
    sender = email.utils.parseaddr(from_addr)[1].lower()
    agency = None
    for candidate in (case["agency"], OPERATOR_UNIT):
        a = cfg.agencies.get(candidate)
        if a is None:
            continue
        allowed = {x.lower() for x in a.reply_from}
        for t in a.targets:
            if t.kind == "email":
                allowed |= {x.lower() for x in (*t.to, *t.cc)}
        if sender and sender in allowed:
            agency = candidate
            break
    if agency is None:
        return EmailReplyOutcome(status="unauthorised", case_id=case_id, detail="sender is not the agency's address")
    if parsed.kind is None:
        return EmailReplyOutcome(status="rejected", case_id=case_id, detail="no answer keyword found")
    data = dict(parsed.data)
    if attachments:
        data["photos"] = [a.sha256 for a in attachments if a.content_type.startswith("image/")]
    if directory is None:
        path = settings.data.agencies
        key = str(path)
        if key not in _DIRECTORY:
            _DIRECTORY[key] = load_directory(path)
        directory = _DIRECTORY[key]
    book = CaseBook(store, directory, cfg, load_calendar(cfg.clocks.calendar, cfg.clocks.extra_holidays),
                    settings.http.public_base_url)
    try:
        result: AnswerResult = await book.apply_answer(
            agency, case_id, parsed.kind, data, source="email",
            idem_key=f"email:{message_id}" if message_id else None, note=parsed.note[:4000])
    except (AnswerRejected, Forbidden, NotFound) as exc:
        return EmailReplyOutcome(status="rejected", case_id=case_id, kind=parsed.kind, detail=str(exc))
    return EmailReplyOutcome(status="duplicate" if result.duplicate else "applied", case_id=case_id,
                             kind=parsed.kind)
