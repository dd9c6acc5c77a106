"""Environment throughput: env steps per second on the same synthetic data, random actions.

    .venv/bin/python bench/env_throughput.py [--bars 5000] [--window 32] [--features 2] [--steps 200000]

Compares TradingEnv in each action mode (discrete, multidiscrete = DeepScalper's limit orders, box) with
gym-anytrading's stocks env (when installed: ``pip install --no-deps -r bench/requirements.txt``; same window and
feature count, its stocks env always has 2 features), TradingVecEnv with one env with SB3's DummyVecEnv over one
TradingEnv, TradingVecEnv at 16 and 256 envs (steps of all envs together) and BacktraderEnv, each row as a ratio
against its reference measured in the same run. Goals on a 2-core machine: every TradingEnv mode >= 1.0x
gym-anytrading; TradingVecEnv x1 >= 1.0x DummyVecEnv; TradingVecEnv > 1,000,000 steps/s at 256 envs;
BacktraderEnv > 3,000.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from evaluation.markets import random_walk_data  # noqa: E402
from rl_env import BacktraderEnv, EnvConfig, TradingEnv, TradingVecEnv  # noqa: E402

MODES = ("discrete", "multidiscrete", "box")
ANYTRADING = "gym-anytrading StocksEnv"
ROWS = [  # (measured, reference it is divided by, goal)
    ("TradingEnv discrete", ANYTRADING, ">= 1.0x"),
    ("TradingEnv multidiscrete", ANYTRADING, ">= 1.0x"),
    ("TradingEnv box", ANYTRADING, ""),
    ("TradingVecEnv x1", "DummyVecEnv(TradingEnv) x1", ">= 1.0x"),
    ("TradingVecEnv x16", "TradingVecEnv x1", ""),
    ("TradingVecEnv x256", "TradingVecEnv x1", "> 1,000,000 steps/s"),
    ("BacktraderEnv", "TradingEnv discrete", "> 3,000 steps/s"),
    (ANYTRADING, "", ""),
]


def _time_single(env, actions: Sequence[Any], steps: int) -> float:
    env.reset(seed=0)
    n = len(actions)
    start = time.perf_counter()
    for i in range(steps):
        _, _, term, trunc, _ = env.step(actions[i % n])
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - start)


def _time_vec(vec: Any, actions: np.ndarray, steps: int) -> float:
    vec.reset()
    calls = max(1, steps // vec.num_envs)
    start = time.perf_counter()
    for i in range(calls):
        vec.step(actions[i % len(actions)])
    return calls * vec.num_envs / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--features", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200_000, help="steps per numpy measurement")
    parser.add_argument("--bt-steps", type=int, default=20_000, help="steps for BacktraderEnv")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the best of each is kept)")
    args = parser.parse_args(argv)

    data = random_walk_data(args.bars, seed=0, n_features=args.features)
    config = EnvConfig(window=args.window, episode_length=256)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 3, 4096)
    jobs: dict[str, Callable[[int], float]] = {}
    for mode in MODES:
        env = TradingEnv(data, config.replace(action_mode=mode))
        env.action_space.seed(0)
        mode_actions = [env.action_space.sample() for _ in range(4096)]
        jobs[f"TradingEnv {mode}"] = lambda n, e=env, a=mode_actions: _time_single(e, a, n)
    one = rng.integers(0, 3, (256, 1))
    vec_one = TradingVecEnv(data, config, 1, seed=0)
    jobs["TradingVecEnv x1"] = lambda n: _time_vec(vec_one, one, n)
    dummy = DummyVecEnv([lambda: TradingEnv(data, config)])
    dummy.seed(0)
    jobs["DummyVecEnv(TradingEnv) x1"] = lambda n: _time_vec(dummy, one, n)
    for n_envs in (16, 256):
        vec, vec_actions = TradingVecEnv(data, config, n_envs, seed=0), rng.integers(0, 3, (256, n_envs))
        jobs[f"TradingVecEnv x{n_envs}"] = lambda n, v=vec, a=vec_actions: _time_vec(v, a, n)
    bt_env = BacktraderEnv(data, config)
    jobs["BacktraderEnv"] = lambda n: _time_single(bt_env, actions, max(1, n * args.bt_steps // args.steps))
    try:
        import pandas as pd
        from gym_anytrading.envs import StocksEnv
    except ImportError:
        print("gym-anytrading not installed: pip install --no-deps -r bench/requirements.txt", file=sys.stderr)
    else:
        frame = pd.DataFrame({"Open": data.open, "High": data.high, "Low": data.low, "Close": data.close,
                              "Volume": data.volume})
        any_env = StocksEnv(df=frame, window_size=args.window, frame_bound=(args.window, args.bars))
        jobs[ANYTRADING] = lambda n: _time_single(any_env, actions % 2, n)
    # Rounds of every measurement in turn, the best rate of each kept: a shared machine's load shifts during a
    # run, and interleaving exposes every env to the same load (the ratios are what the goals are about).
    rates: dict[str, float] = {}
    per_round = max(1, args.steps // args.rounds)
    for r in range(args.rounds):
        for name, job in jobs.items():
            rates[name] = max(rates.get(name, 0.0), job(per_round))
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    bt_env.close()

    print(f"\nEnv steps per second: {args.bars} bars, window {args.window}, {args.features} features, "
          f"random actions, one run\n")
    print("| env | steps/s | reference | ratio | goal |")
    print("|---|---|---|---|---|")
    for name, reference, goal in ROWS:
        if name not in rates or (reference and reference not in rates):
            continue
        ratio = f"{rates[name] / rates[reference]:.2f}x" if reference else ""
        print(f"| {name} | {rates[name]:,.0f} | {reference} | {ratio} | {goal} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
