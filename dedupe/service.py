"""The `dedupe` stage: give every routed or in-review report an incident, and decide dispatch or duplicate.

Contract (see the pipeline notes in the README):
- a report matching an open incident gets that incident, status `duplicate` and a `notify` job
  {"template": "duplicate_ack", "incident_id"}; a `review` report keeps status `review` but still joins;
- the first report of a new incident, when `routed`, gets a `dispatch` job {"incident_id"}; a `routed`
  report joining an incident that has no case yet (its first report is still in review) triggers it;
- re-entry with payload {"after_review": true}: the report already has an incident -> `dispatch` when that
  incident has no case yet, else `duplicate` + `duplicate_ack`.
Jobs are handled one at a time in queue order and the window index is updated after each commit, so
matching a report sees every earlier one.
"""
from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from ingest.app import AppContext, Service
from ingest.errors import TransientError
from ingest.records import SCHEMA_VERSION, Classification, Job, Place, from_json
from ingest.store import Store, StoredReport, Tx
from ingest.worker import StageWorker, WorkerSettings

from . import policy
from .index import DAY, VectorWindow, decode_vector
from .text import TextFeatures, extract, same_street

log = logging.getLogger(__name__)

STAGE = "dedupe"
SEARCH_K = 64  # candidates fetched from the index; the policy then judges each one
MATCH_STATUSES = ("routed", "review")
REBUILD_CHUNK = 20_000  # rows per query at rebuild: bounds the memory the blobs take at once


def incident_id_for(seq: int) -> str:
    return f"INC-{seq:06d}"


_EMPTY: tuple[Any, ...] = ()


class _Features:
    """What the window keeps of one report for the policy, compactly: interned word strings in tuples (a
    frozenset per report costs ~2 KB; 140,000 of them would not fit), the tokens as one string, the vector
    stays in the index. `view()` turns it back into the policy's ReportView for the few candidates judged."""

    __slots__ = ("received_at", "topic", "alt_topics", "district", "place", "tokens", "grams", "numbers", "streets",
                 "ptoks", "alleys", "street_names")

    def __init__(self, view: policy.ReportView, intern: dict[str, str]) -> None:
        self.received_at = view.received_at
        self.topic = view.topic
        self.alt_topics = view.alt_topics
        self.district = view.district
        self.place = view.place
        # Tokens never contain a space (the tokenizer splits on it), so one joined string round-trips.
        self.tokens = " ".join(view.text.tokens)
        self.grams = tuple(intern.setdefault(g, g) for g in view.text.grams)
        self.numbers = tuple(view.text.numbers)
        self.streets = view.text.streets
        # Derived once here rather than per candidate per match (the batch screen reads them for every hit):
        # the place tokens that join the word overlap, the alley numbers, every street name (text and place).
        self.ptoks = tuple(intern.setdefault(g, g) for g in view.place_tokens()) or _EMPTY
        self.alleys = tuple(policy.alleys_of(view.text.numbers, view.place.house_number)) or _EMPTY
        self.street_names = tuple(policy._streets(view)) or _EMPTY

    def view(self, report_id: int, vector: np.ndarray | None) -> policy.ReportView:
        text = TextFeatures(tokens=tuple(self.tokens.split(" ")) if self.tokens else (),
                            grams=frozenset(self.grams), numbers=frozenset(self.numbers), streets=self.streets)
        return policy.ReportView(report_id=report_id, received_at=self.received_at, topic=self.topic,
                                 district=self.district, text=text, place=self.place, vector=vector,
                                 alt_topics=self.alt_topics)

    def _key(self) -> tuple[Any, ...]:
        return (self.received_at, self.topic, self.alt_topics, self.district, self.place, self.tokens, frozenset(self.grams),
                frozenset(self.numbers), self.streets)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Features) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]


class _RarityMemo(dict):
    """The window's rarity of each word, computed once per match: the policy asks for the same words once per
    candidate (the new report's whole mass every time), and a dict hit costs far less than a log."""

    __slots__ = ("fn",)

    def __init__(self, fn: policy.Rarity) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, gram: str) -> float:
        value = self[gram] = self.fn(gram)
        return value


