"""Chronological train / val / test splits, train-only normalisation, the split files and their manifest.

Layout of one split (``data/{SYM}_{INTERVAL}_{split}_data.csv``): ``timestamp`` (UTC, ``YYYY-MM-DD`` for
daily bars, ``YYYY-MM-DD HH:MM:SS`` intraday), the raw ``open, high, low, close, volume``, then the ``f_*``
features as z-scores with the train split's mean and standard deviation, clipped to +-10, rounded to 6
decimals. Between two splits, ``embargo_bars`` bars are left out (by default the longest feature window),
so no feature of a later split reaches back into an earlier one.

A dataset (three split files, the quality report, the manifest) is replaced as a whole. :func:`write_splits`
writes every new file under a temporary name first, then, holding the dataset's exclusive lock
(``fcntl`` on ``data/.{SYM}_{INTERVAL}.lock``), records the renames it is about to do in
``data/.{SYM}_{INTERVAL}.switch.json``, renames the splits, the report and the manifest last, and deletes the
record. The reader (:mod:`datafeed.dataset`) reads the manifest and the splits under the same lock, shared, so
it never sees half a replacement. A writer killed between two renames leaves the record behind; the next
reader or writer completes the renames from it (every new file was complete before the first rename), so
the dataset is the old one or the new one, never a mix.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from botcore import paths
from botcore.atomic import (
    atomic_path,
    atomic_write_json,
    fsync_folder,
    remove_stale_temp_files,
    sha256_file,
    to_jsonable,
)
from botcore.errors import DataError, UserError
from botcore.lock import LockTimeout, locked_file
from botcore.markets import INTERVAL_MINUTES, infer_market, is_intraday
from botcore.symbols import safe_name
from datafeed.clean import clean_ohlcv
from datafeed.features import compute_features, feature_window, fill_interior_gaps
from datafeed.sources import OHLCV

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_SPLIT_ROWS = 20
CLIP = 10.0
DECIMALS = 6
LOCK_WAIT_SECONDS = 120.0


@dataclass
class Prepared:
    """Everything :func:`prepare` computes for one symbol: the splits and what the manifest records."""

    splits: dict[str, pd.DataFrame]
    normalisation: dict[str, Any]
    embargo_bars: int
    feature_window: int
    warmup_bars_dropped: int
    interior_cells_filled: int
    quality: dict[str, Any] = field(default_factory=dict)


def _data_section(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["data"] if "data" in cfg and isinstance(cfg["data"], dict) else cfg


def _end_exclusive(value: str) -> pd.Timestamp:
    """A date means the whole day: ``2017-06-30`` ends before ``2017-07-01 00:00``."""
    stamp = pd.Timestamp(value)
    return stamp + pd.Timedelta(days=1) if len(value.strip()) <= 10 else stamp + pd.Timedelta(seconds=1)


def prepare(raw: pd.DataFrame, cfg: dict[str, Any], symbol: str, interval: str) -> Prepared:
    """Clean, compute features, split and normalise (no file is written).

    :param raw: raw OHLCV with a DatetimeIndex (any order, duplicates allowed).
    :param cfg: the resolved config (``load_config()``) or just its ``data`` section.
    """
    data = _data_section(cfg)
    frame = raw
    if data.get("start"):
        frame = frame[frame.index >= pd.Timestamp(data["start"])]
    if data.get("end"):
        frame = frame[frame.index < _end_exclusive(data["end"])]
    if frame.empty:
        raise DataError(f"{symbol}: no bars between {data.get('start') or 'the start'} and "
                        f"{data.get('end') or 'the end'} (the data runs {raw.index.min()} .. {raw.index.max()})")
    clean, quality = clean_ohlcv(frame, symbol, float(data.get("outlier_mad_threshold", 8.0)))
    _check_spacing(clean.index, interval, symbol)
    indicators = list(data.get("indicators", []))
    use_volume = not quality["volume_all_zero"]
    if not use_volume:
        logger.warning("%s: the data has no volume; volume features (OBV, volume z-score) are left out", symbol)
    features, warmup, filled = fill_interior_gaps(
        compute_features(clean, interval, indicators, use_volume=use_volume))
    window = feature_window(indicators)
    embargo = window if data.get("embargo_bars") is None else int(data["embargo_bars"])
    table = pd.concat([clean.loc[features.index], features], axis=1)
    bounds = _split_bounds(table.index, data, embargo, symbol)
    splits = {name: table.iloc[a:b] for name, (a, b) in zip(SPLITS, bounds)}

    fcols = list(features.columns)
    mean = splits["train"][fcols].mean()
    std = splits["train"][fcols].std(ddof=0)
    std = std.where(std > 1e-12, 1.0)
    normalised = {}
    for name, part in splits.items():
        z = ((part[fcols] - mean) / std).clip(-CLIP, CLIP).round(DECIMALS)
        normalised[name] = pd.concat([part[OHLCV], z], axis=1)
    normalisation = {"method": "zscore", "fitted_on": "train", "ddof": 0, "clip": CLIP, "decimals": DECIMALS,
                     "mean": {c: float(mean[c]) for c in fcols}, "std": {c: float(std[c]) for c in fcols}}
    quality.update(warmup_bars_dropped=warmup, interior_feature_cells_filled=filled)
    return Prepared(normalised, normalisation, embargo, window, warmup, filled, quality)


def _check_spacing(index: pd.DatetimeIndex, interval: str, symbol: str) -> None:
    """Refuse bars whose typical spacing contradicts the interval (annualisation and features depend on it)."""
    median_minutes = float(np.median(np.asarray((index[1:] - index[:-1]).total_seconds()))) / 60.0
    expected = INTERVAL_MINUTES[interval]
    low, high = (0.9 * expected, 4.0 * expected) if interval == "1d" else (0.5 * expected, 2.0 * expected)
    if not low <= median_minutes <= high:
        guess = min(INTERVAL_MINUTES, key=lambda k: abs(np.log(INTERVAL_MINUTES[k] / max(median_minutes, 1e-9))))
        raise DataError(f"{symbol}: the bars are {median_minutes:g} minutes apart (median), which is not "
                        f"{interval}; use --interval {guess}")


def prepare_splits(raw: pd.DataFrame, cfg: dict[str, Any], symbol: str, interval: str) -> dict[str, pd.DataFrame]:
    """``{"train", "val", "test"}`` frames as in the split files (clean, features, normalised; no file writes)."""
    return prepare(raw, cfg, symbol, interval).splits


def _split_bounds(index: pd.DatetimeIndex, data: dict[str, Any], embargo: int,
                  symbol: str) -> list[tuple[int, int]]:
    n = len(index)
    train_end, val_end = data.get("train_end"), data.get("val_end")
    if bool(train_end) != bool(val_end):
        raise UserError("give both --train-end and --val-end (or neither, to split by fractions)")
    if train_end:
        n_train = int(np.searchsorted(index.values, _end_exclusive(train_end).to_datetime64(), side="left"))
        n_to_val_end = int(np.searchsorted(index.values, _end_exclusive(val_end).to_datetime64(), side="left"))
        how = f"train to {train_end}, val to {val_end}"
    else:
        usable = max(0, n - 2 * embargo)  # the fractions share out the bars that are not embargoed
        n_train = int(usable * data["train_fraction"])
        n_to_val_end = n_train + embargo + int(usable * data["val_fraction"])
        how = f"fractions {data['train_fraction']:g} / {data['val_fraction']:g}"
    bounds = [(0, n_train), (n_train + embargo, n_to_val_end), (n_to_val_end + embargo, n)]
    rows = {name: max(0, b - a) for name, (a, b) in zip(SPLITS, bounds)}
    short = [f"{name} {r}" for name, r in rows.items() if r < MIN_SPLIT_ROWS]
    if short:
        span = f"{index[0]} .. {index[-1]}" if n else "nothing"
        raise DataError(f"{symbol}: too few bars for the splits ({how}, embargo {embargo}): rows "
                        f"{', '.join(f'{k} {v}' for k, v in rows.items())}; each needs {MIN_SPLIT_ROWS} "
                        f"(usable data after warm-up: {n} bars, {span}); use a longer history or other split points")
    return bounds


# --- files --------------------------------------------------------------------------------------------

def _stamp_format(interval: str) -> str:
    return "%Y-%m-%d %H:%M:%S" if is_intraday(interval) else "%Y-%m-%d"


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its ``manifest_hash`` key, as compact JSON with sorted keys."""
    body = {k: v for k, v in manifest.items() if k != "manifest_hash"}
    text = json.dumps(to_jsonable(body), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def quality_path(symbol: str, interval: str):
    return paths.manifest_path(symbol, interval).with_name(
        paths.manifest_path(symbol, interval).name.replace("_manifest.json", "_quality.json"))


def write_splits(prepared: Prepared, symbol: str, interval: str, source_info: dict[str, Any],
                 settings: dict[str, Any]) -> dict[str, Any]:
    """Replace the dataset of ``symbol`` and ``interval`` as a whole: the three split files, the quality report
    and the manifest (see the module docstring).

    :return: the manifest.
    """
    fmt = _stamp_format(interval)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staged: list[tuple[Path, Path]] = []  # (temporary file, target), in the order they are renamed

    def stage(target: Path) -> Path:
        tmp = target.with_name(f".{target.name}.{token}.tmp")
        staged.append((tmp, target))
        return tmp

    journal_written = False
    try:
        hashes, ranges = {}, {}
        for name in SPLITS:
            part = prepared.splits[name]
            tmp = stage(paths.split_path(symbol, interval, name))
            with atomic_path(tmp) as partial:
                part.to_csv(partial, index_label="timestamp", date_format=fmt, lineterminator="\n")
            hashes[name] = sha256_file(tmp)
            ranges[name] = {"start": part.index[0].strftime(fmt), "end": part.index[-1].strftime(fmt),
                            "rows": int(len(part))}
        report_file = quality_path(symbol, interval)
        atomic_write_json(stage(report_file),
                          {**prepared.quality, "interval": interval, "source": source_info.get("source")})
        manifest = _manifest(prepared, symbol, interval, source_info, settings, hashes, ranges, report_file)
        atomic_write_json(stage(paths.manifest_path(symbol, interval)), manifest)
        with dataset_lock(symbol, interval):
            complete_switch(symbol, interval)
            stale = [*remove_stale_temp_files(paths.data_dir(), prefix=f"{safe_name(symbol)}_{interval}_"),
                     *remove_stale_temp_files(paths.data_dir() / "raw", prefix=f"{safe_name(symbol)}_{interval}.")]
            for tmp in stale:
                logger.warning("removed %s, left by an interrupted data_pipeline.py run", tmp)
            atomic_write_json(_journal_path(symbol, interval),
                              {"pid": os.getpid(), "moves": [[tmp.name, target.name] for tmp, target in staged]})
            journal_written = True  # from here on, a crash is completed by the next reader or writer
            complete_switch(symbol, interval, quiet=True)
    finally:
        if not journal_written:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
    return manifest


def _manifest(prepared: Prepared, symbol: str, interval: str, source_info: dict[str, Any], settings: dict[str, Any],
              hashes: dict[str, str], ranges: dict[str, Any], report_file: Path) -> dict[str, Any]:
    q = prepared.quality
    manifest: dict[str, Any] = {
        "symbol": symbol,
        "interval": interval,
        "source": source_info.get("source"),
        "market": infer_market(symbol),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ranges": ranges,
        "feature_columns": [c for c in prepared.splits["train"].columns if c.startswith("f_")],
        "normalisation": prepared.normalisation,
        "embargo_bars": prepared.embargo_bars,
        "feature_window": prepared.feature_window,
        "warmup_bars_dropped": prepared.warmup_bars_dropped,
        "hashes": hashes,
        "source_info": to_jsonable(source_info),
        "quality_report": str(report_file.relative_to(paths.workspace())),
        "quality_summary": {"rows_in": q["rows_in"], "rows_out": q["rows_out"], "gaps": q["gaps"]["count"],
                            "outliers_flagged": q["outliers"]["count"]},
        "settings": to_jsonable(settings),
    }
    manifest = json.loads(json.dumps(to_jsonable(manifest)))
    manifest["manifest_hash"] = manifest_hash(manifest)
    return manifest


# --- the dataset lock and the replacement record ----------------------------------------------------------

def _journal_path(symbol: str, interval: str) -> Path:
    return paths.data_dir() / f".{safe_name(symbol)}_{interval}.switch.json"


@contextlib.contextmanager
def dataset_lock(symbol: str, interval: str, shared: bool = False) -> Iterator[None]:
    """Hold the lock of one dataset: exclusive to replace it, shared to read it.

    :raises DataError: it stayed locked for :data:`LOCK_WAIT_SECONDS`.
    """
    if not paths.data_dir().is_dir():  # nothing to read, and a writer creates the folder first
        yield
        return
    entered = False
    try:
        with locked_file(paths.data_dir() / f".{safe_name(symbol)}_{interval}.lock", shared=shared,
                         wait_seconds=LOCK_WAIT_SECONDS):
            entered = True
            yield
    except LockTimeout as exc:
        if entered:
            raise
        raise DataError(f"the dataset of {symbol} {interval} stayed locked by another process for "
                        f"{LOCK_WAIT_SECONDS:g} s (a data_pipeline.py run writing it?); try again when it "
                        "ends") from exc


def switch_pending(symbol: str, interval: str) -> bool:
    """Whether a replacement of the dataset was interrupted between its renames."""
    return _journal_path(symbol, interval).exists()


def complete_switch(symbol: str, interval: str, quiet: bool = False) -> bool:
    """Do the renames recorded for the dataset that are not done yet, then delete the record (call it holding
    the exclusive :func:`dataset_lock`). True when there was a record."""
    journal = _journal_path(symbol, interval)
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        moves, pid = [(str(a), str(b)) for a, b in record["moves"]], record.get("pid")
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):  # written atomically, so only a hand edit gets here
        moves, pid = [], None
    folder = paths.data_dir()
    for tmp_name, target_name in moves:
        with contextlib.suppress(FileNotFoundError):  # renamed before the interruption
            os.replace(folder / tmp_name, folder / target_name)
    fsync_folder(folder)
    journal.unlink(missing_ok=True)
    fsync_folder(folder)
    if not quiet:
        logger.warning("%s %s: completed the replacement of the dataset that an interrupted data_pipeline.py run "
                       "(pid %s) left half done", symbol, interval, pid)
    return True

