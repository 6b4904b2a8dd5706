"""The kinds of queued work and one typed payload record for each (frozen, JSON with a schema version, like
`ingest/records.py`): what one stage hands to another through the queue (ingest/queue.py).

A stage enqueues `tx.enqueue(kind, report_id, Record(...))` and its worker reads `job.payload` as that record.
Payloads stored by an older daemon as plain JSON objects decode into the same records (unknown keys ignored).
What a kind's death or replay means beyond the job row is registered by the module that owns the kind
(`ingest.queue.register_kind` with hooks), replacing the plain registration made here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .queue import JobKind, register_kind, side_job_dead, side_job_replayed
from .records import Attachment

CLASSIFY, DEDUPE, DISPATCH, NOTIFY = "classify", "dedupe", "dispatch", "notify"
DELIVER = "deliver"  # one agency delivery (dispatch/delivery.py)
TELEGRAM_SEND = "telegram_send"  # one message of a Telegram bot (channels/telegram.py)
AGENCY_EMAIL_REPLY = "agency_email_reply"  # an agency's emailed answer, applied by dispatch (dispatch/answers.py)
MESSENGER_MEDIA = "messenger_media"  # per instance: "messenger_media:<channel name>"
MESSENGER_ASK = "messenger_ask"  # per instance: ask a reporter where, for the job's report (channels/messenger.py)
ESCALATE = "escalate"  # one escalation digest to an agency's leadership or the operator unit (dispatch/clocks.py)
REPORTER_FOLLOW_UP = "reporter_follow_up"  # a reporter wrote again about a report (dispatch: a dispute or a note)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassifyJob:
    """A stored report to classify (queued by the store with the report itself)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DedupeJob:
    # True when an operator's review decision sends the report back: it already has its incident.
    after_review: bool = False
    # Dispatch closed (`incident_state` "closed", with the case's final state `closed_as` at `at`) or reopened
    # ("open") the case of `incident_id`: the incident follows its case, written by dedupe in its own transaction.
    # On the dedupe queue itself, so a report queued after the closure is matched against the closed incident.
    incident_id: str | None = None
    incident_state: str | None = None
    closed_as: str | None = None
    at: float | None = None
    # The case's state version of that change (cases.state_version: grows by one with each closing and reopening of
    # the case): dedupe applies a change only when newer than the last it applied, so jobs of one case may run in
    # any order, on any instance, retried or replayed, and the incident ends as the case's latest state. None: a
    # job queued before versions existed (dedupe/service.py `applies`).
    version: int | None = None
    # Dispatch opened the case of `incident_id` with the job's report, or moved a case there, on an incident it was
    # not queued for (an operator's merge since): that report is the incident's case report (dispatch_report_id).
    # No version: every such job of an incident names the same report, in any order (dedupe/service.py
    # case_report_writes says why).
    case_report: bool = False


def reopening_subject(incident_id: str) -> str:
    """The subject of the dedupe job that reopens `incident_id` (a disputed case): dedupe looks for it while it
    waits, so a report queued before it joins the incident instead of opening a recurrence."""
    return f"reopen:{incident_id}"


def case_report_subject(incident_id: str) -> str:
    """The subject of the dedupe job that names the report of `incident_id`'s case (DedupeJob.case_report): what
    its alert names when the job dies, also when its payload no longer decodes (dedupe/service.py)."""
    return f"case_report:{incident_id}"


def closing_subject(incident_id: str) -> str:
    """The subject of the dedupe job that closes `incident_id` with its case: dedupe looks for a later change of the
    case still waiting (this one and `reopening_subject`), which overtakes a closing (dedupe/service.py)."""
    return f"close:{incident_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchJob:
    incident_id: str | None = None  # None: the report's own incident
    # An operator merged `incident_id` into `merged_into`: its case is moved or closed (dedupe/operations.py).
    merged_into: str | None = None
    actor: str | None = None
    # The closed incident this one repeats (dedupe's recurrence link), kept on the case for agencies and operators.
    recurrence_of: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyJob:
    """A message to the reporter of the job's report (dispatch/notify.py renders `template`)."""

    template: str
    case_id: str | None = None
    incident_id: str | None = None
    reason: str | None = None  # why a report was rejected or is out of scope
    report_id: int | None = None  # the earlier report a follow-up joined


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaRef:
    kind: str
    url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessengerMediaJob:
    """Media of a Messenger report that did not arrive within the intake budget, fetched later."""

    media: tuple[MediaRef, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MessengerAskJob:
    """Ask the reporter of the job's report where the problem is (the report names no place)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverJob:
    """One outbox row (`deliveries.id`) to send to its agency endpoint; its webhook-id never changes."""

    delivery_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EscalateJob:
    """One `escalations` row (a digest of warned or breached clocks) to send to its recipient."""

    escalation_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TelegramSendJob:
    instance: str
    chat_id: int
    text: str
    keyboard: str | None = None  # "location" | "contact" | "remove"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgencyEmailReplyJob:
    """An agency's mail answering a dispatch email, stored as report `report_id` (raw kept, never routed) and
    applied by dispatch in its own transaction. Every field is what the mail said; proof is checked by dispatch."""

    from_addr: str | None
    subject: str | None
    body: str
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    message_id: str | None = None
    reply_tokens: tuple[str, ...] = ()  # sub-address tags of the addresses the mail was delivered to
    sender_auth: str = "none"  # our relay's Authentication-Results verdict: pass, fail or none


@dataclass(frozen=True, slots=True, kw_only=True)
class ReporterFollowUpJob:
    """A reporter's later message about the job's report (an email reply threaded onto it): dispatch decides
    whether it disputes the report's result (its words, its window) or stays a note on the timeline."""

    text: str
    channel: str
    # Whether the mail is proven to be the reporter's: threaded by a Message-ID we sent them (or their own earlier
    # one), or by a report number in the subject with our relay's DMARC/DKIM/SPF pass for its From. A claim alone
    # (a From anyone can write, a number anyone can guess) stays a note and never disputes a result.
    proven: bool = True


for _name, _payload in ((CLASSIFY, ClassifyJob), (DEDUPE, DedupeJob), (DISPATCH, DispatchJob), (NOTIFY, NotifyJob),
                        (MESSENGER_MEDIA, MessengerMediaJob), (MESSENGER_ASK, MessengerAskJob), (DELIVER, DeliverJob),
                        (TELEGRAM_SEND, TelegramSendJob), (AGENCY_EMAIL_REPLY, AgencyEmailReplyJob),
                        (REPORTER_FOLLOW_UP, ReporterFollowUpJob), (ESCALATE, EscalateJob)):
    register_kind(JobKind(_name, _payload))

# Work about a report that is none of its stages: its death must not mark the report failed (ingest/queue.py).
# side_job_dead reads no payload: it is also what a side job whose payload no longer decodes leaves.
for _name in (MESSENGER_MEDIA, MESSENGER_ASK, REPORTER_FOLLOW_UP):
    register_kind(JobKind(_name, on_dead=side_job_dead, on_replay=side_job_replayed, on_undecodable=side_job_dead))
