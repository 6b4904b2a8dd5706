"""Training data, the on-disk model cache, and the live `Router` whose model is swapped atomically on retrain.

Training examples: the bundled seed reports (classifier/data/reports-seed.jsonl), the topic descriptions of
the directory, and operator review decisions. The fitted model is cached under `[classifier] cache_dir`
(training/cache.py: arrays and JSON, no pickle), keyed by a hash of the examples, the embedding model and the
feature version; seed vectors are cached by (model, text) so a retrain embeds only new texts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from config.directory import Directory, load_directory
from config.schema import Settings
from ingest.addresses import Gazetteer
from ingest.progress import progress_bar
from ingest.records import Classification, Place

from classifier.embedding.embedder import EmbeddingThread, VectorCache, embed_cached, report_text
from classifier.training import cache
from classifier.training.model import MODEL_VERSION, TopicModel, load_cues
from classifier.routing.places import Places
from classifier.training.examples import Example, reject_reasons  # noqa: F401  (their importers' old home)
from classifier.routing.policy import abusive_probability, complaint_terms_in, decide
from classifier.routing.screening import screen

log = logging.getLogger(__name__)

SEED_PATH = Path(__file__).parent.parent / "data" / "reports-seed.jsonl"
SYNTHETIC_PATH = Path(__file__).parent.parent / "data" / "synthetic"
GAZETTEER_PATH = Path(__file__).parent.parent / "data" / "gazetteer.json"


def load_seed(path: Path | None = None) -> list[dict[str, Any]]:
    """Labelled rows of a training file. Rows marked `"holdout": true` (the test corpora under
    tests/classifier/corpus) are never training data: a file holding one is refused."""
    source = Path(path) if path else SEED_PATH
    with source.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if any(r.get("holdout") for r in rows):
        raise ValueError(f"{source}: a held-out test corpus, never training data")
    return rows


def seed_examples(rows: Sequence[dict[str, Any]]) -> list[Example]:
    return [Example(text=report_text(r["text"], r.get("subject")), topic=r["expected"]["topic"], ref=r.get("id"))
            for r in rows if r.get("expected", {}).get("topic")]


def load_synthetic(path: Path | None = None) -> list[dict[str, Any]]:
    """The hand-written examples: one .jsonl file, or every .jsonl file of a directory (the bundled one holds a
    file per topic, see classifier/data/synthetic/README.md). Rows come in the order of their `seq` (rows without
    one after them, in file name and line order): the fitted model depends on the order of its examples (the
    cross-validation folds, the restorer's ties), so the order is kept in the rows, not in how files are cut."""
    source = Path(path) if path else SYNTHETIC_PATH
    if path is None and not source.exists():
        return []
    files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    rows: list[dict[str, Any]] = []
    for f in files:
        rows += load_seed(f)
    # A stable sort: rows without a seq keep the order they were read in.
    return sorted(rows, key=lambda r: (0, r["seq"]) if isinstance(r.get("seq"), int) else (1, 0))


def synthetic_examples(rows: Sequence[dict[str, Any]], weight: float) -> list[Example]:
    """Written by the team from the topic definitions to widen the vocabulary of each topic beyond the seed
    reports. They count less than real reports, and calibration ignores them (see TopicModel.fit: only
    weight-1 examples calibrate), since a written example is cleaner than what arrives; an administrator who
    sets the weight to 1 declares them as good as real reports, calibration included."""
    if weight <= 0:
        return []
    return [Example(text=report_text(r["text"], r.get("subject")), topic=r["expected"]["topic"], weight=weight,
                    source="synthetic", ref=r.get("id")) for r in rows if r.get("expected", {}).get("topic")]


def description_examples(directory: Directory) -> list[Example]:
    out = []
    for t in directory.topics.values():
        for text in (t.description_vi, t.description_en):
            if text:
                out.append(Example(text=text, topic=t.id, weight=0.5, source="description"))
    return out


def routing_groups(directory: Directory) -> dict[str, str]:
    """Topic -> routing group: topics that reach the same agency wherever the report is (the district-scoped
    ones share "district"; each refused topic stands alone). The safety model judges the group, not the topic."""
    return {t.id: (t.agency if t.agency is not None else f"!{t.id}") for t in directory.topics.values()}


def vocabulary_texts(directory: Directory, gazetteer_path: Path | None = None) -> list[str]:
    """Accented names the diacritics restorer learns from besides the training texts: agencies, districts,
    wards, streets and landmarks."""
    out = [a.name_vi for a in directory.agencies.values()]
    for d in directory.districts.values():
        out += [d.name_vi, *d.aliases, *d.wards]
    try:
        data = json.loads(Path(gazetteer_path or GAZETTEER_PATH).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    for item in (*data.get("streets", ()), *data.get("landmarks", ())):
        out += [item["name"], *item.get("aliases", ())]
    return out


def cache_key(examples: Sequence[Example], embedder_name: str, vocabulary: Sequence[str] = ()) -> str:
    h = hashlib.sha256()
    h.update(f"{MODEL_VERSION}\n{embedder_name}\n".encode())
    cues = Path(__file__).parent.parent / "data" / "cues.json"
    h.update(cues.read_bytes())
    for ex in examples:
        h.update(f"{ex.topic}\t{ex.weight}\t{ex.text}\n".encode())
    for text in vocabulary:
        h.update(f"v\t{text}\n".encode())
    return h.hexdigest()[:24]


def model_vectors(model: TopicModel, texts: Sequence[str], embed: Any, cache: VectorCache,
                  progress: Any = None) -> np.ndarray:
    """The vectors `model` is fitted on or predicts from: each text as the model embeds it (restored where typed
    without diacritics). Training and evaluation both go through here so they cannot drift apart."""
    return embed_cached(embed, cache, [model.embedding_text(t) for t in texts], progress=progress)


def train(examples: Sequence[Example], embed: Any, cache: VectorCache, *, progress: bool = True,
          vocabulary: Sequence[str] = (), groups: dict[str, str] | None = None) -> TopicModel:
    """Fit a model; `embed` is a blocking encode (through the single inference thread)."""
    texts = [ex.text for ex in examples]
    model = TopicModel(load_cues()).fit_restorer(texts, vocabulary)
    t0 = time.monotonic()
    bar = progress_bar(None, "training: embedding examples", unit="text")

    def report(done: int, total: int) -> None:
        if progress:
            log.info("classifier training: embedded %d/%d examples", done, total)
            bar.total = total
            bar.update(done - bar.n)

    with bar:
        vectors = model_vectors(model, texts, embed, cache, progress=report)
    log.info("classifier training: fitting on %d examples", len(texts))
    model.fit(texts, vectors, [ex.topic for ex in examples], weights=[ex.weight for ex in examples],
              groups=groups)
    log.info("classifier training: done in %.1fs", time.monotonic() - t0)
    return model


def load_or_train(examples: Sequence[Example], embed: Any, cache_dir: Path, embedder_name: str,
                  vocabulary: Sequence[str] = (), groups: dict[str, str] | None = None) -> TopicModel:
    key = cache_key(examples, embedder_name, [*vocabulary, *(f"g\t{k}\t{v}" for k, v in sorted((groups or {}).items()))])
    path = cache.model_path(cache_dir, key)
    try:
        model = cache.load(path, key)
        log.info("classifier: loaded cached model %s", path.name)
        return model
    except cache.CacheError as exc:
        if path.exists():
            log.warning("classifier: cached model %s refused (%s); retraining", path.name, exc)
    log.info("classifier: training a new model (%d examples, key %s)", len(examples), key)
    model = train(examples, embed, VectorCache(cache_dir, embedder_name), vocabulary=vocabulary, groups=groups)
    cache.save(model, path, key)
    return model


class Router:
    """Embedder + gazetteer + model: turns report texts into Classifications. The model reference is swapped
    atomically by a background retrain; readers take one reference per batch."""

    def __init__(self, settings: Settings, directory: Directory, embedder: EmbeddingThread,
                 gazetteer: Gazetteer | None = None) -> None:
        self.settings = settings
        self.directory = directory
        self.embedder = embedder
        # Where reports happened: the same finder the intake process builds for the chat bots' place question.
        self.places = Places(directory, gazetteer)
        self.gazetteer = self.places.gazetteer
        # The topic model learns from the 2023 directory on either map (same topics; the 2025 edit only renames
        # agencies), so switching [data] structure neither retrains nor changes the topic decisions.
        self.training_directory = (directory if directory.structure == "2023"
                                   else load_directory(settings.data.agencies, "2023"))
        self.reasons = reject_reasons(settings.data.agencies)
        self.cache_dir = Path(settings.classifier.cache_dir)
        self.seed_rows = load_seed(settings.classifier.seed_data)
        self.synthetic_rows = load_synthetic(settings.classifier.synthetic_data)
        self.model: TopicModel | None = None
        self.model_version: str | None = None
        self._retrain_lock = threading.Lock()

    def base_examples(self) -> list[Example]:
        return (seed_examples(self.seed_rows) + description_examples(self.training_directory)
                + synthetic_examples(self.synthetic_rows, self.settings.classifier.synthetic_weight))

    def load(self, extra: Sequence[Example] = ()) -> None:
        """Blocking (call in a thread): train or load the cached model, then swap it in."""
        examples = self.base_examples() + list(extra)
        vocabulary = vocabulary_texts(self.training_directory)
        model = load_or_train(examples, self.embedder.encode_blocking, self.cache_dir, self.embedder.name, vocabulary,
                              routing_groups(self.training_directory))
        self.model = model
        self.model_version = f"{MODEL_VERSION}:{cache_key(examples, self.embedder.name, vocabulary)}"

    def retrain(self, extra: Sequence[Example]) -> bool:
        """Blocking: retrain with review decisions; the old model serves until the new one is ready."""
        if not self._retrain_lock.acquire(blocking=False):
            return False
        try:
            self.load(extra)
            log.info("classifier: swapped in retrained model %s (%d review examples)", self.model_version,
                     len(extra))
            return True
        finally:
            self._retrain_lock.release()

    def embedding_texts(self, texts: Sequence[str]) -> list[str]:
        """What to embed for these reports (diacritics restored where typed without); the vector of this text is
        the report's vector, for classification and for the incident stage alike."""
        model = self.model
        return [model.embedding_text(t) for t in texts] if model is not None else list(texts)

    def place(self, text: str, lat: float | None, lon: float | None, reporter_address: str | None = None) -> Place:
        return self.places.place(text, lat, lon, reporter_address)

    def place_found(self, text: str, lat: float | None, lon: float | None) -> bool:
        return self.places.place_found(text, lat, lon)

    def unit_candidates(self, text: str, lat: float | None, lon: float | None) -> tuple[str, ...]:
        return self.places.unit_candidates(text, lat, lon)

    def classify(self, texts: Sequence[str], vectors: np.ndarray, places: Sequence[Place],
                 languages: Sequence[str] | None = None) -> list[Classification]:
        model, version = self.model, self.model_version
        if model is None:
            raise RuntimeError("classifier model not loaded")
        probs, safety, written = model.predict_views(list(texts), vectors)
        out = []
        for i, place in enumerate(places):
            out.append(decide(self.directory, model.classes_, probs[i], place,
                              review_threshold=self.settings.classifier.review_threshold, reasons=self.reasons,
                              model_version=version, language=languages[i] if languages else "vi",
                              screening=screen(texts[i]),
                              complaint=bool(complaint_terms_in(texts[i])), safety=float(safety[i]),
                              abusive_as_written=abusive_probability(model.classes_, written, i)))
        return out
