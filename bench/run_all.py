#!/usr/bin/env python3
"""`make bench`: run every benchmark in turn; each prints its figures beside a baseline from the same run.

    python bench/run_all.py [NAME ...]     e.g. `python bench/run_all.py intake smtp`
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> arguments; the order puts the cheap, always-meaningful ones first.
BENCHES: dict[str, list[str]] = {
    "intake": [],
    "intake_pg": [],  # bench_intake.py --postgresql: the same intake on the machine's PostgreSQL
    "smtp": [],
    "chat_channels": [],
    "dispatch": [],
    "dedupe": ["search"],
    "embedder": [],
    "classifier": [],
    "pipeline": [],
    "roles": [],
    "ops": [],
    "redact": [],
    "fuzz": [],
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(HERE.parent)}
    failed = []
    for name in names:
        print(f"\n===== bench_{name} =====", flush=True)
        started = time.monotonic()
        script, extra = (("intake", ["--postgresql"]) if name == "intake_pg" else (name, []))
        code = subprocess.call([sys.executable, str(HERE / f"bench_{script}.py"), *extra, *BENCHES[name]],
                               cwd=HERE.parent, env=env)
        print(f"----- bench_{name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
