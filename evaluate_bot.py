"""Evaluate registered models against baselines on data they never trained on, net of costs.

Examples::

    python evaluate_bot.py --symbol AAPL --create-plots
    python evaluate_bot.py --symbol GOOGL --models <run ids> --engine backtrader --split test
    python evaluate_bot.py --symbol SYN --synthetic --seed 3 --create-plots
    python evaluate_bot.py --symbol GOOGL --signal [--model RUN|champion] [--json]

The champions of the symbol and interval (plus the runs named with ``--models``; every run with ``--all``) and four
baselines (buy and hold, flat, moving-average crossover, seeded random) are backtested on the same split with the
same costs. The metrics (evaluation.metrics) go to ``results/model_comparison_<SYMBOL>_<timestamp>.json``, the
per-bar records, trades and fills as CSV to ``results/export_<SYMBOL>_<timestamp>/``, a short table to stdout, and
with ``--create-plots`` PNGs plus one self-contained HTML report to ``results/``.
A model is recommended only when it beats the best baseline's Sharpe ratio AND its probabilistic Sharpe ratio
exceeds ``--psr-level``; otherwise the recommendation says that no model shows a significant edge.
Exit code 0 when the evaluation ran (whatever it found), 1 on errors, 2 on a bad config.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from agents.config import INTERVALS, load_config, resolve_device
from botcore import paths
from botcore.cli import add_set_flag, run_guarded, seed_number, whole_number
from botcore.config import MAX_SYNTHETIC_BARS
from botcore.errors import UserError
from botcore.logsetup import setup_logging
from botcore.signals import StopFlag, stop_on_signals
from botcore.symbols import validate_symbol
from datafeed.sources import SYNTHETIC_KINDS
from evaluation.compare import evaluate_symbol, format_table
from evaluation.report import write_walkforward_report
from trading.signals import compute_signals, format_signals
from training.walkforward import WalkForwardSettings, format_walkforward, run_walkforward, write_report

logger = logging.getLogger("evaluate_bot")

ENGINES = ("fast", "backtrader", "both")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate_bot.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbol", "--symbols", dest="symbol", nargs="+", required=True, metavar="SYM",
                   help="one or more symbols, e.g. GOOGL EURUSD (a symbol that fails does not stop the others)")
    p.add_argument("--interval", choices=INTERVALS, help="bar interval (default: data.interval of the config)")
    p.add_argument("--models", nargs="+", metavar="RUN",
                   help="run ids of the registry, evaluated besides the champions; a model from elsewhere is "
                        "imported first: train_bot.py --import-model PATH")
    p.add_argument("--all", action="store_true", dest="all_runs",
                   help="evaluate every registered run of the symbol and interval (default: the champions, one per "
                        "model type, plus any --models named)")
    p.add_argument("--engine", choices=ENGINES,
                   help="backtest engine (default: evaluation.engine, fast); 'backtrader' fills every order in "
                        "backtrader's broker; 'both' reports backtrader's figures and the gap of the fast engine's "
                        "final equity to them")
    p.add_argument("--parity-bars", type=whole_number(0, 10**9),
                   help="engine fast: replay each champion's first N bars on backtrader's broker and report the gap "
                        "in the JSON's parity_check (default: evaluation.parity_bars, 2000; 0 = off)")
    p.add_argument("--split", choices=("train", "val", "test"), help="split to backtest on (default: test)")
    p.add_argument("--synthetic", action="store_true",
                   help="backtest on a seeded synthetic series made by data_pipeline's generators")
    p.add_argument("--seed", type=seed_number, default=0, help="seed of the synthetic series (with --synthetic)")
    p.add_argument("--bars", type=whole_number(200, MAX_SYNTHETIC_BARS), default=2500,
                   help="bars of the synthetic series before splitting (as data_pipeline.py --source synthetic; "
                        f"200 to {MAX_SYNTHETIC_BARS:,})")
    p.add_argument("--kind", choices=SYNTHETIC_KINDS, default="gbm", help="synthetic generator")
    p.add_argument("--create-plots", action="store_true", help="write PNG plots and an HTML report to results/")
    p.add_argument("--config", help="config file (default: ./training_config.json when it exists)")
    add_set_flag(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="torch device the models run on: cpu, cuda, or auto (cuda when torch sees a GPU) (default: "
                        "evaluation.device, cpu; a backtest acts one bar at a time, which the CPU does well)")
    p.add_argument("--psr-level", type=float, help="PSR a model needs for a recommendation (default: "
                                                   "monitoring.psr_level, 0.95)")
    p.add_argument("--quiet", action="store_true",
                   help="only warnings on the terminal; print one line per symbol: the verdict and the results file")
    sig = p.add_argument_group("signal (the model's decision on the newest prepared bar)")
    sig.add_argument("--signal", action="store_true",
                     help="print the decision of the model(s) on the newest prepared bar: the order (market or limit "
                          "price, units), the target position, the bar, the model's age, whether the data is stale")
    sig.add_argument("--model", metavar="RUN|champion", help="with --signal: a run id, or champion (default: the "
                                                             "champion of each model type)")
    sig.add_argument("--json", action="store_true", help="with --signal: print JSON")
    wf = p.add_argument_group("walk-forward (replay the retrain loop over the whole history)")
    wf.add_argument("--walk-forward", action="store_true",
                    help="train a model per fold, replay promotion in time order, stitch the test windows")
    wf.add_argument("--model-type", choices=("deepscalper", "backtrader", "both"),
                    help="model type(s) to retrain (default: the config's model_types)")
    wf.add_argument("--train-bars", type=whole_number(50, 10**9), help="bars each fold trains on, validation tail "
                    "included (default: walkforward.train_bars, else the train and val splits' rows)")
    cadence = wf.add_mutually_exclusive_group()
    cadence.add_argument("--test-bars", type=whole_number(1, 10**9),
                         help="bars each fold trades before the next retrain (default: the training schedule's)")
    cadence.add_argument("--retrain-every", type=whole_number(1, 10**9), dest="test_bars",
                         help="the same as --test-bars")
    wf.add_argument("--folds", type=whole_number(0, 10**6), help="replay only the last K folds (0 = all)")
    wf.add_argument("--steps", type=whole_number(1, 10**9), help="training steps per fold model")
    wf.add_argument("--seeds", type=whole_number(1, 1000), help="seeds per fold (each seed is its own loop)")
    wf.add_argument("--workers", type=whole_number(1, 256),
                    help="processes training folds side by side, this one included (2 = this process and one "
                         "worker process)")
    wf.add_argument("--cluster", metavar="ADDRESS", help="train the folds on a Ray cluster: auto, ray://HOST:PORT or "
                    "HOST:PORT (default: cluster.address; none = this machine)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    setup_logging("evaluate_bot", quiet=args.quiet)
    overrides = {"data": {"interval": args.interval},
                 "evaluation": {"engine": args.engine, "split": args.split, "device": args.device,
                                "parity_bars": args.parity_bars},
                 "monitoring": {"psr_level": args.psr_level}}
    wf_flags = ("model_type", "train_bars", "test_bars", "folds", "steps", "seeds", "workers", "cluster")
    if not args.walk_forward and any(getattr(args, k) is not None for k in wf_flags):
        raise UserError("--model-type, --train-bars, --test-bars, --folds, --steps, --seeds, --workers and --cluster "
                        "need --walk-forward")
    overrides["cluster"] = {"address": args.cluster}
    overrides["walkforward"] = {k: getattr(args, k) for k in ("train_bars", "test_bars", "folds", "seeds", "workers")}
    overrides["training_params"] = {"steps": args.steps}
    cfg = load_config(args.config, overrides=overrides, assignments=args.assignments)
    resolve_device(cfg["evaluation"]["device"])  # cuda without a GPU: one line, exit code 2, before any work
    symbols = [validate_symbol(s) for s in args.symbol]
    if (args.model or args.json) and not args.signal:
        raise UserError("--model and --json need --signal")
    if args.signal:
        return _signal(args, cfg, symbols)
    if args.walk_forward:
        return _walk_forward(args, cfg, symbols)
    return _for_each_symbol(symbols, lambda symbol: _print_summary(
        evaluate_symbol(symbol, cfg, models=args.models, synthetic=args.synthetic, seed=args.seed, bars=args.bars,
                        kind=args.kind, create_plots=args.create_plots, all_runs=args.all_runs), quiet=args.quiet))


def _for_each_symbol(symbols: list[str], run: Callable[[str], None]) -> int:
    """Run ``run`` for every symbol; a user error (a missing dataset, an unknown model) of one symbol does not
    stop the others: it is one error line, and a last line names every symbol that failed (exit code 1).
    With a single symbol the error is simply the command's one error line."""
    if len(symbols) == 1:
        run(symbols[0])
        return 0
    failed: list[str] = []
    for symbol in symbols:
        try:
            run(symbol)
        except UserError as exc:
            logger.error("%s", exc if str(exc).startswith(symbol) else f"{symbol}: {exc}")
            failed.append(symbol)
    if failed:
        print(f"{len(symbols) - len(failed)} of {len(symbols)} symbol(s) evaluated; failed: {', '.join(failed)}")
    return 1 if failed else 0


