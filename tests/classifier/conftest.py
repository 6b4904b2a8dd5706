"""Classifier test fixtures: one real embedder (the daemon's default, the converted multilingual-e5-small) and one
trained router per session (vectors cached under var/models and shared with the daemon's runs in other tests, so
only the first run on a machine embeds the training set)."""
from __future__ import annotations

from pathlib import Path

import pytest

from classifier.embedding.embedder import EmbeddingThread, load_embedder
from classifier.training.trainer import Router
from config.directory import load_directory
from config.schema import ClassifierConfig, Settings

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "var" / "models"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(classifier=ClassifierConfig(backend="e5-converted", cache_dir=CACHE, review_threshold=0.6))


@pytest.fixture(scope="session")
def embedder() -> EmbeddingThread:
    # The deployed embedder (the schema's defaults: int8 since issue 21), so what these tests measure is what the
    # daemon runs, and its vectors are the ones the daemon tests cache.
    cfg = ClassifierConfig()
    thread = EmbeddingThread(load_embedder(cfg.backend, cfg.model, cfg.variant, cfg.embed_threads))
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def router(settings: Settings, embedder: EmbeddingThread) -> Router:
    r = Router(settings, load_directory(), embedder)
    r.load()
    return r
