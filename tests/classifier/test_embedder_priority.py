"""`[classifier] embed_nice`: inference runs below the daemon's own priority, and so does every thread it starts
(the int8 runner's batch threads), while the event loop's thread keeps its own."""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from classifier.embedding.embedder import EmbeddingThread
from config.schema import ClassifierConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class _ThreadedEmbedder:
    """Spreads its batches over threads it starts, as the int8 runner does; records each thread's nice value."""

    name = "priority-probe"
    dim = 1

    def __init__(self) -> None:
        self.seen: list[int] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.seen.append(_nice())
        with ThreadPoolExecutor(2) as pool:
            self.seen += list(pool.map(lambda _: _nice(), texts))
        return np.zeros((len(texts), 1), np.float32)


def test_inference_and_its_threads_run_lower_than_the_loop():
    own = _nice()
    probe = _ThreadedEmbedder()
    thread = EmbeddingThread(probe, nice=ClassifierConfig().embed_nice)
    try:
        thread.encode_blocking(["a", "b", "c", "d"])
    finally:
        thread.close()
    expected = min(19, own + ClassifierConfig().embed_nice)
    assert expected > own  # the default lowers it
    assert probe.seen == [expected] * 5
    assert _nice() == own  # the caller's thread is untouched


def test_zero_keeps_the_daemons_priority():
    own = _nice()
    probe = _ThreadedEmbedder()
    thread = EmbeddingThread(probe, nice=0)
    try:
        thread.encode_blocking(["a", "b"])
    finally:
        thread.close()
    assert probe.seen == [own] * 3
