"""`run_daemon.py eval --input FILE.jsonl [--cv]`: routing quality against the `expected` fields.

Prints topic and agency accuracy and macro-F1, agency accuracy without diacritics beside the rest, precision
and coverage of automatic dispatch at the configured review threshold, recall of rejected/out_of_scope, and
the worst confusions. With --cv (or when the input is the bundled seed set) it runs 5-fold cross-validation,
training on 4/5 of the input each time.

Hook for other metrics (the incident stage adds pairwise P/R/F1): append a function to `EXTRA_METRICS`; it
receives the list of `Prediction`s and returns text appended to the report.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from config.directory import load_directory
from config.schema import Settings
from ingest.text import has_diacritics

from classifier.embedding.embedder import EmbeddingThread, VectorCache, load_embedder, report_text
from classifier.training.model import TopicModel, load_cues
from classifier.routing.locate import locate
from classifier.routing.place import load_gazetteer
from classifier.routing.policy import abusive_probability, complaint_terms_in, decide
from classifier.routing.screening import screen
from classifier.training.trainer import (SEED_PATH, description_examples, load_or_train, load_synthetic,
                                         model_vectors, reject_reasons, routing_groups, seed_examples,
                                         synthetic_examples, vocabulary_texts)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    id: str
    text: str
    expected: dict[str, Any]
    status: str
    topic: str
    agency: str | None
    district: str | None
    confidence: float
    place: Any  # ingest.records.Place, for the incident matcher's metrics


EXTRA_METRICS: list[Callable[[list[Prediction]], str]] = []


def load_rows(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [r for r in rows if r.get("expected")]


def _is_seed(rows: Sequence[dict[str, Any]]) -> bool:
    try:
        seed_texts = {json.loads(line)["text"] for line in SEED_PATH.read_text(encoding="utf-8").splitlines() if line}
    except OSError:
        return False
    return bool(rows) and sum(r["text"] in seed_texts for r in rows) >= 0.5 * len(rows)


def predict(rows: Sequence[dict[str, Any]], settings: Settings, *, cv: bool, embedder: Any = None,
            folds: int = 5, seed: int = 0) -> list[Prediction]:
    """Per-report predictions; with `cv`, each report is predicted by a model that did not see it."""
    directory = load_directory(settings.data.agencies, settings.data.structure)
    gazetteer = load_gazetteer(directory)
    reasons = reject_reasons(settings.data.agencies)
    cfg = settings.classifier
    if embedder is None:
        embedder = EmbeddingThread(load_embedder(cfg.backend, cfg.model, cfg.variant, cfg.embed_threads))
    encode = embedder.encode_blocking if isinstance(embedder, EmbeddingThread) else embedder.encode
    cache = VectorCache(Path(cfg.cache_dir), embedder.name)
    texts = [report_text(r["text"], r.get("subject")) for r in rows]
    vocabulary = vocabulary_texts(directory)
    places = [locate(t, gazetteer, lat=r.get("lat"), lon=r.get("lon"),
                     reporter_address=(r.get("reporter") or {}).get("address") or r.get("reporter_address"))
              for t, r in zip(texts, rows)]
    groups = routing_groups(directory)
    probs: list[np.ndarray | None] = [None] * len(rows)
    safety = np.zeros(len(rows))
    as_written: list[float | None] = [None] * len(rows)
    classes: list[list[str] | None] = [None] * len(rows)
    if cv:
        labels = np.array([r["expected"]["topic"] for r in rows])
        # Descriptions and hand-written examples train every fold; only dev reports are ever tested.
        desc = description_examples(directory) + synthetic_examples(load_synthetic(cfg.synthetic_data),
                                                                    cfg.synthetic_weight)
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        jobs: list[_Fold] = []
        for k, (train_idx, test_idx) in enumerate(splitter.split(texts, labels), 1):
            log.info("eval: fold %d/%d: embedding", k, folds)
            tr_texts = [texts[i] for i in train_idx] + [d.text for d in desc]
            # As in training: the restorer learns from this fold's training texts only, and every text, the
            # written examples included, is embedded as the fold's model embeds it.
            model = TopicModel(load_cues()).fit_restorer(tr_texts, vocabulary)
            te_texts = [texts[i] for i in test_idx]
            jobs.append(_Fold(model=model, train_texts=tr_texts,
                              train_vectors=model_vectors(model, tr_texts, encode, cache),
                              train_labels=list(labels[train_idx]) + [d.topic for d in desc],
                              train_weights=[1.0] * len(train_idx) + [d.weight for d in desc], groups=groups,
                              test_index=list(test_idx), test_texts=te_texts,
                              test_vectors=model_vectors(model, te_texts, encode, cache)))
        for fold in _fit_folds(jobs):
            for j, i in enumerate(fold.test_index):
                probs[i], classes[i], safety[i] = fold.probs[j], fold.classes, fold.safety[j]
                as_written[i] = abusive_probability(fold.classes, fold.written, j)
    else:
        examples = (seed_examples(json.loads(line) for line in _seed_lines(cfg.seed_data))
                    + description_examples(directory)
                    + synthetic_examples(load_synthetic(cfg.synthetic_data), cfg.synthetic_weight))
        model = load_or_train(examples, encode, Path(cfg.cache_dir), embedder.name, vocabulary, groups)
        p, safety, w = model.predict_views(texts, model_vectors(model, texts, encode, cache))
        for i in range(len(rows)):
            probs[i], classes[i] = p[i], model.classes_
            as_written[i] = abusive_probability(model.classes_, w, i)
    out = []
    for i, r in enumerate(rows):
        c = decide(directory, classes[i] or [], probs[i] if probs[i] is not None else [], places[i],
                   review_threshold=cfg.review_threshold, reasons=reasons, screening=screen(texts[i]),
                   complaint=bool(complaint_terms_in(texts[i])), safety=float(safety[i]),
                   abusive_as_written=as_written[i])
        out.append(Prediction(id=str(r.get("id", i)), text=r["text"], expected=r["expected"], status=c.status,
                              topic=c.topic, agency=c.agency, district=c.place.district, confidence=c.confidence,
                              place=c.place))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class _Fold:
    """One cross-validation fold, embedded: what a worker process needs to fit the fold's model and predict."""
    model: TopicModel  # restorer fitted, topic model not yet
    train_texts: list[str]
    train_vectors: np.ndarray
    train_labels: list[str]
    train_weights: list[float]
    groups: dict[str, str]
    test_index: list[int]
    test_texts: list[str]
    test_vectors: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class _FoldResult:
    test_index: list[int]
    classes: list[str]
    probs: np.ndarray
    safety: np.ndarray
    written: np.ndarray | None


