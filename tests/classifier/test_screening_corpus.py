"""Screening on reports written the way citizens write (tests/classifier/corpus, never training data), through
the real classify stage at the default review threshold: no ordinary report is refused, and abusive ones are
refused or held for an operator."""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.classifier.screening_corpus import classify_rows, load_corpus


def corpus(name: str) -> list[dict]:
    return load_corpus(name)


@pytest.fixture(scope="module")
def statuses(tmp_path_factory, settings, router):
    rows = corpus("ordinary") + corpus("abusive")
    return asyncio.run(classify_rows(tmp_path_factory.mktemp("corpus"), settings, router, rows))


def test_corpora_are_large_enough():
    assert len(corpus("ordinary")) >= 150 and len(corpus("abusive")) >= 50


def test_no_ordinary_report_is_refused(statuses):
    rows = corpus("ordinary")
    refused = [(r["id"], r["text"]) for r in rows if statuses[r["id"]][0] in ("rejected", "out_of_scope")]
    counts = Counter(statuses[r["id"]][0] for r in rows)
    print(f"ordinary: {dict(counts)}")
    assert refused == []
    # An ordinary report held back for a word is held with the reason written for the operator.
    noted = [statuses[r["id"]][1] for r in rows if statuses[r["id"]][0] == "review"]
    assert any(c.get("note") for c in noted)


def test_abusive_reports_are_refused_or_held(statuses):
    rows = corpus("abusive")
    counts = Counter(statuses[r["id"]][0] for r in rows)
    print(f"abusive: {dict(counts)}")
    caught = counts["rejected"] + counts["review"]
    assert caught >= 0.95 * len(rows), counts
    assert counts["rejected"] >= 0.8 * len(rows), counts
