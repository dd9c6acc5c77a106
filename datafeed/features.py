"""Features: technical indicators (from ``ta``), returns and volume statistics, time of day.

Every feature at bar t uses bars up to and including t only (rolling windows, recursive averages that start
at the first bar). Price-valued indicators (MACD, ATR) are divided by the close and moving averages become
ratios, so a feature means the same at a price of 20 and of 2,000. Warm-up rows, where a window is not yet
full, are NaN here and dropped by the splitter (ta fills ATR's and ADX's warm-up with 0.0: masked below).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from ta.momentum import RSIIndicator, StochasticOscillator
from ta.trend import MACD, ADXIndicator, CCIIndicator
from ta.volatility import AverageTrueRange, BollingerBands
from ta.volume import OnBalanceVolumeIndicator

from botcore.markets import is_intraday

logger = logging.getLogger(__name__)

INDICATORS = ("rsi", "macd", "bollinger", "atr", "obv", "stochastic", "adx", "cci", "ma_ratios")
RETURN_LAGS = 5
ROLL = 20  # window of the rolling return statistics, volume z-score and OBV flow
# Longest look-back of each indicator in bars (MACD: slow EMA plus signal EMA; ADX: two Wilder smoothings).
WINDOWS = {"rsi": 14, "macd": 26 + 9, "bollinger": 20, "atr": 14, "obv": ROLL + 1, "stochastic": 14 + 3,
           "adx": 2 * 14, "cci": 20, "ma_ratios": 50}
BASE_WINDOW = ROLL + 1


def feature_window(indicators: list[str] | tuple[str, ...]) -> int:
    """The longest feature look-back in bars: the default embargo between splits."""
    return max([BASE_WINDOW] + [WINDOWS[name] for name in indicators])


def compute_features(df: pd.DataFrame, interval: str, indicators: list[str] | tuple[str, ...] = INDICATORS,
                     use_volume: bool = True) -> pd.DataFrame:
    """Feature columns named ``f_*`` for a clean OHLCV frame (same index; NaN in warm-up rows).

    :param df: clean OHLCV (see :func:`datafeed.clean.clean_ohlcv`).
    :param interval: bar interval; intraday data gets the time of day as ``f_tod_sin`` / ``f_tod_cos``.
    :param indicators: which of :data:`INDICATORS` to compute.
    :param use_volume: False drops the volume features (OBV, volume z-score) for data without volume.
    """
    unknown = sorted(set(indicators) - set(INDICATORS))
    if unknown:
        raise ValueError(f"unknown indicator(s) {unknown}; known: {', '.join(INDICATORS)}")
    high, low, close, volume = df["high"], df["low"], df["close"], df["volume"]
    f: dict[str, pd.Series] = {}
    log_ret = np.log(close).diff()
    for lag in range(RETURN_LAGS):
        f[f"f_ret_{lag + 1}"] = log_ret.shift(lag)
    f[f"f_ret_mean_{ROLL}"] = log_ret.rolling(ROLL).mean()
    f[f"f_ret_std_{ROLL}"] = log_ret.rolling(ROLL).std()
    f[f"f_ret_skew_{ROLL}"] = log_ret.rolling(ROLL).skew()
    f["f_hl_range"] = (high - low) / close
    f["f_gap"] = df["open"] / close.shift(1) - 1.0
    if use_volume:
        log_vol = np.log1p(volume)
        f[f"f_volume_z_{ROLL}"] = (log_vol - log_vol.rolling(ROLL).mean()) / log_vol.rolling(ROLL).std()

    if "rsi" in indicators:
        f["f_rsi_14"] = RSIIndicator(close, 14).rsi() / 100.0
    if "macd" in indicators:
        macd = MACD(close, window_slow=26, window_fast=12, window_sign=9)
        f["f_macd"] = macd.macd() / close
        f["f_macd_signal"] = macd.macd_signal() / close
        f["f_macd_hist"] = macd.macd_diff() / close
    if "bollinger" in indicators:
        bands = BollingerBands(close, window=20, window_dev=2)
        f["f_bb_pctb"] = bands.bollinger_pband()
        f["f_bb_width"] = bands.bollinger_wband() / 100.0
    if "atr" in indicators:
        atr = AverageTrueRange(high, low, close, window=14).average_true_range()
        f["f_atr_14"] = _mask_head(atr, 14 - 1) / close
    if "obv" in indicators and use_volume:
        obv = OnBalanceVolumeIndicator(close, volume).on_balance_volume()
        f[f"f_obv_flow_{ROLL}"] = obv.diff(ROLL) / volume.rolling(ROLL).sum()
    if "stochastic" in indicators:
        stoch = StochasticOscillator(high, low, close, window=14, smooth_window=3)
        f["f_stoch_k"] = stoch.stoch() / 100.0
        f["f_stoch_d"] = stoch.stoch_signal() / 100.0
    if "adx" in indicators:
        adx = ADXIndicator(high, low, close, window=14)
        f["f_adx_14"] = _mask_head(adx.adx(), 2 * 14 - 1) / 100.0
        f["f_di_diff_14"] = _mask_head(adx.adx_pos() - adx.adx_neg(), 2 * 14 - 1) / 100.0
    if "cci" in indicators:
        f["f_cci_20"] = CCIIndicator(high, low, close, window=20).cci() / 100.0
    if "ma_ratios" in indicators:
        sma10, sma50 = close.rolling(10).mean(), close.rolling(50).mean()
        f["f_close_sma_10"] = close / sma10 - 1.0
        f["f_close_sma_50"] = close / sma50 - 1.0
        f["f_close_ema_20"] = close / close.ewm(span=20, min_periods=20, adjust=False).mean() - 1.0
        f["f_sma_10_50"] = sma10 / sma50 - 1.0
    if is_intraday(interval):
        minutes = (df.index.hour * 60 + df.index.minute).to_numpy()
        f["f_tod_sin"] = pd.Series(np.sin(2 * np.pi * minutes / 1440.0), index=df.index)
        f["f_tod_cos"] = pd.Series(np.cos(2 * np.pi * minutes / 1440.0), index=df.index)

    features = pd.DataFrame({name: pd.Series(s, index=df.index).astype("float64") for name, s in f.items()})
    return features.replace([np.inf, -np.inf], np.nan)


def _mask_head(series: pd.Series, rows: int) -> pd.Series:
    out = series.astype("float64").copy()
    out.iloc[:rows] = np.nan
    return out


def fill_interior_gaps(features: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Drop the warm-up rows, then carry the last value into the few interior NaNs (a flat window makes
    %b, the stochastic or a z-score 0/0). Only past values are used.

    :return: features without NaN, the number of warm-up rows dropped, the number of cells filled.
    """
    complete = features.notna().all(axis=1).to_numpy()
    if not complete.any():
        return features.iloc[0:0], len(features), 0
    first = int(np.argmax(complete))
    body = features.iloc[first:]
    holes = int(body.isna().to_numpy().sum())
    return body.ffill(), first, holes
