"""Fixtures of the ingest tests: a builder of inbound messages with unique idempotency keys."""
from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from ingest.records import InboundMessage, Reporter

MakeMessage = Callable[..., InboundMessage]


@pytest.fixture
def make_message() -> MakeMessage:
    seq = itertools.count(1)

    def build(key: str | None = None, *, text: str = "Ống nước vỡ trước nhà 12 Lê Lợi, Quận 1",
              flags: tuple[str, ...] = (), channel: str = "app") -> InboundMessage:
        return InboundMessage(
            channel=channel,
            channel_instance="test",
            idempotency_key=key or f"key-{next(seq)}",
            received_at="2026-09-01T08:00:00+07:00",
            text=text,
            reporter=Reporter(name="Nguyễn Văn A", phone="0903123456"),
            flags=flags,
        )

    return build
