"""Vectorised stand-ins for the ``ta`` indicators that dominate the feature time of long histories.

``ta`` (0.11.0) computes ATR, ADX (with +DI / -DI) and CCI with a Python loop per bar: on a million minute bars
they take most of the feature time. Its stochastic oscillator takes pandas' rolling minimum and maximum, the
slowest of pandas' rolling windows; here they are the elementwise minimum (maximum) of the window's shifted
columns, exact, so the oscillator is ta's to the last bit. The functions here compute the same numbers with
numpy and pandas' compiled recursions, reproducing ta's formulas and its quirks (ATR's and ADX's 0.0 warm-up,
ADX's last smoothed value left at 0, +DI/-DI one bar later than the DX that feeds ADX). ``ta`` stays the
reference:
tests/test_indicators.py checks every output against ta to 1e-9 on the bundled real data and on synthetic data.

Wilder's smoothing ``y[i] = y[i-1] * (n-1)/n + x[i] / n`` is pandas' ``ewm(alpha=1/n, adjust=False)`` started at
the seed value; the rolling mean absolute deviation of CCI is computed for a block of windows at a time, term by
term in numpy's order of summation. The results
differ from ta's loops only in the last bits (a few 1e-16 relative).

They take the fast path only where it is proven equal: finite inputs and at least :data:`MIN_ROWS` bars. Any
other input (NaN, infinities, a short history, where ta's loops have their own edge cases) is passed to ta itself,
so the output is ta's by construction.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from ta.momentum import StochasticOscillator
from ta.trend import ADXIndicator, CCIIndicator
from ta.volatility import AverageTrueRange

MIN_ROWS = 256
"""Shorter histories go to ta (its loops are fast there, and its edge cases on short input stay its own)."""
_BLOCK = 1 << 14  # windows per block of CCI's deviation (its temporary arrays: 128 KB each)


def _fast_ok(*columns: pd.Series, window: int) -> bool:
    n = len(columns[0])
    return n >= max(MIN_ROWS, 4 * window) and all(bool(np.isfinite(c.to_numpy(dtype="float64")).all())
                                                  for c in columns)


def _wilder(seed: float, values: np.ndarray, window: int) -> np.ndarray:
    """``out[0] = seed``, ``out[i] = (out[i-1] * (window - 1) + values[i-1]) / window``: ta's Wilder averages."""
    series = np.empty(len(values) + 1)
    series[0] = seed
    series[1:] = values
    return pd.Series(series).ewm(alpha=1.0 / window, adjust=False).mean().to_numpy()


