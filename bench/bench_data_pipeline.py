#!/usr/bin/env python3
"""Times the data pipeline offline (Yahoo is faked in-process; the network is never used).

1. Feature computation on a long synthetic history (default 200,000 five-minute bars): rows per second of
   ``compute_features`` alone and of the whole ``prepare`` (clean, features, splits, normalisation).
2. A 20-symbol ``--update-data`` run against local stores of daily bars, with a fake Yahoo that returns
   either no new rows (only the overlap) or a few new rows: seconds for the whole run (store update, features,
   splits and files for all 20 symbols) and for the store updates alone.

    python bench/bench_data_pipeline.py [--bars 200000] [--symbols 20]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

import data_pipeline  # noqa: E402
import datafeed  # noqa: E402
from agents.config import load_config  # noqa: E402
from datafeed import sources  # noqa: E402
from datafeed.features import compute_features  # noqa: E402
from datafeed.splits import prepare  # noqa: E402


def bench_features(n_bars: int) -> None:
    bars = datafeed.generate_synthetic(n_bars, seed=0, kind="regime", interval="5m")
    t0 = time.perf_counter()
    features = compute_features(bars, "5m")
    t1 = time.perf_counter()
    prepared = prepare(bars, load_config(), "SYN", "5m")
    t2 = time.perf_counter()
    rows = sum(len(s) for s in prepared.splits.values())
    print(f"features: {n_bars:,} bars x {features.shape[1]} features in {t1 - t0:.2f} s = "
          f"{n_bars / (t1 - t0):,.0f} rows/s")
    print(f"prepare (clean+features+split+normalise): {t2 - t1:.2f} s = {n_bars / (t2 - t1):,.0f} rows/s "
          f"({rows:,} rows in the splits)")


def bench_update(n_symbols: int, history: int = 2500) -> None:
    symbols = [f"SYM{i:02d}" for i in range(n_symbols)]
    markets = {s: datafeed.generate_synthetic(history + 5, seed=i, start="2010-01-04")
               for i, s in enumerate(symbols)}
    served = {"extra": 0}

    def fake_fetch(symbol, interval, start, end):
        market = markets[symbol].iloc[: history + served["extra"]]
        keep = (market.index >= pd.Timestamp(start)) & (market.index < pd.Timestamp(end) if end else True)
        return market[keep].rename(columns=str.capitalize)

    sources._fetch_yfinance = fake_fetch  # the only function that talks to Yahoo
    now = datetime(2020, 1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for s in symbols:  # the initial download (not timed)
            sources.load_yahoo(s, "1d", now=now)
        for label, extra in (("no new rows", 0), ("5 new rows", 5)):
            served["extra"] = extra
            t0 = time.perf_counter()
            # The per-symbol table and the (expected) "old data" warnings are not the point here.
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                rc = data_pipeline.main(["--symbols", *symbols, "--update-data", "--quiet"])
            t1 = time.perf_counter()
            for s in symbols:
                sources.load_yahoo(s, "1d", now=now)
            t2 = time.perf_counter()
            print(f"update {n_symbols} symbols x {history:,} daily bars, {label}: whole run {t1 - t0:.2f} s "
                  f"({(t1 - t0) / n_symbols * 1000:.0f} ms/symbol, exit {rc}); store updates alone "
                  f"{t2 - t1:.2f} s")
        os.chdir(REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=20)
    args = parser.parse_args()
    bench_features(args.bars)
    bench_update(args.symbols)


if __name__ == "__main__":
    main()
