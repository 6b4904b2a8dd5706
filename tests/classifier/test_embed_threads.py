"""How many batch streams the embedder runs: the daemon leaves a core to intake and its stages, a batch command
takes every core (classifier.embedding.embedder)."""
from __future__ import annotations

import os

import pytest

from classifier.embedding.embedder import embed_threads, serving_threads


@pytest.mark.parametrize(("cores", "serving", "batch"), [(1, 1, 1), (2, 1, 2), (8, 7, 8), (None, 1, 1)])
def test_auto_leaves_the_daemon_a_core_and_gives_a_batch_every_core(monkeypatch: pytest.MonkeyPatch, cores: int | None,
                                                                   serving: int, batch: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert serving_threads(0) == serving
    assert embed_threads(0) == batch


def test_a_configured_count_is_taken_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert serving_threads(3) == embed_threads(3) == 3
