#!/usr/bin/env python3
"""A 4-job training session (2 synthetic symbols x 2 model types) with 1 and 2 workers, on this machine's
worker pool and on a Ray cluster of the same size, and the overhead Ray adds per job.

Two Ray clusters are started for the measurement on this machine, one of one node and one of two (``ray start
--head`` and ``ray start --address``, one CPU per node), each in its own process groups and temporary folder,
and ended by those groups only. Every run trains the same four jobs in a fresh copy of one prepared workspace
with ``train_bot.py --symbol AAA BBB`` (model_types: both) run in this process (so Ray's connection time is part of
the wall time, as a user sees it).

Ray's overhead per job: (Ray wall time - local wall time) / 4 for a session of four jobs of one rollout each,
with one worker (nothing runs side by side, so the difference is what Ray adds: connecting, shipping the code,
the dataset and the model bytes, starting the worker process, registering on the driver). All configurations
run in turn within each repeat and each one's fastest run counts, as the machine may be shared.

    .venv/bin/python bench/cluster_speed.py [--steps 2000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.ray_local import local_ray_cluster  # noqa: E402

TINY_STEPS = 128  # one rollout: the jobs of the overhead measurement do almost nothing but start and report
CONFIG = {  # model_types: both, without --model-type both (which would train side by side with one worker)
    "model_types": ["deepscalper", "backtrader"],
    "data": {"source": "synthetic"},
    "env": {"window": 16, "episode_length": 128},
    "sb3": {"net_arch": [32], "n_steps": 128, "batch_size": 64},
    "deepscalper": {"hidden_size": 32, "batch_size": 32, "learning_starts": 100, "buffer_size": 10000},
    "training_params": {"checkpoint_every": 500, "eval_every": 500, "engine": "fast", "algo": "ppo"},
    "evaluation": {"bootstrap_samples": 100},
}


def _session(root: Path, argv: list[str]) -> tuple[float, list[tuple]]:
    """Wall time of train_bot.main(argv) in ``root``, and what its jobs found (to check the runs agree)."""
    import train_bot

    old = os.getcwd()
    os.chdir(root)
    try:
        started = time.perf_counter()
        code = train_bot.main(argv)
        seconds = time.perf_counter() - started
    finally:
        os.chdir(old)
    if code != 0:
        raise RuntimeError(f"train_bot.py {' '.join(argv)} exited with {code}")
    session = json.loads(max((root / "results").glob("training_session_*.json")).read_text())
    return seconds, [(j["symbol"], j["model_type"], j["val_sharpe"]) for j in session["jobs"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="env steps per job")
    p.add_argument("--repeats", type=int, default=3, help="runs of each configuration, interleaved; the fastest "
                                                          "counts")
    args = p.parse_args(argv)
    import data_pipeline

    base = Path(tempfile.mkdtemp(prefix="cluster_speed_"))
    times: dict[tuple[str, int, int], float] = {}
    found: dict[tuple[str, int, int], list[tuple]] = {}
    try:
        prepared = base / "prepared"
        prepared.mkdir()
        (prepared / "training_config.json").write_text(json.dumps(CONFIG))
        os.chdir(prepared)
        for i, symbol in enumerate(("AAA", "BBB")):
            data_pipeline.main(["--symbols", symbol, "--source", "synthetic", "--seed", str(i), "--bars", "1500",
                                "--quiet"])
        runs = 0
        # both clusters stay up, and every repeat runs all configurations one after the other (the order turning
        # each repeat), so that a shared machine's drifting load falls on every configuration alike
        with local_ray_cluster(1) as one, local_ray_cluster(2) as two:
            configs = [(backend, workers, steps) for steps in (TINY_STEPS, args.steps)
                       for backend in ("local", "ray") for workers in (1, 2)
                       if steps == args.steps or workers == 1]
            for repeat in range(args.repeats):
                for backend, workers, steps in configs[repeat % len(configs):] + configs[:repeat % len(configs)]:
                    extra = (["--workers", str(workers)] if backend == "local"
                             else ["--cluster", one if workers == 1 else two])
                    runs += 1
                    root = base / f"run{runs}"
                    shutil.copytree(prepared, root)
                    seconds, jobs = _session(root, ["--symbol", "AAA", "BBB", "--steps", str(steps), "--quiet",
                                                    *extra])
                    key = (backend, workers, steps)
                    times[key] = min(times.get(key, seconds), seconds)
                    found[key] = jobs
                    shutil.rmtree(root, ignore_errors=True)
    finally:
        os.chdir(REPO)
        shutil.rmtree(base, ignore_errors=True)
    steps = args.steps
    print(f"4-job session (2 symbols x 2 model types, {steps} steps each), {os.cpu_count()} cores, fastest of "
          f"{args.repeats} interleaved runs")
    print("| backend | workers | wall time (s) | speed-up over 1 worker |\n|---|---|---|---|")
    for backend in ("local", "ray"):
        for workers in (1, 2):
            print(f"| {backend} | {workers} | {times[(backend, workers, steps)]:.1f} | "
                  f"{times[(backend, 1, steps)] / times[(backend, workers, steps)]:.2f}x |")
    tiny = (times[("ray", 1, TINY_STEPS)] - times[("local", 1, TINY_STEPS)]) / 4
    print(f"Ray overhead per job, jobs of {TINY_STEPS} steps, 1 worker: {tiny:.1f} s "
          f"(local {times[('local', 1, TINY_STEPS)]:.1f} s, Ray {times[('ray', 1, TINY_STEPS)]:.1f} s for 4 jobs, "
          "connection included)")
    for workers in (1, 2):
        print(f"Ray minus local per job, {steps} steps, {workers} worker(s): "
              f"{(times[('ray', workers, steps)] - times[('local', workers, steps)]) / 4:.1f} s")
    same = all(found[("local", w, s)] == found[("ray", w, s)] for (_, w, s) in found)
    print(f"validation Sharpes identical on both backends: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
