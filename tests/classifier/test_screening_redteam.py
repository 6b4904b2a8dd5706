"""A second, independently written screening corpus (tests/classifier/corpus/redteam-*.jsonl, held out): chat-style
reports from Zalo, Messenger and phone transcripts, written without looking at the term list or at the first
corpus. Same stage, same threshold, same targets as test_screening_corpus."""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from channels.jsonl_parse import parse_line
from classifier.schema import MIGRATIONS
from classifier.service import ClassifyStage
from classifier.training.trainer import Router
from config.directory import load_directory
from config.schema import ClassifierConfig, Settings
from ingest.app import AppContext
from ingest.store import Store

CORPUS = Path(__file__).with_name("corpus")


def corpus(name: str) -> list[dict]:
    with (CORPUS / f"redteam-{name}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def results(tmp_path_factory, settings, router):
    return asyncio.run(_classify(tmp_path_factory.mktemp("redteam"), settings, router))


async def _classify(tmp: Path, settings: Settings, router: Router) -> dict[str, tuple[str, dict]]:
    from aiohttp import web

    live = Settings(classifier=ClassifierConfig(backend=settings.classifier.backend,
                                                cache_dir=settings.classifier.cache_dir))
    prod = Router(live, load_directory(), router.embedder, router.gazetteer)
    prod.model, prod.model_version = router.model, router.model_version
    store = await Store.open(tmp / "s.sqlite3", tmp / "blobs", migrations={"classifier": MIGRATIONS})
    try:
        ctx = AppContext(settings=live, directory=prod.directory, store=store, clock=store.clock,
                         http=web.Application())
        stage = ClassifyStage(ctx, prod)
        await stage.start()
        rows = corpus("ordinary") + corpus("abusive")
        await store.submit_batch([(parse_line(r), json.dumps(r, ensure_ascii=False).encode(), "application/json")
                                  for r in rows])
        while await stage.worker.run_once():
            pass
        out = {r["external_id"]: (r["status"], json.loads(r["classification"] or "{}"))
               for r in await store.fetchall("SELECT external_id, status, classification FROM reports")}
    finally:
        await store.close()
    assert len(out) == len(rows)
    return out


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

