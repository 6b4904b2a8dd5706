"""What run_daemon.py hands to every component it wires: the shared context and the service protocol.

Components never import each other; they meet here. A component package exposes
`build(ctx: AppContext) -> list[Service]` and a module-level `MIGRATIONS` list.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from config.directory import Directory
from config.schema import Settings

from .clock import Clock
from .errors import PermanentError
from .leases import Leadership, LocalLeadership
from .store import Store, StoredReport


class Service(Protocol):
    name: str

    async def run(self) -> None:
        """Run until cancelled; on cancellation release anything held (leases, sockets) and return."""


class ReplySender(Protocol):
    """Sends a message back to a reporter on the channel the report came from (email, Messenger, ...).

    A sender whose send blocks (smtplib) also offers `threaded_reply(report, text) -> ThreadedReply`: the notify
    stage then runs it by ingest.worker.in_thread, so that a stop mid-send neither gives the job back while the
    thread is still sending (the same reply sent twice at once) nor loses its outcome."""

    async def send_reply(self, report: StoredReport, text: str) -> None:
        """Raise ingest.errors.TransientError to be retried, PermanentError to give up."""


@dataclass(frozen=True, slots=True)
class ThreadedReply:
    send: Callable[[], None]  # blocking, run in a worker thread; raises as send_reply would
    sent: Callable[[], Awaitable[None]]  # what send_reply records once the send went (on the loop)


@dataclass
class ReplyRegistry:
    senders: dict[str, ReplySender] = field(default_factory=dict)

    def register(self, channel_kind: str, sender: ReplySender) -> None:
        self.senders[channel_kind] = sender

    def get(self, channel_kind: str) -> ReplySender | None:
        return self.senders.get(channel_kind)


class InstanceReplies:
    """The one ReplySender of a channel kind with several configured instances (pages, bots): answers through
    the instance the report came in on, or the first one left when that instance was removed from config."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.instances: dict[str, ReplySender] = {}

    async def send_reply(self, report: StoredReport, text: str) -> None:
        sender = self.instances.get(report.message.channel_instance) or next(iter(self.instances.values()), None)
        if sender is None:
            raise PermanentError(f"no {self.kind} channel configured")
        await sender.send_reply(report, text)


def register_instance_reply(ctx: AppContext, kind: str, instance: str, sender: ReplySender) -> None:
    # Held in this generation's registry, not in ctx.published: a reload builds new channel objects.
    replies = ctx.replies.get(kind)
    if not isinstance(replies, InstanceReplies):
        replies = InstanceReplies(kind)
        ctx.replies.register(kind, replies)
    replies.instances[instance] = sender


# (text, lat, lon) -> whether the classifier's place finder puts the report in a district (or a 2025 unit).
PlaceFinder = Callable[[str, float | None, float | None], bool]
# (text, lat, lon) -> the names of the 2025 units the words could be in when they are several, else ().
UnitCandidates = Callable[[str, float | None, float | None], tuple[str, ...]]


class SmsSender(Protocol):
    """An SMS gateway client (dispatch.notify.SmsGateway)."""

    @property
    def configured(self) -> bool: ...

    async def send(self, to: str, text: str, message_id: str, now: float) -> None:
        """`message_id` is stable per message so the gateway drops repeats; raises Transient/PermanentError."""


@dataclass
class Published:
    """What a component offers the others in this process, one typed field each (None: the component that
    publishes it is not running here). Set by its owner when built; one instance lives across config reloads, so a
    loaded model is kept and a counter keeps counting."""

    # The classifier's loaded embedder, the settings it was loaded for, and its router (reused by a reload).
    embedder: Any = None
    embedder_key: tuple[object, ...] | None = None
    router: Any = None
    # Why the classifier cannot classify yet (its model loading), None when it can. Unset: no classifier here.
    classifier_not_ready: Callable[[], str | None] | None = None
    # The classifier's place finder, for the chat channels' place question (channels/place_question.py).
    place_found: PlaceFinder | None = None
    unit_candidates: UnitCandidates | None = None  # only on the 2025 map
    # Dispatch: its SMS gateway (ops texts leadership through it) and what the portal's lookup page acts through.
    sms_gateway: SmsSender | None = None
    report_rating: Callable[..., Awaitable[Any]] | None = None  # (report_id, score, comment)
    case_rating: Callable[..., Awaitable[Any]] | None = None  # (token, score, comment)
    case_dispute: Callable[..., Awaitable[Any]] | None = None  # (report_id=, case_id=, reason=)
    # A reporter wrote again on their chat about a closed report: dispatch answers at once whether it disputes the
    # result ("disputed") or stays a note ("noted"); the classifier asks (report_id=, text=, channel=).
    reporter_follow_up: Callable[..., Awaitable[str]] | None = None
    # Notes /readyz shows (conditions to act on that stop no work) and gauges /metrics shows: owner -> note,
    # name -> (help, value).
    status_notes: dict[str, str] = field(default_factory=dict)
    gauges: dict[str, tuple[str, float]] = field(default_factory=dict)
    # ops: its counters and its separate metrics listener.
    ops_metrics: Any = None
    metrics_listener: Any = None
    # The child process running the stages when `serve` keeps intake apart from them (ingest/workers_process.py):
    # its readiness and its metrics are this process's too.
    workers_process: Any = None


@dataclass
class AppContext:
    settings: Settings
    directory: Directory
    store: Store
    clock: Clock
    http: web.Application
    replies: ReplyRegistry = field(default_factory=ReplyRegistry)
    # Batch `route` mode: every stage runs, dispatch is recorded, nothing is sent to anyone.
    route_mode: bool = False
    # What this process runs (`serve --role`): "all", "intake" (HTTP and channels) or "workers" (the stages).
    role: str = "all"
    # What components publish for each other, typed (see Published); kept across reloads by run_daemon.
    published: Published = field(default_factory=Published)
    # What must run once across instances asks here (ingest/leases.py); SQLite: one instance, every lease held.
    leases: Leadership = field(default_factory=LocalLeadership)
