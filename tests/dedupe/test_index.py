"""The window's no-district search: the 8-bit first pass with exact re-scoring must give the float32 block
scan's answer exactly (same reports, same scores to the bit, same order), whatever the data."""
from __future__ import annotations

import faiss
import numpy as np

from dedupe.index import DAY, HEADROOM, RESCALE, VectorWindow, _Coarse

T0 = 1_790_000_000.0
DISTRICTS = ["quan-1", "quan-3", "go-vap", None]
TOPICS = ["drainage", "trees", "electricity", None]


def _fill(rng: np.random.Generator, n: int, dim: int) -> tuple[np.ndarray, np.ndarray, list, list, np.ndarray]:
    # Clusters of near-identical vectors (closer than the coarse codes can tell apart) and exact duplicates: the
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
    """What the float32 block scan answers (the coarse first pass switched off), leaving the pass on."""
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
    if not keep:
        return []
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


def _extend(coarse: _Coarse, ids: np.ndarray, times: np.ndarray, vecs: np.ndarray) -> bool:
    """Rows into a coarse structure alone (no window: their vectors are nowhere else)."""
    return coarse.extend(ids, times, vecs, np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64))


def _coarse_errors(coarse: _Coarse, rows: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, float]:
    """|exact float32 score - coarse score| of every row of `coarse` (rows: their float32 vectors, row for row)
    for query q, checked against each row's own bound; returns them and the topic's bound (the largest)."""
    q64 = q.astype(np.float64)
    codes, t, qerr, base = coarse.query(q64)
    approx, which, complete = coarse.scan(codes, t, base, coarse.n, -np.inf, np.inf)
    assert complete and len(which) == coarse.n
    flat = faiss.IndexFlatIP(rows.shape[1])
    flat.add(rows)
    exact, order = flat.search(q.reshape(1, -1), coarse.n)
    exact_of = np.empty(coarse.n)
    exact_of[order[0]] = exact[0]
    errors = np.abs(exact_of[which] - approx)
    e = coarse.bound(float(np.linalg.norm(q64)), qerr)
    each = coarse.bound(float(np.linalg.norm(q64)), qerr, which)
    assert np.all(errors <= each) and np.all(each <= e)
    return errors, e


def test_coarse_bound_holds_and_is_reached_by_rows_rounded_along_the_query() -> None:
    # The bound has a term for the rows' rounding (|q| r) and one for the query's (|p - u/t| |c|). Rows built so
    # that each term is reached (Cauchy-Schwarz tight) show both are needed: a scale equal in every dimension
    # and a mean of 0 (set by two first rows of equal magnitudes, opposite), then
    # - rows whose rounding error points along a query of equal magnitudes (its codes exact): |q.r| = |q| r;
    # - rows exactly on the grid with codes of equal magnitudes, and a query whose rounding points along them.
    dim = 64
    coarse = _Coarse(dim)
    signs = np.where(np.random.default_rng(1).random(dim) < 0.5, -1.0, 1.0)
    ends = np.vstack([0.25 * signs, -0.25 * signs]).astype(np.float32)
    _extend(coarse, np.array([0, 1]), np.array([T0, T0]), ends)
    s = float(coarse.scale[0])
    assert np.all(coarse.scale == s) and not coarse.center.any()
    rng = np.random.default_rng(2)
    q1 = signs.astype(np.float32)  # p = q / s: all of one magnitude, the largest: u exact
    base = rng.integers(-80, 80, (50, dim))
    along_q = ((base + 0.49 * signs) / s).astype(np.float32)
    q2_codes = rng.integers(-100, 100, dim).astype(np.float64) + 0.49 * signs
    q2_codes[0] = coarse.levels * signs[0]  # the largest |p|: t = levels / |p_0| and u_0 exact
    q2 = (q2_codes * s).astype(np.float32)  # p = q2 / s
    on_grid = (60 * signs / s).astype(np.float32).reshape(1, -1)
    _extend(coarse, np.arange(2, 52), np.full(50, T0), along_q)
    _extend(coarse, np.array([52]), np.array([T0]), on_grid)
    rows = np.vstack([ends, along_q, on_grid])
    for q, term in ((q1, "rows"), (q2, "query")):
        errors, e = _coarse_errors(coarse, rows, q)
        assert errors.max() <= e, term
        qnorm = float(np.linalg.norm(q.astype(np.float64)))
        query_term = coarse.query(q.astype(np.float64))[2] * coarse.code_norm
        # The construction reaches the term it aims at: without that term the bound would fail.
        reached = qnorm * coarse.err if term == "rows" else query_term
        assert errors.max() >= 0.9 * reached > 0, term
        assert errors.max() > e - reached, term


