"""Environment throughput: env steps per second on the same synthetic data, random actions.

    .venv/bin/python bench/env_throughput.py [--bars 5000] [--window 32] [--features 2] [--steps 200000]

Compares TradingEnv, TradingVecEnv (1, 16, 256 envs; steps of all envs together), BacktraderEnv and, when
installed (``pip install --no-deps -r bench/requirements.txt``), gym-anytrading's stocks env with the same
window and feature count (its stocks env always has 2 features: price and price change). Goals on a 2-core
machine: TradingEnv >= gym-anytrading; TradingVecEnv > 1,000,000 steps/s at 256 envs; BacktraderEnv > 3,000.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.markets import random_walk_data  # noqa: E402
from rl_env import BacktraderEnv, EnvConfig, TradingEnv, TradingVecEnv  # noqa: E402


def _time_single(env, actions: np.ndarray, steps: int) -> float:
    env.reset(seed=0)
    n = len(actions)
    start = time.perf_counter()
    for i in range(steps):
        _, _, term, trunc, _ = env.step(actions[i % n])
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - start)


def _time_vec(vec: TradingVecEnv, actions: np.ndarray, steps: int) -> float:
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
    args = parser.parse_args(argv)

    data = random_walk_data(args.bars, seed=0, n_features=args.features)
    config = EnvConfig(window=args.window, episode_length=256)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 3, 4096)
    rows: list[tuple[str, float, str]] = []

    def measure(name: str, fn: Callable[[], float], goal: str = "") -> None:
        rate = fn()
        rows.append((name, rate, goal))
        print(f"  measured {name}: {rate:,.0f} steps/s", file=sys.stderr)

    measure("TradingEnv", lambda: _time_single(TradingEnv(data, config), actions, args.steps),
            ">= gym-anytrading")
    for n_envs in (1, 16, 256):
        vec_actions = rng.integers(0, 3, (256, n_envs))
        vec_steps = min(args.steps, 20_000) if n_envs == 1 else args.steps  # x1 is slow: keep it short
        measure(f"TradingVecEnv x{n_envs}",
                lambda n=n_envs, a=vec_actions, s=vec_steps: _time_vec(TradingVecEnv(data, config, n, seed=0), a, s),
                "> 1,000,000" if n_envs == 256 else "")
    bt_env = BacktraderEnv(data, config)
    measure("BacktraderEnv", lambda: _time_single(bt_env, actions, args.bt_steps), "> 3,000")
    bt_env.close()
    try:
        import pandas as pd
        from gym_anytrading.envs import StocksEnv
    except ImportError:
        print("gym-anytrading not installed: pip install --no-deps -r bench/requirements.txt", file=sys.stderr)
    else:
        frame = pd.DataFrame({"Open": data.open, "High": data.high, "Low": data.low, "Close": data.close,
                              "Volume": data.volume})
        any_env = StocksEnv(df=frame, window_size=args.window, frame_bound=(args.window, args.bars))
        measure("gym-anytrading StocksEnv", lambda: _time_single(any_env, actions % 2, args.steps))

    print(f"\nEnv steps per second: {args.bars} bars, window {args.window}, {args.features} features, "
          f"random actions\n")
    print(f"| {'env':<26} | {'steps/s':>12} | {'goal':<18} |")
    print(f"|{'-' * 28}|{'-' * 14}|{'-' * 20}|")
    for name, rate, goal in rows:
        print(f"| {name:<26} | {rate:>12,.0f} | {goal:<18} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
