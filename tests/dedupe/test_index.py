"""The window's no-district search: the float16 first pass with exact re-scoring must give the float32 block
scan's answer exactly (same reports, same scores to the bit, same order), whatever the data."""
from __future__ import annotations

import faiss
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


def _brute_force(ids, times, topics, vecs, q: np.ndarray, k: int, at: float, scope) -> list[tuple[int, float, float]]:
    """Every row of the window's time span [at - 7 days, at + 7 days] and of the topics asked, scored by faiss's
    flat kernel (the one the blocks use), best first, ties by report id: what a no-district search must answer."""
    keep = [i for i in range(len(ids)) if at - 7 * DAY <= times[i] <= at + 7 * DAY
            and (scope is None or topics[i] in scope)]
    flat = faiss.IndexFlatIP(vecs.shape[1])
    flat.add(vecs[keep])
    scores, rows = flat.search(q.reshape(1, -1), len(keep))
    ranked = sorted(((-float(s), int(ids[keep[r]]), float(times[keep[r]])) for s, r in zip(scores[0], rows[0])),
                    key=lambda t: (t[0], t[1]))
    return [(rid, -neg, t) for neg, rid, t in ranked[:k]]


def test_no_district_search_equals_brute_force_with_ties_at_the_cut_and_both_time_bounds() -> None:
    # Spread and clustered vectors over 20 days (a query in the middle cuts the window on both sides), with
    # groups of identical vectors larger than k: the k-th score is then shared by rows on both sides of the
    # cut, and only the id breaks the tie. Grown one report at a time and rebuilt in bulk.
    rng = np.random.default_rng(17)
    n, dim = 2500, 48
    spread = rng.standard_normal((n // 2, dim))
    centers = rng.standard_normal((6, dim))
    clustered = centers[rng.integers(0, 6, n - n // 2)] + rng.choice([0.0, 1e-4, 0.05], n - n // 2)[:, None] \
        * rng.standard_normal((n - n // 2, dim))
    vecs = np.vstack([spread, clustered])[rng.permutation(n)].astype(np.float32)
    vecs[rng.random(n) < 0.04] = centers[1]  # ~100 identical rows
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    times = np.sort(T0 + rng.random(n) * 20 * DAY)
    districts = [DISTRICTS[i] for i in rng.integers(0, len(DISTRICTS), n)]
    topics = [TOPICS[i] for i in rng.integers(0, len(TOPICS), n)]
    grown = _grown(dim, ids, times, districts, vecs, topics)
    rebuilt = VectorWindow(dim, window_days=7)
    rebuilt.add_many(ids, times, districts, vecs, topics)
    ties = 0
    for j in range(48):
        if j % 3 == 0:
            q = centers[1].astype(np.float32) / np.float32(np.linalg.norm(centers[1]))  # the identical group
        elif j % 3 == 1:
            q = vecs[rng.integers(n)].copy()
        else:
            q = rng.standard_normal(dim).astype(np.float32)
            q /= np.linalg.norm(q)
        k = int(rng.choice([1, 7, 64]))
        # Mostly mid-span; every eighth at the end, where fewer than k rows are left in the window.
        at = float(T0 + (26.95 if j % 8 == 7 else rng.uniform(7.5, 12.5)) * DAY)
        scope = None if j % 4 == 0 else {"drainage", None} if j % 4 == 1 else {"trees", "electricity"}
        want = _brute_force(ids, times, topics, vecs, q, k, at, scope)
        assert 0 < len(want) <= k
        ties += len(want) == k > 1 and want[-1][1] == want[0][1]
        assert _hits(grown, q, k, at, scope) == want, (j, k, scope)
        assert _hits(rebuilt, q, k, at, scope) == want, (j, k, scope)
        assert _exact_hits(grown, q, k, at, scope) == want, (j, k, scope)
    assert ties > 0  # the identical group did put ties at the cut
