"""evaluation.metrics: hand-computed values on tiny series, edge cases, invariants, PSR/DSR worked examples."""
from __future__ import annotations

import math
from statistics import NormalDist
from types import SimpleNamespace

import numpy as np
import pytest

from evaluation import metrics as m

# numpy's RuntimeWarnings (division by zero, mean of empty slice) must never escape a metric
pytestmark = pytest.mark.filterwarnings("error")

R3 = [0.01, -0.02, 0.03]  # the worked example used throughout


def test_hand_computed_values_on_three_returns():
    # mean = 0.02/3, std(ddof=1) = sqrt(0.0012666.../2) = 0.0251661
    mean = 0.02 / 3
    std = math.sqrt(((0.01 - mean) ** 2 + (-0.02 - mean) ** 2 + (0.03 - mean) ** 2) / 2)
    assert std == pytest.approx(0.0251661, rel=1e-5)
    assert m.sharpe_ratio(R3, 252) == pytest.approx(mean / std * math.sqrt(252))
    assert m.sharpe_ratio(R3, 252) == pytest.approx(4.20529, rel=1e-5)
    assert m.sharpe_ratio(R3) == pytest.approx(0.264906, rel=1e-5)  # per bar
    assert m.total_return(R3) == pytest.approx(1.01 * 0.98 * 1.03 - 1)
    assert m.annualized_return(R3, 252) == pytest.approx(mean * 252)
    assert m.volatility(R3, 252) == pytest.approx(std * math.sqrt(252))
    # downside deviation over all 3 returns: sqrt(0.02^2 / 3)
    assert m.sortino_ratio(R3, 252) == pytest.approx(mean / math.sqrt(0.0004 / 3) * math.sqrt(252))
    eq = m.equity_curve(R3, start=100.0)
    np.testing.assert_allclose(eq, [100, 101, 98.98, 101.9494])
    assert m.max_drawdown(eq) == pytest.approx(-0.02)
    assert m.max_drawdown_duration(eq) == 1
    # VaR: linear quantile at 0.05 of [-0.02, 0.01, 0.03] = -0.02 + 0.1 * 0.03
    assert m.value_at_risk(R3) == pytest.approx(-0.017)
    assert m.conditional_value_at_risk(R3) == pytest.approx(-0.02)
    # with periods_per_year == T the CAGR is the total return; Calmar = CAGR / 2 %
    assert m.cagr(R3, 3) == pytest.approx(m.total_return(R3))
    assert m.calmar_ratio(R3, 3) == pytest.approx(0.019494 / 0.02)


def test_cagr_is_geometric_and_uses_periods_per_year():
    # 252 daily returns of +0.1 %: one year, CAGR = 1.001^252 - 1
    r = np.full(252, 0.001)
    assert m.cagr(r, 252) == pytest.approx(1.001**252 - 1)
    # the same returns on hourly equity bars (252 * 6.5 per year) span a shorter time: higher CAGR
    assert m.cagr(r, 252 * 6.5) == pytest.approx(1.001 ** (252 * 6.5) - 1)
    assert m.cagr([-0.5, -1.0], 252) == -1.0  # ruin


def test_drawdown_duration_counts_bars_under_water():
    assert m.max_drawdown_duration([100, 90, 95, 100]) == 2
    assert m.max_drawdown_duration([100, 90, 95, 100, 99, 98, 97, 96]) == 4  # not recovered: to the end
    assert m.max_drawdown_duration([1, 2, 3]) == 0
    assert m.max_drawdown([100, 120, 60, 130]) == pytest.approx(-0.5)