def _walk_forward(args: argparse.Namespace, cfg: dict[str, Any], symbols: list[str]) -> int:
    wf = cfg["walkforward"]
    types = ["deepscalper", "backtrader"] if args.model_type == "both" else (
        [args.model_type] if args.model_type else list(dict.fromkeys(cfg["model_types"])))
    stop = StopFlag()
    with stop_on_signals(stop, "stopping the walk-forward after the folds in progress"):
        for symbol in symbols:
            settings = WalkForwardSettings(model_types=types, train_bars=wf["train_bars"], test_bars=wf["test_bars"],
                                           folds=wf["folds"], seeds=wf["seeds"], workers=wf["workers"],
                                           engine=cfg["training_params"]["engine"], quiet=args.quiet)
            report = run_walkforward(symbol, cfg, settings, stop)
            stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
            if args.create_plots:
                report["files"] = {k: str(v) for k, v in
                                   write_walkforward_report(report, paths.results_dir(), stamp).items()}
            path = write_report(report, stamp)
            if not args.quiet:
                print(format_walkforward(report))
            for verdict in report["verdicts"]:
                print(f"{symbol}: {verdict['text']}")
            print(f"results: {path}" + (f"; report: {report['files']['html']}" if "files" in report else ""))
    return 0


def _signal(args: argparse.Namespace, cfg: dict[str, Any], symbols: list[str]) -> int:
    outs = [compute_signals(symbol, cfg, model=args.model or "champion") for symbol in symbols]
    if args.json:
        print(json.dumps(outs if len(outs) > 1 else outs[0], indent=2))
    else:
        print("\n".join(format_signals(out) for out in outs))
    return 0


def _print_summary(outcome: dict[str, Any], quiet: bool) -> None:
    files = f"results: {outcome['json_path']}" + (f"; report: {outcome['report_html']}" if "report_html" in outcome
                                                  else "")
    verdict = f"{outcome['symbol']}: {outcome['recommendation']['text']}"
    if quiet:
        print(f"{verdict} ({files})")
        return
    sr = outcome["split_range"]
    print(f"\n{outcome['symbol']} {outcome['interval']} {outcome['split']} split {sr['start']} to {sr['end']} "
          f"({sr['rows']} bars), engine {outcome['engine']}, net of costs")
    if "costs" in outcome:
        print(outcome["costs"]["statement"])
    print(format_table(outcome))
    print(verdict)
    print(files)
    if "export" in outcome:
        print(f"export: {outcome['export']['folder']} (per-bar equity, returns and positions, trades and fills as CSV)")


if __name__ == "__main__":
    raise SystemExit(main())
