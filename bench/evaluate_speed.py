#!/usr/bin/env python3
"""Evaluation speed: evaluate_bot.py on a large test split, batched prediction, vectorised baselines.

    .venv/bin/python bench/evaluate_speed.py [--test-bars 100000] [--train-steps 3000] [--skip-backtrader]

Builds a temporary workspace with a synthetic 1-minute series whose test split holds ``--test-bars`` bars,
registers one DeepScalper and one PPO model (briefly trained, so that they trade), then measures in the same run:

- ``evaluate_bot.py`` end to end with the default engine (fast, batched prediction, the champion's backtrader
  parity spot-check) against the same command with ``--engine backtrader`` (the old default) and against the
  fast engine predicting bar by bar (the old fast path); the default is timed first and last and the better of
  the two kept (the shared machine's load moves by the minute);
- each model's backtest, batched against bar by bar (and the two are checked equal);
- ``compute_metrics`` of one backtest against the same plus the 1,000-resample bootstrap CI it used to run on
  every series (it now takes the bootstrap's large-sample limit from 10,000 returns on), and the per-bar CSV export;
- a fixed moving-average crossover over the split: the vectorised baseline against the env-stepped one and
  against vectorbt's ``Portfolio.from_signals`` (a bench-only reference; the toolkit never imports vectorbt);
- torch's thread count for single-sample inference (1 against the machine's default).

Goals: evaluate_bot under 10 s; vectorised MA crossover within 3x of vectorbt.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SYMBOL = "SYN"
INTERVAL = "1m"
TRAIN_FRACTION = 0.1
VAL_FRACTION = 0.1


@contextlib.contextmanager
def _workspace(folder: Path | None) -> Iterator[Path]:
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        where = folder.resolve() if folder else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        os.chdir(where)
        try:
            yield where
        finally:
            os.chdir(previous)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _quietly(fn: Callable[[], Any]) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def prepare(test_bars: int, train_steps: int) -> dict[str, Any]:
    """Data and two registered models in the current directory (a fresh workspace)."""
    import data_pipeline
    from agents import Registry
    from agents.config import load_config
    from agents.sb3_agent import save_sb3
    from datafeed.dataset import Dataset
    from deepscalper import DeepScalper, DeepScalperConfig
    from deepscalper.config import training_env_overrides
    from rl_env import EnvConfig, MarketData, TradingEnv

    Path("training_config.json").write_text(json.dumps({
        "symbols": [SYMBOL], "data": {"interval": INTERVAL, "train_fraction": TRAIN_FRACTION,
                                      "val_fraction": VAL_FRACTION}}))
    total = int(test_bars / (1 - TRAIN_FRACTION - VAL_FRACTION)) + 200
    code = data_pipeline.main(["--symbols", SYMBOL, "--source", "synthetic", "--interval", INTERVAL,
                               "--bars", str(total), "--seed", "5", "--quiet"])
    if code:
        raise SystemExit(f"data_pipeline failed with exit code {code}")
    cfg = load_config()
    dataset = Dataset.open(SYMBOL, INTERVAL)
    train = MarketData.from_frame(dataset.split("train"), SYMBOL, INTERVAL)
    registry = Registry()
    meta_common = {"symbol": SYMBOL, "interval": INTERVAL, "validation": {"sharpe_ratio": 0.0}, "hpo_trials": 1,
                   "trial_sharpes": [], "feature_columns": list(train.feature_names)}

    ds_config = DeepScalperConfig.from_dict({**cfg["deepscalper"], "seed": 0})
    env_config = EnvConfig.from_config(cfg, "multidiscrete", training=True, **training_env_overrides(ds_config))
    agent = DeepScalper(TradingEnv(train, env_config), ds_config, seed=0)
    agent.learn(train_steps)
    agent.save("deepscalper.zip")
    registry.register("deepscalper.zip", {**meta_common, "model_type": "deepscalper", "algo": "deepscalper",
                                          "env_config": env_config.to_dict(), "action_mode": "multidiscrete"})

    from stable_baselines3 import PPO

    ppo_config = EnvConfig.from_config(cfg, "discrete", training=True)
    ppo = PPO("MlpPolicy", TradingEnv(train, ppo_config), n_steps=256, batch_size=64, seed=0,
              policy_kwargs={"net_arch": [64, 64]}, device="cpu")
    ppo.learn(train_steps)
    save_sb3(ppo, "ppo", {"n_steps": 256, "batch_size": 64, "net_arch": [64, 64]}, Path("ppo.zip"))
    registry.register("ppo.zip", {**meta_common, "model_type": "backtrader", "algo": "ppo",
                                  "env_config": ppo_config.to_dict(), "action_mode": "discrete"})
    return {"cfg": cfg, "test_rows": len(dataset.split("test"))}


def _evaluate(argv: list[str], stepped: bool = False) -> float:
    """Seconds of ``evaluate_bot.main(argv)`` in this process; ``stepped`` patches the backtests back to
    bar-by-bar prediction (the fast engine before batching)."""
    import evaluate_bot
    from evaluation import compare
    from evaluation.backtest import run_backtest

    original = compare.run_backtest
    if stepped:
        compare.run_backtest = functools.partial(run_backtest, batched=False)
    try:
        seconds, code = _timed(lambda: _quietly(lambda: evaluate_bot.main(["--symbol", SYMBOL, "--quiet", *argv])))
    finally:
        compare.run_backtest = original
    if code:
        raise SystemExit(f"evaluate_bot {' '.join(argv)} failed with exit code {code}")
    return seconds


def _models() -> tuple[Any, dict[str, tuple[Any, Any]]]:
    from agents import Registry, load_registered
    from agents.config import load_config
    from datafeed.dataset import Dataset
    from evaluation.compare import _model_env_config
    from rl_env import MarketData

    cfg = load_config()
    data = MarketData.from_frame(Dataset.open(SYMBOL, INTERVAL).split("test"), SYMBOL, INTERVAL)
    registry = Registry()
    models = {rec.algo: (load_registered(registry, rec), _model_env_config(rec, cfg))
              for rec in registry.runs(symbol=SYMBOL, interval=INTERVAL)}
    return data, models


def _vectorbt_ma(close: np.ndarray, fast: int, slow: int, fees: float, slippage: float, cash: float) -> float:
    """Seconds of vectorbt's from_signals for the same MA crossover (signals computed inside the timing)."""
    import pandas as pd
    import vectorbt as vbt

    def run() -> Any:
        series = pd.Series(close)
        above = series.rolling(fast).mean() > series.rolling(slow).mean()
        entries = above & ~above.shift(1, fill_value=False)
        exits = ~above & above.shift(1, fill_value=False)
        pf = vbt.Portfolio.from_signals(series, entries, exits, fees=fees, slippage=slippage, init_cash=cash)
        return pf.value().to_numpy()

    run()  # numba compiles on the first call
    return min(_timed(run)[0] for _ in range(3))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-bars", type=int, default=100_000)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--workspace", type=Path,
                        help="reuse (or create) this workspace instead of a temporary one (setup takes minutes)")
    parser.add_argument("--skip-backtrader", action="store_true",
                        help="do not time evaluate_bot.py --engine backtrader (minutes on 100,000 bars)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    rows: list[tuple[str, float, str, float, str]] = []  # (what, seconds, reference, reference seconds, goal)
    with _workspace(args.workspace):
        if not (Path("models").exists() and Path("data").exists()):
            prepare(args.test_bars, args.train_steps)
        import torch

        from evaluation.backtest import run_backtest
        from evaluation.baselines import MovingAverageCrossover
        from rl_env import EnvConfig

        data, models = _models()
        print(f"test split: {data.n_bars:,} bars of {SYMBOL} {INTERVAL}; models: {', '.join(models)}", file=sys.stderr)
        from agents.config import load_config

        parity = load_config()["evaluation"]["parity_bars"]
        default = f"evaluate_bot.py (default: fast, batched, parity {parity})"
        import backtrader  # noqa: F401  (imported before the timings: no row pays for an import)

        import evaluate_bot  # noqa: F401

        new = _evaluate([])
        stepped = _evaluate(["--parity-bars", "0"], stepped=True)
        no_parity = _evaluate(["--parity-bars", "0"])
        old_default = None if args.skip_backtrader else _evaluate(["--engine", "backtrader"])
        new = min(new, _evaluate([]))  # the default twice, first and last, the best kept: the machine's load moves
        rows.append((default, new, "fast engine bar by bar, no parity", stepped, "< 10 s"))
        rows.append(("evaluate_bot.py --parity-bars 0", no_parity, "the default above", new, ""))
        if old_default is not None:
            rows.append((default, new, "--engine backtrader (the old default)", old_default, "< 10 s"))
        for algo, (policy, config) in models.items():
            fast_s, fast_r = _timed(lambda p=policy, c=config: run_backtest(p, data, c))
            step_s, step_r = _timed(lambda p=policy, c=config: run_backtest(p, data, c, batched=False))
            same = fast_r.equity.tobytes() == step_r.equity.tobytes() and fast_r.fills == step_r.fills
            rows.append((f"{algo} backtest, batched ({fast_r.n_fills} fills, equal: {same})", fast_s,
                         "bar by bar", step_s, ""))
        from evaluation.metrics import bootstrap_sharpe_ci, compute_metrics

        ppy = 252 * 390
        metrics_s, metrics = _timed(lambda: compute_metrics(fast_r, ppy, bootstrap_samples=1000))
        boot_s = _timed(lambda: bootstrap_sharpe_ci(fast_r.returns, ppy, 1000))[0]
        rows.append((f"compute_metrics of one backtest (Sharpe CI: {metrics['sharpe_ci_method']})", metrics_s,
                     "the same plus the 1,000-resample bootstrap CI (before)", metrics_s + boot_s, ""))
        from evaluation.export import bars_csv

        rows.append((f"per-bar CSV of the {algo} backtest", _timed(lambda: bars_csv(fast_r))[0],
                     f"the {algo} backtest, batched", fast_s, ""))
        cfg = EnvConfig(window=32, action_mode="box")
        ma = MovingAverageCrossover(10, 30)
        run_backtest(ma, data, cfg)  # warm caches
        target_s = min(_timed(lambda: run_backtest(ma, data, cfg))[0] for _ in range(3))
        step_s = _timed(lambda: run_backtest(ma, data, cfg, batched=False))[0]
        rows.append(("MA crossover backtest, vectorised", target_s, "env-stepped", step_s, ""))
        rows.append(("MA crossover backtest, vectorised", target_s, "vectorbt from_signals",
                     _vectorbt_ma(data.close, 10, 30, cfg.commission_rate, cfg.slip_perc, cfg.initial_cash),
                     "within 3x"))
        policy, config = models.get("deepscalper", next(iter(models.values())))
        from rl_env import TradingEnv

        env = TradingEnv(data, config)
        obs, _ = env.reset(seed=0)
        sample = [obs]
        for _ in range(999):
            obs, *_ = env.step(env.action_space.sample())
            sample.append(obs)
        default_threads = torch.get_num_threads()
        timings = {}
        for threads in (1, default_threads):
            torch.set_num_threads(threads)
            timings[threads] = min(_timed(lambda: [policy.predict(o) for o in sample])[0] for _ in range(3))
        torch.set_num_threads(default_threads)
        rows.append(("predict x1000 bar by bar, torch 1 thread", timings[1],
                     f"torch {default_threads} threads (default)", timings[default_threads], ""))

    print(f"\nEvaluation speed: {data.n_bars:,}-bar test split, {os.cpu_count()} cores, one run\n")
    print("| work | seconds | reference | seconds | ratio (reference / work) | goal |")
    print("|---|---|---|---|---|---|")
    for what, seconds, reference, ref_seconds, goal in rows:
        print(f"| {what} | {seconds:.3f} | {reference} | {ref_seconds:.3f} | {ref_seconds / seconds:.1f}x | {goal} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
