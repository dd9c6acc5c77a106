"""Small seeded random-walk markets for tests and benchmarks (no files, no network)."""
from __future__ import annotations

import numpy as np

from rl_env.data import MarketData


def random_walk_data(n_bars: int = 500, seed: int = 0, n_features: int = 3, interval: str = "1d",
                     vol: float = 0.01, gap_vol: float = 0.003, symbol: str = "SYN") -> MarketData:
    """A geometric random walk with overnight gaps and intrabar ranges, plus ``n_features`` standard-normal
    feature columns (noise: an agent can learn nothing real from them).

    Intraday intervals get hourly-like bars, 7 per date, so that session ends are exercised.
    """
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n_bars)))
    prev = np.r_[close[0], close[:-1]]
    open_ = prev * np.exp(rng.normal(0.0, gap_vol, n_bars))
    high = np.maximum(open_, close) * (1.0 + rng.uniform(0.0, vol / 2, n_bars))
    low = np.minimum(open_, close) * (1.0 - rng.uniform(0.0, vol / 2, n_bars))
    volume = rng.uniform(1e5, 1e6, n_bars)
    features = rng.normal(size=(n_bars, n_features)).astype(np.float32)
    if interval == "1d":
        stamps = np.datetime64("2015-01-01", "D") + np.arange(n_bars)
    else:
        day, bar = np.divmod(np.arange(n_bars), 7)
        stamps = (np.datetime64("2015-01-01T09:30", "m") + day * np.timedelta64(1, "D")
                  + bar * np.timedelta64(60, "m"))
    return MarketData.from_arrays(open_, high, low, close, volume, features,
                                  [f"f_noise_{i}" for i in range(n_features)], stamps, symbol, interval)
