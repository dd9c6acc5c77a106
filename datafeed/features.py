"""Features: technical indicators (from ``ta``), returns and volume statistics, time of day.

Every feature at bar t uses bars up to and including t only (rolling windows, recursive averages that start
at the first bar). Price-valued indicators (MACD, ATR) are divided by the close and moving averages become
ratios, so a feature means the same at a price of 20 and of 2,000. Warm-up rows, where a window is not yet
full, are NaN here and dropped by the splitter (ta fills ATR's and ADX's warm-up with 0.0: masked below).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from ta.momentum import RSIIndicator
from ta.trend import MACD
from ta.volatility import BollingerBands
from ta.volume import OnBalanceVolumeIndicator

from botcore.markets import is_intraday
from datafeed.clean import UNITS_PER_SECOND
from datafeed.indicators import ADX, average_true_range, commodity_channel_index, stochastic

logger = logging.getLogger(__name__)

INDICATORS = ("rsi", "macd", "bollinger", "atr", "obv", "stochastic", "adx", "cci", "ma_ratios")
RETURN_LAGS = 5
ROLL = 20  # window of the rolling return statistics, volume z-score and OBV flow
# Longest look-back of each indicator in bars (MACD: slow EMA plus signal EMA; ADX: two Wilder smoothings).
WINDOWS = {"rsi": 14, "macd": 26 + 9, "bollinger": 20, "atr": 14, "obv": ROLL + 1, "stochastic": 14 + 3,
           "adx": 2 * 14, "cci": 20, "ma_ratios": 50}
BASE_WINDOW = ROLL + 1
TOD_HARMONICS = (2, 4, 8)
"""Intraday: harmonics k of the time of day (``f_tod_sin_k``, ``f_tod_cos_k``) besides the daily cycle."""


def feature_window(indicators: list[str] | tuple[str, ...]) -> int:
    """The longest feature look-back in bars: the default embargo between splits."""
    return max([BASE_WINDOW] + [WINDOWS[name] for name in indicators])


def compute_features(df: pd.DataFrame, interval: str, indicators: list[str] | tuple[str, ...] = INDICATORS,
                     use_volume: bool = True) -> pd.DataFrame:
    """Feature columns named ``f_*`` for a clean OHLCV frame (same index; NaN in warm-up rows).

    :param df: clean OHLCV (see :func:`datafeed.clean.clean_ohlcv`).
    :param interval: bar interval; intraday data gets the time of day as ``f_tod_sin`` / ``f_tod_cos``
        and their :data:`TOD_HARMONICS`.
    :param indicators: which of :data:`INDICATORS` to compute.
    :param use_volume: False drops the volume features (OBV, volume z-score) for data without volume.
    """
    return pd.DataFrame(feature_arrays(df, interval, indicators, use_volume), index=df.index, copy=False)


def feature_arrays(df: pd.DataFrame, interval: str, indicators: list[str] | tuple[str, ...] = INDICATORS,
                   use_volume: bool = True) -> dict[str, np.ndarray]:
    """The columns of :func:`compute_features` as float64 arrays the caller owns (and may change in place);
    infinities are NaN."""
    return dict(iter_feature_columns(df, interval, indicators, use_volume))


def iter_feature_columns(df: pd.DataFrame, interval: str, indicators: list[str] | tuple[str, ...] = INDICATORS,
                         use_volume: bool = True) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, values)`` of each feature column in order, handed over group by group (the returns, each
    indicator, the time of day), so a caller that stores them away (the splitter spills a long history to
    disk) never holds more than one group in memory. ``values`` is a float64 array the caller owns."""
    for group in feature_groups(df, interval, indicators, use_volume):
        yield from group()


FeatureGroup = Callable[[], Iterator[tuple[str, np.ndarray]]]


def feature_groups(df: pd.DataFrame, interval: str, indicators: list[str] | tuple[str, ...] = INDICATORS,
                   use_volume: bool = True) -> list[FeatureGroup]:
    """The columns of :func:`iter_feature_columns` as groups, in column order: each group is a function that
    computes its columns from ``df`` alone (reading it, never changing it) and hands them over as
    :func:`iter_feature_columns` does, so independent groups can be computed side by side in threads (numpy's
    and pandas' loops over whole columns release the GIL) with the same numbers as one after another."""
    unknown = sorted(set(indicators) - set(INDICATORS))
    if unknown:
        raise ValueError(f"unknown indicator(s) {unknown}; known: {', '.join(INDICATORS)}")
    groups: list[FeatureGroup] = [_costed(GROUP_COST["returns"], _returns, df),
                                  _costed(GROUP_COST["return_stats"], _return_stats, df, use_volume)]
    # The indicators in a fixed order, whatever the order of ``indicators``.
    groups += [_costed(GROUP_COST[name], _indicator_group, name, df, use_volume) for name in INDICATORS
               if name in indicators]
    if is_intraday(interval):
        groups.append(_costed(GROUP_COST["time_of_day"], _time_of_day, df))
    return groups


