"""The public form of one report (ingest/public.py): what a report not yet decided shows."""
from __future__ import annotations

from dataclasses import replace

import pytest

from config.directory import load_directory
from ingest.public import PENDING_NOTE, public_request
from ingest.records import to_json


@pytest.fixture(scope="module")
def directory():
    return load_directory()


def _row(message, status: str, topic: str | None, agency: str | None) -> dict:
    return {"id": 7, "status": status, "topic": topic, "agency": agency, "received_at": 1.0, "updated_at": 2.0,
            "record": to_json(message)}


@pytest.mark.parametrize("status", ["review", "received"])
def test_an_undecided_report_shows_no_guess_of_the_classifier(directory, make_message, status: str) -> None:
    # Red-team pass: a report held for review was listed publicly with service_code "abusive" (the classifier's
    # unsure guess) and a guessed agency, before any operator had read it.
    message = make_message(text="mấy thằng chó hoang cắn người ở công viên")
    shown = public_request(_row(message, status, "abusive", None), directory)
    assert shown["service_code"] is None and shown["service_name"] is None
    guessed = public_request(_row(message, status, "drainage", "thoat-nuoc"), directory)
    assert guessed["service_code"] is None and guessed["agency_responsible"] is None
    if status == "review":
        assert shown["description"] == PENDING_NOTE
    # What the reporter chose in the app is theirs to see listed.
    chosen = replace(message, service_code="trees")
    assert public_request(_row(chosen, status, "abusive", None), directory)["service_code"] == "trees"


def test_a_decided_report_shows_its_topic_and_agency(directory, make_message) -> None:
    shown = public_request(_row(make_message(), "dispatched", "drainage", "thoat-nuoc"), directory)
    assert shown["service_code"] == "drainage" and shown["agency_responsible"]
