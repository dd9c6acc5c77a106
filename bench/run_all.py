#!/usr/bin/env python3
"""Run every benchmark under bench/ one after another and print their figures (``make bench``).

Each benchmark is its own script with its own flags; this runs them with their defaults, in a child process
each, so that one failing benchmark is reported and the others still run. Exit code 1 if any failed.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = ["env_throughput.py", "bench_data_pipeline.py", "train_throughput.py", "deepscalper_learning.py",
           "walkforward_speed.py", "evaluate_speed.py"]


def main() -> int:
    failed = []
    for name in SCRIPTS:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(BENCH / name)], cwd=BENCH.parent)
        print(f"--- {name}: exit {code}, {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
