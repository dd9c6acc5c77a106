#!/usr/bin/env python3
"""Market data in, honest train / val / test splits out.

    python data_pipeline.py --symbols AAPL GOOGL --update-data          # Yahoo Finance, incremental
    python data_pipeline.py --symbols GOOGL EURUSD --source sample      # bundled real data, offline
    python data_pipeline.py --symbols MYCO --source csv --csv prices.csv
    python data_pipeline.py --symbols SYN --source synthetic --seed 7

For each symbol: load bars from ONE source (never silently another), clean them, compute features from the
past only, split chronologically with an embargo, normalise with train-only parameters, then write
``data/{SYM}_{INTERVAL}_{train,val,test}_data.csv``, ``data/{SYM}_{INTERVAL}_manifest.json`` and
``data/{SYM}_{INTERVAL}_quality.json``. Exit code 0 when every symbol succeeded, 1 otherwise, 2 for a bad
config or flag. The library lives in ``datafeed/``; the functions other scripts need are re-exported here.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from botcore import paths
from botcore.cli import run_guarded
from botcore.config import load_config
from botcore.errors import UserError
from botcore.logsetup import setup_logging
from botcore.symbols import validate_symbol
from datafeed.sources import (SYNTHETIC_KINDS, generate_synthetic, load_csv, load_sample, load_synthetic,
                              load_yahoo, sample_symbols)
from datafeed.splits import load_manifest, load_split, manifest_hash, prepare, prepare_splits, write_splits

__all__ = ["main", "load_split", "load_manifest", "generate_synthetic", "prepare_splits", "manifest_hash",
           "run_symbol"]

logger = logging.getLogger("data_pipeline")

DEFAULT_SYNTHETIC_BARS = 2500


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data_pipeline.py", description=__doc__.split("\n\n")[0],
                                epilog="examples:\n" + __doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", nargs="+", metavar="SYM", help="symbols (default: the config's symbols)")
    p.add_argument("--source", help="yahoo | sample | csv | synthetic (default: the config's data.source)")
    p.add_argument("--csv", nargs="+", metavar="FILE", help="with --source csv: one file per symbol, in order")
    p.add_argument("--interval", help="1d, 1h, 30m, 15m, 5m or 1m (sample source: each sample's own interval "
                                      "when not given)")
    p.add_argument("--start", help="first date to use, YYYY-MM-DD")
    p.add_argument("--end", help="last date to use, YYYY-MM-DD (inclusive)")
    p.add_argument("--train-end", help="last date of the train split (needs --val-end)")
    p.add_argument("--val-end", help="last date of the val split; test runs from there to the end")
    p.add_argument("--train-fraction", type=float, help="share of bars for train when no split dates are given")
    p.add_argument("--val-fraction", type=float, help="share of bars for val when no split dates are given")
    p.add_argument("--embargo-bars", type=int, help="bars left out between splits (default: longest feature "
                                                    "window)")
    p.add_argument("--update-data", action="store_true",
                   help="yahoo: fetch new bars and append them to data/raw/ (default: use the local store "
                        "when it exists)")
    p.add_argument("--seed", type=int, help="synthetic source: seed of the first symbol (the next get seed+1, ...)")
    p.add_argument("--synthetic-kind", choices=SYNTHETIC_KINDS, default="gbm", help="synthetic generator")
    p.add_argument("--bars", type=int, default=DEFAULT_SYNTHETIC_BARS, help="synthetic source: bars per symbol")
    p.add_argument("--config", help="config file (default: ./training_config.json when it exists)")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only; no progress bar")
    p.add_argument("--verbose", action="store_true", help="debug messages on the terminal")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "symbols": args.symbols,
        "data": {"source": args.source, "interval": args.interval, "start": args.start, "end": args.end,
                 "train_end": args.train_end, "val_end": args.val_end, "train_fraction": args.train_fraction,
                 "val_fraction": args.val_fraction, "embargo_bars": args.embargo_bars, "seed": args.seed,
                 "csv": args.csv[0] if args.csv and len(args.csv) == 1 else None},
    }


def run_symbol(symbol: str, interval: str, cfg: dict[str, Any], *, csv_file: str | None = None,
               seed: int = 0, update: bool = False, synthetic_kind: str = "gbm",
               synthetic_bars: int = DEFAULT_SYNTHETIC_BARS) -> dict[str, Any]:
    """Load, prepare and write one symbol; return its manifest. Raises UserError subclasses on bad data."""
    data = cfg["data"]
    source = data["source"]
    if source == "sample":
        raw, info = load_sample(symbol, interval)
    elif source == "csv":
        if not csv_file:
            raise UserError("--source csv needs --csv FILE (one file per symbol)")
        raw, info = load_csv(csv_file)
    elif source == "synthetic":
        raw, info = load_synthetic(synthetic_bars, seed, synthetic_kind, interval)
    else:
        raw, info = load_yahoo(symbol, interval, start=data["start"], end=data["end"], update=update)
        max_age = cfg["monitoring"]["max_data_age_days"]
        if info.get("age_days", 0) > max_age:
            logger.warning("%s: the newest bar is %.1f days old (monitoring.max_data_age_days = %s)%s", symbol,
                           info["age_days"], max_age, "" if update else "; add --update-data to fetch new bars")
    info.update(first_bar=raw.index.min(), last_bar=raw.index.max(), bars_loaded=len(raw))
    prepared = prepare(raw, cfg, symbol, interval)
    settings = {"data": {**data, "interval": interval}, "symbol": symbol}
    if source == "synthetic":
        settings["synthetic"] = {"kind": synthetic_kind, "bars": synthetic_bars, "seed": seed}
    return write_splits(prepared, symbol, interval, info, settings)


def _describe(manifest: dict[str, Any]) -> str:
    parts = [f"{name} {r['rows']:>6,} ({r['start']} .. {r['end']})" for name, r in manifest["ranges"].items()]
    return (f"{manifest['symbol']:<10} {manifest['interval']:<4} {manifest['source']:<9} " + " | ".join(parts)
            + f" | {len(manifest['feature_columns'])} features, embargo {manifest['embargo_bars']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        log_file = setup_logging("data_pipeline", quiet=args.quiet, verbose=args.verbose)
        cfg = load_config(args.config, overrides=_overrides(args))
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
        if args.bars < 2:
            raise UserError("--bars must be 2 or more")
        seed = data["seed"]
        logger.info("data pipeline: %d symbol(s) from %s; log %s", len(symbols), data["source"], log_file)

        failures: list[tuple[str, str]] = []
        lines: list[str] = []
        bar = tqdm(symbols, desc="data", unit="symbol", file=sys.stderr, disable=True if args.quiet else None)
        for i, symbol in enumerate(bar):
            bar.set_postfix_str(symbol)
            # The sample source takes each sample's own interval unless --interval asks for one.
            interval = data["interval"]
            if data["source"] == "sample" and args.interval is None:
                interval = sample_symbols().get(symbol, interval)
            try:
                manifest = run_symbol(symbol, interval, cfg, csv_file=csv_files[i], seed=seed + i,
                                      update=args.update_data, synthetic_kind=args.synthetic_kind,
                                      synthetic_bars=args.bars)
            except UserError as exc:
                logger.debug("%s failed", symbol, exc_info=True)
                failures.append((symbol, str(exc)))
            except Exception as exc:  # one symbol's bug must not stop the others; traceback to the log
                logger.exception("%s: unexpected failure", symbol)
                failures.append((symbol, f"unexpected {type(exc).__name__}: {exc} (traceback in {log_file})"))
            else:
                lines.append(_describe(manifest))
        bar.close()
        for line in lines:
            print(line)
        for symbol, message in failures:
            logger.error("%s", message if message.startswith(f"{symbol}:") else f"{symbol}: {message}")
        done = len(symbols) - len(failures)
        print(f"{done} of {len(symbols)} symbol(s) prepared in {paths.data_dir()}"
              + (f"; failed: {', '.join(s for s, _ in failures)}" if failures else ""))
        return 0 if not failures else 1

    return run_guarded(body)


if __name__ == "__main__":
    raise SystemExit(main())
