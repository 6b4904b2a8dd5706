"""The sliding-window vector index of reports that already belong to an incident (a cache of the store).

Vectors live in the `embeddings` table; this index is rebuilt from it at start and kept up to date as
reports are matched. It is partitioned by district (a report is only compared with reports of its own
district and with reports whose district is unknown) and, inside a partition, by day: each day is one flat
inner-product faiss index, so expiry drops whole days instead of removing ids one by one, and a search
scans only the few thousand vectors of one district's week. Exact (flat) search keeps results identical
between a rebuilt and an incrementally grown index.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import faiss
import numpy as np

DAY = 86400.0
UNKNOWN = "_"  # partition of reports with no district


@dataclass
class _Bucket:
    index: faiss.IndexFlatIP
    ids: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


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
        self._parts: dict[str, dict[int, _Bucket]] = {}
        self._where: dict[int, tuple[str, int]] = {}  # report_id -> (partition, day), to refuse double adds
        self._lock = threading.Lock()  # serialises writes and keeps searches off half-written buckets
        self.horizon = 0.0  # latest received_at seen; the window ends here

    def __len__(self) -> int:
        return len(self._where)

    def add(self, report_id: int, received_at: float, district: str | None, vector: np.ndarray) -> bool:
        """Add one vector; False when the report is already indexed or older than the window."""
        vec = _as_row(vector, self.dim)
        with self._lock:
            if report_id in self._where:
                return False
            self.horizon = max(self.horizon, received_at)
            if received_at < self.horizon - self.window:
                return False
            part = district or UNKNOWN
            day = int(received_at // DAY)
            bucket = self._parts.setdefault(part, {}).get(day)
            if bucket is None:
                bucket = _Bucket(faiss.IndexFlatIP(self.dim))
                self._parts[part][day] = bucket
            bucket.index.add(vec)
            bucket.ids.append(report_id)
            bucket.times.append(received_at)
            self._where[report_id] = (part, day)
            return True

    def expire(self, now: float | None = None) -> int:
        """Drop the days that lie wholly before the window; returns how many vectors went."""
        with self._lock:
            if now is not None:
                self.horizon = max(self.horizon, now)
            oldest = self.horizon - self.window
            dropped = 0
            for part in self._parts.values():
                for day in [d for d in part if (d + 1) * DAY <= oldest]:
                    for rid in part[day].ids:
                        self._where.pop(rid, None)
                    dropped += len(part[day].ids)
                    del part[day]
            return dropped

    def search(self, vector: np.ndarray, district: str | None, k: int, at: float) -> list[Hit]:
        """The k most similar reports received in [at - window, at], from the district's partition and the
        unknown-district partition (all partitions when the report's own district is unknown)."""
        vec = _as_row(vector, self.dim)
        lo = at - self.window
        with self._lock:
            if district:
                parts = [self._parts.get(district, {}), self._parts.get(UNKNOWN, {})]
            else:
                parts = list(self._parts.values())
            hits: list[Hit] = []
            for part in parts:
                for day, bucket in part.items():
                    if (day + 1) * DAY <= lo or day * DAY > at or bucket.index.ntotal == 0:
                        continue
                    kk = min(k, bucket.index.ntotal)
                    scores, rows = bucket.index.search(vec, kk)
                    for s, row in zip(scores[0], rows[0]):
                        if row < 0:
                            continue
                        t = bucket.times[row]
                        if lo <= t <= at:
                            hits.append(Hit(bucket.ids[row], float(s), t))
        hits.sort(key=lambda h: (-h.cosine, h.report_id))
        return hits[:k]

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
