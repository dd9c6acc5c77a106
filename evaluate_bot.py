"""Evaluate registered models against baselines on data they never trained on, net of costs.

Examples::

    python evaluate_bot.py --symbol AAPL --create-plots
    python evaluate_bot.py --symbol GOOGL --models <run ids or paths> --engine backtrader --split test
    python evaluate_bot.py --symbol SYN --synthetic --seed 3 --create-plots

Every model (default: every registered model of the symbol and interval, champions and challengers) and four
baselines (buy and hold, flat, moving-average crossover, seeded random) are backtested on the same split with the
same costs. The metrics (evaluation.metrics) go to ``results/model_comparison_<SYMBOL>_<timestamp>.json``, a short
table to stdout, and with ``--create-plots`` PNGs plus one self-contained HTML report to ``results/``.
A model is recommended only when it beats the best baseline's Sharpe ratio AND its probabilistic Sharpe ratio
exceeds ``--psr-level``; otherwise the recommendation says that no model shows a significant edge.
Exit code 0 when the evaluation ran (whatever it found), 1 on errors, 2 on a bad config.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from agents.config import INTERVALS, load_config
from botcore.cli import run_guarded
from botcore.errors import UserError
from botcore.logsetup import setup_logging
from botcore.symbols import validate_symbol
from datafeed.sources import SYNTHETIC_KINDS
from evaluation.compare import evaluate_symbol, format_table

logger = logging.getLogger("evaluate_bot")

ENGINES = ("fast", "backtrader", "both")
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate_bot.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbol", nargs="+", required=True, help="one or more symbols, e.g. GOOGL EURUSD")
    p.add_argument("--interval", choices=INTERVALS, help="bar interval (default: data.interval of the config)")
    p.add_argument("--models", nargs="+", metavar="RUN",
                   help="run ids or run folders/model paths (default: every registered model of the symbol)")
    p.add_argument("--engine", choices=ENGINES,
                   help="backtest engine (default: evaluation.engine); 'both' also reports how far they differ")
    p.add_argument("--split", choices=("train", "val", "test"), help="split to backtest on (default: test)")
    p.add_argument("--synthetic", action="store_true",
                   help="backtest on a seeded synthetic series made by data_pipeline's generators")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic series (with --synthetic)")
    p.add_argument("--bars", type=int, default=2500,
                   help="bars of the synthetic series before splitting (as data_pipeline.py --source synthetic)")
    p.add_argument("--kind", choices=SYNTHETIC_KINDS, default="gbm", help="synthetic generator")
    p.add_argument("--create-plots", action="store_true", help="write PNG plots and an HTML report to results/")
    p.add_argument("--config", help="config file (default: ./training_config.json when it exists)")
    p.add_argument("--psr-level", type=float, help="PSR a model needs for a recommendation (default: "
                                                   "monitoring.psr_level, 0.95)")
    p.add_argument("--quiet", action="store_true", help="only warnings on the terminal; print just the verdict")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("evaluate_bot", quiet=args.quiet)
    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.bars < 200:
        raise UserError(f"--bars {args.bars} is too short for a train/val/test split; use 200 or more")
    overrides = {"data": {"interval": args.interval},
                 "evaluation": {"engine": args.engine, "split": args.split},
                 "monitoring": {"psr_level": args.psr_level}}
    cfg = load_config(args.config, overrides=overrides)
    symbols = [validate_symbol(s) for s in args.symbol]
    for symbol in symbols:
        outcome = evaluate_symbol(symbol, cfg, models=args.models, synthetic=args.synthetic, seed=args.seed,
                                  bars=args.bars, kind=args.kind, create_plots=args.create_plots)
        _print_summary(outcome, quiet=args.quiet)
    return 0


def _print_summary(outcome: dict[str, Any], quiet: bool) -> None:
    sr = outcome["split_range"]
    if not quiet:
        print(f"\n{outcome['symbol']} {outcome['interval']} {outcome['split']} split {sr['start']} to {sr['end']} "
              f"({sr['rows']} bars), engine {outcome['engine']}, net of costs")
        print(format_table(outcome))
    print(f"{outcome['symbol']}: {outcome['recommendation']['text']}")
    print(f"results: {outcome['json_path']}" + (f"; report: {outcome['report_html']}" if "report_html" in outcome
                                                else ""))


if __name__ == "__main__":
    raise SystemExit(main())