class IncidentMatcher:
    """The in-memory side of the stage: vector window, word rarity over the window, and the compact features
    of every report in the window (so matching never reads candidates back from the store, except for their
    current incident, which an operator in another process may change)."""

    def __init__(self, store: Store, window_days: float = 7.0, threshold: float = policy.DEFAULT_THRESHOLD) -> None:
        self.store = store
        self.window_days = window_days
        self.threshold = threshold
        self.index: VectorWindow | None = None  # created on the first vector (its dimension decides)
        self._features: dict[int, _Features] = {}  # every indexed report of the window
        self._intern: dict[str, str] = {}  # one string object per distinct word in the window
        self._df: Counter[str] = Counter()
        self._df_by_day: dict[int, Counter[str]] = {}
        self._docs_by_day: Counter[int] = Counter()
        self._n_docs = 0  # sum(self._docs_by_day.values()), kept as reports come and days go
        self._expired_through = -1  # last day for which expiry ran: expiry runs once per new day, not per report
        self._scope_cache: dict[tuple[str | None, frozenset[str]], frozenset[str | None]] = {}  # -> groupable
        self._scope_known: frozenset[str | None] | None = None  # the window's topics when the cache was filled
        # Per top topic in the window, how many of its reports carry each alternative topic: a block whose
        # reports could be another topic is searched for that topic too.
        self._block_alts: dict[str | None, Counter[str]] = {}
        self._block_alts_version = 0  # bumped when an alternative appears in or leaves a block (scope changes)
        self._scope_version = -1
        self._conn: sqlite3.Connection | None = None  # read-only, loop thread only: see _incidents_of
        self.batch = True  # False: every candidate judged by policy.decide in full (the reference; bench, tests)

    # -- building -----------------------------------------------------------------------------
    async def rebuild(self, chunk: int = REBUILD_CHUNK) -> int:
        """Load the window from the store: every report with an incident, oldest first, read in chunks (one
        query each, vectors decoded with one frombuffer over the chunk's concatenated blobs)."""
        row = await self.store.fetchone(
            "SELECT MAX(r.received_at) AS t FROM reports r JOIN incident_reports m ON m.report_id = r.id")
        if row is None or row["t"] is None:
            return 0
        since = row["t"] - self.window_days * DAY
        last: tuple[float, int] = (since, -1)
        loaded = 0
        while True:
            rows = await self.store.fetchall(
                "SELECT r.id, r.received_at, r.record, r.classification, r.topic, r.district, e.dim, e.vector"
                " FROM reports r JOIN incident_reports m ON m.report_id = r.id"
                " LEFT JOIN embeddings e ON e.report_id = r.id"
                " WHERE r.received_at >= ? AND (r.received_at > ? OR (r.received_at = ? AND r.id > ?))"
                " ORDER BY r.received_at, r.id LIMIT ?", (since, last[0], last[0], last[1], chunk))
            if not rows:
                break
            self._load_chunk(rows)
            loaded += len(rows)
            last = (rows[-1]["received_at"], rows[-1]["id"])
            if len(rows) < chunk:
                break
        return loaded

    def _load_chunk(self, rows: list[Any]) -> None:
        """remember() for a chunk of rows in received_at order, with the vectors added in bulk."""
        views = [_view_from_row(r, with_vector=False) for r in rows]
        with_vec = [i for i, r in enumerate(rows) if r["vector"] is not None]
        added: set[int] = set()
        if with_vec:
            if self.index is None:
                self.index = VectorWindow(int(rows[with_vec[0]]["dim"]), self.window_days)
            dim = self.index.dim
            good = [i for i in with_vec if rows[i]["dim"] == dim and len(rows[i]["vector"]) == 4 * dim]
            if len(good) < len(with_vec):
                log.warning("dedupe: %d stored vectors of another dimension left out of the window",
                            len(with_vec) - len(good))
            vecs = np.frombuffer(b"".join(rows[i]["vector"] for i in good), np.float32).reshape(len(good), dim)
            batch = [views[i] for i in good]
            added = set(self.index.add_many([v.report_id for v in batch], [v.received_at for v in batch],
                                            [v.district for v in batch], vecs, [v.topic for v in batch]))
        for i, view in enumerate(views):
            if rows[i]["vector"] is not None and view.report_id not in added:
                continue  # like remember(): a vector the index refused (old, already there) changes nothing
            self._count(view, index_features=view.report_id in added)

    def remember(self, view: policy.ReportView) -> None:
        """Add a report that now belongs to an incident to the window (after its commit)."""
        if view.vector is not None:
            if self.index is None:
                self.index = VectorWindow(view.vector.shape[0], self.window_days)
            if not self.index.add(view.report_id, view.received_at, view.district, view.vector, view.topic):
                return
        self._count(view, index_features=view.vector is not None)

    def _count(self, view: policy.ReportView, *, index_features: bool) -> None:
        day = int(view.received_at // DAY)
        grams = view.all_grams()
        self._df_by_day.setdefault(day, Counter()).update(grams)
        self._df.update(grams)
        self._docs_by_day[day] += 1
        self._n_docs += 1
        if index_features:
            self._features[view.report_id] = _Features(view, self._intern)
            if view.alt_topics:
                alts = self._block_alts.setdefault(view.topic, Counter())
                for t in view.alt_topics:
                    alts[t] += 1
                    if alts[t] == 1:
                        self._block_alts_version += 1
        if day > self._expired_through:
            self._expired_through = day
            self._expire(view.received_at)

    def _expire(self, now: float) -> None:
        oldest = now - self.window_days * DAY
        if self.index is not None:
            self.index.expire(now)
            if len(self._features) > len(self.index):
                live = self.index.report_ids()
                for rid in [r for r in self._features if r not in live]:
                    gone = self._features.pop(rid)
                    if gone.alt_topics:
                        alts = self._block_alts[gone.topic]
                        for t in gone.alt_topics:
                            alts[t] -= 1
                            if alts[t] <= 0:
                                del alts[t]
                                self._block_alts_version += 1
        for day in [d for d in self._df_by_day if (d + 1) * DAY <= oldest]:
            self._df.subtract(self._df_by_day.pop(day))
            self._n_docs -= self._docs_by_day.pop(day, 0)
            self._df += Counter()  # drop zero counts so the counter does not grow forever
        if len(self._intern) > 2 * len(self._df) + 1000:
            # Words no longer in the window: rebuild the intern table from the live counts.
            self._intern = {g: g for g in self._df}

    # -- matching -----------------------------------------------------------------------------
    async def match(self, view: policy.ReportView) -> policy.Match:
        first, found = self.first_pass(view)
        if found is None:
            return first
        survivors, cosines, rarity = found
        result = first
        if first.incident_id is not None:
            assert first.matched_report is not None
            incident_of = await self._incidents_of([first.matched_report], view.topic_set(), view.district)
            if first.matched_report in incident_of:
                return policy.Match(incident_of[first.matched_report], first.score, first.matched_report,
                                    first.reason)
            # The winner's incident was closed (or an operator moved the report): judge those in open incidents.
            incident_of = await self._incidents_of(survivors, view.topic_set(), view.district)
            result = self._judge(view, [i for i in survivors if i in incident_of], cosines, rarity, incident_of)
        if result.incident_id is None:
            closed = await self._recurrence(view, survivors, rarity)
            if closed is not None:
                return replace(result, recurrence_of=closed)
        return result

    async def _recurrence(self, view: policy.ReportView, survivors: list[int], rarity: _RarityMemo) -> str | None:
        """The closed incident (its case closed) whose reports name the same place and problem as `view`, the
        most likely one; None when there is none. Read only when `view` opens a new incident and the window
        holds candidates, so a report that joins an open incident costs nothing more."""
        if not survivors or self.index is None:
            return None
        marks = ",".join("?" * len(survivors))
        sql = (f"SELECT m.report_id, m.incident_id, i.closed_at FROM incident_reports m JOIN incidents i"
               f" ON i.id = m.incident_id WHERE m.report_id IN ({marks}) AND i.state = 'closed'")
        try:
            rows: list[Any] = self._lookup().execute(sql, survivors).fetchall()
        except sqlite3.Error:
            self.close()
            rows = [tuple(r) for r in await self.store.fetchall(sql, survivors)]
        if not rows:
            return None
        closed = {r[0]: (r[1], r[2] or 0.0) for r in rows}
        ids = [i for i in survivors if i in closed]
        best: tuple[float, float, str] | None = None
        for rid, vec in zip(ids, self.index.vectors_of(ids)):
            old = self._features[rid].view(rid, vec)
            p = policy.recurrence_probability(view, old, policy.evidence(view, old, rarity.__getitem__))
            if p is None or p < self.threshold:
                continue
            incident, closed_at = closed[rid]
            if best is None or (p, closed_at) > best[:2]:
                best = (p, closed_at, incident)
        return best[2] if best is not None else None

    def first_pass(self, view: policy.ReportView) -> tuple[policy.Match, tuple[list[int], dict[int, float],
                                                                             _RarityMemo] | None]:
        """The policy's judgement of the window's candidates as if all were in open incidents (a match names
        incident `_PENDING`), and what the second pass needs: the candidates, their cosines, the rarity.

        The store is read only when a candidate is likely enough (see `match`). No survivor reaching the
        threshold means none of those in open incidents does: a new incident without any store read (the common
        case for a first report; the score and matched report it records are then the best survivor's, whatever
        its incident's state). Otherwise the winner is the first most probable survivor; if its own incident is
        open it is also the first most probable among the survivors in open incidents, so reading that one row
        decides as reading them all would."""
        if self.index is None or view.vector is None:
            return policy.Match(None, 0.0, None, "no_candidates"), None
        scope = self._search_scope(view.topic, view.alt_topics)
        if not scope:
            # A topic never grouped, or none it could be.
            return policy.Match(None, 0.0, None, "no_candidates"), None
        # Only the blocks of topics the policy could accept are searched: the k nearest are then all
        # acceptable by topic (a superset of the acceptable ones an unrestricted top-k would hold).
        hits = self.index.search(view.vector, view.district, SEARCH_K, view.received_at, topics=scope)
        ids = [h.report_id for h in hits if h.report_id != view.report_id]
        if not ids:
            return policy.Match(None, 0.0, None, "no_candidates"), None
        # Hard negatives the policy would skip anyway, checked on the compact features first.
        feats = self._features
        survivors = [i for i in ids if i in feats and _may_match(view, feats[i])]
        if not survivors:
            return policy.Match(None, 0.0, None, "hard_negative"), None
        cosines = {h.report_id: h.cosine for h in hits}
        own = view.all_grams()
        df = self._df
        rarity = _RarityMemo(policy.rarity_from(lambda g: df.get(g, 0) + (g in own), self._n_docs + 1))
        return self._judge(view, survivors, cosines, rarity, None), (survivors, cosines, rarity)

    def _judge(self, view: policy.ReportView, ids: list[int], cosines: dict[int, float], rarity: _RarityMemo,
               incident_of: dict[int, str] | None) -> policy.Match:
        """policy.decide over the candidates `ids` (in search order; incident `_PENDING` when `incident_of` is
        None). The batch screen when `self.batch`, else every candidate judged through the policy in full."""
        if not self.batch:
            assert self.index is not None
            views = [self._features[i].view(i, v) for i, v in zip(ids, self.index.vectors_of(ids))]
            return policy.decide(view, [(v, _PENDING if incident_of is None else incident_of[v.report_id])
                                        for v in views], rarity.__getitem__, self.threshold)
        return self._screen(view, ids, cosines, rarity, incident_of)

    def _screen(self, view: policy.ReportView, ids: list[int], cosines: dict[int, float], rarity: _RarityMemo,
                incident_of: dict[int, str] | None) -> policy.Match:
        """policy.decide's answer, computed without judging every candidate in full.

        The evidence of all candidates is computed at once (word rarity in one numpy pass over the flat list of
        their words, the logistic score as array arithmetic), which agrees with the policy's own arithmetic
        only up to rounding: sums in another order, faiss's cosine instead of numpy's dot product. With a bound
        `eps` on that difference, only the candidates that could still be the most probable one (usually one)
        are then judged by policy.evidence / hard_negative / probability themselves, in search order; the rest
        provably score below the winner. So the match, its score and the matched report are decide()'s own."""
        if not ids:
            return policy.Match(None, 0.0, None, "no_candidates")
        assert self.index is not None and view.vector is not None
        feats = self._features
        W = policy.WEIGHTS
        nt, nd, nat, place = view.topic, view.district, view.received_at, view.place
        street = place.street
        text_new = f" {' '.join(view.text.tokens)} " if street else ""
        related = policy.RELATED_OF.get(nt, frozenset()) if nt is not None else frozenset()
        alleys = policy.alleys_of(view.text.numbers, place.house_number)
        streets = policy._streets(view)
        conflict: dict[int, bool] = {}  # id(candidate's street names) -> conflict: names repeat across reports
        gps = place.lat is not None and place.lon is not None
        w_same, w_rel, w_dist, w_nm, w_nc, w_km, w_sc = W[3], W[4], W[5], W[7], W[8], W[9], W[10]
        same_topic = w_same if nt is not None else 0.0
        kept: list[int] = []
        part: list[float] = []  # the score's terms that need neither word rarity nor the time gap
        times: list[float] = []
        flat: list[str] = []  # every kept candidate's words (text grams and place tokens), candidate after candidate
        lens: list[int] = []
        for rid in ids:
            f = feats[rid]
            # The one hard negative _may_match left to the policy: the classifier put them on other streets.
            fs = f.place.street
            if street and fs and fs != street and f" {fs} " not in text_new and f" {street} " not in f" {f.tokens} ":
                continue
            z = same_topic if f.topic == nt else 0.0
            if f.topic in related:
                z += w_rel
            if nd and f.district and nd != f.district:
                z += w_dist
            if alleys and f.alleys:
                z += w_nc if alleys.isdisjoint(f.alleys) else w_nm
            if gps:
                km = _distance_km(place, f.place)
                if km is not None:
                    z += w_km * min(km, 3.0)
            if streets and f.street_names:
                sc = conflict.get(id(f.street_names))
                if sc is None:
                    sc = conflict[id(f.street_names)] = not any(same_street(x, y) for x in streets
                                                                for y in f.street_names)
                if sc:
                    z += w_sc
            part.append(z)
            times.append(f.received_at)
            kept.append(rid)
            flat += f.grams
            flat += f.ptoks
            lens.append(len(f.grams) + len(f.ptoks))
        if not kept:
            return policy.Match(None, 0.0, None, "hard_negative")
        m = len(kept)
        df_get = self._df.get
        n = max(policy.MIN_WINDOW, self._n_docs + 1)
        fit = policy.FIT_CORPUS
        # The new report's own words count once more (it is in the corpus the rarity is taken over); stored
        # negated, so one lookup pass over the candidates' words gives both the count and "shared with new".
        own = {g: -(df_get(g, 0) + 1) for g in view.all_grams()}
        own_get = own.get
        signed = np.array([own_get(g) or df_get(g, 0) for g in flat], np.float64)
        shared_mask = signed < 0
        r = np.log((fit + 1) / (fit * np.abs(signed) / n + 0.5))  # policy.rarity_from, elementwise
        own_counts = -np.array(list(own.values()), np.float64)
        mass_new = float(np.log((fit + 1) / (fit * own_counts / n + 0.5)).sum())
        seg = np.repeat(np.arange(m), lens)
        mass = np.minimum(np.bincount(seg, weights=r, minlength=m), mass_new)
        shared = np.bincount(seg, weights=r * shared_mask, minlength=m)
        overlap = np.divide(shared, mass, out=np.zeros(m), where=mass > 0)
        cos = np.fromiter((cosines[i] for i in kept), np.float64, m)
        gap_hours = np.abs(nat - np.asarray(times)) / 3600.0
        z = (policy.BIAS + np.asarray(part) + W[0] * cos + W[1] * overlap + W[2] * np.log1p(shared)
             + W[6] * np.log1p(gap_hours))
        # faiss's score and numpy's dot product are float32 sums in different orders: each is within
        # dim * 2^-24 |q| |x| of the true product (2.5x for the 1/(1 - n u) factor and margin); everything
        # else is float64 arithmetic on values below ~1e4 (1e-6 is orders of magnitude above its rounding).
        qn = float(np.linalg.norm(view.vector))
        cos_err = 2.5 * len(view.vector) * 2.0 ** -24 * qn * self.index.max_norm
        eps = abs(W[0]) * cos_err + 1e-6
        fin = [kept[i] for i in policy.finalists(z, eps)]
        best: tuple[float, int] | None = None
        for rid, vec in zip(fin, self.index.vectors_of(fin)):
            old = feats[rid].view(rid, vec)
            ev = policy.evidence(view, old, rarity.__getitem__)
            if policy.hard_negative(view, old, ev) is not None:
                continue  # cannot happen (checked above); kept so this stays decide() whatever changes there
            p = policy.probability(ev)
            if best is None or p > best[0]:
                best = (p, rid)
        if best is None:
            return policy.Match(None, 0.0, None, "hard_negative")
        p, rid = best
        if p >= self.threshold:
            return policy.Match(_PENDING if incident_of is None else incident_of[rid], p, rid, "matched")
        return policy.Match(None, p, rid, "below_threshold")

    def _search_scope(self, topic: str | None, alts: frozenset[str] = frozenset()) -> frozenset[str | None]:
        """policy.groupable_topics over the topics in the window, memoised until a topic or an alternative topic
        of a block appears or leaves."""
        assert self.index is not None
        known = self.index.topics()
        if known is not self._scope_known or self._scope_version != self._block_alts_version:
            self._scope_cache.clear()
            self._scope_known = known
            self._scope_version = self._block_alts_version
        key = (topic, alts)
        scope = self._scope_cache.get(key)
        if scope is None:
            scope = self._scope_cache[key] = policy.groupable_topics(topic, known, alts=alts,
                                                                     block_alts=self._block_alts)
        return scope

    async def _incidents_of(self, ids: list[int], topics: frozenset[str | None],
                            district: str | None) -> dict[int, str]:
        """Open incidents of the candidate reports whose topic could be the same incident's, and whose reports
        name no district other than `district`: a report without a district must not bridge two incidents
        of different districts (it joins one; a later report of the other district must not follow it).

        Read from the store every time: an operator's merge or split (another process) moves reports. The
        read is a point lookup of a few primary keys, done on the matcher's own read-only connection in the
        loop thread: a round trip through the store's reader thread measured ~0.3 ms idle but 10+ ms on a busy
        machine (two thread switches), while the lookup itself takes tens of microseconds. A WAL reader never
        waits for the writer; should the connection fail anyway, the store's reader is used."""
        marks = ",".join("?" * len(ids))
        sql = (f"SELECT m.report_id, m.incident_id, r.topic FROM incident_reports m"
               f" JOIN incidents i ON i.id = m.incident_id JOIN reports r ON r.id = m.report_id"
               f" WHERE m.report_id IN ({marks}) AND i.state = 'open'")
        params: list[Any] = list(ids)
        if district is not None:
            sql += (" AND NOT EXISTS (SELECT 1 FROM incident_reports o JOIN reports ro ON ro.id = o.report_id"
                    " WHERE o.incident_id = m.incident_id AND ro.district IS NOT NULL AND ro.district != ?)")
            params.append(district)
        try:
            rows: list[Any] = self._lookup().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            log.warning("dedupe: direct incident lookup failed (%s); reading through the store", exc)
            self.close()
            rows = await self.store.fetchall(sql, params)
        return {r[0]: r[1] for r in rows if policy.topic_sets_compatible(topics, self._topic_set_of(r[0], r[2]))}

    def _topic_set_of(self, report_id: int, topic: str | None) -> frozenset[str | None]:
        """A candidate's topics: its current topic (an operator may have changed it) and, while that is still
        the topic it was indexed with, the alternatives the classifier gave."""
        feats = self._features.get(report_id)
        alts = feats.alt_topics if feats is not None and feats.topic == topic else frozenset()
        return policy.topic_set(topic, alts)

    def _lookup(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(f"{self.store.path.resolve().as_uri()}?mode=ro", uri=True,
                                   isolation_level=None)
            conn.execute("PRAGMA busy_timeout=1000")  # only WAL recovery could hold a reader up
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Close the matcher's read-only connection (reopened on the next lookup)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_PENDING = "?"  # stands for a candidate's incident until the store is read


def _may_match(new: policy.ReportView, old: _Features) -> bool:
    """False when policy.hard_negative would certainly reject the pair (time, map, topic); the rest (streets)
    is left to the policy, which judges every survivor in full."""
    if abs(new.received_at - old.received_at) / 3600.0 > policy.MAX_GAP_DAYS * 24:
        return False
    if new.topic in policy.UNGROUPED_TOPICS or old.topic in policy.UNGROUPED_TOPICS:
        return False
    if not policy.reports_compatible(new.topic, new.alt_topics, old.topic, old.alt_topics):
        return False
    km = _distance_km(new.place, old.place)
    return km is None or km <= policy.MAX_DISTANCE_KM


def _distance_km(a: Place, b: Place) -> float | None:
    # policy._distance_km itself: the same arithmetic, so the filter agrees with the policy to the bit.
    return policy._distance_km(a, b)


_PLACE_FIELDS = ("district", "ward", "street", "landmark", "house_number", "lat", "lon", "source")


def _place_of(classification: str) -> tuple[Place, str | None, frozenset[str]]:
    """The classification's Place, topic and alternative topics (policy.alt_topics_of its candidates; none for
    an operator's decision, which is certain), as from_json(Classification, ...) gives them, without its
    per-call type introspection (the rebuild reads 140,000 of these)."""
    raw = json.loads(classification)
    p = raw.get("place")
    if (raw.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION or not isinstance(p, (dict, type(None)))
            or (p is not None and p.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION)):
        cls = from_json(Classification, raw)  # the real decoder refuses (or reads) what this shortcut does not know
        alts = (policy.alt_topics_of(cls.topic, ((c.topic, c.score) for c in cls.candidates))
                if cls.model_version != "operator" else frozenset())
        return cls.place or Place(), cls.topic, alts
    place = Place(**{k: p[k] for k in _PLACE_FIELDS if k in p}) if p is not None else Place()
    alts: frozenset[str] = frozenset()
    cands = raw.get("candidates")
    if raw.get("model_version") != "operator" and isinstance(cands, list):
        alts = policy.alt_topics_of(raw.get("topic"), ((c["topic"], c["score"]) for c in cands
                                                       if isinstance(c, dict) and "topic" in c and "score" in c))
    return place, raw.get("topic"), alts


def _view_from_row(row: Any, with_vector: bool = True) -> policy.ReportView:
    record = json.loads(row["record"])
    place = Place()
    topic, district = row["topic"], row["district"]
    alts: frozenset[str] = frozenset()
    if row["classification"]:
        place, cls_topic, cls_alts = _place_of(row["classification"])
        if topic is None or topic == cls_topic:
            alts = cls_alts  # the classifier's alternatives hold only for the classifier's own topic
        topic = topic or cls_topic
        district = district or place.district
    if place.lat is None and record.get("lat") is not None:
        # The reporter's GPS fix, when the classifier kept no coordinates.
        place = Place(district=place.district, ward=place.ward, street=place.street, landmark=place.landmark,
                      house_number=place.house_number, lat=record.get("lat"), lon=record.get("lon"),
                      source=place.source or "gps")
    vector = decode_vector(row["vector"], row["dim"]) if with_vector and row["vector"] is not None else None
    text = " ".join(x for x in (record.get("subject"), record.get("text")) if x)
    return policy.ReportView(report_id=row["id"], received_at=row["received_at"], topic=topic, district=district,
                             text=extract(text), place=place, vector=vector, alt_topics=alts)


async def load_view(store: Store, report_id: int) -> policy.ReportView | None:
    row = await store.fetchone(
        "SELECT r.id, r.received_at, r.record, r.classification, r.topic, r.district, e.dim, e.vector"
        " FROM reports r LEFT JOIN embeddings e ON e.report_id = r.id WHERE r.id = ?", (report_id,))
    return _view_from_row(row) if row is not None else None


def _place_summary(place: Place) -> str:
    summary = {k: getattr(place, k) for k in ("ward", "street", "landmark", "house_number", "lat", "lon")
               if getattr(place, k) is not None}
    return json.dumps(summary, ensure_ascii=False)


async def new_incident(tx: Tx, view: policy.ReportView, recurrence_of: str | None = None) -> str:
    """Open an incident whose first report is `view` (inside the caller's transaction); `recurrence_of` names
    the closed incident of the same place and problem that this one repeats."""
    row = await tx.fetchone("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM incidents")
    seq = int(row["seq"]) if row is not None else 1
    incident_id = incident_id_for(seq)
    await tx.execute(
        "INSERT INTO incidents(id, seq, first_report_id, topic, district, place, created_at, last_report_at,"
        " recurrence_of) VALUES (?,?,?,?,?,?,?,?,?)",
        (incident_id, seq, view.report_id, view.topic, view.district, _place_summary(view.place),
         view.received_at, view.received_at, recurrence_of))
    return incident_id


async def join_incident(tx: Tx, report_id: int, incident_id: str, received_at: float, *, score: float = 1.0,
                        matched_report: int | None = None, how: str = "auto") -> None:
    now = tx.store.clock.now()
    await tx.execute(
        "INSERT INTO incident_reports(report_id, incident_id, joined_at, score, matched_report, how)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT(report_id) DO UPDATE SET incident_id=excluded.incident_id,"
        " joined_at=excluded.joined_at, score=excluded.score, matched_report=excluded.matched_report,"
        " how=excluded.how",
        (report_id, incident_id, now, score, matched_report, how))
    await tx.execute("UPDATE reports SET incident_id=?, updated_at=? WHERE id=?", (incident_id, now, report_id))
    await tx.execute("UPDATE incidents SET last_report_at=MAX(last_report_at, ?) WHERE id=?",
                     (received_at, incident_id))


async def route_member(tx: Tx, report_id: int, incident_id: str, status: str) -> str:
    """Dispatch or acknowledge a member report by the contract; returns what was done."""
    now = tx.store.clock.now()
    if status != "routed":
        # Art. 6: every report is acknowledged within 5 minutes, also one an operator has yet to classify.
        await tx.enqueue("notify", report_id, {"template": "received"})
        return "held_for_review"
    row = await tx.fetchone("SELECT dispatch_report_id, state FROM incidents WHERE id=?", (incident_id,))
    if row is not None and row["state"] == "closed":
        # It arrived while the case was open and was held for review until after the case closed: it shares
        # the incident's result (a new report of the problem, after the closure, opens a recurrence instead).
        await tx.execute("UPDATE reports SET status='closed', updated_at=? WHERE id=?", (now, report_id))
        await tx.enqueue("notify", report_id, {"template": "result", "incident_id": incident_id})
        return "closed"
    if row is not None and row["dispatch_report_id"] is None:
        await tx.execute("UPDATE incidents SET dispatch_report_id=? WHERE id=?", (report_id, incident_id))
        await tx.enqueue("dispatch", report_id, {"incident_id": incident_id})
        return "dispatch"
    await tx.execute("UPDATE reports SET status='duplicate', updated_at=? WHERE id=?", (now, report_id))
    await tx.enqueue("notify", report_id, {"template": "duplicate_ack", "incident_id": incident_id})
    return "duplicate"


class DedupeStage:
    """Handler of the `dedupe` queue; one instance per daemon (writes must stay serialised)."""

    def __init__(self, store: Store, matcher: IncidentMatcher) -> None:
        self.store = store
        self.matcher = matcher

    async def handle(self, job: Job, report: StoredReport) -> Any:
        if report.status not in MATCH_STATUSES:
            log.info("dedupe: report %d has status %s, nothing to do", report.id, report.status)
            return None
        status = report.status
        existing = await self.store.fetchone("SELECT incident_id FROM incident_reports WHERE report_id=?",
                                             (report.id,))
        if existing is not None:
            # After review (or a replayed job): the report keeps its incident; only routing is decided.
            incident_id = existing["incident_id"]

            async def reroute(tx: Tx) -> None:
                done = await route_member(tx, report.id, incident_id, status)
                await tx.event(report.id, "incident_routed", "dedupe", {"incident_id": incident_id, "action": done,
                                                                       "after_review": bool(job.payload.get("after_review"))})
            return reroute

        view = await load_view(self.store, report.id)
        if view is None:
            raise TransientError("report row vanished")
        match = await self.matcher.match(view)

        async def writes(tx: Tx) -> None:
            if match.incident_id is not None:
                incident_id = match.incident_id
                await join_incident(tx, report.id, incident_id, view.received_at, score=match.score,
                                    matched_report=match.matched_report)
            else:
                incident_id = await new_incident(tx, view, match.recurrence_of)
                await join_incident(tx, report.id, incident_id, view.received_at)
            done = await route_member(tx, report.id, incident_id, status)
            data = {"incident_id": incident_id, "new": match.incident_id is None, "score": round(match.score, 4),
                    "matched_report": match.matched_report, "action": done}
            if match.recurrence_of:
                data["recurrence_of"] = match.recurrence_of
            await tx.event(report.id, "incident", "dedupe", data)
            tx.after_commit(lambda: self.matcher.remember(view))
        return writes


class DedupeService:
    name = "dedupe"

    def __init__(self, ctx: AppContext) -> None:
        cfg = ctx.settings.dedupe
        q = ctx.settings.queue
        self.store = ctx.store
        self.matcher = IncidentMatcher(ctx.store, cfg.window_days, cfg.match_threshold)
        self.stage = DedupeStage(ctx.store, self.matcher)
        # The worker handles jobs one by one in lease order: each match must see the commit before it.
        self.worker = StageWorker(ctx.store, STAGE, self.stage.handle,
                                  WorkerSettings(batch=q.batch, lease_seconds=q.lease_seconds,
                                                 max_attempts=q.max_attempts))

    async def run(self) -> None:
        loaded = await self.matcher.rebuild()
        log.info("dedupe: window rebuilt from the store with %d reports", loaded)
        try:
            await self.worker.run()
        finally:
            self.matcher.close()


def build(ctx: AppContext) -> list[Service]:
    return [DedupeService(ctx)]
