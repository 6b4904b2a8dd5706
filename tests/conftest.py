"""Fixtures shared by every test package: a real SQLite store in tmp_path, a controllable clock, offline models."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from ingest.clock import FakeClock  # noqa: E402
from ingest.store import Store  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# The project's copy of the labelled dev reports; no test may read ../shared (a fresh clone has none).
DEV_REPORTS = REPO / "classifier" / "data" / "reports-seed.jsonl"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs")
    yield s
    await s.close()


@pytest.fixture
async def clocked_store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs", clock=clock)
    yield s
    await s.close()