def _fit_fold(fold: _Fold) -> _FoldResult:
    model = fold.model.fit(fold.train_texts, fold.train_vectors, fold.train_labels, weights=fold.train_weights,
                           groups=fold.groups)
    p, s, w = model.predict_views(fold.test_texts, fold.test_vectors)
    return _FoldResult(test_index=fold.test_index, classes=list(model.classes_), probs=p, safety=s, written=w)


def _fit_folds(jobs: Sequence[_Fold]) -> list[_FoldResult]:
    """Fit the folds' models, in parallel processes when the machine has more than one core: a fold's fit is
    ~20 s of single-threaded SVM solving, and the folds share nothing. Embedding stays in this process (the one
    inference thread). Spawned, not forked: the embedder's thread pools must not be copied mid-flight."""
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return [_fit_fold(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_fit_fold, jobs))


def _seed_lines(path: Path | None) -> list[str]:
    return [line for line in Path(path or SEED_PATH).read_text(encoding="utf-8").splitlines() if line.strip()]


def report(preds: Sequence[Prediction], threshold: float, title: str) -> str:
    n = len(preds)
    if n == 0:
        return "no labelled reports in the input"
    gold_topic = [p.expected.get("topic") for p in preds]
    gold_agency = [p.expected.get("agency") for p in preds]
    topic_ok = np.array([p.topic == g for p, g in zip(preds, gold_topic)])
    agency_ok = np.array([p.agency == g for p, g in zip(preds, gold_agency)])
    nodia = np.array([not has_diacritics(p.text) for p in preds])
    auto = np.array([p.status == "routed" for p in preds])
    refused_gold = np.array([g in ("abusive", "complaint_denunciation") for g in gold_topic])
    refused_ok = np.array([(p.status == "rejected" and g == "abusive") or (p.status == "out_of_scope" and g == "complaint_denunciation")
                           for p, g in zip(preds, gold_topic)])
    # Automatic decisions count as correct when the agency is right; refusals when the status is right.
    final_ok = np.where(refused_gold, refused_ok, agency_ok)
    auto_any = np.array([p.status in ("routed", "rejected", "out_of_scope") for p in preds])
    lines = [f"== {title}: {n} labelled reports ==",
             f"topic accuracy          {topic_ok.mean():.3f}   macro-F1 {f1_score(gold_topic, [p.topic for p in preds], average='macro', zero_division=0):.3f}",
             f"agency accuracy         {agency_ok.mean():.3f}   macro-F1 {f1_score([str(g) for g in gold_agency], [str(p.agency) for p in preds], average='macro', zero_division=0):.3f}",
             f"  without diacritics    {agency_ok[nodia].mean() if nodia.any() else float('nan'):.3f}   (n={int(nodia.sum())})",
             f"  with diacritics       {agency_ok[~nodia].mean() if (~nodia).any() else float('nan'):.3f}   (n={int((~nodia).sum())})",
             f"auto-dispatch @ {threshold:.2f}    precision {agency_ok[auto].mean() if auto.any() else float('nan'):.3f}"
             f"   coverage {auto.mean():.3f}   (routed without review: {int(auto.sum())})",
             f"all automatic decisions precision {final_ok[auto_any].mean() if auto_any.any() else float('nan'):.3f}"
             f"   coverage {auto_any.mean():.3f}   (review: {int((~auto_any).sum())})"]
    for topic, status in (("abusive", "rejected"), ("complaint_denunciation", "out_of_scope")):
        gold = np.array([g == topic for g in gold_topic])
        hit = np.array([p.status == status or (p.status == "review" and p.topic == topic) for p in preds])
        strict = np.array([p.status == status for p in preds])
        if gold.any():
            lines.append(f"{status:<14} recall {hit[gold].mean():.3f} (auto only {strict[gold].mean():.3f}, n={int(gold.sum())})"
                         f"   precision {gold[strict].mean() if strict.any() else float('nan'):.3f}")
    conf = Counter((str(g), str(p.agency)) for p, g in zip(preds, gold_agency) if p.agency != g)
    lines.append("worst agency confusions (expected -> predicted: count):")
    for (g, p), k in conf.most_common(10):
        lines.append(f"  {g} -> {p}: {k}")
    tconf = Counter((str(g), p.topic) for p, g in zip(preds, gold_topic) if p.topic != g)
    lines.append("worst topic confusions:")
    for (g, p), k in tconf.most_common(10):
        lines.append(f"  {g} -> {p}: {k}")
    for metric in EXTRA_METRICS:
        lines.append(metric(list(preds)))
    return "\n".join(lines)


def evaluate(path: Path | str, settings: Settings, *, cv: bool | None = None, embedder: Any = None) -> str:
    rows = load_rows(Path(path))
    use_cv = _is_seed(rows) if cv is None else cv
    preds = predict(rows, settings, cv=use_cv, embedder=embedder)
    title = f"{Path(path).name}, {'5-fold cross-validation' if use_cv else 'trained on the seed set'}"
    return report(preds, settings.classifier.review_threshold, title)