def test_coarse_bound_holds_for_large_norms_and_rows_beyond_the_scale() -> None:
    # Rows of norms from 1e-3 to 1e3 (the scale follows the first rows; later, larger ones are clipped and
    # their error measured as it is), and queries of any norm: every row within the bound.
    rng = np.random.default_rng(4)
    dim = 48
    coarse = _Coarse(dim)
    first = rng.standard_normal((200, dim)).astype(np.float32)
    later = (rng.standard_normal((300, dim)) * 10.0 ** rng.uniform(-3, 3, (300, 1))).astype(np.float32)
    _extend(coarse, np.arange(200), np.full(200, T0), first)
    assert _extend(coarse, np.arange(200, 500), np.full(300, T0), later)  # clipped: the window would re-encode
    rows = np.vstack([first, later])
    assert coarse.err > 10  # clipped rows: their measured error is large, and the bound with it
    trial = _Coarse(dim)
    _extend(trial, np.arange(200), np.full(200, T0), first)
    _extend(trial, np.arange(200, 500), np.full(300, T0), later)
    trial.drop(np.arange(500) >= 200)  # the clipped rows leave (expiry): the bound shrinks with them
    assert trial.err < 1.0 < coarse.err
    for j in range(20):
        q = (rng.standard_normal(dim) * 10.0 ** rng.uniform(-2, 2)).astype(np.float32)
        errors, e = _coarse_errors(coarse, rows, q)
        assert errors.max() <= e
    clipped = coarse.err
    coarse.recode(rows)  # a scale covering every row: nothing clipped, the bound back to rounding alone
    assert coarse.err <= 0.5 * np.linalg.norm(1 / coarse.scale) < clipped
    for j in range(20):
        q = (rng.standard_normal(dim) * 10.0 ** rng.uniform(-2, 2)).astype(np.float32)
        errors, e = _coarse_errors(coarse, rows, q)
        assert errors.max() <= e


def test_a_window_grown_from_empty_keeps_a_bound_as_tight_as_a_bulk_rebuild() -> None:
    # Grown one report at a time, a topic's scale is first set by a single row: later rows fall outside it and
    # the topic is re-encoded (from its blocks) whenever clipping would widen the bound by a quarter.
    rng = np.random.default_rng(6)
    n, dim = 1200, 64
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    times = np.sort(T0 + rng.random(n) * 6 * DAY)
    districts = [DISTRICTS[i] for i in rng.integers(0, len(DISTRICTS), n)]
    topics = [TOPICS[i] for i in rng.integers(0, len(TOPICS), n)]
    grown = _grown(dim, ids, times, districts, vecs, topics)
    rebuilt = VectorWindow(dim, window_days=7)
    rebuilt.add_many(ids, times, districts, vecs, topics)
    for topic in TOPICS:
        coarse = grown._coarse[topic]
        # The scale as good as a rebuild's, and at most the rows added since the last re-encoding (a 16th of
        # the topic) clipped beyond it.
        assert coarse.err_ref <= 1.5 * rebuilt._coarse[topic].err, topic
        assert np.count_nonzero(coarse.errs[:coarse.n] > RESCALE * coarse.err_ref) <= coarse.n / 16 + 1, topic
    at = float(times[-1])
    for j in range(30):
        q = vecs[rng.integers(n)] + 0.1 * rng.standard_normal(dim).astype(np.float32)
        q /= np.linalg.norm(q)
        scope = None if j % 2 else {"trees", None}
        want = _brute_force(ids, times, topics, vecs, q, 64, at, scope)
        assert _hits(grown, q, 64, at, scope) == want
        assert _hits(rebuilt, q, 64, at, scope) == want


