#!/usr/bin/env python3
"""Ctrl-C during ``train_bot.py --model-type both`` (two jobs in two worker processes): does every stop end
every process, quickly, and leave a checkpoint that ``--resume`` continues?

Each try runs in a fresh workspace holding a small synthetic dataset, with train_bot.py in its own process
group. At a random moment (seeded) SIGINT goes to the whole group, as a terminal's Ctrl-C does: while the parent
imports, while the workers start, or after the first checkpoint (plus a random delay). A try passes when

- the script exits within ``--limit`` seconds with 130 (or is ended by SIGINT itself, which Python does when
  the Ctrl-C comes before the script's ``main`` runs);
- no process of its group is left (the workers, the multiprocessing resource tracker);
- with ``--resume-check``, every run that left a checkpoint is continued by ``train_bot.py --resume`` past
  its checkpointed step, and that run stops cleanly on a second Ctrl-C too.

    python bench/ctrl_c_both.py [--tries 20] [--parallel 2] [--seed 0] [--resume-check]

Prints one line per try and the figure: ``N/N tries stopped cleanly; stop took median .. s, max .. s``.
tests/test_robustness.py runs a few tries through :func:`run_tries`.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# tiny nets and short rollouts: the workers reach their first safe point within a second of starting
CONFIG = {
    "symbols": ["SYN"],
    "data": {"source": "synthetic"},
    "env": {"window": 8, "episode_length": 64},
    "sb3": {"net_arch": [16], "n_steps": 64, "batch_size": 32},
    "deepscalper": {"hidden_size": 16, "batch_size": 16, "learning_starts": 50, "buffer_size": 5000,
                    "target_update_interval": 50},
    "training_params": {"checkpoint_every": 64},
    "evaluation": {"bootstrap_samples": 50},
}
TRAIN = ["--model-type", "both", "--engine", "fast", "--symbol", "SYN", "--steps", "100000", "--quiet"]
MOMENTS = ("starting", "workers", "checkpoint")


@dataclass
class Try:
    """What one try saw."""

    index: int
    moment: str
    delay: float
    exit_code: int | None = None
    stop_seconds: float = float("nan")
    left_alive: list[str] = field(default_factory=list)
    checkpoints: dict[str, int] = field(default_factory=dict)  # run folder -> checkpointed step
    resumed: dict[str, int] = field(default_factory=dict)  # run folder -> step reached by the resumed run
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        steps = ", ".join(f"{k.split('_')[2]} {v}" + (f" (resumed to {self.resumed[k]})" if k in self.resumed else "")
                          for k, v in sorted(self.checkpoints.items())) or "none"
        verdict = "ok" if self.ok else "FAIL: " + "; ".join(self.problems)
        return (f"try {self.index:2d}: Ctrl-C {self.moment:<10} +{self.delay:.2f}s -> exit {self.exit_code}, "
                f"stopped in {self.stop_seconds:.2f}s, checkpoints: {steps}: {verdict}")


def make_dataset(folder: Path) -> None:
    """A workspace with the config above and a small synthetic dataset (data_pipeline.py, seed 7)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "training_config.json").write_text(json.dumps(CONFIG))
    subprocess.run([sys.executable, str(REPO / "data_pipeline.py"), "--symbols", "SYN", "--source", "synthetic",
                    "--seed", "7", "--bars", "500", "--quiet"], cwd=folder, check=True, stdout=subprocess.DEVNULL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_members(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True).stdout
    return [" ".join(line.split()[:1] + line.split()[3:])[:100] for line in out.splitlines()
            if line.split()[1] == str(pgid) and not line.split()[2].startswith("Z")]


def _checkpoints(ws: Path) -> dict[str, int]:
    found = {}
    for state_file in (ws / "models" / "checkpoints").glob("*/state.json"):
        state = json.loads(state_file.read_text())
        missing = [f for f in state["files"] if not (state_file.parent / f).is_file()]
        if missing:
            raise AssertionError(f"{state_file} names missing files {missing}")
        found[state_file.parent.name] = int(state["num_timesteps"])
    return found


def _wait_for(moment: str, ws: Path, proc: subprocess.Popen, deadline: float) -> None:
    pattern = {"workers": "*/.lock", "checkpoint": "*/state.json"}.get(moment)
    while pattern and time.monotonic() < deadline and proc.poll() is None:
        if len(list((ws / "models" / "checkpoints").glob(pattern))) >= 2:
            return
        time.sleep(0.02)


def ctrl_c(ws: Path, args: list[str], moment: str, delay: float, limit: float,
           ready: dict[str, int] | None = None) -> tuple[int | None, float, list[str]]:
    """Start train_bot.py in its own process group, wait for ``moment`` (or, with ``ready``, for every run in
    it to checkpoint past its step), sleep ``delay``, Ctrl-C the group. Returns (exit code, seconds from the
    signal to the exit, processes of the group still alive 3 s after the exit)."""
    with open(ws / "stderr.txt", "ab") as stderr:
        proc = subprocess.Popen([sys.executable, str(REPO / "train_bot.py"), *args], cwd=ws,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        if ready is not None:
            while time.monotonic() < deadline and proc.poll() is None:
                now = _checkpoints_quietly(ws)
                if all(now.get(k, -1) > v for k, v in ready.items()):
                    break
                time.sleep(0.05)
        else:
            _wait_for(moment, ws, proc, deadline)
        time.sleep(delay)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code: int | None = proc.wait(limit)
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - sent
        gone_by = time.monotonic() + 3
        while _group_alive(proc.pid) and time.monotonic() < gone_by:
            time.sleep(0.05)
        left = _group_members(proc.pid) if _group_alive(proc.pid) else []
        return code, seconds, left
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _checkpoints_quietly(ws: Path) -> dict[str, int]:
    try:
        return _checkpoints(ws)
    except (OSError, ValueError, AssertionError):
        return {}


def one_try(index: int, seed: int, dataset: Path, root: Path, limit: float, resume_check: bool) -> Try:
    rng = random.Random(seed * 1000 + index)
    moment = MOMENTS[index % len(MOMENTS)]
    delay = rng.uniform(0.3, 3.0) if moment == "starting" else rng.uniform(0.0, 1.5)
    result = Try(index, moment, delay)
    ws = root / f"try_{index:02d}"
    ws.mkdir()
    (ws / "data").symlink_to(dataset / "data", target_is_directory=True)
    (ws / "training_config.json").write_text((dataset / "training_config.json").read_text())
    code, result.stop_seconds, result.left_alive = ctrl_c(ws, TRAIN, moment, delay, limit)
    result.exit_code = code
    if code not in (130, -signal.SIGINT):
        result.problems.append(f"exit code {code} (expected 130)" if code is not None else
                               f"still running {limit:.0f} s after the Ctrl-C")
    if result.left_alive:
        result.problems.append(f"left alive: {result.left_alive}")
    try:
        result.checkpoints = _checkpoints(ws)
    except AssertionError as exc:
        result.problems.append(str(exc))
    if resume_check and result.checkpoints and result.ok:
        code, seconds, left = ctrl_c(ws, [*TRAIN, "--resume"], "resume", 0.0, limit, ready=result.checkpoints)
        result.resumed = _checkpoints_quietly(ws)
        if code not in (130, -signal.SIGINT) or left:
            result.problems.append(f"the resumed run stopped with exit {code} in {seconds:.1f} s, left {left}")
        if set(result.resumed) != set(result.checkpoints) or any(
                result.resumed[k] <= v for k, v in result.checkpoints.items()):
            result.problems.append(f"--resume did not continue every run: {result.checkpoints} -> {result.resumed}")
    return result


def run_tries(tries: int, parallel: int = 2, seed: int = 0, limit: float = 10.0, resume_check: bool = False,
              root: Path | None = None) -> list[Try]:
    """Run the tries (``parallel`` at a time) in workspaces under ``root`` (a temporary folder when None)."""
    with tempfile.TemporaryDirectory(prefix="ctrl_c_") as tmp:
        base = Path(root or tmp)
        make_dataset(base / "dataset")
        with cf.ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(one_try, i, seed, base / "dataset", base, limit, resume_check)
                       for i in range(tries)]
            return [f.result() for f in futures]


def summary(results: list[Try]) -> str:
    seconds = [r.stop_seconds for r in results]
    return (f"{sum(r.ok for r in results)}/{len(results)} tries stopped cleanly; stop took median "
            f"{statistics.median(seconds):.2f} s, max {max(seconds):.2f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tries", type=int, default=20)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=float, default=10.0, help="seconds a stop may take")
    p.add_argument("--resume-check", action="store_true", help="also resume each stopped run and stop it again")
    args = p.parse_args()
    started = time.perf_counter()
    results = run_tries(args.tries, args.parallel, args.seed, args.limit, args.resume_check)
    for r in results:
        print(r.line())
    print(summary(results) + f" ({time.perf_counter() - started:.0f} s in all)")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
