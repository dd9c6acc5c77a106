"""Chronological train / val / test splits, train-only normalisation, the split files and their manifest.

Layout of one split (``data/{SYM}_{INTERVAL}_{split}_data.csv``): ``timestamp`` (UTC, ``YYYY-MM-DD`` for
daily bars, ``YYYY-MM-DD HH:MM:SS`` intraday), the raw ``open, high, low, close, volume``, then the ``f_*``
features as z-scores with the train split's mean and standard deviation, clipped to +-10, rounded to 6
decimals. Between two splits, ``embargo_bars`` bars are left out (by default the longest feature window),
so no feature of a later split reaches back into an earlier one.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from botcore import paths
from botcore.atomic import atomic_path, atomic_write_json, sha256_file, to_jsonable
from botcore.errors import DataError, UserError
from botcore.markets import INTERVAL_MINUTES, infer_market, is_intraday
from datafeed.clean import clean_ohlcv
from datafeed.features import compute_features, feature_window, fill_interior_gaps
from datafeed.sources import OHLCV

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_SPLIT_ROWS = 20
CLIP = 10.0
DECIMALS = 6


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
    """Write the three split files, the quality report and, last, the manifest (each atomically).

    :return: the manifest.
    """
    fmt = _stamp_format(interval)
    hashes, ranges = {}, {}
    for name in SPLITS:
        part = prepared.splits[name]
        target = paths.split_path(symbol, interval, name)
        with atomic_path(target) as tmp:
            part.to_csv(tmp, index_label="timestamp", date_format=fmt, lineterminator="\n")
            hashes[name] = sha256_file(tmp)
        ranges[name] = {"start": part.index[0].strftime(fmt), "end": part.index[-1].strftime(fmt),
                        "rows": int(len(part))}
    report_file = quality_path(symbol, interval)
    atomic_write_json(report_file, {**prepared.quality, "interval": interval, "source": source_info.get("source")})
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
    atomic_write_json(paths.manifest_path(symbol, interval), manifest)
    return manifest
