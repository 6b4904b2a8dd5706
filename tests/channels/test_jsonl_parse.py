"""The batch routing line (the dev set's shape) read into a record."""
from __future__ import annotations

import pytest

from channels.jsonl_parse import parse_line


@pytest.mark.parametrize(("value", "confidential"), [
    (True, True), (False, False), ("true", True), ("false", False), (" No ", False), ("", False), ("yes", True),
    ("không", False), ("kho\u0302ng", False), ("maybe", True), (1, True), (0, False)])  # decomposed "không" too
def test_the_confidential_flag_as_written_in_a_line(value: object, confidential: bool) -> None:
    # Red-team note: `bool("false")` read a hand-written "false" as a request for confidentiality.
    line = {"id": "x1", "received_at": "2026-10-01T08:00:00+07:00", "text": "Cống nghẹt",
            "reporter": {"confidential": value}}
    assert parse_line(line).reporter.confidential is confidential


def test_the_expected_answer_is_not_read() -> None:
    line = {"id": "x2", "received_at": "2026-10-01T08:00:00+07:00", "text": "Cống nghẹt",
            "expected": {"topic": "drainage"}}
    message = parse_line(line)
    assert "drainage" not in repr(message) and message.idempotency_key == "batch:x2"
