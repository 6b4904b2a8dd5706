"""The matcher: which open incident, if any, a report belongs to.

It keeps the window in memory (vector index, word rarity over the window, the compact features of every report
in it), so matching never reads candidates back from the store, except for their current incident, which an
operator in another process may change. Candidates come from the vector index; the policy (dedupe/policy.py)
judges them. Judging each of up to 64 candidates in full costs more than the search, so a batch screen scores all
of them at once with the policy's own scoring functions on arrays and judges in full only those that could win.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from ingest.store import Store, Tx

from . import incidents, policy
from .features import VIEW_COLUMNS, WindowFeatures, view_from_row
from .index import DAY, VectorWindow

log = logging.getLogger(__name__)

SEARCH_K = 64  # candidates fetched from the index; the policy then judges each one
REBUILD_CHUNK = 20_000  # rows per query at rebuild: bounds the memory the blobs take at once


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
        self.batch = True  # False: every candidate judged by policy.decide in full (the reference; bench, tests)
        self._reset()

    def _reset(self) -> None:
        """An empty window (before a rebuild: it reads the whole window again)."""
        self.index: VectorWindow | None = None  # created on the first vector (its dimension decides)
        self._features: dict[int, WindowFeatures] = {}  # every indexed report of the window
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
        self._held: list[tuple[object, policy.ReportView]] = []  # (transaction, report): see hold()

    # -- building -----------------------------------------------------------------------------
    async def rebuild(self, chunk: int = REBUILD_CHUNK, reader: incidents.Reader | None = None) -> int:
        """Load the window from the store (read through `reader`, default the store's reader), replacing what it
        held: every report with an incident, oldest first, read in chunks (one query each, vectors decoded with
        one frombuffer over the chunk's concatenated blobs)."""
        reader = reader or self.store
        self._reset()
        latest = await incidents.latest_member_time(reader)
        if latest is None:
            return 0
        since = latest - self.window_days * DAY
        last: tuple[float, int] = (since, -1)
        loaded = 0
        while True:
            rows = await incidents.members_after(reader, VIEW_COLUMNS, since, last, chunk)
            if not rows:
                break
            self._load_chunk(rows)
            loaded += len(rows)
            last = (rows[-1]["received_at"], rows[-1]["id"])
            if len(rows) < chunk:
                break
        return loaded

    async def refresh(self, reader: incidents.Reader, since: float, districts: list[str | None] | None) -> int:
        """Add to the window the reports of `districts` (None in it: reports without one; None: every district)
        that joined an incident at or after `since` and are not in it yet: what other instances decided (several
        share a PostgreSQL store, dedupe/blocks.py). Returns how many came in. Reports without a vector are left
        out (they are never candidates; only their words' rarity is missed)."""
        self.settle(reader)  # a batch held but not known to have committed is read back if it did
        index = self.index
        ids = []
        for rid, topic in await incidents.joined_since(reader, since, districts):
            known = self._features.get(rid)
            if index is None or rid not in index:
                ids.append(rid)
            elif known is not None and known.topic != topic:
                # An operator's review gave it another topic since we indexed it (another instance moved it in its
                # own window): it leaves its old topic's block here too, and is read again.
                self._move_out(rid)
                ids.append(rid)
        if not ids:
            return 0
        rows = await incidents.members_by_id(reader, VIEW_COLUMNS, ids)
        self._load_chunk(rows)
        return len(rows)

    def _load_chunk(self, rows: list[Any]) -> None:
        """remember() for a chunk of rows in received_at order, with the vectors added in bulk."""
        views = [view_from_row(r, with_vector=False) for r in rows]
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

    def remember(self, view: policy.ReportView) -> bool:
        """Add a report that now belongs to an incident to the window; False when that changed nothing (its
        vector is already indexed under the same topics, or older than the window)."""
        known = self._features.get(view.report_id)
        if known is not None and (known.topic, known.alt_topics) != (view.topic, view.alt_topics):
            # An operator's review changed its topic: searched under the model's, the next report of its real
            # problem would never find it. It moves to its new topic's block.
            self._move_out(view.report_id)
        if view.vector is not None:
            if self.index is None:
                self.index = VectorWindow(view.vector.shape[0], self.window_days)
            if not self.index.add(view.report_id, view.received_at, view.district, view.vector, view.topic):
                return False
        self._count(view, index_features=view.vector is not None)
        return True

    def hold(self, tx: Tx, view: policy.ReportView) -> None:
        """remember() a report whose incident is written in `tx`, before `tx` commits: the next report matched in
        the same transaction (the stage commits a batch of jobs at once) must see it. Confirmed when `tx`
        commits; should it not, the next match in another transaction takes it out again (`settle`)."""
        self.settle(tx)
        if self.remember(view):
            self._held.append((tx, view))
            tx.after_commit(lambda: self._confirm(view.report_id))

    def _confirm(self, report_id: int) -> None:
        self._held = [(t, v) for t, v in self._held if v.report_id != report_id]

    def settle(self, reader: object) -> None:
        """Forget the reports held by a transaction other than `reader` and never confirmed: it did not commit
        (a committed one has run its hooks before the next transaction could begin)."""
        if not self._held or all(t is reader for t, _ in self._held):
            return
        stale = [v for t, v in self._held if t is not reader]
        self._held = [(t, v) for t, v in self._held if t is reader]
        for view in reversed(stale):
            self._forget(view)
        log.info("dedupe: %d report(s) of a batch that did not commit left the window again", len(stale))

    def _move_out(self, report_id: int) -> None:
        """Take an indexed report out of the window before it is added again with other topics (its words, time and
        district are the same: the rarity counts it keeps are undone and redone alike)."""
        known = self._features[report_id]
        if self.index is not None and self.index.remove(report_id):
            self._forget(known.view(report_id, None))  # its vector is out already

    def _forget(self, view: policy.ReportView) -> None:
        """Undo remember(view) (not the expiry it may have run: the report is stored and comes back, with the
        same time, when its job is retried)."""
        if view.vector is not None and (self.index is None or not self.index.remove(view.report_id)):
            return
        day = int(view.received_at // DAY)
        grams = view.all_grams()
        if day in self._df_by_day:
            self._df_by_day[day].subtract(grams)
            self._df.subtract(grams)
            self._docs_by_day[day] -= 1
            self._n_docs -= 1
        gone = self._features.pop(view.report_id, None)
        if gone is not None and gone.alt_topics:
            alts = self._block_alts.get(gone.topic, Counter())
            for t in gone.alt_topics:
                alts[t] -= 1
                if alts[t] <= 0:
                    del alts[t]
                    self._block_alts_version += 1

    def _count(self, view: policy.ReportView, *, index_features: bool) -> None:
        day = int(view.received_at // DAY)
        grams = view.all_grams()
        self._df_by_day.setdefault(day, Counter()).update(grams)
        self._df.update(grams)
        self._docs_by_day[day] += 1
        self._n_docs += 1
        if index_features:
            self._features[view.report_id] = WindowFeatures(view, self._intern)
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
    async def match(self, view: policy.ReportView, reader: incidents.Reader | None = None) -> policy.Match:
        """The open incident `view` belongs to (or none, naming the closed incident it repeats, if any); the
        store is read through `reader` (default: the store's reader connection; a transaction sees its own
        writes)."""
        reader = reader or self.store
        self.settle(reader)
        # The search, the screen and the policy (~1 ms of CPU a report, most of the stage's) run in a worker thread:
        # on the event loop they held up every other task of the process for a whole batch, intake's
        # acknowledgements included. Nothing else changes the window meanwhile: this stage's worker is its only
        # writer and waits here (a commit's hook touches only `_held`, which the first pass does not read).
        first, found = await asyncio.to_thread(self.first_pass, view)
        if found is None:
            return first
        survivors, cosines, rarity, ceiling = found
        result = first
        if first.incident_id is not None:
            assert first.matched_report is not None
            incident_of = await self._incidents_of(reader, [first.matched_report], view.topic_set(),
                                                   view.district)
            if first.matched_report in incident_of:
                return policy.Match(incident_of[first.matched_report], first.score, first.matched_report,
                                    first.reason)
            # The winner's incident was closed (or an operator moved the report): judge those in open incidents.
            incident_of = await self._incidents_of(reader, survivors, view.topic_set(), view.district)
            result = self._judge(view, [i for i in survivors if i in incident_of], cosines, rarity, incident_of)
        if result.incident_id is None and (ceiling is None or policy.sigmoid(ceiling) >= self.threshold):
            # (Below that ceiling no candidate can be a recurrence: the store is not read for it.)
            closed = await self._recurrence(reader, view, survivors, rarity)
            if closed is not None:
                return replace(result, recurrence_of=closed)
        return result

    async def _recurrence(self, reader: incidents.Reader, view: policy.ReportView, survivors: list[int],
                          rarity: _RarityMemo) -> str | None:
        """The closed incident (its case closed) whose reports name the same place and problem as `view`, the
        most likely one; None when there is none. Read only when `view` opens a new incident and the window
        holds candidates, so a report that joins an open incident costs nothing more."""
        if not survivors or self.index is None:
            return None
        closed = await incidents.closed_incidents_of(reader, survivors)
        if not closed:
            return None
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
                                                                             _RarityMemo, float | None] | None]:
        """The policy's judgement of the window's candidates as if all were in open incidents (a match names
        incident `_PENDING`), and what the second pass needs: the candidates, their cosines, the rarity, and a
        score no candidate's recurrence score exceeds (None: not known, the reference path).

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
        ceiling: list[float] = []
        if self.batch:
            first = self._screen(view, survivors, cosines, rarity, None, ceiling)
        else:
            first = self._judge(view, survivors, cosines, rarity, None)
        return first, (survivors, cosines, rarity, ceiling[0] if ceiling else None)

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
                incident_of: dict[int, str] | None, ceiling: list[float] | None = None) -> policy.Match:
        """policy.decide's answer, computed without judging every candidate in full.

        The evidence of all candidates is computed at once (word rarity in one numpy pass over the flat list of
        their words, the logistic score as array arithmetic), which agrees with the policy's own arithmetic
        only up to rounding: sums in another order, faiss's cosine instead of numpy's dot product. With a bound
        `eps` on that difference, only the candidates that could still be the most probable one (usually one)
        are then judged by policy.evidence / hard_negative / probability themselves, in search order; the rest
        provably score below the winner. So the match, its score and the matched report are decide()'s own.
        `ceiling`, when given, receives a bound above every kept candidate's recurrence score (see `match`)."""
        if not ids:
            return policy.Match(None, 0.0, None, "no_candidates")
        assert self.index is not None and view.vector is not None
        feats = self._features
        nt, nd, nat, place = view.topic, view.district, view.received_at, view.place
        street = place.street
        text_new = policy.padded_text(view.text.tokens) if street else ""
        alleys = policy.alleys_of(view.text.numbers, place.house_number)
        streets = policy.street_names(view)
        conflict: dict[int, bool] = {}  # id(candidate's street names) -> conflict: names repeat across reports
        gps = place.lat is not None and place.lon is not None
        kept: list[int] = []
        # The evidence that needs neither word rarity nor the vectors, one list per input, candidate by candidate.
        same: list[bool] = []
        related: list[bool] = []
        district: list[bool] = []
        number_match: list[bool] = []
        number_conflict: list[bool] = []
        distance: list[float] = []
        street_conflict: list[bool] = []
        times: list[float] = []
        flat: list[str] = []  # every kept candidate's words (text grams and place tokens), candidate after candidate
        lens: list[int] = []
        for rid in ids:
            f = feats[rid]
            # The one hard negative _may_match left to the policy: the classifier put them on other streets.
            fs = f.place.street
            if street and fs and policy.on_other_streets(street, text_new, fs, f" {f.tokens} "):
                continue
            same.append(policy.same_topic(nt, f.topic))
            related.append(policy.related_topic(nt, f.topic))
            district.append(policy.district_conflict(nd, f.district))
            nm, nc = policy.number_evidence(alleys, f.alleys)
            number_match.append(nm)
            number_conflict.append(nc)
            distance.append(policy.distance_feature(policy.distance_km(place, f.place)) if gps else 0.0)
            sc = False
            if streets and f.street_names:
                sc = conflict.get(id(f.street_names))
                if sc is None:
                    sc = conflict[id(f.street_names)] = policy.streets_conflict(streets, f.street_names)
            street_conflict.append(sc)
            times.append(f.received_at)
            kept.append(rid)
            flat += f.grams
            flat += f.ptoks
            lens.append(len(f.grams) + len(f.ptoks))
        if not kept:
            return policy.Match(None, 0.0, None, "hard_negative")
        m = len(kept)
        df_get = self._df.get
        n = policy.window_size(self._n_docs + 1)
        # The new report's own words count once more (it is in the corpus the rarity is taken over); stored
        # negated, so one lookup pass over the candidates' words gives both the count and "shared with new".
        own = {g: -(df_get(g, 0) + 1) for g in view.all_grams()}
        own_get = own.get
        signed = np.array([own_get(g) or df_get(g, 0) for g in flat], np.float64)
        shared_mask = signed < 0
        r = policy.idf(np.abs(signed), n, np.log)
        mass_new = float(policy.idf(-np.array(list(own.values()), np.float64), n, np.log).sum())
        seg = np.repeat(np.arange(m), lens)
        mass = np.minimum(np.bincount(seg, weights=r, minlength=m), mass_new)
        shared = np.bincount(seg, weights=r * shared_mask, minlength=m)

        def flags(values: list[bool]) -> np.ndarray:
            return np.array(values, np.float64)

        z = policy.linear_score(policy.feature_values(
            cosine=np.fromiter((cosines[i] for i in kept), np.float64, m),
            overlap=np.divide(shared, mass, out=np.zeros(m), where=mass > 0), shared=shared,
            same_topic=flags(same), related_topic=flags(related), district_conflict=flags(district),
            gap_hours=policy.gap_hours(nat, np.asarray(times)), number_match=flags(number_match),
            number_conflict=flags(number_conflict), distance=np.asarray(distance, np.float64),
            street_conflict=flags(street_conflict), log1p=np.log1p))
        # faiss's score and numpy's dot product are float32 sums in different orders: each is within
        # dim * 2^-24 |q| |x| of the true product (2.5x for the 1/(1 - n u) factor and margin); everything
        # else is float64 arithmetic on values below ~1e4 (1e-6 is orders of magnitude above its rounding:
        # numpy's log and math's differ in the last bit at most, sums run in another order).
        qn = float(np.linalg.norm(view.vector))
        cos_err = 2.5 * len(view.vector) * 2.0 ** -24 * qn * self.index.max_norm
        eps = abs(policy.WEIGHT_OF["cosine"]) * cos_err + 1e-6
        if ceiling is not None:
            # The best score any kept candidate could have as a recurrence (the pair judged without the days
            # between them, policy.recurrence_probability); the other candidates are hard negatives there too.
            rec = z - policy.WEIGHT_OF["log_gap_hours"] * np.log1p(policy.gap_hours(nat, np.asarray(times)))
            ceiling.append(float(rec.max()) + eps)
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

    async def _incidents_of(self, reader: incidents.Reader, ids: list[int], topics: frozenset[str | None],
                            district: str | None) -> dict[int, str]:
        """Open incidents of the candidate reports whose topic could be the same incident's, and whose reports
        name no district other than `district` (incidents.open_incidents_of). Read from the store every time:
        an operator's merge or split (another process) moves reports."""
        rows = await incidents.open_incidents_of(reader, ids, district)
        return {rid: inc for rid, inc, topic in rows
                if policy.topic_sets_compatible(topics, self._topic_set_of(rid, topic))}

    def _topic_set_of(self, report_id: int, topic: str | None) -> frozenset[str | None]:
        """A candidate's topics: its current topic (an operator may have changed it) and, while that is still
        the topic it was indexed with, the alternatives the classifier gave."""
        feats = self._features.get(report_id)
        alts = feats.alt_topics if feats is not None and feats.topic == topic else frozenset()
        return policy.topic_set(topic, alts)


_PENDING = "?"  # stands for a candidate's incident until the store is read


def _may_match(new: policy.ReportView, old: WindowFeatures) -> bool:
    """False when policy.hard_negative would certainly reject the pair (time, map, topic); the rest (streets)
    is left to the policy, which judges every survivor in full."""
    if policy.too_far_in_time(policy.gap_hours(new.received_at, old.received_at)):
        return False
    if new.topic in policy.UNGROUPED_TOPICS or old.topic in policy.UNGROUPED_TOPICS:
        return False
    if not policy.reports_compatible(new.topic, new.alt_topics, old.topic, old.alt_topics):
        return False
    return not policy.too_far_on_map(policy.distance_km(new.place, old.place))
