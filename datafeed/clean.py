"""Cleaning and the quality report.

Every repair looks at one row (or, for a missing open, the previous close), so cleaning never lets a later
bar change an earlier one. Return outliers and gaps are reported, not removed: a crash is real data.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from botcore.errors import DataError

logger = logging.getLogger(__name__)

PRICES = ["open", "high", "low", "close"]
GAP_DAYS = 4.0  # a pause longer than this (more than a weekend plus a holiday) is reported as a gap
MAD_TO_SIGMA = 1.4826  # MAD * 1.4826 estimates the standard deviation of normal data


def clean_ohlcv(frame: pd.DataFrame, symbol: str = "",
                mad_threshold: float = 8.0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Sort, deduplicate, repair or reject bad rows; flag return outliers; refuse impossible data.

    - an infinite value, or a price more than a million times above or below the median close (a typo such
      as 1e300 or a wrong unit), raises DataError naming the bar: such data is broken, not noisy;
    - duplicate timestamps: the last row wins;
    - missing or non-positive close: the row is dropped;
    - missing open: the previous close (or the close for the first bar); missing high/low: from open/close;
    - non-positive open/high/low: the row is dropped; missing or negative volume: 0;
    - high below low: swapped; open or close outside [low, high]: the range is widened to hold them;
    - log returns whose robust z-score ``|r - median| / (1.4826 * MAD)`` exceeds ``mad_threshold`` are
      listed in the report (kept in the data).

    :return: the cleaned frame and the report (a JSON-ready dict).
    """
    df, report = repair_ohlcv(frame, symbol)
    return df, complete_report(report, df, mad_threshold)


