"""The vectorised ATR, ADX, CCI and stochastic oscillator (datafeed.indicators) against ``ta``, the reference,
to 1e-9 (the stochastic oscillator: bit for bit).

On the bundled real bars (GOOGL daily, EURUSD hourly), on every synthetic generator at daily and minute
spacing, and on the edge cases of ta's loops: flat stretches (zero ranges: the 0/0 branches), a history just
long enough for the fast path, and input the fast path must hand to ta (NaN, short histories).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ta.momentum import StochasticOscillator
from ta.trend import ADXIndicator, CCIIndicator
from ta.volatility import AverageTrueRange

import datafeed
from datafeed import indicators
from datafeed.sources import load_sample

TOLERANCE = 1e-9


def _same(ours: pd.Series, reference: pd.Series) -> None:
    pd.testing.assert_index_equal(ours.index, reference.index)
    assert ours.dtype == np.float64 and len(ours) == len(reference)
    a, b = ours.to_numpy(), reference.to_numpy(dtype="float64")
    assert (np.isnan(a) == np.isnan(b)).all(), "NaN in different places"
    assert (np.isinf(a) == np.isinf(b)).all() and (a[np.isinf(a)] == b[np.isinf(b)]).all(), "inf differs"
    finite = np.isfinite(a)
    worst = float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))
    assert worst <= TOLERANCE, f"largest difference from ta: {worst:.3g}"


def _check_all(bars: pd.DataFrame, window_atr: int = 14, window_adx: int = 14, window_cci: int = 20) -> None:
    high, low, close = bars["high"], bars["low"], bars["close"]
    _same(indicators.average_true_range(high, low, close, window_atr),
          AverageTrueRange(high, low, close, window=window_atr).average_true_range())
    ours, ref = indicators.ADX(high, low, close, window_adx), ADXIndicator(high, low, close, window=window_adx)
    _same(ours.adx(), ref.adx())
    _same(ours.adx_pos(), ref.adx_pos())
    _same(ours.adx_neg(), ref.adx_neg())
    _same(indicators.commodity_channel_index(high, low, close, window_cci),
          CCIIndicator(high, low, close, window=window_cci).cci())
    reference = StochasticOscillator(high, low, close, window=window_adx, smooth_window=3)
    for ours, theirs in zip(indicators.stochastic(high, low, close, window_adx, 3),
                            (reference.stoch(), reference.stoch_signal())):
        _same(ours, theirs)
        assert np.array_equal(ours.to_numpy(), theirs.to_numpy(), equal_nan=True)  # exact: min and max are


@pytest.mark.parametrize("symbol", ["GOOGL", "EURUSD"])
def test_equal_to_ta_on_the_bundled_real_bars(symbol):
    bars, _ = load_sample(symbol)
    assert len(bars) > 2000 and indicators._fast_ok(bars["high"], bars["low"], bars["close"], window=20)
    _check_all(bars)


@pytest.mark.parametrize("kind", ["gbm", "regime", "jump"])
@pytest.mark.parametrize("interval", ["1d", "1m"])
def test_equal_to_ta_on_synthetic_bars(kind, interval):
    _check_all(datafeed.generate_synthetic(3000, seed=hash((kind, interval)) % 1000, kind=kind, interval=interval))


def test_equal_to_ta_with_other_windows_and_tiny_prices():
    bars = datafeed.generate_synthetic(1500, seed=9, kind="jump", interval="5m")
    bars[["open", "high", "low", "close"]] *= 1e-4  # a penny stock or an FX pip scale
    _check_all(bars, window_atr=5, window_adx=7, window_cci=9)


def test_equal_to_ta_through_flat_stretches():
    """Zero true ranges and zero deviations take ta's 0 and 0/0 branches (+-inf and NaN in CCI)."""
    bars = datafeed.generate_synthetic(1200, seed=4, interval="1h")
    flat = bars.index[300:420]
    bars.loc[flat, ["open", "high", "low", "close"]] = 101.25
    _check_all(bars)
    cci = indicators.commodity_channel_index(bars["high"], bars["low"], bars["close"])
    assert cci.loc[flat[30:]].isna().all()  # 0/0 where the whole window is flat, as ta gives
    stoch_k, stoch_d = indicators.stochastic(bars["high"], bars["low"], bars["close"])
    assert stoch_k.loc[flat[20:]].isna().all() and stoch_d.loc[flat[20:]].isna().all()  # 0/0 again


@pytest.mark.parametrize("n", [indicators.MIN_ROWS - 1, indicators.MIN_ROWS, indicators.MIN_ROWS + 1, 57, 30])
def test_equal_to_ta_at_and_below_the_fast_path_threshold(n):
    _check_all(datafeed.generate_synthetic(n, seed=n, kind="regime"))


def test_input_with_nan_is_left_to_ta():
    bars = datafeed.generate_synthetic(800, seed=2)
    bars.iloc[400, bars.columns.get_loc("high")] = np.nan
    assert not indicators._fast_ok(bars["high"], bars["low"], bars["close"], window=14)
    _check_all(bars)


def test_the_fast_path_is_really_taken(monkeypatch):
    """The comparison above would pass trivially if everything fell back to ta: forbid ta here."""
    bars = datafeed.generate_synthetic(5000, seed=1, interval="1m")

    def forbidden(*args, **kwargs):
        raise AssertionError("ta was called on input the fast path should take")

    for name in ("AverageTrueRange", "ADXIndicator", "CCIIndicator", "StochasticOscillator"):
        monkeypatch.setattr(indicators, name, forbidden)
    high, low, close = bars["high"], bars["low"], bars["close"]
    adx = indicators.ADX(high, low, close)
    for series in (indicators.average_true_range(high, low, close), adx.adx(), adx.adx_pos(), adx.adx_neg(),
                   indicators.commodity_channel_index(high, low, close), *indicators.stochastic(high, low, close)):
        assert series.iloc[100:].notna().all() and series.iloc[100:].abs().gt(0).any()


@pytest.mark.parametrize("window", [2, 3, 7, 8, 9, 16, 20, 33, 129, 130, 257])
def test_cci_deviation_is_numpys_sum_of_each_window_to_the_bit(monkeypatch, window):
    """CCI's mean absolute deviation, computed term by term for a block of windows at a time, is what numpy
    gives one window at a time (ta's loop: np.mean(np.abs(w - np.mean(w)))) to the last bit, across numpy's
    ways of summing (one by one, eight running sums, halves) and block edges; flat windows give exact 0."""
    monkeypatch.setattr(indicators, "_BLOCK", 1000)
    rng = np.random.default_rng(window)
    values = np.cumsum(rng.standard_normal(3000)) + 1000.0
    values[400:700] = 101.25
    values[1500:1800] = values[1500] / 3.0 * 3.0
    ours = indicators._mean_absolute_deviation(values, window)
    expected = np.full(len(values), np.nan)
    for end in range(window - 1, len(values)):
        w = values[end - window + 1:end + 1]
        expected[end] = np.mean(np.abs(w - np.mean(w)))
    assert np.array_equal(ours.view(np.int64), expected.view(np.int64))
    assert (ours[400 + window:700] == 0).all()
