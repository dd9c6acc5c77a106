"""evaluation.significance: the paired Sharpe-difference test and PBO (CSCV) on crafted return series."""
from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.significance import probability_of_backtest_overfitting, sharpe_difference_test


def test_a_real_edge_is_significant_and_noise_is_not():
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 0.01, 1000)
    better = base + 0.002  # the same bars plus a steady edge: Sharpe about 3 higher (annualised, 252)
    test = sharpe_difference_test(better, base, 252, n_samples=1000, seed=1)
    assert test["difference"] > 2.5 and test["p_value"] < 0.01 and test["ci_low"] > 0
    twin = base + rng.normal(0.0, 0.002, 1000)  # the same strategy with noise: no real difference
    null = sharpe_difference_test(twin, base, 252, n_samples=1000, seed=1)
    assert 0.05 < null["p_value"] < 0.95 and null["ci_low"] < 0 < null["ci_high"]
    worse = sharpe_difference_test(base, better, 252, n_samples=1000, seed=1)
    assert worse["p_value"] > 0.99 and worse["difference"] == pytest.approx(-test["difference"])


def test_sharpe_difference_edge_cases():
    assert math.isnan(sharpe_difference_test([0.01] * 5, [0.0] * 5, 252)["p_value"])  # too short
    flat = np.zeros(200)
    rng = np.random.default_rng(2)
    earner = rng.normal(0.001, 0.01, 200)
    vs_flat = sharpe_difference_test(earner, flat, 252, n_samples=500)
    assert vs_flat["difference"] > 0  # a flat strategy counts as Sharpe 0
    with pytest.raises(ValueError):
        sharpe_difference_test([0.0] * 20, [0.0] * 21, 252)
    assert sharpe_difference_test(earner, flat, 252, n_samples=300, seed=5) == \
        sharpe_difference_test(earner, flat, 252, n_samples=300, seed=5)  # seeded


def test_pbo_is_near_one_half_on_noise_and_low_with_a_real_edge():
    rng = np.random.default_rng(7)
    noise = rng.normal(0.0, 0.01, (1600, 20))
    pbo_noise = probability_of_backtest_overfitting(noise, n_blocks=10)
    assert 0.3 < pbo_noise["pbo"] < 0.7 and pbo_noise["n_splits"] == math.comb(10, 5)
    edged = noise.copy()
    edged[:, 3] += 0.004  # one configuration really is better, in every block
    assert probability_of_backtest_overfitting(edged, n_blocks=10)["pbo"] < 0.05
    assert math.isnan(probability_of_backtest_overfitting(noise[:, :1])["pbo"])  # one configuration: no PBO
