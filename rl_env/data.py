"""Market data for the environments: one prepared split converted once to numpy arrays.

The environments never touch pandas while stepping: :class:`MarketData` holds the bars as float64 arrays
and the normalised features as one float32 matrix, and everything derived from them (bar returns, session
boundaries) is computed here once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from botcore.errors import DataError

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
FEATURE_PREFIX = "f_"


@dataclass
class MarketData:
    """Bars and features of one symbol and interval, ready for an environment.

    :param symbol: ticker, e.g. ``"GOOGL"`` (informational).
    :param interval: bar interval, e.g. ``"1d"`` or ``"1h"``; intraday intervals have sessions (dates).
    :param timestamps: ``datetime64[ns]`` array, strictly increasing.
    :param open, high, low, close, volume: float64 arrays of real prices and volumes.
    :param features: float32 matrix ``(n_bars, n_features)`` of normalised features (no NaN).
    :param feature_names: one name per feature column.
    """

    symbol: str
    interval: str
    timestamps: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    features: np.ndarray
    feature_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.timestamps = np.asarray(self.timestamps).astype("datetime64[ns]")
        for name in PRICE_COLUMNS:
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float64))
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        if self.features.ndim == 1:
            self.features = self.features[:, None]
        n = len(self.close)
        if not self.feature_names:
            self.feature_names = [f"f_{i}" for i in range(self.features.shape[1])]
        self.feature_names = list(self.feature_names)
        where = f"{self.symbol or 'market data'} {self.interval}".strip()
        if n < 2:
            raise DataError(f"{where}: needs at least 2 bars, got {n}")
        for name in (*PRICE_COLUMNS, "timestamps"):
            if len(getattr(self, name)) != n:
                raise DataError(f"{where}: column {name} has {len(getattr(self, name))} rows, close has {n}")
        if self.features.shape[0] != n:
            raise DataError(f"{where}: features have {self.features.shape[0]} rows, prices have {n}")
        if len(self.feature_names) != self.features.shape[1]:
            raise DataError(f"{where}: {len(self.feature_names)} feature names for {self.features.shape[1]} columns")
        prices = np.stack([self.open, self.high, self.low, self.close])
        if not np.isfinite(prices).all() or not np.isfinite(self.features).all():
            raise DataError(f"{where}: prices or features contain NaN or infinite values; "
                            "re-run data_pipeline.py or strip those rows with df.dropna()")
        if (prices <= 0).any():
            raise DataError(f"{where}: prices must be positive")
        if (self.high < np.maximum(self.open, self.close) - 1e-9 * self.high).any() or \
                (self.low > np.minimum(self.open, self.close) + 1e-9 * self.low).any():
            raise DataError(f"{where}: some bars have high below open/close or low above open/close")
        if n > 1 and not (np.diff(self.timestamps.astype(np.int64)) > 0).all():
            raise DataError(f"{where}: timestamps must be strictly increasing")

    # --- derived arrays ----------------------------------------------------------------------------

    @property
    def n_bars(self) -> int:
        return len(self.close)

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    @property
    def intraday(self) -> bool:
        return self.interval != "1d"

    def session_last(self) -> np.ndarray:
        """Boolean per bar: True where the next bar belongs to another date (and at the last bar)."""
        days = self.timestamps.astype("datetime64[D]")
        last = np.ones(self.n_bars, dtype=bool)
        last[:-1] = days[1:] != days[:-1]
        return last

    def session_spans(self, first: int) -> np.ndarray:
        """``(k, 2)`` int array of ``[first decision bar, last bar]`` of every session (date) that has at least
        one step to trade, the first decision bar being the session's first bar but never before ``first``
        (the first bar with a full observation window)."""
        last = self.session_last()
        starts = np.flatnonzero(np.r_[True, last[:-1]])
        ends = np.flatnonzero(last)
        starts = np.maximum(starts, first)
        keep = ends > starts
        return np.stack([starts[keep], ends[keep]], axis=1).astype(np.int64)

    def past_volatility(self, window: int) -> np.ndarray:
        """Per bar t: population std of the simple close-to-close returns of bars max(1, t-window+1)..t.

        Uses only closes up to and including t (what the agent has seen); 0.0 at t = 0.
        """
        ret = np.zeros(self.n_bars)
        ret[1:] = self.close[1:] / self.close[:-1] - 1.0
        s1 = np.cumsum(ret)
        s2 = np.cumsum(ret * ret)
        t = np.arange(self.n_bars)
        lo = np.maximum(t - window, 0)  # cumsum index just before the window (return 0 at t=0 is a pad)
        count = np.maximum(t - lo, 1)
        mean = (s1 - s1[lo]) / count
        var = (s2 - s2[lo]) / count - mean * mean
        vol = np.sqrt(np.maximum(var, 0.0))
        vol[0] = 0.0
        return vol

    def slice(self, start: int, stop: int) -> MarketData:
        """Bars ``start:stop`` as a new MarketData (copies)."""
        return MarketData(self.symbol, self.interval, self.timestamps[start:stop].copy(),
                          *(getattr(self, c)[start:stop].copy() for c in PRICE_COLUMNS),
                          features=self.features[start:stop].copy(), feature_names=list(self.feature_names))

    # --- constructors ------------------------------------------------------------------------------

    @classmethod
    def from_arrays(cls, open: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                    volume: np.ndarray | None = None, features: np.ndarray | None = None,
                    feature_names: list[str] | None = None, timestamps: np.ndarray | None = None,
                    symbol: str = "", interval: str = "1d") -> MarketData:
        """Build from arrays. Missing pieces get honest defaults: volume 0; features = the bar's log return
        (``f_log_return``, known at its close); timestamps = consecutive days from 2000-01-03 (or
        consecutive bars of ``interval`` when intraday).

        :param timestamps: anything ``np.asarray(...).astype("datetime64[ns]")`` accepts.
        """
        close = np.asarray(close, dtype=np.float64)
        n = len(close)
        if volume is None:
            volume = np.zeros(n)
        if features is None:
            lr = np.zeros(n, dtype=np.float32)
            lr[1:] = np.log(close[1:] / close[:-1])
            features, feature_names = lr[:, None], ["f_log_return"]
        if timestamps is None:
            minutes = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60}.get(interval, 1440)
            timestamps = np.datetime64("2000-01-03T00:00", "m") + np.arange(n) * np.timedelta64(minutes, "m")
        return cls(symbol, interval, timestamps, open, high, low, close, volume, features, feature_names or [])

    @classmethod
    def from_frame(cls, df: pd.DataFrame, symbol: str = "", interval: str = "1d") -> MarketData:
        """Build from a frame laid out like the split files: a DatetimeIndex (or a ``timestamp`` column),
        ``open, high, low, close, volume`` and feature columns named ``f_*``."""
        frame = df
        if "timestamp" in frame.columns:
            frame = frame.set_index("timestamp")
        missing = [c for c in PRICE_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{symbol or 'data'}: missing column(s) {', '.join(missing)}; a split file has "
                            "timestamp, open, high, low, close, volume and f_* feature columns")
        names = [c for c in frame.columns if str(c).startswith(FEATURE_PREFIX)]
        if not names:
            raise DataError(f"{symbol or 'data'}: no feature columns (named f_*); prepare the data with "
                            "data_pipeline.py")
        try:
            stamps = pd.to_datetime(frame.index)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{symbol or 'data'}: unreadable timestamps ({exc})") from exc
        if stamps.tz is not None:
            stamps = stamps.tz_convert("UTC").tz_localize(None)
        return cls(symbol, interval, stamps.to_numpy(dtype="datetime64[ns]"),
                   *(frame[c].to_numpy(dtype=np.float64) for c in PRICE_COLUMNS),
                   features=frame[names].to_numpy(dtype=np.float32), feature_names=names)
