"""Replies on multi-instance chat channels go through the instance the report came from, in every generation."""
from __future__ import annotations

import pytest

from config.directory import load_directory
from config.schema import Settings
from ingest.app import AppContext, Published, register_instance_reply
from ingest.errors import PermanentError
from ingest.http import make_app
from ingest.records import InboundMessage
from ingest.store import Store, StoredReport


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_reply(self, report: StoredReport, text: str) -> None:
        self.sent.append(text)


def _report(instance: str) -> StoredReport:
    message = InboundMessage(channel="telegram", channel_instance=instance, idempotency_key="k",
                             received_at="2026-09-01T08:00:00+07:00", text="x")
    return StoredReport(id=1, message=message, status="dispatched", classification=None, incident_id=None)


def _context(store: Store, published: Published) -> AppContext:
    ctx = AppContext(settings=Settings(), directory=load_directory(), store=store, clock=store.clock,
                     http=make_app(1024))
    ctx.published = published  # as run_daemon shares it across reload generations
    return ctx


async def test_reply_goes_through_the_reporting_instance_after_a_reload(store: Store) -> None:
    published = Published()
    old_bot, old_ctx = Recorder(), _context(store, published)
    register_instance_reply(old_ctx, "telegram", "bot", old_bot)
    new_a, new_b, new_ctx = Recorder(), Recorder(), _context(store, published)
    register_instance_reply(new_ctx, "telegram", "bot", new_a)
    register_instance_reply(new_ctx, "telegram", "bot-2", new_b)
    sender = new_ctx.replies.get("telegram")
    assert sender is not None
    await sender.send_reply(_report("bot-2"), "đã tiếp nhận")
    await sender.send_reply(_report("bot"), "kết quả")
    assert new_b.sent == ["đã tiếp nhận"] and new_a.sent == ["kết quả"] and old_bot.sent == []


async def test_no_instance_left_is_a_permanent_failure(store: Store) -> None:
    ctx = _context(store, {})
    register_instance_reply(ctx, "messenger", "page", Recorder())
    sender = ctx.replies.get("messenger")
    assert sender is not None
    sender.instances.clear()  # type: ignore[attr-defined]
    with pytest.raises(PermanentError):
        await sender.send_reply(_report("page"), "x")
