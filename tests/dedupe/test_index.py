"""The window's no-district search: the float16 first pass with exact re-scoring must give the float32 block
scan's answer exactly (same reports, same scores to the bit, same order), whatever the data."""
from __future__ import annotations

import numpy as np

from dedupe.index import DAY, VectorWindow

T0 = 1_790_000_000.0
DISTRICTS = ["quan-1", "quan-3", "go-vap", None]
TOPICS = ["drainage", "trees", "electricity", None]


def _fill(rng: np.random.Generator, n: int, dim: int) -> tuple[np.ndarray, np.ndarray, list, list, np.ndarray]:
    # Clusters of near-identical vectors (closer than float16 can tell apart) and exact duplicates: the
    # coarse order is then wrong inside a cluster and only the margin keeps the exact top k.
    centers = rng.standard_normal((12, dim)).astype(np.float32)
    which = rng.integers(0, 12, n)
    vecs = centers[which] + rng.choice([0.0, 1e-5, 3e-3], n)[:, None] * rng.standard_normal((n, dim)).astype(np.float32)
    vecs[rng.random(n) < 0.05] = centers[0]  # exact ties
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    times = np.sort(T0 + rng.random(n) * 9 * DAY)
    districts = [DISTRICTS[i] for i in rng.integers(0, len(DISTRICTS), n)]
    topics = [TOPICS[i] for i in rng.integers(0, len(TOPICS), n)]
    return np.arange(1, n + 1, dtype=np.int64), times, districts, topics, vecs.astype(np.float32)


def _hits(window: VectorWindow, q: np.ndarray, k: int, at: float, topics) -> list[tuple[int, float, float]]:
    return [(h.report_id, h.cosine, h.received_at) for h in window.search(q, None, k, at, topics=topics)]


def _grown(dim: int, ids, times, districts, vecs, topics) -> VectorWindow:
    """A window filled one report at a time, as the stage does between rebuilds."""
    window = VectorWindow(dim, window_days=7)
    for i in range(len(ids)):
        window.add(int(ids[i]), float(times[i]), districts[i], vecs[i], topics[i])
    return window


def _exact_hits(window: VectorWindow, q: np.ndarray, k: int, at: float, topics) -> list[tuple[int, float, float]]:
    """What the float32 block scan answers (the float16 first pass switched off), leaving the pass on."""
    window.coarse = False
    try:
        return _hits(window, q, k, at, topics)
    finally:
        window.coarse = True


def _same_as_block_scan(window: VectorWindow, rng: np.random.Generator, vecs: np.ndarray, at: float) -> int:
    checked = 0
    for j in range(40):
        q = vecs[rng.integers(len(vecs))] + 1e-3 * rng.standard_normal(vecs.shape[1]).astype(np.float32)
        q /= np.linalg.norm(q)
        k = int(rng.choice([1, 5, 64]))
        topics = None if j % 3 == 0 else {"drainage", None} if j % 3 == 1 else {"trees"}
        want = _exact_hits(window, q, k, at, topics)
        assert _hits(window, q, k, at, topics) == want, (j, k, topics)
        checked += len(want)
    return checked


def test_no_district_search_equals_the_exact_block_scan_at_the_window_edge_and_after_expiry() -> None:
    rng = np.random.default_rng(3)
    ids, times, districts, topics, vecs = _fill(rng, 3000, 64)
    window = _grown(64, ids, times, districts, vecs, topics)
    # The window's edge falls inside every block: old rows are skipped, not just the expired days dropped.
    assert _same_as_block_scan(window, rng, vecs, float(times[-1])) > 0
    assert _same_as_block_scan(window, rng, vecs, float(times[-1] - 1.5 * DAY)) > 0
    assert window.expire() > 0
    assert _same_as_block_scan(window, rng, vecs, float(times[-1])) > 0


def test_no_district_search_after_a_bulk_rebuild_equals_the_incrementally_grown_window() -> None:
    rng = np.random.default_rng(5)
    ids, times, districts, topics, vecs = _fill(rng, 1500, 32)
    grown = _grown(32, ids, times, districts, vecs, topics)
    grown.expire()
    rebuilt = VectorWindow(32, window_days=7)
    rebuilt.add_many(ids, times, districts, vecs, topics)
    rebuilt.expire()
    assert rebuilt.report_ids() == grown.report_ids()
    at = float(times[-1])
    for j in range(30):
        q = vecs[rng.integers(len(vecs))].copy()
        topics_asked = None if j % 2 else {"electricity", None}
        assert _hits(rebuilt, q, 64, at, topics_asked) == _hits(grown, q, 64, at, topics_asked)


def test_no_district_search_over_many_topics_equals_the_block_scan_on_random_vectors() -> None:
    # The candidate cut is shared by all topics of a query (the k-th best coarse score over all of them): a
    # topic holding none of the k best contributes only rows within the bound of that cut. Spread, random
    # vectors (the bench's kind) with several topics per query, against the float32 block scan.
    rng = np.random.default_rng(11)
    n, dim = 4000, 96
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    times = np.sort(T0 + rng.random(n) * 8 * DAY)
    names = ["drainage", "trees", "electricity", "waste", "noise", None]
    window = VectorWindow(dim, window_days=7)
    window.add_many(range(1, n + 1), times.tolist(), [DISTRICTS[i] for i in rng.integers(0, 4, n)], vecs,
                    [names[i] for i in rng.integers(0, len(names), n)])
    for j in range(60):
        base = vecs[rng.integers(n)] if j % 2 else rng.standard_normal(dim).astype(np.float32)
        q = base + 0.05 * rng.standard_normal(dim).astype(np.float32)
        q /= np.linalg.norm(q)
        k = int(rng.choice([1, 8, 64]))
        topics = None if j % 4 == 0 else set(rng.choice(len(names), int(rng.integers(1, 5)), replace=False).tolist())
        scope = None if topics is None else {names[i] for i in topics}
        want = _exact_hits(window, q, k, float(times[-1]), scope)
        assert _hits(window, q, k, float(times[-1]), scope) == want, (j, k, scope)
        assert len(want) == k
