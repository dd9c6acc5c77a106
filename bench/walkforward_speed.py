#!/usr/bin/env python3
"""Wall time of a walk-forward replay with one worker and with two, on the bundled GOOGL daily sample.

Prepares GOOGL from the bundled sample in a temporary workspace, then runs
``evaluate_bot.py --symbol GOOGL --walk-forward --model-type deepscalper --folds F --test-bars T`` (default
training steps unless ``--steps``) four ways, one after the other in the same run:

- ``1 in-process``: one worker, the folds trained in the script's own process (torch's default threads);
- ``1 pool``: one worker, the folds trained in one long-lived pool worker at one torch thread;
- ``2 pool``: two long-lived pool workers at one torch thread each, the command's process only waits;
- ``2 shared`` (what ``--workers 2`` does): the command's process trains folds too, beside one pool worker
  started before the folds' data is prepared, each at one torch thread.

The default ``--test-bars 28`` makes the ten folds asked for fit the sample's history after the default training
window (1,857 bars of 2,137); with 63 test bars only four folds fit. The bench says how many folds ran.

It prints the wall times and CPU times (the command and its workers), the speed-ups against the faster
one-worker way, and the runs' stitched Sharpe ratios and fold validation Sharpes (identical: the fold models do not
depend on where or beside what they train).

    .venv/bin/python bench/walkforward_speed.py [--folds 10] [--test-bars 28] [--steps N] [--model-type deepscalper]
        [--ways "1 in-process" "2 shared" ...] [--reverse]
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

# evaluate_bot.main with training.workers.SINGLE_WORKER_IN_PROCESS and SHARE_PARENT set from argv[1]
_RUNNER = ("import sys; sys.path.insert(0, {repo!r}); import training.workers as w; where = sys.argv.pop(1); "
           "w.SINGLE_WORKER_IN_PROCESS = where == 'in-process'; w.SHARE_PARENT = where == 'shared'; "
           "import evaluate_bot; raise SystemExit(evaluate_bot.main(sys.argv[1:]))")
WAYS = (("1 in-process", 1, "in-process"), ("1 pool", 1, "pool"), ("2 pool", 2, "pool"), ("2 shared", 2, "shared"))


def _run(workspace: Path, args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its worker processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=workspace, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _folds_run(report: dict) -> int:
    return int(report["layout"]["folds"])


def _fingerprint(report: dict, model_type: str) -> tuple:
    """What must not depend on the way the folds were trained: stitched Sharpe and every fold's val Sharpe."""
    rows = [(r["fold"], r["val_sharpe"], r["promoted"]) for loop in report["loops"] for r in loop["rows"]]
    return report["stitched"][f"{model_type}/seed0/retrained"]["metrics"]["sharpe_ratio"], tuple(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--test-bars", type=int, default=28)
    p.add_argument("--steps", type=int)
    p.add_argument("--model-type", default="deepscalper")
    p.add_argument("--ways", nargs="+", choices=[w[0] for w in WAYS], default=[w[0] for w in WAYS],
                   help="which ways to run (default: all four)")
    p.add_argument("--reverse", action="store_true",
                   help="run the ways in reverse order (a shared machine's load drifts: compare both orders)")
    args = p.parse_args(argv)
    ways = [w for w in WAYS if w[0] in args.ways]
    runner = _RUNNER.format(repo=str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        _run(ws, [str(REPO / "data_pipeline.py"), "--symbols", "GOOGL", "--source", "sample", "--quiet"])
        base = ["--symbol", "GOOGL", "--walk-forward", "--model-type", args.model_type, "--folds", str(args.folds),
                "--test-bars", str(args.test_bars), "--quiet"]
        if args.steps:
            base += ["--steps", str(args.steps)]
        times, cpu, prints, loads, folds = {}, {}, {}, {}, set()
        for name, workers, where in (ways[::-1] if args.reverse else ways):
            times[name], cpu[name] = _run(ws, ["-c", runner, where, *base, "--workers", str(workers)])
            loads[name] = os.getloadavg()[0]
            report = json.loads(max((ws / "results").glob("walkforward_GOOGL_*.json"), key=os.path.getmtime)
                                .read_text())
            prints[name] = _fingerprint(report, args.model_type)
            folds.add(_folds_run(report))
            time.sleep(1.1)  # report names carry the second
    print(f"walk-forward GOOGL 1d, {args.model_type}, {'/'.join(map(str, sorted(folds)))} fold(s) run "
          f"({args.folds} asked) x {args.test_bars} test bars, steps {args.steps or 'default'} ({os.cpu_count()} "
          f"cores; run order {'reversed' if args.reverse else 'as listed'})")
    print("other processes share the cores: compare ratios within a run, and both run orders; the CPU times "
          "(the command and its workers) are steadier than the wall times")
    print("(Linux autogroup scheduling shares the cores per session: while other sessions run, the two processes of "
          "a 2-worker run share one session's share; 'cores used' = CPU time / wall time says what it got)")
    print("| workers | wall time (s) | CPU time (s) | cores used | load average after | stitched Sharpe (retrained) |"
          "\n|---|---|---|---|---|---|")
    for name, _, _ in ways:
        print(f"| {name} | {times[name]:.1f} | {cpu[name]:.1f} | {cpu[name] / times[name]:.2f} | {loads[name]:.1f} | "
              f"{prints[name][0]} |")
    ones = [times[n] for n in ("1 in-process", "1 pool") if n in times]
    for two in ("2 pool", "2 shared"):
        if two in times and ones:
            against = ", ".join(f"{times[n] / times[two]:.2f}x over {n}" for n in ("1 in-process", "1 pool")
                                if n in times)
            print(f"speed-up with {two}: {against}, {min(ones) / times[two]:.2f}x over the faster one-worker way")
    same = len({prints[name] for name, _, _ in ways}) == 1
    print(f"fold validation Sharpes, promotions and stitched Sharpe identical in every way run: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
