"""CR/LF from a reporter never reaches a header of our outgoing mail: sanitised at the mail-building boundary."""
from __future__ import annotations

import email
import email.policy

import pytest

from channels.email_reply import compose_reply
from config.channels import EmailReplyOptions
from ingest.errors import PermanentError
from ingest.mail import header_text, single_address
from ingest.records import InboundMessage, Reporter
from ingest.store import StoredReport


def _report(subject: str | None, address: str) -> StoredReport:
    return StoredReport(id=5, status="dispatched", classification=None, incident_id=None,
                        message=InboundMessage(channel="email", channel_instance="m", idempotency_key="k",
                                               received_at="2026-09-01T08:00:00+07:00", text="t", subject=subject,
                                               reporter=Reporter(email=address)))


def test_a_subject_with_line_breaks_stays_one_header() -> None:
    report = _report("Ổ gà\r\nBcc: victim@example.vn\nX-Evil: 1", "a@b.vn")
    msg = compose_reply(report, "Cảm ơn.", EmailReplyOptions(from_address="1022@1022.test"), 1_790_000_000.0)
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert parsed["Subject"].startswith("Re: Ổ gà Bcc: victim@example.vn X-Evil: 1")
    assert parsed["To"] == "a@b.vn"


@pytest.mark.parametrize("address", ["a@b.vn\r\nBcc: victim@example.vn", "a@b.vn, victim@example.vn",
                                     "Evil <a@b.vn>", "a@b.vn\nX: y", "no-at-sign"])
def test_a_reporter_address_must_be_one_address(address: str) -> None:
    with pytest.raises(PermanentError):
        compose_reply(_report("s", address), "t", EmailReplyOptions(from_address="1022@1022.test"), 0.0)
    with pytest.raises(PermanentError):
        single_address(address)


def test_header_text_bounds_and_flattens() -> None:
    assert header_text("a\r\nb\x00c\u2028d") == "a b c d"
    assert len(header_text("x" * 1000)) == 200