def repair_ohlcv(frame: pd.DataFrame, symbol: str = "") -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`clean_ohlcv` but for the report's gaps and return outliers, which :func:`complete_report` adds
    (the data pipeline has them computed beside the split files, by a core that is free then)."""
    report: dict[str, Any] = {"symbol": symbol, "rows_in": int(len(frame))}
    df = frame[PRICES + ["volume"]].astype("float64")
    _refuse_impossible(df, symbol)
    report["was_unsorted"] = bool(not df.index.is_monotonic_increasing)
    df = df.sort_index(kind="stable")
    dup = _duplicated_keep_last(df.index)
    report["duplicates_dropped"] = int(dup.sum())
    # (Each step below changes or drops rows only where its mask has some: a clean file costs no copies. pandas'
    # copy-on-write keeps every change below out of the caller's frame.)
    if report["duplicates_dropped"]:
        df = df[~dup]

    bad_close = ~(df["close"] > 0)  # NaN or <= 0
    report["missing_or_non_positive_close_dropped"] = int(bad_close.sum())
    if report["missing_or_non_positive_close_dropped"]:
        df = df[~bad_close]

    missing_open = df["open"].isna()
    if missing_open.any():
        prev_close = df["close"].shift(1).fillna(df["close"])
        df.loc[missing_open, "open"] = prev_close[missing_open]
    missing_high, missing_low = df["high"].isna(), df["low"].isna()
    if missing_high.any():
        df.loc[missing_high, "high"] = df.loc[missing_high, ["open", "close"]].max(axis=1)
    if missing_low.any():
        df.loc[missing_low, "low"] = df.loc[missing_low, ["open", "close"]].min(axis=1)
    report["missing_open_high_low_filled"] = int((missing_open | missing_high | missing_low).sum())

    with np.errstate(invalid="ignore"):  # (no NaN is left in open, high, low: filled above)
        non_positive = np.logical_or.reduce([df[c].to_numpy() <= 0 for c in ("open", "high", "low")])
    report["non_positive_price_rows_dropped"] = int(non_positive.sum())
    if report["non_positive_price_rows_dropped"]:
        df = df[~non_positive]

    bad_volume = ~(df["volume"] >= 0)
    report["missing_or_negative_volume_zeroed"] = int(bad_volume.sum())
    if report["missing_or_negative_volume_zeroed"]:
        df.loc[bad_volume, "volume"] = 0.0

    swapped = df["high"] < df["low"]
    report["high_low_swapped"] = int(swapped.sum())
    if report["high_low_swapped"]:
        df.loc[swapped, ["high", "low"]] = df.loc[swapped, ["low", "high"]].to_numpy()
    # The larger and smaller of open and close, skipping NaN like DataFrame.max(axis=1) (none is left here).
    body_high, body_low = np.fmax(df["open"], df["close"]), np.fmin(df["open"], df["close"])
    widened = (body_high > df["high"]) | (body_low < df["low"])
    df["high"] = np.maximum(df["high"], body_high)
    df["low"] = np.minimum(df["low"], body_low)
    report["range_widened_to_open_close"] = int(widened.sum())

    if len(df) < 2:
        raise DataError(f"{symbol or 'data'}: fewer than 2 usable bars after cleaning "
                        f"({report['rows_in']} rows read)")
    report["rows_out"] = int(len(df))
    report["first"], report["last"] = df.index[0], df.index[-1]
    report["volume_all_zero"] = bool((df["volume"] == 0).all())
    repaired = sum(report[k] for k in ("duplicates_dropped", "missing_or_non_positive_close_dropped",
                                       "missing_open_high_low_filled", "non_positive_price_rows_dropped",
                                       "missing_or_negative_volume_zeroed", "high_low_swapped",
                                       "range_widened_to_open_close"))
    if repaired:
        logger.warning("%s: cleaning changed %d row(s) (see the quality report)", symbol, repaired)
    return df.rename_axis("timestamp"), report  # (a new index object: the caller's keeps its name)


def complete_report(report: dict[str, Any], df: pd.DataFrame, mad_threshold: float = 8.0) -> dict[str, Any]:
    """Add the gaps and the return outliers of the cleaned ``df`` to its ``report`` (from :func:`repair_ohlcv`)."""
    report["gaps"] = _gaps(df.index)
    report["outliers"] = _outliers(df["close"], mad_threshold)
    if report["outliers"]["count"]:
        logger.info("%s: %d return outlier(s) beyond %.1f MADs flagged (kept)", report["symbol"],
                    report["outliers"]["count"], mad_threshold)
    return report


def _duplicated_keep_last(index: pd.Index) -> np.ndarray:
    """``index.duplicated(keep="last")`` for a sorted index: equal stamps are neighbours, so one comparison of
    each with the next (no hash table of a million stamps)."""
    if not isinstance(index, pd.DatetimeIndex):
        return index.duplicated(keep="last")
    stamps = index.asi8
    dup = np.zeros(len(stamps), dtype=bool)
    np.equal(stamps[1:], stamps[:-1], out=dup[:-1])
    return dup


IMPLAUSIBLE_RATIO = 1e6
"""A price this many times above (or below) the median close is refused: no real bar moves that far."""


def _refuse_impossible(df: pd.DataFrame, symbol: str) -> None:
    name = symbol or "data"
    columns = {c: df[c].to_numpy() for c in df.columns}  # column by column: no copy of the whole frame
    found = _first_cell(columns, np.isinf)
    if found is not None:
        row, col = found
        raise DataError(f"{name}: the {col} of the bar at {df.index[row]} is {columns[col][row]}; "
                        "fix or remove that row")
    closes = columns["close"]
    closes = closes[np.isfinite(closes) & (closes > 0)]
    if not len(closes):
        return
    median = float(np.median(closes))
    high, low = median * IMPLAUSIBLE_RATIO, median / IMPLAUSIBLE_RATIO
    with np.errstate(divide="ignore", invalid="ignore"):
        found = _first_cell({c: columns[c] for c in PRICES}, lambda v: (v > 0) & ((v > high) | (v < low)))
    if found is not None:
        row, col = found
        raise DataError(f"{name}: the {col} of the bar at {df.index[row]} is {columns[col][row]:g}, more "
                        f"than {IMPLAUSIBLE_RATIO:g} times away from the median close {median:g}; fix or remove "
                        "that row (a typo or a wrong unit)")


def _first_cell(columns: dict[str, np.ndarray], test: Any) -> tuple[int, str] | None:
    """The first ``(row, column)`` where ``test`` holds, in reading order (row by row, left to right)."""
    hits = []
    for col, values in columns.items():
        mask = test(values)
        if mask.any():
            hits.append((int(np.argmax(mask)), list(columns).index(col), col))
    return (min(hits)[0], min(hits)[2]) if hits else None


def _gaps(index: pd.DatetimeIndex) -> dict[str, Any]:
    step_days = step_seconds(index) / 86_400.0
    where = np.flatnonzero(step_days > GAP_DAYS)
    largest = where[np.argsort(-step_days[where], kind="stable")][:5]
    return {"threshold_days": GAP_DAYS, "count": int(len(where)),
            "largest": [{"after": index[i], "before": index[i + 1], "days": round(float(step_days[i]), 2)}
                        for i in largest]}


UNITS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
"""Ticks per second of a DatetimeIndex's ``unit``."""


def step_seconds(index: pd.DatetimeIndex) -> np.ndarray:
    """``(index[1:] - index[:-1]).total_seconds()`` as a float array (from the integer stamps: the same
    numbers without the TimedeltaIndex)."""
    if index.unit not in UNITS_PER_SECOND:
        return np.asarray((index[1:] - index[:-1]).total_seconds())
    return np.diff(index.asi8) / UNITS_PER_SECOND[index.unit]


def _outliers(close: pd.Series, threshold: float) -> dict[str, Any]:
    log_ret = np.diff(np.log(close.to_numpy()))
    median = float(np.median(log_ret))
    mad = float(np.median(np.abs(log_ret - median)))
    if mad == 0:
        return {"threshold_mads": threshold, "mad": 0.0, "count": 0, "bars": []}
    score = np.abs(log_ret - median) / (MAD_TO_SIGMA * mad)
    where = np.flatnonzero(score > threshold)
    top = where[np.argsort(-score[where], kind="stable")][:20]
    return {"threshold_mads": threshold, "median_log_return": median, "mad": mad, "count": int(len(where)),
            "bars": [{"timestamp": close.index[i + 1], "log_return": float(log_ret[i]),
                      "robust_z": round(float(score[i]), 2)} for i in top]}
