"""`python -m classifier.training.prepare` (run by `make setup`): the routing model is trained and cached, so the
daemon's first start loads it; a second run finds it and trains nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifier.training import prepare, trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_prepare_trains_once_then_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [json.loads(line) for line in (REPO / "classifier/data/reports-seed.jsonl").read_text("utf-8").splitlines()]
    seed = tmp_path / "seed.jsonl"  # a small training set: every topic, a few reports each
    per_topic: dict[str, int] = {}
    with seed.open("w", encoding="utf-8") as fh:
        for row in rows:
            topic = row["expected"]["topic"]
            if per_topic.get(topic, 0) < 3:
                per_topic[topic] = per_topic.get(topic, 0) + 1
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    cache = tmp_path / "models"
    config = tmp_path / "c.toml"
    config.write_text(f'[classifier]\ncache_dir = "{cache}"\nseed_data = "{seed}"\nsynthetic_weight = 0\n'
                      f'[store]\npath = "{tmp_path / "s.sqlite3"}"\nblob_dir = "{tmp_path / "blobs"}"\n',
                      encoding="utf-8")
    trained: list[int] = []
    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", lambda examples, *a, **k: trained.append(len(examples))
                        or real_train(examples, *a, **k))
    assert prepare.main(["--config", str(config)]) == 0
    first = capsys.readouterr().out
    assert len(trained) == 1 and "ready in" in first and any(cache.iterdir())
    assert prepare.main(["--config", str(config)]) == 0
    assert len(trained) == 1  # found in the cache: not trained again
    assert capsys.readouterr().out == first  # the same model version


def test_prepare_says_what_is_wrong_with_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare.main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "file not found" in capsys.readouterr().err
