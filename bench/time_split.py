"""Routing quality out of time (issue 15): train on the earlier dev reports, route the later ones.

    .venv/bin/python bench/time_split.py [--split A|B|both] [--cutoff 2026-09-16] [--config FILE]
                                         [--scorer ../shared/tools/score_route.py] [--keep DIR]

The labelled dev reports are the project's copy, classifier/data/reports-seed.jsonl (dates in `received_at`).
Split A trains on the reports received before the cutoff (1-15 Sep 2026) and routes those from the cutoff on
(16-30 Sep); split B trains on the later half and routes the earlier one. Training is the real one: the
daemon's configuration with `classifier.seed_data` pointing to the training half (the written examples and
topic descriptions train as always), and the routed half goes through `run_daemon.py route`, the same ingest,
classify and dedupe code as the daemon. The output is scored by `score_route.py` (agency accuracy,
no-diacritics gap, auto-dispatch precision and coverage, refused recall, incident F1); the scorer is the
shared tool the targets are defined by, so it is passed in, not copied here. `--keep DIR` leaves the halves
and the routed lines there for a closer look.

The first run of a split trains its model (a few minutes on 2 cores); the model is cached under
`var/models`, keyed by its data, so a second run only routes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "classifier" / "data" / "reports-seed.jsonl"
DEFAULT_SCORER = ROOT.parent / "shared" / "tools" / "score_route.py"


def halves(rows: list[dict], cutoff: str) -> tuple[list[dict], list[dict]]:
    """Reports received before the cutoff date and from it on, by the date as the reporter's clock wrote it."""
    early = [r for r in rows if r["received_at"][:10] < cutoff]
    late = [r for r in rows if r["received_at"][:10] >= cutoff]
    return early, late


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def run_split(name: str, train: list[dict], test: list[dict], work: Path, args: argparse.Namespace) -> str:
    train_path, test_path, out_path = work / f"{name}-train.jsonl", work / f"{name}-test.jsonl", work / f"{name}-routed.jsonl"
    write_jsonl(train_path, train)
    write_jsonl(test_path, test)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "HCMC1022__CLASSIFIER__SEED_DATA": str(train_path)}
    cmd = [sys.executable, str(ROOT / "run_daemon.py"), "route", "--input", str(test_path), "--output", str(out_path)]
    if args.config:
        cmd += ["--config", str(args.config)]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    scored = subprocess.run([sys.executable, str(args.scorer), str(test_path), str(out_path)],
                            capture_output=True, text=True, check=True)
    return scored.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("A", "B", "both"), default="both")
    ap.add_argument("--cutoff", default="2026-09-16", help="first date of the later half (YYYY-MM-DD)")
    ap.add_argument("--config", type=Path, help="daemon configuration (default: the embedded one)")
    ap.add_argument("--scorer", type=Path, default=DEFAULT_SCORER)
    ap.add_argument("--keep", type=Path, help="keep the halves and the routed output in this folder")
    args = ap.parse_args()
    if not args.scorer.is_file():
        print(f"no scorer at {args.scorer}: pass --scorer PATH/score_route.py", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in SEED.read_text(encoding="utf-8").splitlines() if line.strip()]
    early, late = halves(rows, args.cutoff)
    if not early or not late:
        print(f"cutoff {args.cutoff} leaves one half empty", file=sys.stderr)
        return 2
    splits = {"A": (early, late), "B": (late, early)}
    wanted = ["A", "B"] if args.split == "both" else [args.split]
    with tempfile.TemporaryDirectory(prefix="time-split-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in wanted:
            train, test = splits[name]
            line = run_split(name, train, test, work, args)
            print(f"split {name} (train {len(train)}, route {len(test)}): {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
