"""One vocabulary: every state a stage owns has one text for people, and every view reads that same text."""
from __future__ import annotations

from dispatch import api as dispatch_api
from dispatch.policy import CASE_STATES
from ingest import public, vocabulary
from ingest.records import REPORT_STATES
from ops import report_render
from portal.catalogue import LANGUAGES, TEXTS


def test_every_case_state_has_a_text_in_every_language_and_a_short_label():
    assert set(vocabulary.CASE_STATE_TEXTS) == set(CASE_STATES)
    assert set(vocabulary.CASE_STATE_LABELS) == set(CASE_STATES)
    for state in CASE_STATES:
        assert all(vocabulary.CASE_STATE_TEXTS[state][lang] for lang in LANGUAGES), state


def test_every_public_report_status_has_a_text_and_hidden_ones_none():
    assert set(vocabulary.REPORT_STATUS_TEXTS) == set(REPORT_STATES) - public.HIDDEN_STATES
    assert set(vocabulary.REPORT_STATUS_LABELS) <= set(REPORT_STATES)


def test_every_view_reads_the_same_words():
    # The agency lookup page and the Open311/public views once disagreed on `closed_false`.
    assert dispatch_api.STATE_VI == public.CASE_STATE_VI
    assert dispatch_api.STATE_VI["closed_false"] == "Đã đóng: phản ánh không đúng sự thật"
    for state, texts in {**vocabulary.REPORT_STATUS_TEXTS, **vocabulary.CASE_STATE_TEXTS}.items():
        assert TEXTS[f"state.{state}"] == texts
    assert report_render.CASE_STATE_LABELS is vocabulary.CASE_STATE_LABELS