@pytest.mark.parametrize("returns", [[], [0.01], [np.nan, 0.01, 0.02], [0.0, 0.0, 0.0], [0.01] * 5])
def test_edge_cases_never_crash_and_give_documented_values(returns):
    out = m.metrics_from_arrays(returns, 252, bootstrap_samples=50)
    assert set(out) == set(m.METRIC_KEYS)
    r = np.asarray(returns, dtype=float)
    flat = r.size >= 2 and np.all(r == r[0])
    if r.size < 2 or np.isnan(r).any() or flat:  # no spread: every ratio undefined
        for key in ("sharpe_ratio", "sortino_ratio", "psr", "dsr", "sharpe_ci_low", "sharpe_ci_high"):
            assert math.isnan(out[key]), key
    if np.isnan(r).any():
        for key in ("total_return_pct", "cagr_pct", "max_drawdown_pct", "max_drawdown_duration_bars", "var_5_pct"):
            assert math.isnan(out[key]), key
    if r.size == 0:
        assert out["total_return_pct"] == 0.0 and out["max_drawdown_pct"] == 0.0
        assert math.isnan(out["cagr_pct"]) and math.isnan(out["var_5_pct"])
    if flat:
        assert out["volatility_pct"] == 0.0 and out["max_drawdown_pct"] == 0.0
        assert math.isnan(out["calmar_ratio"])
    assert out["num_trades"] == 0 and math.isnan(out["win_rate_pct"])


def test_all_zero_returns_flat_equity():
    r = np.zeros(10)
    assert m.total_return(r) == 0.0 and m.cagr(r, 252) == 0.0
    assert m.max_drawdown(m.equity_curve(r)) == 0.0
    assert m.value_at_risk(r) == 0.0 and m.conditional_value_at_risk(r) == 0.0
    assert math.isnan(m.sharpe_ratio(r, 252)) and math.isnan(m.probabilistic_sharpe_ratio(r))


def test_all_positive_and_all_negative_returns():
    up, down = [0.01, 0.02, 0.03], [-0.01, -0.02, -0.005]
    assert m.max_drawdown(m.equity_curve(up)) == 0.0
    assert math.isnan(m.sortino_ratio(up, 252))  # no downside (empyrical: inf)
    assert math.isnan(m.calmar_ratio(up, 252))  # no drawdown
    assert m.max_drawdown(m.equity_curve(down)) == pytest.approx(0.99 * 0.98 * 0.995 - 1)
    assert m.max_drawdown_duration(m.equity_curve(down)) == 3
    assert m.sharpe_ratio(down, 252) < 0 and m.calmar_ratio(down, 252) < 0


def test_trade_metrics_all_wins_all_losses_mixed_and_none():
    def trade(pnl, ret, dur):
        return {"pnl": pnl, "return_pct": ret, "duration_bars": dur}

    wins = m.trade_metrics([trade(10, 1.0, 2), trade(5, 0.5, 4)])
    assert wins["num_trades"] == 2 and wins["win_rate_pct"] == 100.0
    assert math.isnan(wins["profit_factor"])  # no losing trade: undefined
    assert wins["best_trade_pct"] == 1.0 and wins["worst_trade_pct"] == 0.5
    assert wins["avg_trade_duration_bars"] == 3.0
    losses = m.trade_metrics([trade(-10, -1.0, 1), trade(-5, -0.5, 1)])
    assert losses["win_rate_pct"] == 0.0 and losses["profit_factor"] == 0.0
    mixed = m.trade_metrics([trade(20, 2.0, 1), trade(10, 1.0, 1), trade(-10, -1.0, 1), trade(0.0, 0.0, 1)])
    assert mixed["win_rate_pct"] == 50.0  # a zero-pnl trade is not a win
    assert mixed["profit_factor"] == pytest.approx(3.0)
    none = m.trade_metrics([])
    assert none["num_trades"] == 0 and all(math.isnan(v) for k, v in none.items() if k != "num_trades")
    broken = m.trade_metrics([trade(math.nan, 1.0, 1)])
    assert math.isnan(broken["win_rate_pct"]) and broken["best_trade_pct"] == 1.0


def test_exposure_is_time_in_market_and_mean_absolute_exposure():
    out = m.exposure_metrics([0, 1, 1, -2], [0.0, 0.5, 0.5, -1.0])
    assert out["exposure_pct"] == 75.0
    assert out["avg_abs_exposure_pct"] == pytest.approx(50.0)
    assert all(math.isnan(v) for v in m.exposure_metrics(None, []).values())


