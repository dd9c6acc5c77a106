#!/usr/bin/env python3
"""Wall time of a walk-forward replay with one worker and with two, on the bundled GOOGL daily sample.

Prepares GOOGL from the bundled sample in a temporary workspace, then runs
``evaluate_bot.py --symbol GOOGL --walk-forward --model-type deepscalper --folds F --test-bars T`` (default
training steps unless ``--steps``) three ways, one after the other in the same run:

- ``1 in-process``: one worker, the folds trained in the script's own process (torch's default threads);
- ``1 pool``: one worker, the folds trained in one long-lived pool worker at one torch thread;
- ``2 pool``: two long-lived pool workers at one torch thread each.

It prints the three wall times and CPU times (the command and its workers), the speed-ups against the faster
one-worker way, the ratio of the two one-worker ways, and the runs' stitched Sharpe ratios and fold validation
Sharpes (identical: the fold models do not depend on where or beside what they train).

    .venv/bin/python bench/walkforward_speed.py [--folds 10] [--test-bars 63] [--steps N] [--model-type deepscalper]
        [--reverse]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# evaluate_bot.main with training.workers.SINGLE_WORKER_IN_PROCESS set from argv[1]
_RUNNER = ("import sys; sys.path.insert(0, {repo!r}); import training.workers as w; "
           "w.SINGLE_WORKER_IN_PROCESS = sys.argv.pop(1) == 'in-process'; import evaluate_bot; "
           "raise SystemExit(evaluate_bot.main(sys.argv[1:]))")
WAYS = (("1 in-process", 1, "in-process"), ("1 pool", 1, "pool"), ("2 pool", 2, "pool"))


def _run(workspace: Path, args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its worker processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=workspace, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _fingerprint(report: dict, model_type: str) -> tuple:
    """What must not depend on the way the folds were trained: stitched Sharpe and every fold's val Sharpe."""
    rows = [(r["fold"], r["val_sharpe"], r["promoted"]) for loop in report["loops"] for r in loop["rows"]]
    return report["stitched"][f"{model_type}/seed0/retrained"]["metrics"]["sharpe_ratio"], tuple(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--test-bars", type=int, default=63)
    p.add_argument("--steps", type=int)
    p.add_argument("--model-type", default="deepscalper")
    p.add_argument("--reverse", action="store_true",
                   help="run the three ways in reverse order (a shared machine's load drifts: compare both orders)")
    args = p.parse_args(argv)
    runner = _RUNNER.format(repo=str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        _run(ws, [str(REPO / "data_pipeline.py"), "--symbols", "GOOGL", "--source", "sample", "--quiet"])
        base = ["--symbol", "GOOGL", "--walk-forward", "--model-type", args.model_type, "--folds", str(args.folds),
                "--test-bars", str(args.test_bars), "--quiet"]
        if args.steps:
            base += ["--steps", str(args.steps)]
        times, cpu, prints = {}, {}, {}
        for name, workers, where in (WAYS[::-1] if args.reverse else WAYS):
            times[name], cpu[name] = _run(ws, ["-c", runner, where, *base, "--workers", str(workers)])
            report = max((ws / "results").glob("walkforward_GOOGL_*.json"), key=os.path.getmtime)
            prints[name] = _fingerprint(json.loads(report.read_text()), args.model_type)
            time.sleep(1.1)  # report names carry the second
    print(f"walk-forward GOOGL 1d, {args.model_type}, {args.folds} folds x {args.test_bars} test bars, "
          f"steps {args.steps or 'default'} ({os.cpu_count()} cores; run order "
          f"{'reversed' if args.reverse else 'as listed'})")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share the cores: compare ratios "
          "within a run, and both run orders)")
    print("| workers | wall time (s) | CPU time (s) | stitched Sharpe (retrained) |\n|---|---|---|---|")
    for name, _, _ in WAYS:
        print(f"| {name} | {times[name]:.1f} | {cpu[name]:.1f} | {prints[name][0]} |")
    one = min(times["1 in-process"], times["1 pool"])
    print(f"1 pool / 1 in-process wall time: {times['1 pool'] / times['1 in-process']:.2f}")
    print(f"speed-up with 2 workers: {times['1 in-process'] / times['2 pool']:.2f}x over 1 in-process, "
          f"{times['1 pool'] / times['2 pool']:.2f}x over 1 pool, {one / times['2 pool']:.2f}x over the faster")
    same = len({prints[name] for name, _, _ in WAYS}) == 1
    print(f"fold validation Sharpes, promotions and stitched Sharpe identical in all three: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
