"""training_params.lookback_days: training uses the most recent part of the train split only."""
from __future__ import annotations

import numpy as np

from evaluation.markets import random_walk_data
from training.job import recent_bars


def test_keeps_the_last_lookback_days():
    data = random_walk_data(400, seed=0, n_features=2)  # one bar per calendar day
    recent = recent_bars(data, lookback_days=100, min_bars=10)
    assert recent.n_bars == 101  # the last day and the 100 before it
    assert recent.timestamps[-1] == data.timestamps[-1]
    assert recent.timestamps[0] == data.timestamps[-1] - np.timedelta64(100, "D")
    np.testing.assert_array_equal(recent.close, data.close[-101:])
    np.testing.assert_array_equal(recent.features, data.features[-101:])


def test_zero_keeps_everything_and_min_bars_is_respected():
    data = random_walk_data(400, seed=0, n_features=2)
    assert recent_bars(data, 0, 10) is data
    assert recent_bars(data, 5, 50).n_bars == 50
    assert recent_bars(data, 10_000, 10).n_bars == 400
