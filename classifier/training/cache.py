"""The on-disk cache of fitted topic models, in a format that holds data only.

One `topic-model-<key>.npz` file per model: the numeric arrays (TF-IDF weights, linear coefficients) plus one JSON
document (parameters, vocabularies, calibration, the restorer's counts) kept in the same archive as bytes, so a
write is a single atomic rename. It is read with `allow_pickle=False`: opening a cache file never runs code, unlike
the pickle files it replaces. The key (a hash of the training examples, the embedding model and the feature
version, computed by the trainer) names the file and is repeated inside it with a SHA-256 digest of the content; a
file of another key or format, damaged, or edited since it was written is refused (`CacheError`), and the caller
trains again and overwrites it.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from classifier.training.model import TopicModel

FORMAT = "topic-model-npz/1"
DOCUMENT = "document"  # the archive member holding the JSON document


class CacheError(Exception):
    """A cache file that must not be used: missing, unreadable, of another key or format, or altered."""


def model_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"topic-model-{key}.npz"


def _digest(document: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(document, sort_keys=True, ensure_ascii=False).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"\n{name}\t{array.dtype.str}\t{array.shape}\n".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def save(model: TopicModel, path: Path, key: str) -> None:
    """Write `model` under `key`, atomically (a reader sees the old file or the whole new one)."""
    meta, arrays = model.state()
    if DOCUMENT in arrays:
        raise ValueError(f"array name {DOCUMENT!r} is reserved")
    for name, array in arrays.items():
        if array.dtype.kind not in "fiub":  # numbers only: anything else would need pickle to load
            raise ValueError(f"{name}: dtype {array.dtype} is not numeric")
    document = {"format": FORMAT, "key": key, "model": meta}
    document["digest"] = _digest(document, arrays)
    encoded = np.frombuffer(json.dumps(document, ensure_ascii=False).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            np.savez(fh, **{DOCUMENT: encoded}, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path, key: str) -> TopicModel:
    """The model cached at `path` for `key`; CacheError for anything but an intact file written for that key."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError("not an archive of arrays")
        with archive:
            document = json.loads(archive[DOCUMENT].tobytes().decode("utf-8"))
            arrays = {name: archive[name] for name in archive.files if name != DOCUMENT}
    except FileNotFoundError as exc:
        raise CacheError("no cached model") from exc
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # ValueError covers an object array (allow_pickle=False refuses it), bad JSON and bad UTF-8.
        raise CacheError(f"unreadable: {type(exc).__name__}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CacheError("another format")
    if document.get("key") != key:
        raise CacheError("written for another key")
    stated = document.pop("digest", None)
    if stated != _digest(document, arrays):
        raise CacheError("content does not match its digest (altered or damaged)")
    try:
        return TopicModel.from_state(document["model"], arrays)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CacheError(f"inconsistent model: {type(exc).__name__}: {exc}") from exc
