"""The learnability suite: market x agent x seed, scored out of sample as a fraction of the oracle's Sharpe.

Each seeded market of :mod:`evaluation.learnability` goes through the real feature pipeline; every agent trains
through the toolkit's own training job (:func:`training.job.run_job` with its validation, best-checkpoint
selection and early stopping, the user's defaults from ``agents.config.DEFAULTS``), then trades the test split
with the fast engine, net of the default costs. Reported per (market, agent): test Sharpe (mean ± sd over
seeds), its fraction of the oracle's, the oracle and buy and hold on the same bars, PSR, trades, the
train-minus-validation Sharpe gap, the goal count (test Sharpe >= half the oracle's and above buy and hold) and
the wall-clock seconds until the validation Sharpe first reached half the oracle's validation Sharpe.

    .venv/bin/python bench/learnability.py [--markets momentum mean_reversion ...] [--agents deepscalper ppo dqn]
        [--seeds 5] [--steps 20000] [--strengths 0.2 0.3] [--out results/learnability]

Writes ``learnability.json`` (every run), ``learnability.md`` (the table) and ``learnability.png`` under --out.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import load_model  # noqa: E402
from agents.config import DEFAULTS  # noqa: E402
from deepscalper.config import DeepScalperConfig, training_env_overrides  # noqa: E402
from evaluation.backtest import evaluation_env_config, run_backtest  # noqa: E402
from evaluation.learnability import (  # noqa: E402
    FAMILIES,
    SESSION_BARS,
    MarketSpec,
    PreparedMarket,
    RunRow,
    format_table,
    plot_summary,
    positions_by_session_bar,
    prepare_market,
    reference_backtests,
    score,
    seconds_to_fraction,
    summarise,
)
from rl_env.config import EnvConfig  # noqa: E402
from training.job import JobInputs, JobSpec, run_job  # noqa: E402

AGENTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "deepscalper": ("deepscalper", "deepscalper", {}),
    "ds_no_hindsight": ("deepscalper", "deepscalper", {"use_hindsight": False}),
    "ds_no_aux": ("deepscalper", "deepscalper", {"use_aux": False}),
    "ds_single_branch": ("deepscalper", "deepscalper", {"single_branch": True}),
    "ppo": ("backtrader", "ppo", {}),
    "dqn": ("backtrader", "dqn", {}),
}
"""Agent name -> (model type, algo, hyperparameter overrides): DeepScalper, the paper's ablations, SB3 on the
fast engine."""


@dataclass(frozen=True)
class SyntheticDataset:
    """What a training job reads of a dataset when the bars come from a generator instead of data/."""

    symbol: str
    interval: str
    market: str
    hash: str
    manifest: dict[str, Any]


def job_inputs(market: PreparedMarket, cfg: dict[str, Any], algo: str, hyperparams: dict[str, Any]) -> JobInputs:
    """The job's data and env configs, built as :meth:`training.job.JobInputs.load` builds them from files."""
    action_mode = "multidiscrete" if algo == "deepscalper" else "discrete"
    shaping: dict[str, Any] = {}
    if algo == "deepscalper":
        ds = {**cfg["deepscalper"], **{k: v for k, v in hyperparams.items() if k in cfg["deepscalper"]}}
        shaping = training_env_overrides(DeepScalperConfig.from_dict(ds))
    name = f"{market.spec.name}_seed{market.seed}"
    dataset = SyntheticDataset(market.symbol, market.spec.interval, "equity", name,
                               {"source": "synthetic", "market": name,
                                "feature_columns": list(market.data("train").feature_names)})
    return JobInputs(dataset, market.data("train"), market.data("val"),  # type: ignore[arg-type]
                     EnvConfig.from_config(cfg, action_mode, training=True, **shaping),
                     evaluation_env_config(cfg, action_mode), market.ppy)