def test_no_district_search_equals_brute_force_with_large_norms_empty_topics_and_an_empty_window() -> None:
    # Vectors of very different norms (the bound scales with them), a topic whose every row was removed or
    # expired, and queries whose window holds no row at all (long after, long before): still the brute force.
    rng = np.random.default_rng(8)
    n, dim = 1500, 32
    vecs = (rng.standard_normal((n, dim)) * 10.0 ** rng.uniform(-3, 3, (n, 1))).astype(np.float32)
    ids = np.arange(1, n + 1, dtype=np.int64)
    times = np.sort(T0 + rng.random(n) * 9 * DAY)
    districts = [DISTRICTS[i] for i in rng.integers(0, len(DISTRICTS), n)]
    names = ["drainage", "trees", "waste", None]
    topics = [names[i] for i in rng.integers(0, len(names), n)]
    topics[:5] = ["noise"] * 5  # the oldest: expired below
    lone = [i for i in range(n) if topics[i] == "waste"][:1]
    for window in (_grown(dim, ids, times, districts, vecs, topics), VectorWindow(dim, window_days=7)):
        if not len(window):
            window.add_many(ids, times, districts, vecs, topics)
        window.expire()
        assert "noise" not in window._coarse
        for i in [i for i in range(n) if topics[i] == "waste"]:
            window.remove(int(ids[i]))
        assert "waste" not in window._coarse
        kept = [i for i in range(n) if int(ids[i]) in window.report_ids()]
        k_ids, k_times, k_vecs = ids[kept], times[kept], vecs[kept]
        k_topics = [topics[i] for i in kept]
        for j in range(24):
            q = (rng.standard_normal(dim) * 10.0 ** rng.uniform(-2, 2)).astype(np.float32)
            k = int(rng.choice([1, 10, 64]))
            at = float(times[-1] - rng.uniform(0, 3) * DAY)
            scope = None if j % 3 == 0 else {"noise", "waste"} if j % 3 == 1 else {"drainage", "trees", None}
            want = _brute_force(k_ids, k_times, k_topics, k_vecs, q, k, at, scope)
            assert _hits(window, q, k, at, scope) == want, (j, k, scope)
            assert (len(want) == 0) == (scope == {"noise", "waste"})
        q = vecs[lone[0]]
        assert _hits(window, q, 10, T0 + 40 * DAY, None) == []
        assert _hits(window, q, 10, T0 - 40 * DAY, None) == []


def test_no_district_search_finds_the_row_that_the_coarse_pass_ranks_below_the_bound() -> None:
    # Rows built so that the coarse order is wrong by almost the whole bound: the exact best row W rounds down
    # along the query (coarse score lower than exact by ~e), six decoys lie on the code grid (coarse = exact)
    # a little below W's exact score but above its coarse one. The k-th best exact score of the coarse top k
    # is then a decoy's, and only the full bound keeps W among the candidates (and the scan must widen to it).
    dim = 64
    rng = np.random.default_rng(12)
    signs = np.where(rng.random(dim) < 0.5, -1.0, 1.0)
    levels = _Coarse(dim).levels
    s = levels / (HEADROOM * 0.25)  # the scale of a topic of mean 0 whose largest |value| is 0.25
    c_w = 60 * signs
    best = ((c_w + 0.49 * signs) / s).astype(np.float32)
    decoys = []
    for j in range(6):
        step = np.zeros(dim)
        picked = rng.choice(dim, 30, replace=False)  # exact score (q.c_w + 30) / s, W's is (q.c_w + 31.4) / s
        step[picked] = signs[picked]
        decoys.append(((c_w + step) / s).astype(np.float32))
    half = np.where(np.arange(dim) % 2 == 0, signs, -signs)  # scores 0 against the query
    others = rng.uniform(-0.1, 0.1, (150, dim))
    # Every row with its opposite: the topic's mean is 0 and its largest |value| 0.25 in every dimension.
    top = np.vstack([0.25 * half, others, best.reshape(1, -1), decoys])
    vecs = np.vstack([top, -top]).astype(np.float32)
    w_id = 1 + 151  # W's report id (ids from 1, in the order above)
    n = len(vecs)
    ids = np.arange(1, n + 1, dtype=np.int64)
    times = T0 + np.arange(n, dtype=np.float64)
    districts = [DISTRICTS[i] for i in rng.integers(0, len(DISTRICTS), n)]
    topics = ["trees"] * n
    q = signs.astype(np.float32)
    rebuilt = VectorWindow(dim, window_days=7)
    rebuilt.add_many(ids, times, districts, vecs, topics)
    assert np.allclose(rebuilt._coarse["trees"].scale, s) and not rebuilt._coarse["trees"].center.any()
    for window in (rebuilt, _grown(dim, ids, times, districts, vecs, topics)):
        for k in (1, 3, 7):
            want = _brute_force(ids, times, topics, vecs, q, k, float(times[-1]), {"trees"})
            assert want[0][0] == w_id
            assert _hits(window, q, k, float(times[-1]), {"trees"}) == want
    # A large topic asked too, all of it outside the window: the first scan of "trees" (its share of the rows
    # asked is small) returns just k rows, not all of them, and the search must still go on to W.
    old = np.arange(1, 3001)
    more = VectorWindow(dim, window_days=7)
    more.add_many(np.concatenate([old + 1000, ids]), np.concatenate([T0 - 30 * DAY + old, times]),
                  ["quan-1"] * 3000 + districts, np.vstack([rng.standard_normal((3000, dim)).astype(np.float32), vecs]),
                  ["drainage"] * 3000 + topics)
    assert more._coarse["drainage"].n == 3000
    for k in (1, 2):
        want = _brute_force(ids, times, topics, vecs, q, k, float(times[-1]), {"trees"})
        assert _hits(more, q, k, float(times[-1]), {"trees", "drainage"}) == want


