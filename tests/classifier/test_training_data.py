"""The training examples a router learns from: seed reports, topic descriptions and the hand-written corpus."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from classifier.training.trainer import SYNTHETIC_PATH, Router, load_seed, load_synthetic
from config.directory import load_directory
from config.schema import ClassifierConfig, Settings
from ingest.text import fold


def _router(tmp_path: Path, **classifier: object) -> Router:
    settings = Settings(classifier=ClassifierConfig(cache_dir=tmp_path, **classifier))
    return Router(settings, load_directory(), embedder=None)  # type: ignore[arg-type]  # not used here


def test_bundled_written_examples_are_valid_and_independent_of_the_seed_reports():
    directory = load_directory()
    rows = load_synthetic()
    assert len(rows) >= 900
    assert {r["expected"]["topic"] for r in rows} <= set(directory.topics)
    assert len({r["id"] for r in rows}) == len(rows)
    # Written apart from the labelled reports: none repeats a seed text (that would inflate every evaluation).
    seed = {fold(r["text"]).strip() for r in load_seed()}
    assert not [r["id"] for r in rows if fold(r["text"]).strip() in seed]


def test_bundled_written_examples_are_one_file_per_topic_with_their_provenance_beside_them():
    folder = SYNTHETIC_PATH
    readme = (folder / "README.md").read_text(encoding="utf-8")
    files = sorted(folder.glob("*.jsonl"))
    assert {f.stem for f in files} == {r["expected"]["topic"] for r in load_synthetic()}
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines()
        assert {json.loads(line)["expected"]["topic"] for line in lines} == {f.stem}
        assert f"`{f.name}`" in readme
    # The training order is carried by the rows: every row has its own place in it.
    assert [r["seq"] for r in load_synthetic()] == list(range(1, len(load_synthetic()) + 1))


def test_the_training_order_follows_seq_not_files(tmp_path):
    rows = [{"id": "A", "seq": 3, "text": "a", "expected": {"topic": "trees"}},
            {"id": "B", "text": "b", "expected": {"topic": "trees"}},
            {"id": "C", "seq": 1, "text": "c", "expected": {"topic": "waste"}},
            {"id": "D", "seq": 2, "text": "d", "expected": {"topic": "trees"}}]
    for name, part in (("trees.jsonl", [rows[0], rows[1], rows[3]]), ("waste.jsonl", [rows[2]])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    assert [r["id"] for r in load_synthetic(tmp_path)] == ["C", "D", "A", "B"]


def test_written_examples_train_at_their_configured_weight(tmp_path):
    default = [ex for ex in _router(tmp_path).base_examples() if ex.source == "synthetic"]
    assert len(default) == len(load_synthetic()) and {ex.weight for ex in default} == {0.5}
    assert not [ex for ex in _router(tmp_path, synthetic_weight=0).base_examples() if ex.source == "synthetic"]


def test_an_admin_can_point_to_their_own_written_examples(tmp_path):
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"id": "X1", "text": "Cây me gãy nhánh đè xe máy", "expected": {"topic": "trees"}},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    examples = [ex for ex in _router(tmp_path, synthetic_data=own, synthetic_weight=1.0).base_examples()
                if ex.source == "synthetic"]
    assert [(ex.ref, ex.topic, ex.weight) for ex in examples] == [("X1", "trees", 1.0)]


def test_a_missing_training_data_path_is_a_config_error_at_start(tmp_path):
    with pytest.raises(ValidationError, match="no such file or directory"):
        ClassifierConfig(synthetic_data=tmp_path / "absent.jsonl")
    with pytest.raises(ValidationError, match="no such file or directory"):
        ClassifierConfig(seed_data=tmp_path / "absent.jsonl")
