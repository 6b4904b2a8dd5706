"""The sliding-window vector index of reports that already belong to an incident (a cache of the store).

Vectors live in the `embeddings` table; this index is rebuilt from it at start and kept up to date as
reports are matched. It is partitioned by district (a report is only compared with reports of its own
district and with reports whose district is unknown) and, inside a partition, by day: each (partition, day)
block is a contiguous float32 matrix with the ids, times and topic codes of its rows beside it, so expiry
drops whole blocks and a search is one matrix-vector product per block plus one top-k selection over the
concatenated scores (exact, so a rebuilt and an incrementally grown index return the same hits).

Why not faiss here: a single query over a few thousand rows is dominated by per-call overhead and by the
per-bucket top-k merging in Python; numpy over contiguous blocks scores every eligible row once, and lets a
caller drop rows by topic (a hard negative of the policy) before the top-k instead of after it.
"""
from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np

DAY = 86400.0
UNKNOWN = "_"  # partition of reports with no district
NO_TOPIC = 0  # topic code of a report without a topic


class _Block:
    """Rows of one (partition, day): grown by doubling, never reordered (a row number stays valid)."""

    __slots__ = ("vecs", "ids", "times", "topics", "n")

    def __init__(self, dim: int, capacity: int = 64) -> None:
        self.vecs = np.empty((capacity, dim), np.float32)
        self.ids = np.empty(capacity, np.int64)
        self.times = np.empty(capacity, np.float64)
        self.topics = np.empty(capacity, np.int32)
        self.n = 0

    def extend(self, ids: np.ndarray, times: np.ndarray, topics: np.ndarray, vecs: np.ndarray) -> int:
        """Append rows; returns the row number of the first one."""
        start, m = self.n, len(ids)
        if start + m > len(self.ids):
            cap = max(2 * len(self.ids), start + m)
            for name in ("vecs", "ids", "times", "topics"):
                old = getattr(self, name)
                new = np.empty((cap,) + old.shape[1:], old.dtype)
                new[:start] = old[:start]
                setattr(self, name, new)
        self.vecs[start:start + m] = vecs
        self.ids[start:start + m] = ids
        self.times[start:start + m] = times
        self.topics[start:start + m] = topics
        self.n = start + m
        return start


@dataclass(frozen=True, slots=True)
class Hit:
    report_id: int
    cosine: float
    received_at: float