def test_no_district_search_equals_brute_force_with_late_and_removed_reports_and_after_the_sort() -> None:
    # Rows in received_at order are searched by a range of rows (bisection); a report added late breaks the
    # order (bitmap over the rows instead) until the next expiry sorts the rows again, codes unchanged.
    rng = np.random.default_rng(14)
    n, dim = 1500, 32
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    times = np.sort(T0 + np.floor(rng.random(n) * 12 * DAY))  # whole seconds: at +- 7 days lands on a row
    districts = [DISTRICTS[i] for i in rng.integers(0, len(DISTRICTS), n)]
    topics = [TOPICS[i] for i in rng.integers(0, len(TOPICS), n)]
    late = rng.random(n) < 0.1  # added after the others
    window = VectorWindow(dim, window_days=7)
    for i in [*np.flatnonzero(~late), *np.flatnonzero(late)]:
        window.add(int(ids[i]), float(times[i]), districts[i], vecs[i], topics[i])
    assert not any(c.ordered for c in window._coarse.values())
    for rid in rng.choice(ids, 40, replace=False).tolist():
        window.remove(int(rid))  # blocks compact: the coarse rows pointing into them move along

    def check() -> None:
        kept = [i for i in range(n) if int(ids[i]) in window.report_ids()]
        for j in range(36):
            r = kept[int(rng.integers(len(kept)))]
            q = vecs[r] + 0.1 * rng.standard_normal(dim).astype(np.float32)
            k = int(rng.choice([1, 10, 64]))
            # Every third query has a row (its nearest) exactly on its window's lower or upper edge.
            edge = (-7.0, 7.0)[j % 3 - 1] * DAY
            at = float(times[-1] - rng.uniform(0, 9) * DAY) if j % 3 == 0 else float(times[r] + edge)
            scope = None if j % 2 else {"drainage", None}
            want = _brute_force(ids[kept], times[kept], [topics[i] for i in kept], vecs[kept], q, k, at, scope)
            assert _hits(window, q, k, at, scope) == want, (j, k, scope)

    check()
    window.expire()
    assert all(c.ordered for c in window._coarse.values())
    check()


def test_a_topic_whose_rows_keep_outgrowing_its_scale_is_re_encoded_a_logarithmic_number_of_times(monkeypatch) -> None:
    # Every row larger than the ones before: each is clipped. Re-encoding costs the whole topic, so it waits
    # until the topic has grown by a 16th since the last one (the clipped rows meanwhile carry their own,
    # larger bound): ~log(n) / log(17/16) re-encodings, not one a row. Still exact.
    recodes = []
    recode = _Coarse.recode
    monkeypatch.setattr(_Coarse, "recode", lambda self, vecs: (recodes.append(self.n), recode(self, vecs)))
    rng = np.random.default_rng(9)
    n, dim = 400, 32
    vecs = rng.standard_normal((n, dim)) / np.sqrt(dim)
    vecs = (vecs * (1.0 + 0.05 * np.arange(n))[:, None]).astype(np.float32)
    ids = np.arange(1, n + 1, dtype=np.int64)
    times = T0 + np.arange(n, dtype=np.float64)
    districts = [DISTRICTS[i] for i in rng.integers(0, len(DISTRICTS), n)]
    window = _grown(dim, ids, times, districts, vecs, ["trees"] * n)
    assert 10 < len(recodes) <= np.log(n) / np.log(17 / 16) + 1
    for j in range(10):
        q = rng.standard_normal(dim).astype(np.float32)
        want = _brute_force(ids, times, ["trees"] * n, vecs, q, 10, float(times[-1]), None)
        assert _hits(window, q, 10, float(times[-1]), None) == want


def test_rows_sharing_a_large_common_part_are_coded_around_their_mean() -> None:
    # Real embeddings share a large common part (e5's cosines cluster near 0.85): the codes are of x - m, m the
    # topic's mean, so their step follows the spread of the rows, not their size. The same residuals with and
    # without a common part get the same bound.
    rng = np.random.default_rng(10)
    dim = 64
    common = rng.standard_normal(dim)
    common *= 0.9 / np.linalg.norm(common)
    spread = 0.1 * rng.standard_normal((500, dim)) / np.sqrt(dim)
    shared, alone = _Coarse(dim), _Coarse(dim)
    _extend(shared, np.arange(500), np.full(500, T0), (common + spread).astype(np.float32))
    _extend(alone, np.arange(500), np.full(500, T0), spread.astype(np.float32))
    assert shared.err <= 1.5 * alone.err
    q = (common + 0.1 * rng.standard_normal(dim)).astype(np.float32)
    _coarse_errors(shared, (common + spread).astype(np.float32), q)  # and the bound holds with q.m added
