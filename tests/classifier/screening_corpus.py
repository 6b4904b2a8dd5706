"""The held-out screening corpora (tests/classifier/corpus, never training data) put through the real classify
stage at the daemon's default review threshold: one harness for test_screening_corpus and test_screening_redteam."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from channels.jsonl_parse import parse_line
from classifier.schema import MIGRATIONS
from classifier.service import ClassifyStage
from classifier.training.trainer import Router
from config.directory import load_directory
from config.schema import ClassifierConfig, Settings
from ingest.app import AppContext
from ingest.store import Store

CORPUS = Path(__file__).with_name("corpus")


def load_corpus(name: str) -> list[dict[str, Any]]:
    with (CORPUS / f"{name}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


async def classify_rows(tmp: Path, settings: Settings, router: Router,
                        rows: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each row's (status, classification) by its id, from the classify stage on a store of its own."""
    # The daemon's own threshold (the session fixture lowers it for other tests), on the same trained model.
    live = Settings(classifier=ClassifierConfig(backend=settings.classifier.backend,
                                                cache_dir=settings.classifier.cache_dir))
    assert live.classifier.review_threshold >= 0.9
    prod = Router(live, load_directory(), router.embedder, router.gazetteer)
    prod.model, prod.model_version = router.model, router.model_version
    store = await Store.open(tmp / "s.sqlite3", tmp / "blobs", migrations={"classifier": MIGRATIONS})
    try:
        ctx = AppContext(settings=live, directory=prod.directory, store=store, clock=store.clock,
                         http=web.Application())
        stage = ClassifyStage(ctx, prod)
        await stage.start()
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
