"""Agency answers that arrive as replies to the dispatch email, and the proof they need before a case changes.

`parse_email_reply` is pure: it reads the case the subject claims (`[1022 #CASE-…]`, a guessable claim, never
proof), the Message-IDs the reply answers, and the answer (keywords in the reply's own text, Vietnamese with or
without diacritics, or English). `email_answer_checks` is pure too: given what the store knows, it lists every
reason the mail may not change the case. `apply_email_reply` does the lookups and either applies the answer or
records it as a note on the case for operators to confirm (event `agency_answer_unverified`, shown in the
console timeline), never a state change.

A state change needs all of:
- proof the mail answers our dispatch of THIS case to THIS agency: the dispatch's random `msg_…` id (96 bits),
  either in `In-Reply-To`/`References` (the dispatch Message-ID) or in the reply address we set
  (`Reply-To: <mailbox>+msg_…@…`); a token of another case, or of the agency that held the case before a
  re-route, proves nothing;
- a `From` address (never `Reply-To`) among the addresses of the agency holding the case (its `reply_from`
  and its email targets): the operator unit's mailbox acts only on the operator unit's cases;
- sender authentication: a trusted relay's `Authentication-Results` verdict "pass" (channels/mail_auth.py);
  "fail" always stops, "none" stops unless `[dispatch.email_answers] require_sender_auth = false`;
- an answer the agency API would accept from that agency (CaseBook.apply_answer, the one rule for every path).

The email channels store such a mail (raw, fsynced) and acknowledge it, queueing an `agency_email_reply` job
(ingest/jobs.py AgencyEmailReplyJob) in the same transaction; dispatch's worker applies it with
`apply_email_reply_in(tx, book, reply)` in the transaction that finishes the job. The same, standalone:

    outcome = await dispatch.answers.apply_email_reply(
        store, settings, from_addr="qldt@quan1.gov.vn",  # the From header's single address
        subject=..., in_reply_to=..., references=[...], body=plain_text,
        reply_tokens=("msg_…",),   # sub-address tags of the recipient addresses (RCPT TO, To, Delivered-To…)
        sender_auth="pass",        # channels.mail_auth.sender_verdict
        attachments=(Attachment, ...), message_id="<…>")   # a redelivered mail is a no-op
    outcome.status in {"applied", "duplicate", "unmatched", "unverified", "rejected"}

"unmatched" means the mail neither carries one of our tokens nor names an existing case: an ordinary mail.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config.directory import Directory, load_directory
from config.dispatch import DispatchConfig, dispatch_settings
from ingest.agency_mail import MSG_ID, REPLY_TOKEN, SUBJECT_TOKEN
from ingest.clock import VN_TZ
from ingest.records import Attachment
from ingest.jobs import AgencyEmailReplyJob
from ingest.store import Store, Tx
from ingest.text import fold

from .calendar import load_calendar
from .cases import AnswerResult, CaseBook, Forbidden, NotFound
from .policy import AnswerRejected

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


UNVERIFIED_EVENT = "agency_answer_unverified"


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailReplyOutcome:
    status: str  # applied, duplicate, unmatched, unverified, rejected
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




def agency_addresses(cfg: DispatchConfig, agency: str) -> frozenset[str]:
    """The addresses that speak for `agency`: its `reply_from` and the mailboxes we dispatch to."""
    a = cfg.agencies.get(agency)
    if a is None:
        return frozenset()
    allowed = {x.lower() for x in a.reply_from}
    for t in a.targets:
        if t.kind == "email":
            allowed |= {x.lower() for x in (*t.to, *t.cc)}
    return frozenset(allowed)


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """What the store knows about one reply, for the pure check below."""

    claimed_case: str | None  # from the subject: a claim, not proof
    proven: frozenset[tuple[str, str]]  # (case_id, agency) of the dispatches whose token the mail carries
    case_id: str | None  # the case the mail would act on
    holder: str | None  # the agency holding that case now
    sender: str | None  # the From address
    sender_auth: str  # "pass", "fail" or "none"
    kind: str | None  # the answer found in the text


def email_answer_checks(ev: Evidence, addresses: frozenset[str], require_sender_auth: bool) -> list[str]:
    """Every reason this reply may not change the case; empty means it may."""
    reasons: list[str] = []
    cases = {c for c, _ in ev.proven}
    if not ev.proven:
        reasons.append("no_reply_token")
    elif len(cases) > 1:
        reasons.append("tokens_of_several_cases")
    elif ev.claimed_case is not None and ev.claimed_case not in cases:
        reasons.append("token_of_another_case")
    elif ev.holder not in {a for c, a in ev.proven if c == ev.case_id}:
        reasons.append("token_of_another_agency")  # e.g. the agency that held the case before a re-route
    if not ev.sender:
        reasons.append("no_single_from_address")
    elif ev.sender not in addresses:
        reasons.append("sender_not_agency_address")
    if ev.sender_auth == "fail":
        reasons.append("sender_authentication_failed")
    elif ev.sender_auth != "pass" and require_sender_auth:
        reasons.append("sender_not_authenticated")
    if ev.kind is None:
        reasons.append("no_answer_keyword")
    return reasons


_DIRECTORY: dict[str, Directory] = {}


def _book(store: Store, settings: Any, directory: Directory | None) -> CaseBook:
    cfg = dispatch_settings(settings)
    if directory is None:
        path = settings.data.agencies
        key = f"{path}|{settings.data.structure}"
        if key not in _DIRECTORY:
            _DIRECTORY[key] = load_directory(path, settings.data.structure)
        directory = _DIRECTORY[key]
    return CaseBook(store, directory, cfg, load_calendar(cfg.clocks.calendar, cfg.clocks.extra_holidays),
                    settings.http.public_base_url)


async def apply_email_reply(store: Store, settings: Any, *, from_addr: str | None, subject: str | None, body: str,
                            in_reply_to: str | None = None, references: Sequence[str] = (),
                            attachments: Sequence[Attachment] = (), message_id: str | None = None,
                            reply_tokens: Sequence[str] = (), sender_auth: str = "none",
                            directory: Directory | None = None) -> EmailReplyOutcome:
    """`apply_email_reply_in` in a transaction of its own."""
    reply = AgencyEmailReplyJob(from_addr=from_addr, subject=subject, body=body, in_reply_to=in_reply_to,
                                references=tuple(references), attachments=tuple(attachments), message_id=message_id,
                                reply_tokens=tuple(reply_tokens), sender_auth=sender_auth)
    async with store.transaction() as tx:
        return await apply_email_reply_in(tx, _book(store, settings, directory), reply)


async def apply_email_reply_in(tx: Tx, book: CaseBook, reply: AgencyEmailReplyJob) -> EmailReplyOutcome:
    """Apply the reply as the agency's answer when every check passes, else keep it as a note (module docstring),
    in the caller's transaction: the reply's job finishes in the same one."""
    cfg = book.cfg
    parsed = parse_email_reply(reply.subject, reply.in_reply_to, reply.references, reply.body)
    tokens = tuple(dict.fromkeys([*parsed.msg_ids, *(t.lower() for t in reply.reply_tokens
                                                     if REPLY_TOKEN.fullmatch(t.lower()))]))[:50]
    proven: frozenset[tuple[str, str]] = frozenset()
    if tokens:
        marks = ",".join("?" * len(tokens))
        rows = await tx.fetchall(f"SELECT DISTINCT case_id, agency FROM deliveries WHERE msg_id IN ({marks})",
                                 tokens)
        proven = frozenset((r["case_id"], r["agency"]) for r in rows)
    if not proven and parsed.case_id is None:
        return EmailReplyOutcome(status="unmatched")
    proven_cases = sorted({c for c, _ in proven})
    case_id = parsed.case_id if parsed.case_id is not None else (proven_cases[0] if proven_cases else None)
    case = await tx.fetchone("SELECT agency, report_id FROM cases WHERE id=?", (case_id,))
    if case is None:
        if not proven_cases:
            return EmailReplyOutcome(status="unmatched", case_id=case_id)
        # The subject names a case that does not exist: the note goes on the case the token proves.
        case_id = proven_cases[0]
        case = await tx.fetchone("SELECT agency, report_id FROM cases WHERE id=?", (case_id,))
        assert case is not None
    assert case_id is not None
    sender = (reply.from_addr or "").strip().lower() or None
    evidence = Evidence(claimed_case=parsed.case_id, proven=proven, case_id=case_id, holder=case["agency"],
                        sender=sender, sender_auth=reply.sender_auth, kind=parsed.kind)
    reasons = email_answer_checks(evidence, agency_addresses(cfg, case["agency"]),
                                  cfg.email_answers.require_sender_auth)
    if reasons:
        await _note(tx, case["report_id"], case_id, sender, parsed, reply.message_id, reasons)
        return EmailReplyOutcome(status="unverified", case_id=case_id, kind=parsed.kind, detail=",".join(reasons))
    assert parsed.kind is not None
    data = dict(parsed.data)
    if reply.attachments:
        data["photos"] = [a.sha256 for a in reply.attachments if a.content_type.startswith("image/")]
    # A savepoint: an answer the policy refuses leaves nothing of itself, only the note below.
    await tx.execute("SAVEPOINT email_answer")
    try:
        result: AnswerResult = await book.apply_answer_in(
            tx, case["agency"], case_id, parsed.kind, data, source="email",
            idem_key=f"email:{reply.message_id}" if reply.message_id else None, note=parsed.note[:4000])
    except (AnswerRejected, Forbidden, NotFound) as exc:
        await tx.execute("ROLLBACK TO email_answer")
        await tx.execute("RELEASE email_answer")
        await _note(tx, case["report_id"], case_id, sender, parsed, reply.message_id, [f"not_applicable: {exc}"])
        return EmailReplyOutcome(status="rejected", case_id=case_id, kind=parsed.kind, detail=str(exc))
    await tx.execute("RELEASE email_answer")
    return EmailReplyOutcome(status="duplicate" if result.duplicate else "applied", case_id=case_id,
                             kind=parsed.kind)


async def _note(tx: Tx, report_id: int, case_id: str, sender: str | None, parsed: ParsedReply,
                message_id: str | None, reasons: list[str]) -> None:
    """A reply that may not change the case, kept on it for operators to confirm (once per mail)."""
    if message_id and await tx.fetchone(
            "SELECT 1 FROM events WHERE report_id=? AND kind=? AND json_extract(data, '$.message_id')=?",
            (report_id, UNVERIFIED_EVENT, message_id)):
        return
    await tx.event(report_id, UNVERIFIED_EVENT, "email", {
        "case_id": case_id, "from": sender, "kind": parsed.kind, "reasons": reasons,
        "message_id": message_id, "note": parsed.note[:2000]})
