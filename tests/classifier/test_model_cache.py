"""The topic-model cache (classifier/training/cache.py): data only, read back into the same predictions, and a file
that is stale, damaged, altered or a pickle is refused and trained again, never trusted."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from classifier.embedding.embedder import report_text
from classifier.training import cache
from classifier.training.trainer import SEED_PATH, Example, load_or_train

SEED_ROWS = [json.loads(line) for line in SEED_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
# With and without diacritics, so the restorer's part of the model is exercised too.
TEXTS = [report_text(r["text"], r.get("subject")) for r in SEED_ROWS[:60]] + [
    "nuoc cong tran len duong nguyen trai quan 1", "den duong hem 42 tat ca tuan nay", "cay nga de xe may"]


@pytest.fixture(scope="module")
def written(router, tmp_path_factory) -> tuple[Path, str]:
    path = cache.model_path(tmp_path_factory.mktemp("model-cache"), "k" * 24)
    cache.save(router.model, path, "k" * 24)
    return path, "k" * 24


def _views(model, embedder) -> tuple[list[str], tuple]:
    texts = [model.embedding_text(t) for t in TEXTS]
    return texts, model.predict_views(TEXTS, embedder.encode_blocking(texts))


def test_a_cached_model_predicts_exactly_what_the_trained_one_did(router, embedder, written):
    path, key = written
    loaded = cache.load(path, key)
    texts, views = _views(router.model, embedder)
    loaded_texts, loaded_views = _views(loaded, embedder)
    assert loaded_texts == texts  # the restorer puts back the same diacritics
    assert any(t != s for t, s in zip(texts, TEXTS))  # ... and did restore some
    for mine, theirs in zip(views, loaded_views):
        assert np.array_equal(mine, theirs)


def test_the_file_holds_no_pickle(written):
    path, _ = written
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            header = archive.read(name)[:200]
            assert name.endswith(".npy") and b"'descr': '|O'" not in header and b"'descr': 'O'" not in header
    with np.load(path, allow_pickle=False) as data:  # every member loads without pickle
        assert all(data[name].dtype != object for name in data.files)


def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy an archive member by member, passing each loaded array through `change(name, array)`."""
    with np.load(src, allow_pickle=False) as data:
        members = {name: change(name, data[name].copy()) for name in data.files}
    with dst.open("wb") as fh:
        np.savez(fh, **members)


def test_an_altered_coefficient_is_refused(written, tmp_path):
    path, key = written
    target = cache.model_path(tmp_path, key)

    def nudge(name: str, array: np.ndarray) -> np.ndarray:
        if name == "svm_.coef":
            array[0, 0] += 1.0
        return array

    _rewrite(path, target, nudge)
    with pytest.raises(cache.CacheError, match="digest"):
        cache.load(target, key)
    _rewrite(path, target, lambda name, array: array)  # the same copy, unchanged, is accepted
    assert cache.load(target, key).classes_ == cache.load(path, key).classes_


def test_a_damaged_truncated_or_foreign_file_is_refused(written, tmp_path):
    path, key = written
    target = cache.model_path(tmp_path, key)
    data = path.read_bytes()
    for broken in (data[: len(data) // 2], data[:-1000] + bytes(1000), b"", b"not a model"):
        target.write_bytes(broken)
        with pytest.raises(cache.CacheError):
            cache.load(target, key)
    with pytest.raises(cache.CacheError, match="another key"):
        cache.load(path, "x" * 24)
    np.save(target.open("wb"), np.arange(3))  # a bare array, not an archive
    with pytest.raises(cache.CacheError):
        cache.load(target, key)


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "ran"))


def test_a_pickle_in_its_place_is_never_run(tmp_path):
    marker = tmp_path / "marker"
    target = cache.model_path(tmp_path, "k" * 24)
    target.write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(cache.CacheError):
        cache.load(target, "k" * 24)
    buffer = io.BytesIO()  # and as an object array inside an archive of the right shape
    np.savez(buffer, document=np.frombuffer(b"{}", np.uint8), payload=np.array([_Marker(marker)], dtype=object))
    target.write_bytes(buffer.getvalue())
    with pytest.raises(cache.CacheError):
        cache.load(target, "k" * 24)
    assert not marker.exists()


def test_load_or_train_rebuilds_a_bad_cache_file_and_then_uses_it(embedder, tmp_path, caplog):
    by_topic: dict[str, list[dict]] = {}
    for r in SEED_ROWS:
        by_topic.setdefault(r["expected"]["topic"], []).append(r)
    examples = [Example(text=report_text(r["text"], r.get("subject")), topic=topic)
                for topic in ("road_damage", "waste", "trees") for r in by_topic[topic][:8]]
    first = load_or_train(examples, embedder.encode_blocking, tmp_path, embedder.name)
    (path,) = tmp_path.glob("topic-model-*.npz")
    key = path.name.removeprefix("topic-model-").removesuffix(".npz")
    assert not list(tmp_path.glob("*.pkl"))
    path.write_bytes(path.read_bytes()[:-1])  # damaged: trained again and overwritten
    with caplog.at_level("INFO", logger="classifier.training.trainer"):
        second = load_or_train(examples, embedder.encode_blocking, tmp_path, embedder.name)
        assert "refused" in caplog.text and "training a new model" in caplog.text
        caplog.clear()
        third = load_or_train(examples, embedder.encode_blocking, tmp_path, embedder.name)
        assert "loaded cached model" in caplog.text and "training a new model" not in caplog.text
    assert cache.load(path, key).classes_ == first.classes_ == third.classes_
    texts = [t.text for t in examples[:5]]
    vectors = embedder.encode_blocking([second.embedding_text(t) for t in texts])
    assert np.array_equal(second.predict_proba(texts, vectors), third.predict_proba(texts, vectors))
