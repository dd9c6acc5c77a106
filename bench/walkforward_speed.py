#!/usr/bin/env python3
"""Wall time of a walk-forward replay with one worker and with two, on the bundled GOOGL daily sample.

Prepares GOOGL from the bundled sample in a temporary workspace, then runs
``evaluate_bot.py --symbol GOOGL --walk-forward --model-type deepscalper --folds F --test-bars T`` with
``--workers 1`` and ``--workers 2`` (default training steps unless ``--steps``), and prints both wall times, the
speed-up and the two runs' stitched Sharpe ratios (equal: the fold models do not depend on the worker count).

    .venv/bin/python bench/walkforward_speed.py [--folds 10] [--test-bars 63] [--steps N] [--model-type deepscalper]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(workspace: Path, args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=workspace, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--test-bars", type=int, default=63)
    p.add_argument("--steps", type=int)
    p.add_argument("--model-type", default="deepscalper")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        _run(ws, [str(REPO / "data_pipeline.py"), "--symbols", "GOOGL", "--source", "sample", "--quiet"])
        base = [str(REPO / "evaluate_bot.py"), "--symbol", "GOOGL", "--walk-forward", "--model-type",
                args.model_type, "--folds", str(args.folds), "--test-bars", str(args.test_bars), "--quiet"]
        if args.steps:
            base += ["--steps", str(args.steps)]
        times, sharpes = {}, {}
        for workers in (1, 2):
            times[workers] = _run(ws, [*base, "--workers", str(workers)])
            report = max((ws / "results").glob("walkforward_GOOGL_*.json"), key=os.path.getmtime)
            data = json.loads(report.read_text())
            sharpes[workers] = data["stitched"][f"{args.model_type}/seed0/retrained"]["metrics"]["sharpe_ratio"]
            time.sleep(1.1)  # report names carry the second
    print(f"walk-forward GOOGL 1d, {args.model_type}, {args.folds} folds x {args.test_bars} test bars, "
          f"steps {args.steps or 'default'}")
    print("| workers | wall time (s) | stitched Sharpe (retrained) |\n|---|---|---|")
    for workers in (1, 2):
        print(f"| {workers} | {times[workers]:.1f} | {sharpes[workers]} |")
    print(f"speed-up with 2 workers: {times[1] / times[2]:.2f}x (the machine has {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