def _previous(values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[0] = np.nan
    out[1:] = values[:-1]
    return out


def average_true_range(high: pd.Series, low: pd.Series, close: pd.Series, window: int = 14) -> pd.Series:
    """``ta.volatility.AverageTrueRange(high, low, close, window).average_true_range()``."""
    if not _fast_ok(high, low, close, window=window):
        return AverageTrueRange(high, low, close, window=window).average_true_range()
    h, low_, prev = high.to_numpy(dtype="float64"), low.to_numpy(dtype="float64"), _previous(close.to_numpy("float64"))
    with np.errstate(invalid="ignore"):  # the first bar has no previous close: its range is high - low
        true_range = np.fmax(np.fmax(h - low_, np.abs(h - prev)), np.abs(low_ - prev))
    atr = np.zeros(len(h))
    atr[window - 1:] = _wilder(pd.Series(true_range[:window]).mean(), true_range[window:], window)
    return pd.Series(atr, index=close.index, name="atr")


class ADX:
    """``ta.trend.ADXIndicator(high, low, close, window)``: :meth:`adx`, :meth:`adx_pos`, :meth:`adx_neg`."""

    def __init__(self, high: pd.Series, low: pd.Series, close: pd.Series, window: int = 14):
        self._index = close.index
        self._reference = None if _fast_ok(high, low, close, window=window) else ADXIndicator(high, low, close, window)
        if self._reference is not None:
            return
        w = window
        h, low_, c = high.to_numpy(dtype="float64"), low.to_numpy(dtype="float64"), close.to_numpy(dtype="float64")
        self.window, self.n = w, len(c)
        prev_close = _previous(c)
        true_range = np.maximum(h, prev_close) - np.minimum(low_, prev_close)  # NaN on the first bar, as in ta
        del prev_close
        self.trs = self._smoothed(true_range)
        del true_range
        with np.errstate(invalid="ignore"):  # (one series at a time: a million bars are 8 MB each)
            up, down = h - _previous(h), _previous(low_) - low_
            self.dip = self._smoothed(np.where((up > down) & (up > 0), up, 0.0))
            self.din = self._smoothed(np.where((down > up) & (down > 0), down, 0.0))
        del up, down

    def _smoothed(self, values: np.ndarray) -> np.ndarray:
        """ta's running sums: ``s[0]`` = the first ``window`` values after the first bar, then
        ``s[i] = s[i-1] - s[i-1] / window + values[window + i]`` up to the second-to-last entry (the last stays 0)."""
        w, length = self.window, self.n - (self.window - 1)
        out = np.zeros(length)
        seed = pd.Series(values[1:w + 1]).sum()
        out[:length - 1] = _wilder(seed / w, values[w + 1:w + length - 1], w) * w
        out[0] = seed  # exactly ta's first sum (the scaling above may move its last bit)
        return out

    def adx(self) -> pd.Series:
        if self._reference is not None:
            return self._reference.adx()
        w, trs = self.window, self.trs
        with np.errstate(divide="ignore", invalid="ignore"):
            dip = np.where(trs != 0, 100 * (self.dip / trs), 0.0)
            din = np.where(trs != 0, 100 * (self.din / trs), 0.0)
            total = dip + din
            dx = np.where(total != 0, 100 * np.abs((dip - din) / total), 0.0)
        smoothed = np.zeros(len(trs))
        smoothed[w:] = _wilder(dx[0:w].mean(), dx[w:len(trs) - 1], w)
        return pd.Series(np.concatenate((np.zeros(w - 1), smoothed)), index=self._index, name="adx")

    def _directional(self, sums: np.ndarray) -> np.ndarray:
        w, trs = self.window, self.trs
        out = np.zeros(self.n)
        inner = slice(1, len(trs) - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[1 + w:len(trs) - 1 + w] = np.where(trs[inner] != 0, 100 * (sums[inner] / trs[inner]), 0.0)
        return out

    def adx_pos(self) -> pd.Series:
        if self._reference is not None:
            return self._reference.adx_pos()
        return pd.Series(self._directional(self.dip), index=self._index, name="adx_pos")

    def adx_neg(self) -> pd.Series:
        if self._reference is not None:
            return self._reference.adx_neg()
        return pd.Series(self._directional(self.din), index=self._index, name="adx_neg")


def commodity_channel_index(high: pd.Series, low: pd.Series, close: pd.Series, window: int = 20,
                            constant: float = 0.015) -> pd.Series:
    """``ta.trend.CCIIndicator(high, low, close, window, constant).cci()``."""
    if not _fast_ok(high, low, close, window=window):
        return CCIIndicator(high, low, close, window=window, constant=constant).cci()
    typical = (high + low + close) / 3.0
    deviation = _mean_absolute_deviation(typical.to_numpy(dtype="float64"), window)
    cci = (typical - typical.rolling(window, min_periods=window).mean()) / (constant * pd.Series(deviation,
                                                                                                   index=typical.index))
    return pd.Series(cci, name="cci")


def _mean_absolute_deviation(values: np.ndarray, window: int) -> np.ndarray:
    """``np.mean(np.abs(w - np.mean(w)))`` of each full window ``w`` of ``values`` (NaN before the first), the
    bits ta's loop gets: every window is summed in the order numpy sums one window (:func:`_numpy_sum`),
    all windows of a block at once, term by term."""
    out = np.full(len(values), np.nan)
    windows = len(values) - window + 1
    for start in range(0, max(0, windows), _BLOCK):
        size = min(_BLOCK, windows - start)

        def term(k: int, start: int = start, size: int = size) -> np.ndarray:
            return values[start + k:start + k + size]  # the k-th value of each window in the block

        mean = _numpy_sum(term, 0, window) / window

        def deviation(k: int, term: Any = term, mean: np.ndarray = mean) -> np.ndarray:
            return np.abs(term(k) - mean)

        out[start + window - 1:start + window - 1 + size] = _numpy_sum(deviation, 0, window) / window
    return out


def _numpy_sum(term: Any, lo: int, hi: int) -> np.ndarray:
    """``term(lo) + ... + term(hi - 1)`` elementwise, added in the order of numpy's ``add.reduce`` over ``hi - lo``
    contiguous float64 values (its pairwise sum: one by one below 8 terms, eight running sums up to 128, halves
    above), so each element is what ``np.sum`` of that element's terms gives, to the bit (tested)."""
    count = hi - lo
    if count < 8:
        total = term(lo).copy()
        for k in range(lo + 1, hi):
            total += term(k)
        return total
    if count > 128:
        half = count // 2
        half -= half % 8
        return _numpy_sum(term, lo, lo + half) + _numpy_sum(term, lo + half, hi)
    sums = [term(lo + j).copy() for j in range(8)]
    k = 8
    while k < count - count % 8:
        for j in range(8):
            sums[j] += term(lo + k + j)
        k += 8
    total = (sums[0] + sums[1]) + (sums[2] + sums[3])
    total += (sums[4] + sums[5]) + (sums[6] + sums[7])
    for j in range(lo + k, hi):
        total += term(j)
    return total


def stochastic(high: pd.Series, low: pd.Series, close: pd.Series, window: int = 14,
               smooth_window: int = 3) -> tuple[pd.Series, pd.Series]:
    """``(ta.momentum.StochasticOscillator(high, low, close, window, smooth_window).stoch(), .stoch_signal())``."""
    if not _fast_ok(high, low, close, window=window):
        reference = StochasticOscillator(high, low, close, window=window, smooth_window=smooth_window)
        return reference.stoch(), reference.stoch_signal()
    lowest = _rolling_extreme(low.to_numpy(dtype="float64"), window, np.minimum)
    highest = _rolling_extreme(high.to_numpy(dtype="float64"), window, np.maximum)
    with np.errstate(divide="ignore", invalid="ignore"):  # a flat window: 0/0 (NaN) or x/0 (inf), as in ta
        k = 100 * (close.to_numpy(dtype="float64") - lowest) / (highest - lowest)
    stoch_k = pd.Series(k, index=close.index, name="stoch_k")
    stoch_d = stoch_k.rolling(smooth_window, min_periods=smooth_window).mean()
    return stoch_k, pd.Series(stoch_d, name="stoch_k_signal")


def _rolling_extreme(values: np.ndarray, window: int, extreme: np.ufunc) -> np.ndarray:
    """The minimum (``np.minimum``) or maximum of each full window of finite ``values`` (NaN before the first),
    as pandas' ``rolling(window, min_periods=window)`` gives: the extreme of ``window`` shifted views."""
    out = np.full(len(values), np.nan)
    if len(values) < window:
        return out
    body = values[window - 1:].copy()
    for lag in range(1, window):
        extreme(body, values[window - 1 - lag:len(values) - lag], out=body)
    out[window - 1:] = body
    return out
