"""Classifier throughput beside the raw embedder encode rate, measured in the same run.

    .venv/bin/python bench/bench_classifier.py [--backend e5-converted] [--n 96] [--rounds 2]

The overhead (place finding + features + model + policy) is reported as a ratio over pure encode time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classifier.embedding.embedder import EmbeddingThread, load_embedder, report_text  # noqa: E402
from classifier.training.trainer import SEED_PATH, Router  # noqa: E402
from config.directory import load_directory  # noqa: E402
from config.schema import ClassifierConfig, Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="e5-converted")
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    settings = Settings(classifier=ClassifierConfig(backend=args.backend, model=args.model))
    embedder = EmbeddingThread(load_embedder(args.backend, args.model))
    router = Router(settings, load_directory(), embedder)
    router.load()
    rows = [json.loads(x) for x in SEED_PATH.read_text(encoding="utf-8").splitlines() if x][: args.n]
    texts = [report_text(r["text"], r.get("subject")) for r in rows]
    embedder.encode_blocking(texts[:4])  # warm-up
    # Encode and the rest are timed inside the same loop, batch by batch, so that load from other processes
    # falls on both alike; timing them in two separate passes made the ratio swing with the machine's load.
    encode_s = rest_s = 0.0
    for _ in range(args.rounds):
        for i in range(0, len(texts), args.batch):
            chunk = texts[i:i + args.batch]
            t0 = time.perf_counter()
            vecs = embedder.encode_blocking(chunk)
            t1 = time.perf_counter()
            places = [router.place(t, r.get("lat"), r.get("lon")) for t, r in zip(chunk, rows[i:i + args.batch])]
            router.classify(chunk, vecs, places)
            t2 = time.perf_counter()
            encode_s += t1 - t0
            rest_s += t2 - t1
    n = len(texts) * args.rounds
    print(f"embedder {embedder.name}: encode {n / encode_s:.1f} texts/s")
    print(f"classifier (encode + place + model + policy): {n / (encode_s + rest_s):.1f} texts/s")
    print(f"overhead over encode: {100 * rest_s / encode_s:.1f}% (target <= 10%)")
    embedder.close()


if __name__ == "__main__":
    main()