GROUP_COST = {"returns": 8, "return_stats": 22, "rsi": 7, "macd": 9, "bollinger": 10, "atr": 6, "obv": 5,
              "stochastic": 7, "adx": 23, "cci": 17, "ma_ratios": 11, "time_of_day": 10}
"""Roughly how long each group takes (ms per 100,000 bars, its columns stored included): threads start the
longest first (:func:`datafeed.splits.prepare`). The numbers never depend on it."""


def _costed(cost: float, function: Callable[..., Iterator[tuple[str, np.ndarray]]], *args: object) -> FeatureGroup:
    group = functools.partial(function, *args)
    group.cost = cost  # type: ignore[attr-defined]  (partial objects take attributes)
    return group


def _returns(df: pd.DataFrame) -> Iterator[tuple[str, np.ndarray]]:
    log_ret = np.log(df["close"]).diff().to_numpy(dtype="float64")
    f: dict[str, np.ndarray] = {}
    for lag in range(RETURN_LAGS):  # log_ret.shift(lag), as arrays of its own
        head = min(lag, len(log_ret))
        f[f"f_ret_{lag + 1}"] = np.concatenate((np.full(head, np.nan), log_ret[:len(log_ret) - head]))
    yield from _hand_over(f, df)


def _return_stats(df: pd.DataFrame, use_volume: bool) -> Iterator[tuple[str, np.ndarray]]:
    high, low, close, volume = df["high"], df["low"], df["close"], df["volume"]
    f: dict[str, pd.Series] = {}
    log_ret = np.log(close).diff()
    f[f"f_ret_mean_{ROLL}"] = log_ret.rolling(ROLL).mean()
    f[f"f_ret_std_{ROLL}"] = log_ret.rolling(ROLL).std()
    f[f"f_ret_skew_{ROLL}"] = log_ret.rolling(ROLL).skew()
    f["f_hl_range"] = (high - low) / close
    f["f_gap"] = df["open"] / close.shift(1) - 1.0
    del log_ret
    if use_volume:
        log_vol = np.log1p(volume)
        f[f"f_volume_z_{ROLL}"] = (log_vol - log_vol.rolling(ROLL).mean()) / log_vol.rolling(ROLL).std()
    yield from _hand_over(f, df)


def _indicator_group(name: str, df: pd.DataFrame, use_volume: bool) -> Iterator[tuple[str, np.ndarray]]:
    yield from _hand_over(_indicator(name, df, use_volume), df)


def _time_of_day(df: pd.DataFrame) -> Iterator[tuple[str, np.ndarray]]:
    f: dict[str, np.ndarray] = {}
    minutes = _minute_of_day(pd.DatetimeIndex(df.index))
    # Each of the 1,440 minutes of a day once, then looked up (a million bars hold a few thousand distinct
    # minutes): the same arithmetic on the same numbers as over the whole column, so the same bits.
    day = np.arange(1440)
    f["f_tod_sin"] = np.sin(2 * np.pi * day / 1440.0)[minutes]
    f["f_tod_cos"] = np.cos(2 * np.pi * day / 1440.0)[minutes]
    # Harmonics of the day (periods 12, 6 and 3 hours): a 6.5-hour session spans a quarter of the 24-hour
    # circle, where sin/cos are nearly monotone, so an effect that changes sign within the session would
    # need a sharp non-linear fit of two inputs; with harmonics it is close to linear in the features.
    for k in TOD_HARMONICS:
        f[f"f_tod_sin_{k}"] = np.sin(2 * np.pi * k * day / 1440.0)[minutes]
        f[f"f_tod_cos_{k}"] = np.cos(2 * np.pi * k * day / 1440.0)[minutes]
    yield from _hand_over(f, df)