@pytest.mark.parametrize("seed", range(20))
def test_shifting_returns_down_never_improves_the_drawdown(seed):
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0005, 0.01, 200)
    base = m.max_drawdown(m.equity_curve(r))
    for shift in (1e-5, 1e-3, 0.01):
        assert m.max_drawdown(m.equity_curve(r - shift)) <= base + 1e-15
        assert m.max_drawdown_duration(m.equity_curve(r - shift)) >= m.max_drawdown_duration(m.equity_curve(r))


@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0, 100.0])
def test_scaling_returns_leaves_sharpe_sortino_and_psr_unchanged(scale):
    r = np.random.default_rng(7).normal(0.001, 0.01, 300)
    assert m.sharpe_ratio(r * scale, 252) == pytest.approx(m.sharpe_ratio(r, 252), rel=1e-10)
    assert m.sortino_ratio(r * scale, 252) == pytest.approx(m.sortino_ratio(r, 252), rel=1e-10)
    assert m.probabilistic_sharpe_ratio(r * scale) == pytest.approx(m.probabilistic_sharpe_ratio(r), rel=1e-10)


def test_sharpe_annualisation_follows_periods_per_year():
    from botcore.markets import periods_per_year

    r = np.random.default_rng(1).normal(0.0002, 0.002, 100)
    per_bar = m.sharpe_ratio(r)
    assert m.sharpe_ratio(r, periods_per_year("1h", "equity")) == pytest.approx(per_bar * math.sqrt(252 * 6.5))
    assert m.sharpe_ratio(r, periods_per_year("1h", "crypto")) == pytest.approx(per_bar * math.sqrt(365 * 24))


def test_psr_worked_example_by_hand():
    r = [0.02, -0.01, 0.015, 0.005, -0.003, 0.01]
    t = len(r)
    mu = sum(r) / t
    sd = math.sqrt(sum((x - mu) ** 2 for x in r) / (t - 1))
    m2 = sum((x - mu) ** 2 for x in r) / t
    g3 = sum((x - mu) ** 3 for x in r) / t / m2**1.5
    g4 = sum((x - mu) ** 4 for x in r) / t / m2**2  # raw kurtosis
    sr = mu / sd
    sigma = math.sqrt((1 - g3 * sr + (g4 - 1) / 4 * sr**2) / (t - 1))
    expected = NormalDist().cdf(sr / sigma)
    skew, kurt = m.moments(r)
    assert (skew, kurt) == (pytest.approx(g3), pytest.approx(g4))
    assert m.probabilistic_sharpe_ratio(r) == pytest.approx(expected)
    # against a benchmark Sharpe: lower probability
    assert m.probabilistic_sharpe_ratio(r, sr_benchmark=0.1) == pytest.approx(NormalDist().cdf((sr - 0.1) / sigma))


def test_psr_uses_raw_kurtosis():
    # normal returns (g3 = 0, g4 = 3): sigma^2 = (1 + SR^2 / 2) / (T - 1)
    assert m.sharpe_std(0.2, 101, 0.0, 3.0) == pytest.approx(math.sqrt((1 + 0.02) / 100))
    # feeding excess kurtosis (0) instead would understate sigma
    assert m.sharpe_std(0.2, 101, 0.0, 0.0) < m.sharpe_std(0.2, 101, 0.0, 3.0)
    assert m.psr_from_stats(0.2, 101, 0.0, 3.0) == pytest.approx(NormalDist().cdf(0.2 / math.sqrt(1.02 / 100)))


