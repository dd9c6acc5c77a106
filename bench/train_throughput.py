"""Env steps per second while training: DeepScalper vs stable-baselines3's DQN on the same TradingEnv data.

Both train with the same hidden size, batch size, replay size, learning_starts and ONE gradient update per env
step (train_freq=1, gradient_steps=1), torch.set_num_threads(1). DeepScalper runs the env in multidiscrete
mode (5 limit offsets x 5 quantities, two branches plus the volatility head), DQN the discrete mode of the
same env (Discrete(position_levels)) with an MLP of two hidden layers. Timing covers only the training phase
(after learning_starts); within each run the models train in alternating slices (``--chunks``: DQN, DeepScalper
variants, DQN, ...) so that load from other processes on the machine hits all alike, and the median per model is
reported: steps per wall-clock second, and steps per second of this process's CPU time (``time.process_time``,
all its threads), which other processes' load disturbs far less than the wall clock on a shared machine.

    .venv/bin/python bench/train_throughput.py [--steps 3000] [--repeats 3] [--chunks 10] [--rnn mingru gru]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepscalper import DeepScalper, DeepScalperConfig, training_env_overrides  # noqa: E402
from rl_env import EnvConfig, MarketData, TradingEnv  # noqa: E402


def make_data(n_bars: int, n_features: int, seed: int = 0) -> MarketData:
    """A seeded random-walk price series with random features (the content does not matter for speed)."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n_bars)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.004, n_bars))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.004, n_bars))
    features = rng.standard_normal((n_bars, n_features)).astype(np.float32)
    return MarketData.from_arrays(open_, high, low, close, features=features,
                                  feature_names=[f"f_{i}" for i in range(n_features)])


EXPLORATION = {"exploration_initial_eps": 1.0, "exploration_final_eps": 0.1, "exploration_fraction": 0.5}


def make_deepscalper(data: MarketData, args: argparse.Namespace, rnn: str) -> Callable[[int], Any]:
    """A DeepScalper past its warm-up; the returned function trains it for n more env steps."""
    cfg = DeepScalperConfig(hidden_size=args.hidden, batch_size=args.batch, learning_starts=args.learning_starts,
                            buffer_size=args.buffer, train_freq=1, gradient_steps=1, rnn=rnn,
                            target_update_interval=500, micro_window=args.micro_window, seed=0, **EXPLORATION,
                            **({} if args.macro_window is None else {"macro_window": args.macro_window}))
    env = TradingEnv(data, EnvConfig(window=args.window, action_mode="multidiscrete",
                                     **training_env_overrides(cfg)))
    agent = DeepScalper(env, cfg)
    agent.learn(args.learning_starts)
    return agent.learn


def make_dqn(data: MarketData, args: argparse.Namespace) -> Callable[[int], Any]:
    """SB3's DQN past its warm-up; the returned function trains it for n more env steps."""
    from stable_baselines3 import DQN

    env = TradingEnv(data, EnvConfig(window=args.window, action_mode="discrete"))
    model = DQN("MlpPolicy", env, learning_starts=args.learning_starts, train_freq=1, gradient_steps=1,
                batch_size=args.batch, buffer_size=args.buffer, seed=0, target_update_interval=500, **EXPLORATION,
                policy_kwargs={"net_arch": [args.hidden, args.hidden]}, device="cpu")
    model.learn(args.learning_starts)
    return lambda n: model.learn(n, reset_num_timesteps=False)


def timed_round(data: MarketData, args: argparse.Namespace, names: list[str]) -> dict[str, tuple[float, float]]:
    """One run per model, fresh models: ``--steps`` timed steps each, in ``--chunks`` slices that alternate
    between the models (so a burst of load from other processes hits every model alike). Returns per model
    (env steps per wall-clock second, per CPU second of this process)."""
    learners = {name: make_dqn(data, args) if name == "SB3 DQN" else make_deepscalper(data, args, name[13:-1])
                for name in names}
    spent = {name: [0.0, 0.0] for name in names}
    chunk = max(1, args.steps // args.chunks)
    for _ in range(args.chunks):
        for name, learn in learners.items():
            start, cpu = time.perf_counter(), time.process_time()
            learn(chunk)
            spent[name][0] += time.perf_counter() - start
            spent[name][1] += time.process_time() - cpu
    steps = chunk * args.chunks
    return {name: (steps / wall, steps / cpu) for name, (wall, cpu) in spent.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="timed training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per model (alternating)")
    parser.add_argument("--chunks", type=int, default=10,
                        help="slices of each run's timed steps, alternating between the models")
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--buffer", type=int, default=100_000)
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--rnn", nargs="+", default=["mingru", "gru"], choices=("gru", "lstm", "mingru"),
                        help="DeepScalper micro encoder(s) to time")
    parser.add_argument("--micro-window", type=int, default=8)
    parser.add_argument("--macro-window", type=int, default=None,
                        help="bars the macro encoder reads (default: the agent's default; 0 = the whole window)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = make_data(args.bars, args.features)
    names = ["SB3 DQN", *(f"DeepScalper ({rnn})" for rnn in args.rnn)]
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for name, (w, c) in timed_round(data, args, names).items():
            wall[name].append(w)
            cpu[name].append(c)
        load.append(os.getloadavg()[0])
    print(f"env steps/s while training ({args.steps} steps after {args.learning_starts} warm-up, 1 gradient update "
          f"per step, batch {args.batch}, hidden {args.hidden}, window {args.window} x {args.features} features, "
          f"1 torch thread; median of {args.repeats}; 1-minute load {min(load):.1f}-{max(load):.1f})")
    for label, results in (("per wall-clock second", wall), ("per CPU second of the process", cpu)):
        print(f" {label}:")
        for name, values in results.items():
            print(f"  {name:<22} {statistics.median(values):8.0f}   runs: {', '.join(f'{v:.0f}' for v in values)}")
        dqn = statistics.median(results["SB3 DQN"])
        for name in names[1:]:
            print(f"  {name} / SB3 DQN: {statistics.median(results[name]) / dqn:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
