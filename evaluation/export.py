"""CSV exports of an evaluation: every model's and baseline's per-bar record, round trips and fills.

Why: the JSON holds summary metrics; a quant who wants to check them, or to read them into quantstats, pyfolio or
a spreadsheet, needs the series behind them. One folder per evaluation, beside its JSON::

    results/export_<SYMBOL>_<stamp>/
        <name>_bars.csv     timestamp, close, position, exposure, equity, return   (one row per bar)
        <name>_trades.csv   the round trips of BacktestResult.trades
        <name>_fills.csv    every executed order: time, bar, qty, price

``<name>`` is the run id of a model or the name of a baseline (made file-safe). Conventions:

- ``timestamp`` is the bar's time in UTC (``YYYY-MM-DD`` for daily bars, ``YYYY-MM-DD HH:MM:SS`` intraday).
- ``equity`` is the account marked at the bar's close, net of every cost; ``return`` is the simple return
  ``equity / previous equity - 1``, empty on the first bar (the first decision bar: nothing has happened yet).
  These are exactly the returns ``evaluation.metrics`` computes every figure from, so
  ``quantstats.stats.sharpe(bars["return"].dropna(), periods=<periods_per_year>)`` gives our Sharpe ratio.
- ``position`` is signed units held at the close; ``exposure`` is position value / equity.
- Floats are written with Python's shortest round-trip repr: reading them back gives the same numbers.

The folder is written as a set: into a hidden temporary folder first, renamed into place as the last step, so it
is either complete or absent (a crash leaves only a hidden ``.export_*.tmp`` folder, never a partial export; the
next export removes such leftovers once they are an hour old, so an export running beside it is never touched).
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from botcore.atomic import atomic_write_text, fsync_folder

logger = logging.getLogger(__name__)

BAR_COLUMNS = ("timestamp", "close", "position", "exposure", "equity", "return")
TRADE_COLUMNS = ("entry_time", "exit_time", "side", "size", "entry_price", "exit_price", "pnl", "return_pct",
                 "duration_bars", "open")
FILL_COLUMNS = ("time", "bar", "qty", "price")
STALE_AFTER_S = 3600.0


def file_stem(name: str) -> str:
    """A run id or baseline name as a file name: letters, digits, ``.``, ``_`` and ``-`` kept, the rest ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def _csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def _times(timestamps: Any) -> list[str]:
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    if ts.size and (ts == ts.astype("datetime64[D]")).all():
        return np.datetime_as_string(ts.astype("datetime64[D]")).tolist()
    return np.char.replace(np.datetime_as_string(ts.astype("datetime64[s]")), "T", " ").tolist()


def _reprs(values: Any) -> list[str]:
    """Python's shortest round-trip repr of each value (what ``csv.writer`` writes for a float)."""
    return list(map(float.__repr__, np.asarray(values, dtype=np.float64).tolist()))


class _SharedColumns:
    """The timestamp and close columns as text, formatted once for every result of the same bars (the models
    and baselines of one evaluation trade the same split: formatting them is a third of a bars file's time)."""

    def __init__(self) -> None:
        self._seen: list[tuple[np.ndarray, np.ndarray, list[str], list[str]]] = []

    def text(self, timestamps: Any, prices: Any) -> tuple[list[str], list[str]]:
        ts = np.asarray(timestamps, dtype="datetime64[ns]")
        px = np.asarray(prices, dtype=np.float64)
        for seen_ts, seen_px, times, closes in self._seen:
            if np.array_equal(seen_ts, ts) and np.array_equal(seen_px, px):
                return times, closes
        times, closes = _times(ts), _reprs(px)
        self._seen.append((ts, px, times, closes))
        return times, closes


def bars_csv(result: Any, shared: _SharedColumns | None = None) -> str:
    """One row per bar of a backtest result: timestamp, close, position, exposure, equity, return.

    Built column by column (one repr per float, rows joined once): byte for byte what ``csv.writer`` wrote, in
    about two thirds of its time (a default evaluation of 100,000 bars writes six of these files); ``shared``
    reuses the timestamp and close text of an earlier result on the same bars."""
    times, closes = (shared or _SharedColumns()).text(result.timestamps, result.prices)
    columns = [times, closes, *(_reprs(c) for c in (result.positions, result.exposure, result.equity))]
    returns = [""] + _reprs(result.returns)
    rows = "".join(f"{t},{c},{p},{x},{e},{r}\n" for t, c, p, x, e, r in zip(*columns, returns))
    return ",".join(BAR_COLUMNS) + "\n" + rows


def trades_csv(trades: Sequence[Mapping[str, Any]]) -> str:
    """The round trips, one row each, in the columns of ``TRADE_COLUMNS``."""
    return _csv(TRADE_COLUMNS, ([t.get(c) for c in TRADE_COLUMNS] for t in trades))


def fills_csv(fills: Sequence[Mapping[str, Any]]) -> str:
    """Every executed order, one row each: time, bar (row in the split's data), signed qty, fill price."""
    return _csv(FILL_COLUMNS, ([f.get(c) for c in FILL_COLUMNS] for f in fills))


def export_results(results: Mapping[str, Any], folder: Path) -> dict[str, dict[str, str]]:
    """Write the CSVs of every result (name -> BacktestResult) into ``folder`` as one set; returns
    name -> {"bars": path, "trades": path, "fills": path} (paths as strings, inside ``folder``)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    files: dict[str, dict[str, str]] = {}
    try:
        used: set[str] = set()
        shared = _SharedColumns()
        for name, result in results.items():
            stem = file_stem(name)
            while stem in used:  # two names that become the same file name keep apart
                stem += "_"
            used.add(stem)
            parts = {"bars": bars_csv(result, shared), "trades": trades_csv(result.trades),
                     "fills": fills_csv(getattr(result, "fills", ()) or ())}
            files[name] = {}
            for kind, text in parts.items():
                atomic_write_text(tmp / f"{stem}_{kind}.csv", text)
                files[name][kind] = str(folder / f"{stem}_{kind}.csv")
        os.chmod(tmp, 0o777 & ~_umask())
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported the per-bar records, trades and fills of %d result(s) to %s", len(files), folder)
    return files


def _remove_leftovers(parent: Path, min_age_s: float = STALE_AFTER_S) -> None:
    """Delete hidden temporary export folders an interrupted export left behind (older than ``min_age_s``)."""
    now = time.time()
    for path in parent.glob(".export_*.tmp"):
        try:
            if path.is_dir() and now - path.stat().st_mtime > min_age_s:
                shutil.rmtree(path, ignore_errors=True)
                logger.warning("removed %s, left by an interrupted export", path)
        except OSError:
            continue


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_folder(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing ``folder`` (a re-run in the same second) is swapped out first."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_folder(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
