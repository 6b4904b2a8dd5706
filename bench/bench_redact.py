"""Time the redactor (ingest/pii.py) takes on the longest descriptions of the kinds that once made it quadratic, beside
an ordinary description of the same length timed in the same run.

    .venv/bin/python bench/bench_redact.py [--chars 20000] [--repeat 5]

`redact` runs on the event loop for every report a public page, an Open311 GET or a lookup page shows, so its time
on one description is a stall every client of the daemon feels. The hostile texts are
tests/fuzz_strategies.ADVERSARIAL_DESCRIPTIONS ("1-1-1-…" took 11-15 s at 20,000 characters before d466290, 0.018 s
after). The baseline is a description of Vietnamese words of the same length. Printed for each: the best of
`--repeat` runs in ms and its ratio to the baseline. Target: every one under 100 ms (bench_fuzz's event-loop budget).
The test suite does not time this: tests/ingest/test_pii.py counts the instructions (callgrind) and checks they grow
linearly with the text.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.pii import redact  # noqa: E402
from tests.fuzz_strategies import ADVERSARIAL_DESCRIPTIONS  # noqa: E402

WORDS = ("Ống nước bể đường Lê Lợi Quận 1 chảy lênh láng gần chợ Bến Thành xe ngập sâu cống rác, gọi 0909 123 456 "
         "hoặc email an.nguyen@gmail.com").split()
TARGET_MS = 100.0


def best_ms(text: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        redact(text)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ordinary = " ".join(WORDS[k % len(WORDS)] for k in range(args.chars))[:args.chars]
    baseline = best_ms(ordinary, args.repeat)
    print(f"{'description':<40} {'ms':>9} {'x baseline':>11}")
    print(f"{'ordinary words (baseline)':<40} {baseline:9.1f} {1.0:11.2f}")
    slow = []
    for name, make in ADVERSARIAL_DESCRIPTIONS.items():
        ms = best_ms(make(args.chars), args.repeat)
        print(f"{name:<40} {ms:9.1f} {ms / baseline:11.2f}")
        if ms >= TARGET_MS:
            slow.append(name)
    print(f"target: each under {TARGET_MS:.0f} ms at {args.chars:,} characters: "
          + ("met" if not slow else "missed by " + ", ".join(slow)))
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