def run_one(market: PreparedMarket, agent: str, cfg: dict[str, Any], steps: int, eval_every: int,
            work: Path) -> RunRow:
    """Train ``agent`` on ``market`` through the training job, then score it on the test split."""
    model_type, algo, hyperparams = AGENTS[agent]
    inputs = job_inputs(market, cfg, algo, hyperparams)
    path = work / f"{market.spec.name}_{agent}_{market.seed}.zip"
    curve: list[tuple[float, int, float]] = []
    started = time.monotonic()

    def on_validation(step: int, sharpe: float) -> None:
        curve.append((time.monotonic() - started, step, sharpe))

    spec = JobSpec(symbol=market.symbol, interval=market.spec.interval, model_type=model_type, algo=algo, cfg=cfg,
                   steps=steps, seed=market.seed, eval_every=eval_every, hyperparams=dict(hyperparams),
                   register=False, checkpoints=False, quiet=True, inputs=inputs, save_model_to=str(path))
    result = run_job(spec, on_validation=on_validation)
    seconds = time.monotonic() - started
    if result.status != "finished":
        raise RuntimeError(f"{agent} on {market.spec.name} seed {market.seed}: {result.status} {result.error}")
    policy = load_model(algo, path)
    test_run = run_backtest(policy, market.data("test"), inputs.eval_config)
    test = score(test_run, market.ppy)
    train = score(run_backtest(policy, market.data("train"), inputs.eval_config), market.ppy)
    runs = {split: reference_backtests(market, cfg, split) for split in ("val", "test")}
    refs = {split: {k: score(v, market.ppy) for k, v in runs[split].items()} for split in ("val", "test")}
    row = RunRow(market=market.spec.name, family=market.spec.family, agent=agent, seed=market.seed,
                 test_sharpe=test["sharpe"], oracle_sharpe=refs["test"]["oracle"]["sharpe"],
                 bh_sharpe=refs["test"]["buy_and_hold"]["sharpe"], psr=test["psr"], trades=test["trades"],
                 train_sharpe=train["sharpe"],
                 val_sharpe=result.val_sharpe if math.isfinite(result.val_sharpe) else 0.0,
                 oracle_val_sharpe=refs["val"]["oracle"]["sharpe"], seconds=seconds, steps=result.steps, curve=curve,
                 session_positions=positions_by_session_bar(test_run),
                 oracle_session_positions=positions_by_session_bar(runs["test"]["oracle"]))
    row.seconds_to_half_oracle = seconds_to_fraction(curve, 0.5 * row.oracle_val_sharpe) \
        if row.oracle_val_sharpe > 0.1 else math.nan
    return row


def build_markets(families: Sequence[str], strengths: Sequence[float] | None, n_bars: int) -> list[MarketSpec]:
    """The markets of a run; ``n_bars`` daily bars, or as many sessions of hourly bars for ``intraday`` (a test
    split of a few hundred hourly bars is a few weeks: its annualised Sharpe would be mostly noise)."""
    specs = []
    for family in families:
        bars = n_bars * SESSION_BARS if family == "intraday" else n_bars
        if strengths and family in ("momentum", "mean_reversion"):
            specs += [MarketSpec(family, s, bars) for s in strengths]
        else:
            specs.append(MarketSpec(family, None, bars))
    return specs


def run_suite(markets: Sequence[MarketSpec], agents: Sequence[str], seeds: Sequence[int], steps: int,
              eval_every: int, cfg: dict[str, Any] | None = None, log: Any = None) -> list[RunRow]:
    """Every market x agent x seed (markets prepared once per seed, shared by the agents)."""
    cfg = copy.deepcopy(cfg or DEFAULTS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="learnability_") as tmp:
        for spec in markets:
            for seed in seeds:
                market = prepare_market(spec, seed, cfg)
                for agent in agents:
                    row = run_one(market, agent, cfg, steps, eval_every, Path(tmp))
                    rows.append(row)
                    if log is not None:
                        log(f"{row.market:<22} {row.agent:<17} seed {row.seed}  test {row.test_sharpe:6.2f}  oracle "
                            f"{row.oracle_sharpe:5.2f}  B&H {row.bh_sharpe:5.2f}  PSR {row.psr:4.2f}  trades "
                            f"{row.trades:4.0f}  train {row.train_sharpe:5.2f}  val {row.val_sharpe:5.2f}  "
                            f"half-oracle {row.seconds_to_half_oracle:5.0f}s  {row.seconds:5.0f}s")
                        if row.session_positions:
                            log(f"{'':<22} position by bar of the session {row.session_positions}  oracle "
                                f"{row.oracle_session_positions}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--strengths", type=float, nargs="+", default=None,
                        help="AR strengths of the momentum and mean-reversion markets (default: one each)")
    parser.add_argument("--agents", nargs="+", default=["deepscalper", "ppo", "dqn"], choices=list(AGENTS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=int(DEFAULTS["training_params"]["steps"]))
    parser.add_argument("--eval-every", type=int, default=None,
                        help="env steps between validations (default: training_params.eval_every)")
    parser.add_argument("--bars", type=int, default=3000,
                        help="bars of the daily markets; the intraday market gets as many 7-bar sessions")
    parser.add_argument("--out", default="results/learnability")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    eval_every = args.eval_every if args.eval_every is not None else int(DEFAULTS["training_params"]["eval_every"])
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    rows = run_suite(build_markets(args.markets, args.strengths, args.bars), args.agents, seeds, args.steps,
                     eval_every, log=lambda line: print(line, flush=True))
    summary = summarise(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(summary)
    print("\n" + table)
    (out / "learnability.md").write_text(format_table(summary, markdown=True) + "\n", encoding="utf-8")
    (out / "learnability.json").write_text(json.dumps(
        {"settings": vars(args), "runs": [asdict(r) for r in rows], "summary": summary}, indent=1, default=str),
        encoding="utf-8")
    plot_summary(summary, rows, out / "learnability.png")
    print(f"\nwrote {out / 'learnability.md'}, {out / 'learnability.json'}, {out / 'learnability.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
