"""Versioned JSON of the typed records: round trip, schema_version on every level, newer versions refused."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.records import (SCHEMA_VERSION, Attachment, Candidate, Classification, InboundMessage, Place, Reporter,
                            from_json, to_json)


def _message(**kw) -> InboundMessage:
    base = dict(
        channel="email", channel_instance="mailbox-1", idempotency_key="<abc@example.vn>",
        received_at="2026-09-01T08:00:00+07:00", text="Đèn đường hỏng 😭\nđoạn Nguyễn Văn Linh",
        subject="Phản ánh", reporter=Reporter(name="Trần Thị B", phone="0903123456", email="b@example.vn",
                                             address="83/16/4 Ba Tháng Hai", confidential=True, reply_to="<m@x>"),
        lat=10.76, lon=106.66,
        attachments=(Attachment(sha256="a" * 64, content_type="image/jpeg", size=12, filename="ảnh.jpg"),
                     Attachment(sha256="b" * 64, content_type="image/png", size=3)),
        external_id="E1", service_code="street_light", flags=("auto_reply",), thread_ref="CASE-1")
    base.update(kw)
    return InboundMessage(**base)


def test_inbound_message_round_trips_exactly() -> None:
    msg = _message()
    encoded = to_json(msg)
    assert from_json(InboundMessage, encoded) == msg
    data = json.loads(encoded)
    assert data["type"] == "InboundMessage" and data["schema_version"] == SCHEMA_VERSION
    assert data["reporter"]["schema_version"] == SCHEMA_VERSION
    assert data["attachments"][0]["type"] == "Attachment"
    assert "Đèn đường" in encoded  # stored readable, not \u-escaped


def test_classification_with_place_and_candidates_round_trips() -> None:
    c = Classification(status="review", topic="road_damage", category="infrastructure", agency="khu-qlgt-do-thi",
                       confidence=0.41, place=Place(district="binh-chanh", street="nguyen van linh",
                                                    house_number="83/16/4", lat=10.7, lon=106.6, source="text"),
                       candidates=(Candidate(topic="road_damage", agency="khu-qlgt-do-thi", score=0.41),
                                   Candidate(topic="drainage", agency=None, score=0.3)),
                       model_version="m1")
    assert from_json(Classification, to_json(c)) == c
    assert from_json(Classification, json.loads(to_json(c))) == c


def test_a_record_from_a_newer_daemon_is_refused() -> None:
    data = json.loads(to_json(_message()))
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        from_json(InboundMessage, data)


def test_a_newer_nested_record_is_refused_too() -> None:
    data = json.loads(to_json(_message()))
    data["reporter"]["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="Reporter"):
        from_json(InboundMessage, data)


def test_an_older_record_without_new_fields_reads_with_defaults() -> None:
    data = {"type": "InboundMessage", "schema_version": 1, "channel": "app", "channel_instance": "app",
            "idempotency_key": "k", "received_at": "2026-09-01T08:00:00+07:00", "text": "x"}
    msg = from_json(InboundMessage, data)
    assert msg.reporter == Reporter() and msg.attachments == () and msg.flags == ()


@given(text=st.text(), name=st.one_of(st.none(), st.text()), lat=st.one_of(st.none(), st.floats(-90, 90)),
       flags=st.lists(st.text(max_size=10), max_size=3))
def test_any_text_round_trips(text: str, name: str | None, lat: float | None, flags: list[str]) -> None:
    msg = _message(text=text, reporter=Reporter(name=name), lat=lat, flags=tuple(flags))
    assert from_json(InboundMessage, to_json(msg)) == msg
