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
    report: dict[str, Any] = {"symbol": symbol, "rows_in": int(len(frame))}
    df = frame[PRICES + ["volume"]].astype("float64")
    _refuse_impossible(df, symbol)
    report["was_unsorted"] = bool(not df.index.is_monotonic_increasing)
    df = df.sort_index(kind="stable")
    dup = df.index.duplicated(keep="last")
    report["duplicates_dropped"] = int(dup.sum())
    df = df[~dup].copy()

    bad_close = ~(df["close"] > 0)  # NaN or <= 0
    report["missing_or_non_positive_close_dropped"] = int(bad_close.sum())
    df = df[~bad_close]

    prev_close = df["close"].shift(1).fillna(df["close"])
    missing_open = df["open"].isna()
    df.loc[missing_open, "open"] = prev_close[missing_open]
    missing_high, missing_low = df["high"].isna(), df["low"].isna()
    df.loc[missing_high, "high"] = df.loc[missing_high, ["open", "close"]].max(axis=1)
    df.loc[missing_low, "low"] = df.loc[missing_low, ["open", "close"]].min(axis=1)
    report["missing_open_high_low_filled"] = int((missing_open | missing_high | missing_low).sum())

    non_positive = (df[["open", "high", "low"]] <= 0).any(axis=1)
    report["non_positive_price_rows_dropped"] = int(non_positive.sum())
    df = df[~non_positive]

    bad_volume = ~(df["volume"] >= 0)
    report["missing_or_negative_volume_zeroed"] = int(bad_volume.sum())
    df.loc[bad_volume, "volume"] = 0.0

    swapped = df["high"] < df["low"]
    df.loc[swapped, ["high", "low"]] = df.loc[swapped, ["low", "high"]].to_numpy()
    report["high_low_swapped"] = int(swapped.sum())
    body_high, body_low = df[["open", "close"]].max(axis=1), df[["open", "close"]].min(axis=1)
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
    report["gaps"] = _gaps(df.index)
    report["outliers"] = _outliers(df["close"], mad_threshold)

    repaired = sum(report[k] for k in ("duplicates_dropped", "missing_or_non_positive_close_dropped",
                                       "missing_open_high_low_filled", "non_positive_price_rows_dropped",
                                       "missing_or_negative_volume_zeroed", "high_low_swapped",
                                       "range_widened_to_open_close"))
    if repaired:
        logger.warning("%s: cleaning changed %d row(s) (see the quality report)", symbol, repaired)
    if report["outliers"]["count"]:
        logger.info("%s: %d return outlier(s) beyond %.1f MADs flagged (kept)", symbol,
                    report["outliers"]["count"], mad_threshold)
    df.index.name = "timestamp"
    return df, report


IMPLAUSIBLE_RATIO = 1e6
"""A price this many times above (or below) the median close is refused: no real bar moves that far."""


def _refuse_impossible(df: pd.DataFrame, symbol: str) -> None:
    name = symbol or "data"
    values = df.to_numpy()
    infinite = np.isinf(values)
    if infinite.any():
        row, col = (int(i[0]) for i in np.nonzero(infinite))
        raise DataError(f"{name}: the {df.columns[col]} of the bar at {df.index[row]} is {values[row, col]}; "
                        "fix or remove that row")
    closes = df["close"].to_numpy()
    closes = closes[np.isfinite(closes) & (closes > 0)]
    if not len(closes):
        return
    median = float(np.median(closes))
    prices = df[PRICES].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        implausible = (prices > 0) & ((prices > median * IMPLAUSIBLE_RATIO) | (prices < median / IMPLAUSIBLE_RATIO))
    if implausible.any():
        row, col = (int(i[0]) for i in np.nonzero(implausible))
        raise DataError(f"{name}: the {PRICES[col]} of the bar at {df.index[row]} is {prices[row, col]:g}, more "
                        f"than {IMPLAUSIBLE_RATIO:g} times away from the median close {median:g}; fix or remove "
                        "that row (a typo or a wrong unit)")


def _gaps(index: pd.DatetimeIndex) -> dict[str, Any]:
    step_days = np.asarray((index[1:] - index[:-1]).total_seconds()) / 86_400.0
    where = np.flatnonzero(step_days > GAP_DAYS)
    largest = where[np.argsort(-step_days[where], kind="stable")][:5]
    return {"threshold_days": GAP_DAYS, "count": int(len(where)),
            "largest": [{"after": index[i], "before": index[i + 1], "days": round(float(step_days[i]), 2)}
                        for i in largest]}


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