class VectorWindow:
    """Report vectors of the last `window_days`, searchable by district. All methods are thread-safe."""

    def __init__(self, dim: int, window_days: float = 7.0) -> None:
        self.dim = dim
        self.window = window_days * DAY
        self._parts: dict[str, dict[int, _Block]] = {}
        self._where: dict[int, tuple[_Block, int]] = {}  # report_id -> (block, row): double adds, vector_of
        self._topic_codes: dict[str | None, int] = {None: NO_TOPIC}
        self._lock = threading.Lock()  # serialises writes and keeps searches off half-written blocks
        self.horizon = 0.0  # latest received_at seen; the window ends here

    def __len__(self) -> int:
        return len(self._where)

    def topic_code(self, topic: str | None) -> int:
        code = self._topic_codes.get(topic)
        if code is None:
            code = self._topic_codes[topic] = len(self._topic_codes)
        return code

    def add(self, report_id: int, received_at: float, district: str | None, vector: np.ndarray,
            topic: str | None = None) -> bool:
        """Add one vector; False when the report is already indexed or older than the window."""
        vec = _as_row(vector, self.dim)
        with self._lock:
            if report_id in self._where:
                return False
            self.horizon = max(self.horizon, received_at)
            if received_at < self.horizon - self.window:
                return False
            self._append(district, int(received_at // DAY), np.array([report_id], np.int64),
                         np.array([received_at], np.float64), np.array([self.topic_code(topic)], np.int32), vec)
            return True

    def add_many(self, report_ids: Iterable[int], times: Iterable[float], districts: Iterable[str | None],
                 vectors: np.ndarray, topics: Iterable[str | None]) -> list[int]:
        """Bulk load (the rebuild at start): rows in received_at order; the same acceptance rules as `add`
        applied row by row, but the vectors are copied one block at a time. Returns the ids added."""
        ids = np.asarray(list(report_ids), np.int64)
        ts = np.asarray(list(times), np.float64)
        dists = list(districts)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim) if len(ids) else \
            np.empty((0, self.dim), np.float32)
        codes = np.asarray([self.topic_code(t) for t in topics], np.int32)
        with self._lock:
            keep: dict[tuple[str, int], list[int]] = {}
            seen: dict[int, None] = {}
            for i in range(len(ids)):
                rid, t = int(ids[i]), float(ts[i])
                if rid in self._where or rid in seen:
                    continue
                self.horizon = max(self.horizon, t)
                if t < self.horizon - self.window:
                    continue
                seen[rid] = None
                keep.setdefault((dists[i] or UNKNOWN, int(t // DAY)), []).append(i)
            for (part, day), rows in keep.items():
                idx = np.asarray(rows, np.intp)
                self._append(part, day, ids[idx], ts[idx], codes[idx], vecs[idx])
            return list(seen)

    def _append(self, district: str | None, day: int, ids: np.ndarray, times: np.ndarray, topics: np.ndarray,
                vecs: np.ndarray) -> None:
        part = self._parts.setdefault(district or UNKNOWN, {})
        block = part.get(day)
        if block is None:
            block = part[day] = _Block(self.dim)
        start = block.extend(ids, times, topics, vecs)
        for j, rid in enumerate(ids.tolist()):
            self._where[rid] = (block, start + j)

    def expire(self, now: float | None = None) -> int:
        """Drop the days that lie wholly before the window; returns how many vectors went."""
        with self._lock:
            if now is not None:
                self.horizon = max(self.horizon, now)
            oldest = self.horizon - self.window
            dropped = 0
            for part in self._parts.values():
                for day in [d for d in part if (d + 1) * DAY <= oldest]:
                    block = part.pop(day)
                    for rid in block.ids[:block.n].tolist():
                        self._where.pop(rid, None)
                    dropped += block.n
            return dropped

    def search(self, vector: np.ndarray, district: str | None, k: int, at: float,
               topics: Collection[str | None] | None = None) -> list[Hit]:
        """The k most similar reports received in [at - window, at], from the district's partition and the
        unknown-district partition (all partitions when the report's own district is unknown), best first
        (ties by report id). `topics`, when given, keeps only rows with one of those topics (None: no topic)."""
        vec = _as_row(vector, self.dim)[0]
        lo = at - self.window
        with self._lock:
            if district:
                parts = [p for p in (self._parts.get(district), self._parts.get(UNKNOWN)) if p]
            else:
                parts = list(self._parts.values())
            allowed = None
            if topics is not None:
                allowed = np.zeros(len(self._topic_codes), bool)
                for t in topics:
                    code = self._topic_codes.get(t)
                    if code is not None:
                        allowed[code] = True
            scores: list[np.ndarray] = []
            ids: list[np.ndarray] = []
            times: list[np.ndarray] = []
            for part in parts:
                for day, block in part.items():
                    if (day + 1) * DAY <= lo or day * DAY > at or block.n == 0:
                        continue
                    n = block.n
                    t = block.times[:n]
                    keep = None
                    if day * DAY < lo or (day + 1) * DAY > at:
                        keep = (t >= lo) & (t <= at)  # a day on the window's edge: only the rows inside it
                    if allowed is not None:
                        ok = allowed[block.topics[:n]]
                        keep = ok if keep is None else keep & ok
                    if keep is None:
                        scores.append(block.vecs[:n] @ vec)
                        ids.append(block.ids[:n])
                        times.append(t)
                    elif keep.any():
                        rows = np.flatnonzero(keep)
                        scores.append(block.vecs[rows] @ vec if len(rows) < n // 2 else (block.vecs[:n] @ vec)[rows])
                        ids.append(block.ids[rows])
                        times.append(t[rows])
            if not scores:
                return []
            all_scores = np.concatenate(scores)
            all_ids = np.concatenate(ids)
            all_times = np.concatenate(times)
        if len(all_scores) > k:
            # Everything scoring at least the k-th best, so ties at the cut are broken by id like the rest.
            kth = np.partition(all_scores, len(all_scores) - k)[len(all_scores) - k]
            top = np.flatnonzero(all_scores >= kth)
        else:
            top = np.arange(len(all_scores))
        order = np.lexsort((all_ids[top], -all_scores[top]))[:k]
        top = top[order]
        return [Hit(int(i), float(s), float(t)) for i, s, t in
                zip(all_ids[top].tolist(), all_scores[top].tolist(), all_times[top].tolist())]

    def vector_of(self, report_id: int) -> np.ndarray | None:
        """The stored vector of an indexed report (a read-only view, no copy)."""
        with self._lock:
            where = self._where.get(report_id)
            if where is None:
                return None
            block, row = where
            vec = block.vecs[row]
        vec.flags.writeable = False
        return vec

    def report_ids(self) -> set[int]:
        with self._lock:
            return set(self._where)


def _as_row(vector: np.ndarray, dim: int) -> np.ndarray:
    vec = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(1, -1))
    if vec.shape[1] != dim:
        raise ValueError(f"vector has {vec.shape[1]} dimensions, index has {dim}")
    return vec


def decode_vector(blob: bytes, dim: int) -> np.ndarray:
    vec = np.frombuffer(blob, dtype=np.float32)
    if vec.shape[0] != dim:
        raise ValueError(f"stored vector has {vec.shape[0]} values, row says {dim}")
    return vec
