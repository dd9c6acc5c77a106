#!/usr/bin/env python3
"""Market data in, honest train / val / test splits out.

    python data_pipeline.py --symbols AAPL GOOGL --update-data          # Yahoo Finance, incremental
    python data_pipeline.py --symbols GOOGL EURUSD --source sample      # bundled real data, offline
    python data_pipeline.py --symbols MYCO --source csv --csv prices.csv
    python data_pipeline.py --symbols SYN --source synthetic --seed 7

For each symbol: load bars from ONE source (never silently another: without ``--source``, a dataset that
exists already is refreshed from the source its manifest records, e.g. the bundled sample after ``make demo``),
clean them, compute features from the past only, split chronologically with an embargo, normalise with
train-only parameters, then write
``data/{SYM}_{INTERVAL}_{train,val,test}_data.parquet`` (and ``..._data.csv`` with ``--export-csv``),
``data/{SYM}_{INTERVAL}_manifest.json`` and ``data/{SYM}_{INTERVAL}_quality.json``. ``--workers N`` prepares N
symbols at a time, one process each (same files, report and exit code as one at a time). Exit code 0 when
every symbol succeeded, 1 otherwise, 2 for a bad config or flag. The library lives in ``datafeed/``; the
functions other scripts need are re-exported here.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from agents.config import load_config
from botcore import paths
from botcore.cli import add_set_flag, run_guarded, seed_number, whole_number
from botcore.config import MAX_SYNTHETIC_BARS, MAX_WORKERS
from botcore.errors import UserError
from botcore.logsetup import current_log_file, setup_logging
from botcore.symbols import validate_symbol
from datafeed.pipeline import DEFAULT_SYNTHETIC_BARS, prepare_symbols
from datafeed.sources import SYNTHETIC_KINDS

logger = logging.getLogger("data_pipeline")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data_pipeline.py", description=__doc__.split("\n\n")[0],
                                epilog="examples:\n" + __doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", "--symbol", dest="symbols", nargs="+", metavar="SYM",
                   help="symbols (default: the config's symbols)")
    p.add_argument("--source", help="yahoo | sample | csv | synthetic (default: a dataset that exists already is "
                                    "refreshed from the source it was made from; a new one uses data.source)")
    p.add_argument("--csv", nargs="+", metavar="FILE", help="with --source csv: one file per symbol, in order")
    p.add_argument("--interval", help="1d, 1h, 30m, 15m, 5m or 1m (sample source: each sample's own interval "
                                      "when not given)")
    p.add_argument("--start", help="first date to use, YYYY-MM-DD")
    p.add_argument("--end", help="last date to use, YYYY-MM-DD (inclusive)")
    p.add_argument("--train-end", help="last date of the train split (needs --val-end)")
    p.add_argument("--val-end", help="last date of the val split; test runs from there to the end")
    p.add_argument("--train-fraction", type=float, help="share of bars for train when no split dates are given")
    p.add_argument("--val-fraction", type=float, help="share of bars for val when no split dates are given")
    p.add_argument("--embargo-bars", type=whole_number(0),
                   help="bars left out between splits (default: longest feature window)")
    p.add_argument("--update-data", action="store_true",
                   help="yahoo: fetch new bars and append them to data/raw/ (default: use the local store "
                        "when it exists)")
    p.add_argument("--seed", type=seed_number,
                   help="synthetic source: seed of the first symbol (the next get seed+1, ...)")
    p.add_argument("--synthetic-kind", choices=SYNTHETIC_KINDS, default="gbm", help="synthetic generator")
    p.add_argument("--bars", type=whole_number(2, MAX_SYNTHETIC_BARS), default=DEFAULT_SYNTHETIC_BARS,
                   help=f"synthetic source: bars per symbol (2 to {MAX_SYNTHETIC_BARS:,})")
    p.add_argument("--export-csv", action="store_true",
                   help="also write each split as CSV (data/{SYM}_{INTERVAL}_{split}_data.csv) beside its Parquet "
                        "file")
    p.add_argument("--workers", type=whole_number(1, MAX_WORKERS),
                   help="symbols prepared side by side, one process each (default: data.workers, 1)")
    p.add_argument("--config", help="config file (default: ./training_config.json when it exists)")
    add_set_flag(p)
    p.add_argument("--quiet", action="store_true", help="warnings and errors only; no progress bar")
    p.add_argument("--verbose", action="store_true", help="debug messages on the terminal")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "symbols": args.symbols,
        "data": {"source": args.source, "interval": args.interval, "start": args.start, "end": args.end,
                 "train_end": args.train_end, "val_end": args.val_end, "train_fraction": args.train_fraction,
                 "val_fraction": args.val_fraction, "embargo_bars": args.embargo_bars, "seed": args.seed,
                 "workers": args.workers,
                 "csv": args.csv[0] if args.csv and len(args.csv) == 1 else None},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        setup_logging("data_pipeline", quiet=args.quiet, verbose=args.verbose)
        log_file = current_log_file()  # None when logs/ cannot be written (setup_logging has said so)
        cfg = load_config(args.config, overrides=_overrides(args), assignments=args.assignments)
        data = cfg["data"]
        symbols = list(dict.fromkeys(validate_symbol(s) for s in cfg["symbols"]))
        if bool(data["train_end"]) != bool(data["val_end"]):
            raise UserError("give both --train-end and --val-end (or neither, to split by fractions)")
        csv_files: list[str | None] = [None] * len(symbols)
        if data["source"] == "csv":
            files = args.csv or ([data["csv"]] if data["csv"] else [])
            if len(files) != len(symbols):
                raise UserError(f"--source csv needs one --csv file per symbol ({len(symbols)} symbol(s), "
                                f"{len(files)} file(s))")
            csv_files = list(files)
        elif args.csv:
            raise UserError("--csv is only used with --source csv")
        reuse = args.source is None and not args.csv and args.seed is None
        logger.info("data pipeline: %d symbol(s) from %s%s; log %s", len(symbols), data["source"],
                    " (a prepared dataset: from its own source)" if reuse else "", log_file or "not written")

        report = prepare_symbols(symbols, cfg, csv_files=csv_files, update=args.update_data,
                                 interval_given=args.interval is not None, synthetic_kind=args.synthetic_kind,
                                 synthetic_bars=args.bars, quiet=args.quiet, log_file=log_file,
                                 reuse_recorded_source=reuse, export_csv=args.export_csv, workers=data["workers"])
        for line in report.lines():
            print(line)
        failures = list(report.failures.items())
        for symbol, message in failures:
            logger.error("%s", message if message.startswith(f"{symbol}:") else f"{symbol}: {message}")
        done = len(symbols) - len(failures)
        print(f"{done} of {len(symbols)} symbol(s) prepared in {paths.data_dir()}"
              + (f"; failed: {', '.join(s for s, _ in failures)}" if failures else ""))
        return 0 if not failures else 1

    return run_guarded(body)


if __name__ == "__main__":
    raise SystemExit(main())
