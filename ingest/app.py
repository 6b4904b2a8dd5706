"""What run_daemon.py hands to every component it wires: the shared context and the service protocol.

Components never import each other; they meet here. A component package exposes
`build(ctx: AppContext) -> list[Service]` and a module-level `MIGRATIONS` list.
"""
from __future__ import annotations

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
    """Sends a message back to a reporter on the channel the report came from (email, Messenger, ...)."""

    async def send_reply(self, report: StoredReport, text: str) -> None:
        """Raise ingest.errors.TransientError to be retried, PermanentError to give up."""


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
    # Held in this generation's registry, not in ctx.shared: a reload builds new channel objects.
    replies = ctx.replies.get(kind)
    if not isinstance(replies, InstanceReplies):
        replies = InstanceReplies(kind)
        ctx.replies.register(kind, replies)
    replies.instances[instance] = sender


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
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. the loaded embedder, for reuse across stages
    # What must run once across instances asks here (ingest/leases.py); SQLite: one instance, every lease held.
    leases: Leadership = field(default_factory=LocalLeadership)