def test_dsr_worked_example_of_bailey_and_lopez_de_prado_2014():
    # The paper's example: 100 trials, annualised trial-Sharpe variance 0.5, selected annualised SR 2.5,
    # 1250 daily returns (250 a year), skewness -3, raw kurtosis 10 -> SR0 = 0.1132 per day, DSR = 0.9004.
    sr0 = m.expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=1e-4)
    dsr = m.psr_from_stats(2.5 / math.sqrt(250), 1250, -3.0, 10.0, sr_benchmark=sr0)
    assert dsr == pytest.approx(0.9004, abs=1e-4)
    assert m.expected_max_sharpe(1, 0.5) == 0.0  # one trial: nothing to deflate


def test_dsr_from_returns_and_trials():
    r = np.random.default_rng(3).normal(0.001, 0.01, 500)
    psr = m.probabilistic_sharpe_ratio(r)
    assert m.deflated_sharpe_ratio(r, n_trials=1) == pytest.approx(psr)
    trial_sharpes = [0.2, 1.0, -0.4, 0.8, 1.5]
    variance = float(np.var(trial_sharpes, ddof=1)) / 252
    expected = m.probabilistic_sharpe_ratio(r, m.expected_max_sharpe(20, variance))
    dsr = m.deflated_sharpe_ratio(r, n_trials=20, trial_sharpes=trial_sharpes, periods_per_year=252)
    assert dsr == pytest.approx(expected) and dsr < psr
    # without trial Sharpes: V = 1 / (T - 1), more trials deflate more
    d10 = m.deflated_sharpe_ratio(r, n_trials=10)
    d100 = m.deflated_sharpe_ratio(r, n_trials=100)
    assert d100 < d10 < psr
    assert d10 == pytest.approx(m.probabilistic_sharpe_ratio(r, m.expected_max_sharpe(10, 1 / 499)))


def test_bootstrap_ci_is_seeded_and_brackets_the_sharpe():
    r = np.random.default_rng(5).normal(0.001, 0.01, 400)
    low, high = m.bootstrap_sharpe_ci(r, 252, n_samples=500, seed=1)
    assert (low, high) == m.bootstrap_sharpe_ci(r, 252, n_samples=500, seed=1)
    assert (low, high) != m.bootstrap_sharpe_ci(r, 252, n_samples=500, seed=2)
    assert low < m.sharpe_ratio(r, 252) < high
    # the interval width is about 2 * 1.96 * sqrt(252 / T) for i.i.d. returns
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(252 / 400), rel=0.25)
    assert all(math.isnan(x) for x in m.bootstrap_sharpe_ci([0.01, 0.01, 0.01], 252))
    assert all(math.isnan(x) for x in m.bootstrap_sharpe_ci([0.01, -0.01], 252))


def test_compute_metrics_on_a_duck_typed_backtest_result():
    equity = np.array([100.0, 101.0, 98.98, 101.9494])
    result = SimpleNamespace(
        equity=equity, returns=m.returns_from_equity(equity), positions=np.array([0.0, 1.0, 1.0, 0.0]),
        exposure=np.array([0.0, 1.0, 1.0, 0.0]), turnover=2.0, costs_paid=0.2,
        trades=[{"pnl": 1.9, "return_pct": 1.9, "duration_bars": 2}],
    )
    out = m.compute_metrics(result, 252, n_trials=5, bootstrap_samples=100)
    assert set(out) == set(m.METRIC_KEYS)
    assert out["total_return_pct"] == pytest.approx(1.9494)
    assert out["max_drawdown_pct"] == pytest.approx(-2.0)
    assert out["sharpe_ratio"] == pytest.approx(m.sharpe_ratio(R3, 252))
    assert out["num_trades"] == 1 and out["win_rate_pct"] == 100.0
    assert out["exposure_pct"] == 50.0 and out["turnover"] == 2.0 and out["costs_paid"] == 0.2
    assert out["dsr"] < out["psr"] and out["n_trials"] == 5
    assert out["final_equity"] == pytest.approx(101.9494)


def test_returns_from_equity_handles_ruin():
    r = m.returns_from_equity([100.0, 0.0, 0.0])
    assert r[0] == -1.0 and math.isnan(r[1])
    assert m.returns_from_equity([5.0]).size == 0
