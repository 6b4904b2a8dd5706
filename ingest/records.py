"""Typed records passed between stages, and their versioned JSON encoding.

Records are immutable; a stage that changes something writes a new record. Every encoded record carries
`schema_version` and `type` so that rows written by an older daemon can still be read (no pickle).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

SCHEMA_VERSION = 1

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reporter:
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    address: str | None = None
    confidential: bool = False
    # Channel-specific address to answer on: Messenger PSID, Telegram chat id, email Message-ID...
    reply_to: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    sha256: str
    content_type: str
    size: int
    filename: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundMessage:
    """What a channel adapter hands to the store: one report as the channel saw it."""

    channel: str  # channel kind: app, phone, email, messenger, telegram, sms
    channel_instance: str  # the configured instance name, e.g. "app" or "mailbox-1"
    idempotency_key: str
    received_at: str  # ISO 8601 with offset
    text: str
    subject: str | None = None
    reporter: Reporter = field(default_factory=Reporter)
    lat: float | None = None
    lon: float | None = None
    attachments: tuple[Attachment, ...] = ()
    external_id: str | None = None  # the id the source gave it (Open311 token, transcript id, dev-set id)
    service_code: str | None = None  # topic chosen by the reporter (Open311), a hint only
    flags: tuple[str, ...] = ()  # e.g. "auto_reply", "bounce": stored but never routed
    thread_ref: str | None = None  # reply to an earlier case (email In-Reply-To, case token)


@dataclass(frozen=True, slots=True, kw_only=True)
class Place:
    district: str | None = None
    ward: str | None = None
    street: str | None = None
    landmark: str | None = None
    house_number: str | None = None
    lat: float | None = None
    lon: float | None = None
    source: str | None = None  # "gps", "text", "reporter_address"
    # The 2025 map ([data] structure = "2025"): the new ward/commune's slug when one is certain, else the
    # candidate slugs the words allow (an old district alone, a split old ward). Old names stay in district/ward.
    unit: str | None = None
    unit_candidates: tuple[str, ...] = ()
    unit_label: str | None = None  # "Phường Bình Tiên (P.7, Q.6 cũ)": the new name with the old one people know


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    topic: str
    agency: str | None
    score: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    """The routing decision for one report."""

    status: str  # "route", "review", "rejected", "out_of_scope"
    topic: str
    category: str
    agency: str | None
    confidence: float
    place: Place = field(default_factory=Place)
    candidates: tuple[Candidate, ...] = ()
    reason: str | None = None  # stated reason for rejected / out_of_scope, shown to the reporter
    model_version: str | None = None
    language: str = "vi"
    note: str | None = None  # for operators only: why a report waits for review (e.g. an ambiguous word)


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentDecision:
    incident_id: str
    is_new: bool
    score: float = 1.0
    matched_report: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A leased unit of work of the queue (ingest/queue.py): `stage` is its kind, `payload` its kind's record."""

    id: int
    stage: str
    report_id: int | None
    attempts: int
    payload: Any
    # The fence of this lease: the job's count of leases ever given, never repeated (ingest/queue.py). `attempts`
    # is not one: a replay starts it again.
    lease_token: int = 0
    deadline_at: float | None = None  # past it a failing job is dead-lettered instead of retried
    subject: str | None = None  # what it acts on, for operators' filters (an endpoint, a chat)


# Report lifecycle states visible to operators.
REPORT_STATES = (
    "received",  # stored, waiting for classification
    "review",  # waiting for an operator decision
    "rejected",  # abusive / unlawful, reason told to reporter
    "out_of_scope",  # complaint or denunciation, guidance given
    "routed",  # classified, waiting for incident matching
    "duplicate",  # attached to an existing incident
    "dispatched",  # first report of its incident, case forwarded
    "closed",
    "ignored",  # auto-replies, bounces: kept, never routed
    "failed",  # dead-lettered in some stage
    "follow_up",  # a later message of an earlier report: lives on that report's timeline (ingest/followup.py)
)


def to_json(obj: Any) -> str:
    return json.dumps(_encode(obj), ensure_ascii=False, separators=(",", ":"))


def _encode(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"type": type(obj).__name__, "schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(obj):
            out[f.name] = _encode(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [_encode(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    return obj


def from_json(cls: type[T], data: str | bytes | dict[str, Any]) -> T:
    raw = json.loads(data) if isinstance(data, (str, bytes)) else data
    return _decoder(cls)(raw)


def _identity(raw: Any) -> Any:
    return raw


@functools.cache
def _decoder(cls: Any) -> typing.Callable[[Any], Any]:
    """The decoding function of a record type, built once per type: resolving type hints and walking the fields'
    types on every call cost more than the decoding itself (the incident window reads 140,000 rows at start).
    A value of a plain type is taken as it is; None stays None for every type."""
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        return _decoder(args[0]) if len(args) == 1 else _identity
    if origin is tuple:
        (item_type,) = typing.get_args(cls)[:1]
        item = _decoder(item_type)

        def decode_tuple(raw: Any) -> Any:
            return None if raw is None else tuple(item(x) for x in raw)
        return decode_tuple
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        decoders = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(cls)]
        plain = [k for k, dec in decoders if dec is _identity]
        nested = [(k, dec) for k, dec in decoders if dec is not _identity]
        name = cls.__name__

        def decode_record(raw: Any) -> Any:
            if raw is None:
                return None
            version = raw.get("schema_version", SCHEMA_VERSION)
            if version > SCHEMA_VERSION:
                raise ValueError(f"{name} has schema_version {version}, newer than this daemon")
            kwargs = {k: raw[k] for k in plain if k in raw}
            for k, dec in nested:
                if k in raw:
                    v = raw[k]
                    kwargs[k] = None if v is None else dec(v)
            return cls(**kwargs)
        return decode_record
    return _identity