def _minute_of_day(index: pd.DatetimeIndex) -> np.ndarray:
    """``index.hour * 60 + index.minute`` as int64 (UTC stamps: from the integers, without pandas' fields)."""
    if (index.tz is None or str(index.tz) == "UTC") and index.unit in UNITS_PER_SECOND:
        return (index.asi8 // (60 * UNITS_PER_SECOND[index.unit])) % 1440  # floor division: before 1970 too
    return (index.hour * 60 + index.minute).to_numpy(dtype=np.int64)


def _hand_over(f: dict[str, pd.Series] | dict[str, np.ndarray],
               df: pd.DataFrame) -> Iterator[tuple[str, np.ndarray]]:
    """Empty ``f`` into ``(name, float64 array)`` pairs, one at a time (the Series and its copy overlap one
    column long), aligned on ``df``'s index, infinities as NaN. An array in ``f`` is ``df``'s length and
    nobody else's: handed over as it is."""
    for name in list(f):
        series = f.pop(name)
        if isinstance(series, np.ndarray):
            values = series.astype("float64", copy=False)
            del series
            values[np.isinf(values)] = np.nan
            yield name, values
            continue
        if isinstance(series, pd.Series) and series.index is not df.index and not series.index.equals(df.index):
            series = series.reindex(df.index)
        values = np.array(series, dtype="float64")  # a copy: never a view of another column or of df
        del series
        values[np.isinf(values)] = np.nan
        yield name, values


def _indicator(name: str, df: pd.DataFrame, use_volume: bool) -> dict[str, pd.Series]:
    """The columns of one indicator (its intermediate series are freed when this returns). ATR, ADX, CCI and
    the stochastic oscillator come from :mod:`datafeed.indicators`, proven equal to ta's (its slow parts)."""
    high, low, close, volume = df["high"], df["low"], df["close"], df["volume"]
    f: dict[str, pd.Series] = {}
    if name == "rsi":
        f["f_rsi_14"] = RSIIndicator(close, 14).rsi() / 100.0
    elif name == "macd":
        macd = MACD(close, window_slow=26, window_fast=12, window_sign=9)
        f["f_macd"] = macd.macd() / close
        f["f_macd_signal"] = macd.macd_signal() / close
        f["f_macd_hist"] = macd.macd_diff() / close
    elif name == "bollinger":
        bands = BollingerBands(close, window=20, window_dev=2)
        f["f_bb_pctb"] = bands.bollinger_pband()
        f["f_bb_width"] = bands.bollinger_wband() / 100.0
    elif name == "atr":
        atr = average_true_range(high, low, close, window=14)
        f["f_atr_14"] = _mask_head(atr, 14 - 1) / close
    elif name == "obv" and use_volume:
        obv = OnBalanceVolumeIndicator(close, volume).on_balance_volume()
        f[f"f_obv_flow_{ROLL}"] = obv.diff(ROLL) / volume.rolling(ROLL).sum()
    elif name == "stochastic":
        stoch_k, stoch_d = stochastic(high, low, close, window=14, smooth_window=3)
        f["f_stoch_k"] = stoch_k / 100.0
        f["f_stoch_d"] = stoch_d / 100.0
    elif name == "adx":
        adx = ADX(high, low, close, window=14)
        f["f_adx_14"] = _mask_head(adx.adx(), 2 * 14 - 1) / 100.0
        f["f_di_diff_14"] = _mask_head(adx.adx_pos() - adx.adx_neg(), 2 * 14 - 1) / 100.0
    elif name == "cci":
        f["f_cci_20"] = commodity_channel_index(high, low, close, window=20) / 100.0
    elif name == "ma_ratios":
        sma10, sma50 = close.rolling(10).mean(), close.rolling(50).mean()
        f["f_close_sma_10"] = close / sma10 - 1.0
        f["f_close_sma_50"] = close / sma50 - 1.0
        f["f_close_ema_20"] = close / close.ewm(span=20, min_periods=20, adjust=False).mean() - 1.0
        f["f_sma_10_50"] = sma10 / sma50 - 1.0
    return f


def _mask_head(series: pd.Series, rows: int) -> pd.Series:
    out = series.astype("float64").copy()
    out.iloc[:rows] = np.nan
    return out


def fill_interior_gaps(features: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Drop the warm-up rows, then carry the last value into the few interior NaNs (a flat window makes
    %b, the stochastic or a z-score 0/0). Only past values are used.

    :return: features without NaN, the number of warm-up rows dropped, the number of cells filled.
    """
    columns = {name: features[name].to_numpy(dtype="float64", copy=True) for name in features.columns}
    first, holes = fill_gaps_in_place(columns)
    body = pd.DataFrame({name: values[first:] for name, values in columns.items()}, index=features.index[first:],
                        columns=features.columns, copy=False)
    return body, first, holes


def fill_gaps_in_place(columns: dict[str, np.ndarray]) -> tuple[int, int]:
    """:func:`fill_interior_gaps` on equally long arrays, changed in place (the rows before the first complete
    row are left as they are: the caller drops them).

    :return: the index of the first row without NaN (the length when there is none), the number of cells filled.
    """
    length = len(next(iter(columns.values()))) if columns else 0
    complete = np.ones(length, dtype=bool)
    for values in columns.values():
        complete &= ~np.isnan(values)
    if not complete.any():
        return length, 0
    first = int(np.argmax(complete))
    return first, sum(fill_forward(values[first:]) for values in columns.values())


def fill_forward(values: np.ndarray) -> int:
    """Carry the last value into each NaN of ``values`` (in place; the first value must not be NaN).

    :return: the number of cells filled.
    """
    missing = np.isnan(values)
    count = int(missing.sum())
    if count:  # each NaN takes the value of the last row before it that has one
        source = np.where(missing, 0, np.arange(len(values)))
        np.maximum.accumulate(source, out=source)
        values[:] = values[source]
    return count
