"""A second, independently written screening corpus (tests/classifier/corpus/redteam-*.jsonl, held out): chat-style
reports from Zalo, Messenger and phone transcripts, written without looking at the term list or at the first
corpus. Same stage, same threshold, same targets as test_screening_corpus."""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.classifier.screening_corpus import classify_rows, load_corpus


def corpus(name: str) -> list[dict]:
    return load_corpus(f"redteam-{name}")


@pytest.fixture(scope="module")
def results(tmp_path_factory, settings, router):
    rows = corpus("ordinary") + corpus("abusive")
    return asyncio.run(classify_rows(tmp_path_factory.mktemp("redteam"), settings, router, rows))


def test_corpus_is_held_out():
    assert all(r["holdout"] for r in corpus("ordinary") + corpus("abusive"))


def test_no_ordinary_chat_report_is_refused(results):
    rows = corpus("ordinary")
    refused = [(r["id"], r["text"], results[r["id"]][1].get("note")) for r in rows
               if results[r["id"]][0] in ("rejected", "out_of_scope")]
    print("ordinary:", dict(Counter(results[r["id"]][0] for r in rows)))
    assert refused == []


def test_abusive_chat_reports_are_refused_or_held(results):
    rows = corpus("abusive")
    missed = [(r["id"], r["text"]) for r in rows if results[r["id"]][0] not in ("rejected", "review")]
    print("abusive:", dict(Counter(results[r["id"]][0] for r in rows)))
    assert len(missed) <= 0.05 * len(rows), missed

