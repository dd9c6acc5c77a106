"""Performance metrics of a backtest: pure numpy functions of returns, equity and trades.

Conventions (shared by every function below):

- ``returns`` are SIMPLE per-bar returns ``r_t = E_t / E_{t-1} - 1`` of the equity curve, net of costs.
- Annualisation multiplies by ``periods_per_year`` (bars per year), which comes from
  ``botcore.markets.periods_per_year(interval, market)``: 252 for daily equity bars, 252 * 6.5 for hourly
  equity bars, 260 * 24 for hourly FX, 365 * 24 for hourly crypto. Never a fixed 252.
- Means are arithmetic unless the name says geometric (``cagr``). Standard deviations use ``ddof=1``.
- The risk-free rate is 0 (the flat/cash baseline earns 0 too, so comparisons stay like for like).
- Too little data gives ``nan`` (never an exception and never a numpy warning); a NaN anywhere in the input
  gives ``nan``: a NaN return means a broken backtest and is never silently dropped. Each function's
  docstring states its edge cases. ``nan`` and infinities become ``null`` in the JSON results.
- A standard deviation below ``ZERO_STD`` (1e-12 per bar) counts as zero (flat equity): the floating-point
  residue of a constant series must not turn into an astronomical Sharpe ratio.

Where this module differs from empyrical: Sortino and profit factor give ``nan`` (not ``inf``) when there is
no downside / no losing trade; VaR is reported as a return (negative = loss), not as a positive loss.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

ZERO_STD = 1e-12
EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()

METRIC_KEYS = (
    "total_return_pct", "annualized_return_pct", "cagr_pct", "volatility_pct", "max_drawdown_pct",
    "max_drawdown_duration_bars", "var_5_pct", "cvar_5_pct", "sharpe_ratio", "sortino_ratio", "calmar_ratio",
    "num_trades", "win_rate_pct", "profit_factor", "best_trade_pct", "worst_trade_pct", "avg_trade_duration_bars",
    "exposure_pct", "avg_abs_exposure_pct", "turnover", "costs_paid", "psr", "dsr", "sharpe_ci_low",
    "sharpe_ci_high", "sharpe_ci_method", "n_bars", "n_returns", "final_equity", "sharpe_per_period", "skewness",
    "kurtosis", "n_trials", "sharpe_threshold_dsr",
)


def _as_array(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).ravel()


def _bad(arr: np.ndarray, min_len: int) -> bool:
    """True when ``arr`` is too short or holds a NaN/inf (the metric is then nan)."""
    return arr.size < min_len or not np.isfinite(arr).all()


# --- return -----------------------------------------------------------------------------------------

def equity_curve(returns: Sequence[float] | np.ndarray, start: float = 1.0) -> np.ndarray:
    """Equity from returns: ``E_0 = start``, ``E_t = start * prod_{s<=t} (1 + r_s)``; length ``len(returns)+1``."""
    r = _as_array(returns)
    return start * np.concatenate(([1.0], np.cumprod(1.0 + r)))


def returns_from_equity(equity: Sequence[float] | np.ndarray) -> np.ndarray:
    """Simple returns ``E_t / E_{t-1} - 1``; a bar after equity 0 (ruin) has return nan (undefined)."""
    e = _as_array(equity)
    if e.size < 2:
        return np.empty(0)
    prev, cur = e[:-1], e[1:]
    out = np.full(cur.size, np.nan)
    ok = prev != 0
    out[ok] = cur[ok] / prev[ok] - 1.0
    return out


def total_return(returns: Sequence[float] | np.ndarray) -> float:
    """Compounded return ``prod(1 + r) - 1`` (a fraction). Empty: 0.0 (no time passed). NaN: nan."""
    r = _as_array(returns)
    if not np.isfinite(r).all():
        return math.nan
    return float(np.prod(1.0 + r) - 1.0)


def annualized_return(returns: Sequence[float] | np.ndarray, periods_per_year: float) -> float:
    """Arithmetic annualised return ``mean(r) * periods_per_year`` (the numerator of the Sharpe ratio).

    Empty or NaN: nan.
    """
    r = _as_array(returns)
    if _bad(r, 1):
        return math.nan
    return float(np.mean(r) * periods_per_year)


def cagr(returns: Sequence[float] | np.ndarray, periods_per_year: float) -> float:
    """Geometric annualised return ``(1 + total_return) ** (periods_per_year / T) - 1`` with T = number of returns.

    Empty or NaN: nan. Ruin (final equity <= 0): -1.0 (lost everything).
    """
    r = _as_array(returns)
    if _bad(r, 1):
        return math.nan
    growth = float(np.prod(1.0 + r))
    if growth <= 0:
        return -1.0
    # log form avoids overflow for short, strongly positive series
    exponent = math.log(growth) * periods_per_year / r.size
    return math.expm1(exponent) if exponent < 700 else math.inf


# --- risk ---------------------------------------------------------------------------------------------

def volatility(returns: Sequence[float] | np.ndarray, periods_per_year: float) -> float:
    """Annualised volatility ``std(r, ddof=1) * sqrt(periods_per_year)``.

    Flat (std below ``ZERO_STD``): 0.0. Fewer than 2 returns or NaN: nan.
    """
    r = _as_array(returns)
    if _bad(r, 2):
        return math.nan
    std = float(np.std(r, ddof=1))
    return std * math.sqrt(periods_per_year) if std >= ZERO_STD else 0.0


def drawdown_series(equity: Sequence[float] | np.ndarray) -> np.ndarray:
    """Underwater curve ``E_t / max_{s<=t} E_s - 1`` (0 at new highs, negative below the running peak).

    Equity must be positive at its running peak; a NaN propagates to the bars from it onwards.
    """
    e = _as_array(equity)
    if e.size == 0:
        return np.empty(0)
    peak = np.maximum.accumulate(np.where(np.isnan(e), -np.inf, e))
    out = np.full(e.size, np.nan)
    ok = (peak > 0) & np.isfinite(e)
    out[ok] = e[ok] / peak[ok] - 1.0
    first_nan = np.flatnonzero(~np.isfinite(e))
    if first_nan.size:
        out[first_nan[0]:] = np.nan
    return out


def max_drawdown(equity: Sequence[float] | np.ndarray) -> float:
    """Maximum drawdown ``min_t (E_t / max_{s<=t} E_s - 1)``: a fraction <= 0 (-0.25 = lost 25% from a peak).

    Fewer than 2 equity points: 0.0 (no room to fall). NaN or non-positive peak: nan.
    """
    e = _as_array(equity)
    if e.size < 2:
        return 0.0 if e.size == 0 or np.isfinite(e).all() else math.nan
    dd = drawdown_series(e)
    if not np.isfinite(dd).all():
        return math.nan
    return float(min(dd.min(), 0.0))


def max_drawdown_duration(equity: Sequence[float] | np.ndarray) -> int | float:
    """Longest run of consecutive bars with equity strictly below its running peak (in bars).

    ``[100, 90, 95, 100]`` gives 2 (two bars under water, recovered at the fourth). A drawdown that has not
    recovered by the end counts up to the last bar. Empty or never under water: 0. NaN anywhere: nan.
    """
    e = _as_array(equity)
    if not np.isfinite(e).all():
        return math.nan
    under = drawdown_series(e) < 0
    if not under.any():
        return 0
    # lengths of runs of True
    padded = np.concatenate(([False], under, [False])).astype(np.int8)
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max())


def value_at_risk(returns: Sequence[float] | np.ndarray, level: float = 0.05) -> float:
    """Historical VaR: the ``level`` quantile of per-bar returns (numpy's linear interpolation), as a return.

    Negative means a loss: -0.021 = on 5% of bars the loss was 2.1% or worse. Empty or NaN: nan.
    """
    r = _as_array(returns)
    if _bad(r, 1):
        return math.nan
    return float(np.quantile(r, level))


def conditional_value_at_risk(returns: Sequence[float] | np.ndarray, level: float = 0.05) -> float:
    """Historical CVaR (expected shortfall): the mean of the returns at or below the ``level`` VaR. Empty/NaN: nan."""
    r = _as_array(returns)
    if _bad(r, 1):
        return math.nan
    var = np.quantile(r, level)
    return float(np.mean(r[r <= var]))


# --- risk-adjusted ------------------------------------------------------------------------------------

def _mean_std(r: np.ndarray) -> tuple[float, float]:
    mean = float(np.mean(r))
    std = float(np.std(r, ddof=1))
    return mean, std


def sharpe_ratio(returns: Sequence[float] | np.ndarray, periods_per_year: float = 1.0) -> float:
    """Annualised Sharpe ratio ``mean(r) / std(r, ddof=1) * sqrt(periods_per_year)``, risk-free rate 0.

    With ``periods_per_year=1`` it is the per-bar Sharpe used by PSR/DSR. Fewer than 2 returns, a standard
    deviation below ``ZERO_STD`` (flat equity) or NaN: nan.
    """
    r = _as_array(returns)
    if _bad(r, 2):
        return math.nan
    mean, std = _mean_std(r)
    if std < ZERO_STD:
        return math.nan
    return mean / std * math.sqrt(periods_per_year)


def sortino_ratio(returns: Sequence[float] | np.ndarray, periods_per_year: float) -> float:
    """Annualised Sortino ratio ``mean(r) / DD * sqrt(periods_per_year)`` with target 0 and downside deviation
    ``DD = sqrt(mean(min(r, 0)^2))`` taken over ALL T returns (Sortino and Price; as empyrical).

    Fewer than 2 returns, no negative return (DD = 0; empyrical gives inf) or NaN: nan.
    """
    r = _as_array(returns)
    if _bad(r, 2):
        return math.nan
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if downside < ZERO_STD:
        return math.nan
    return float(np.mean(r)) / downside * math.sqrt(periods_per_year)


def calmar_ratio(returns: Sequence[float] | np.ndarray, periods_per_year: float) -> float:
    """Calmar ratio ``CAGR / |max drawdown|`` over the whole series (as empyrical). No drawdown or NaN: nan."""
    r = _as_array(returns)
    growth = cagr(r, periods_per_year)
    mdd = max_drawdown(equity_curve(r)) if np.isfinite(r).all() else math.nan
    if not math.isfinite(growth) or not math.isfinite(mdd) or mdd > -ZERO_STD:
        return math.nan
    return growth / abs(mdd)


# --- significance -------------------------------------------------------------------------------------

def moments(returns: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Sample skewness g3 = m3 / m2^1.5 and RAW kurtosis g4 = m4 / m2^2 (3 for a normal distribution), with the
    biased central moments m_k = mean((r - mean)^k) as in Bailey and Lopez de Prado. Flat, < 2 or NaN: nan."""
    r = _as_array(returns)
    if _bad(r, 2):
        return math.nan, math.nan
    d = r - r.mean()
    m2 = float(np.mean(d**2))
    if math.sqrt(m2) < ZERO_STD:
        return math.nan, math.nan
    return float(np.mean(d**3)) / m2**1.5, float(np.mean(d**4)) / m2**2


def sharpe_std(sr: float, n_returns: int, skew: float, kurtosis: float) -> float:
    """Standard error of a per-bar Sharpe estimate (Bailey and Lopez de Prado 2012), RAW kurtosis:
    ``sqrt((1 - g3*SR + (g4 - 1)/4 * SR^2) / (T - 1))``. T < 2 or non-finite inputs: nan."""
    if n_returns < 2 or not all(math.isfinite(x) for x in (sr, skew, kurtosis)):
        return math.nan
    var = (1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr**2) / (n_returns - 1)
    return math.sqrt(var) if var > 0 else math.nan


def psr_from_stats(sr: float, n_returns: int, skew: float, kurtosis: float, sr_benchmark: float = 0.0) -> float:
    """Probabilistic Sharpe ratio ``PSR(SR*) = Phi((SR - SR*) / sigma(SR))`` from a per-bar Sharpe ``sr``,
    the number of returns T, skewness and RAW kurtosis (one popular library passes excess kurtosis here, which
    understates sigma; we do not). The probability that the true Sharpe exceeds ``sr_benchmark``. Undefined: nan."""
    sigma = sharpe_std(sr, n_returns, skew, kurtosis)
    if not math.isfinite(sigma) or not math.isfinite(sr_benchmark):
        return math.nan
    return _NORMAL.cdf((sr - sr_benchmark) / sigma)


def probabilistic_sharpe_ratio(returns: Sequence[float] | np.ndarray, sr_benchmark: float = 0.0) -> float:
    """PSR of a returns series against a per-bar benchmark Sharpe ``sr_benchmark`` (0: "is there any skill?").

    Fewer than 2 returns, flat or NaN: nan.
    """
    r = _as_array(returns)
    sr = sharpe_ratio(r, 1.0)
    skew, kurt = moments(r)
    return psr_from_stats(sr, r.size, skew, kurt, sr_benchmark)


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """Expected maximum per-bar Sharpe of ``n_trials`` skill-less trials whose Sharpes have ``variance``:
    ``SR0 = sqrt(V) * ((1 - e_gamma) * Phi^-1(1 - 1/N) + e_gamma * Phi^-1(1 - 1/(N e)))`` (Bailey and Lopez de
    Prado 2014). N <= 1: 0 (no selection, no deflation). Negative or non-finite variance: nan."""
    if n_trials <= 1:
        return 0.0
    if not math.isfinite(variance) or variance < 0:
        return math.nan
    n = float(n_trials)
    z = (1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n) + EULER_GAMMA * _NORMAL.inv_cdf(1.0 - 1.0 / (n * math.e))
    return math.sqrt(variance) * z


def deflated_sharpe_ratio(returns: Sequence[float] | np.ndarray, n_trials: int = 1,
                          trial_sharpes: Sequence[float] | None = None, periods_per_year: float = 1.0) -> float:
    """Deflated Sharpe ratio ``DSR = PSR(SR0)`` with ``SR0 = expected_max_sharpe(N, V)``.

    :param n_trials: N, the number of independent trials behind the selected model (HPO trials x seeds).
    :param trial_sharpes: the Sharpe ratios of those trials, ANNUALISED with ``periods_per_year`` (as the
        registry stores validation Sharpes); V is their variance (ddof=1) converted to per-bar units by dividing
        by ``periods_per_year``. When fewer than 2 finite trial Sharpes are known, V is the variance the Sharpe
        estimate of THIS series would have if the strategy had no skill, ``1 / (T - 1)`` (the PSR variance at
        SR = 0): the N trials are then taken as N noise draws of the same length.
    N <= 1 gives DSR = PSR(0). Fewer than 2 returns, flat or NaN: nan.
    """
    r = _as_array(returns)
    if _bad(r, 2):
        return math.nan
    variance = trials_sharpe_variance(trial_sharpes, periods_per_year, r.size)
    return probabilistic_sharpe_ratio(r, expected_max_sharpe(int(n_trials), variance))


def trials_sharpe_variance(trial_sharpes: Sequence[float] | None, periods_per_year: float, n_returns: int) -> float:
    """Per-bar variance V of the trials' Sharpes for the DSR: ``var(trial_sharpes, ddof=1) / periods_per_year``
    (trial Sharpes are annualised), or ``1 / (T - 1)`` when fewer than 2 finite trial Sharpes are known
    (see ``deflated_sharpe_ratio``). T < 2 without trial Sharpes: nan."""
    finite = [float(s) for s in (trial_sharpes or []) if s is not None and math.isfinite(float(s))]
    if len(finite) >= 2:
        return float(np.var(finite, ddof=1)) / periods_per_year
    return 1.0 / (n_returns - 1) if n_returns >= 2 else math.nan


ASYMPTOTIC_CI_RETURNS_PER_SAMPLE = 10
"""``sharpe_ci`` replaces the bootstrap by its large-sample limit once T >= this x the resamples (10,000 returns
for 1,000 resamples): there the normal limit's error (the skewness of the Sharpe estimate, ~ 1/sqrt(T)) is below
the bootstrap's own Monte-Carlo error (~ 1/sqrt(resamples)); tests/test_metrics_speed.py proves it."""


def bootstrap_sharpe_ci(returns: Sequence[float] | np.ndarray, periods_per_year: float, n_samples: int = 1000,
                        confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the annualised Sharpe ratio.

    Resamples the T returns with replacement (i.i.d. bootstrap, ``numpy.random.default_rng(seed)``: the same seed
    gives the same interval), computes the Sharpe of each of ``n_samples`` resamples and returns the
    ``(1-confidence)/2`` and ``(1+confidence)/2`` quantiles. Resamples with zero spread are left out. Fewer than
    3 returns, flat, NaN or no valid resample: ``(nan, nan)``. Ignores autocorrelation (no block bootstrap).
    It costs T x ``n_samples`` random draws; :func:`sharpe_ci` uses its large-sample limit for long series.
    """
    r = _as_array(returns)
    if _bad(r, 3) or n_samples < 1 or not math.isfinite(sharpe_ratio(r)):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    n = r.size
    chunk = max(1, 2_000_000 // n)  # bound memory: at most ~2M indices at once
    sharpes: list[np.ndarray] = []
    done = 0
    while done < n_samples:
        rows = min(chunk, n_samples - done)
        sample = r[rng.integers(0, n, size=(rows, n))]
        mean = sample.mean(axis=1)
        std = sample.std(axis=1, ddof=1)
        ok = std >= ZERO_STD
        sharpes.append(mean[ok] / std[ok] * math.sqrt(periods_per_year))
        done += rows
    values = np.concatenate(sharpes)
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def asymptotic_sharpe_ci(returns: Sequence[float] | np.ndarray, periods_per_year: float,
                         confidence: float = 0.95) -> tuple[float, float]:
    """The large-sample limit of :func:`bootstrap_sharpe_ci`: ``SR -/+ z * se`` annualised, with the standard
    error of the Sharpe ratio under non-normal i.i.d. returns (Mertens 2002, Opdyke 2007; the plug-in moments are
    the biased ones, i.e. those of the empirical distribution the bootstrap resamples from)::

        se = sqrt((1 - g3 * SR + (g4 - 1) / 4 * SR^2) / T)     (per-bar SR, skewness g3, RAW kurtosis g4)

    The i.i.d. bootstrap of a smooth function of means converges to this normal law, so for long series the two
    intervals agree (within the bootstrap's Monte-Carlo error from T >= 10 x resamples on normal, fat-tailed,
    skewed, sparse and autocorrelated returns: tests/test_metrics_speed.py); like the bootstrap it ignores
    autocorrelation. Fewer than 3 returns, flat or NaN: ``(nan, nan)``.
    """
    r = _as_array(returns)
    if _bad(r, 3) or not 0.0 < confidence < 1.0:
        return math.nan, math.nan
    sr = sharpe_ratio(r, 1.0)
    skew, kurt = moments(r)
    if not all(math.isfinite(x) for x in (sr, skew, kurt)):
        return math.nan, math.nan
    var = (1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2) / r.size
    if not var > 0:  # cannot happen for real data (g4 >= 1 + g3^2 makes the quadratic positive); kept defensive
        return math.nan, math.nan
    half = _NORMAL.inv_cdf(0.5 + confidence / 2.0) * math.sqrt(var)
    scale = math.sqrt(periods_per_year)
    return (sr - half) * scale, (sr + half) * scale


def sharpe_ci(returns: Sequence[float] | np.ndarray, periods_per_year: float, n_samples: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> tuple[float, float, str]:
    """The Sharpe ratio's confidence interval as the evaluation reports it, and the method used.

    The percentile bootstrap (:func:`bootstrap_sharpe_ci`, ``n_samples`` resamples) while T is below
    ``ASYMPTOTIC_CI_RETURNS_PER_SAMPLE * n_samples``; from there on its large-sample limit
    (:func:`asymptotic_sharpe_ci`), which agrees with it within its Monte-Carlo error and costs O(T) instead of
    T x ``n_samples`` draws (2.4 s for each model and baseline on 100,000 bars before). Deterministic for a given
    seed either way. ``n_samples`` < 1: no interval, ``(nan, nan, "none")``.
    """
    n = _as_array(returns).size
    if n_samples < 1:
        return math.nan, math.nan, "none"
    if n >= ASYMPTOTIC_CI_RETURNS_PER_SAMPLE * n_samples:
        return (*asymptotic_sharpe_ci(returns, periods_per_year, confidence), "asymptotic")
    return (*bootstrap_sharpe_ci(returns, periods_per_year, n_samples, confidence, seed), "bootstrap")


# --- trading ------------------------------------------------------------------------------------------

def _trade_values(trades: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(t[key]) if t.get(key) is not None else math.nan for t in trades], dtype=np.float64)


def trade_metrics(trades: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Statistics of closed trades (dicts with ``pnl`` net of costs, ``return_pct`` in percent, ``duration_bars``).

    - ``num_trades``: the number of trades (0 when none).
    - ``win_rate_pct``: 100 * (trades with pnl > 0) / num_trades; a trade with pnl exactly 0 is not a win.
    - ``profit_factor``: sum of winning pnl / |sum of losing pnl|; nan when there is no losing trade (all wins:
      undefined, empyrical-style inf is avoided) and 0.0 when every trade lost.
    - ``best_trade_pct`` / ``worst_trade_pct``: the largest / smallest ``return_pct``.
    - ``avg_trade_duration_bars``: the mean ``duration_bars``.
    No trades: num_trades 0, the rest nan. A NaN in a field makes the metrics that use it nan.
    """
    n = len(trades)
    out = {"num_trades": n, "win_rate_pct": math.nan, "profit_factor": math.nan, "best_trade_pct": math.nan,
           "worst_trade_pct": math.nan, "avg_trade_duration_bars": math.nan}
    if n == 0:
        return out
    pnl = _trade_values(trades, "pnl")
    if np.isfinite(pnl).all():
        out["win_rate_pct"] = 100.0 * float(np.count_nonzero(pnl > 0)) / n
        gains, losses = float(pnl[pnl > 0].sum()), float(-pnl[pnl < 0].sum())
        out["profit_factor"] = gains / losses if losses > 0 else math.nan
    ret = _trade_values(trades, "return_pct")
    if np.isfinite(ret).all():
        out["best_trade_pct"], out["worst_trade_pct"] = float(ret.max()), float(ret.min())
    dur = _trade_values(trades, "duration_bars")
    if np.isfinite(dur).all():
        out["avg_trade_duration_bars"] = float(dur.mean())
    return out


def exposure_metrics(positions: Sequence[float] | np.ndarray | None,
                     exposure: Sequence[float] | np.ndarray | None) -> dict[str, float]:
    """``exposure_pct``: percentage of bars with a non-zero position (time in market);
    ``avg_abs_exposure_pct``: mean of |position value / equity| in percent (how much of the capital was at work).
    Empty or missing: nan."""
    pos = _as_array(positions if positions is not None else [])
    exp = _as_array(exposure if exposure is not None else [])
    time_in = 100.0 * float(np.count_nonzero(np.abs(pos) > 0)) / pos.size if pos.size and np.isfinite(pos).all() \
        else math.nan
    avg_abs = 100.0 * float(np.mean(np.abs(exp))) if exp.size and np.isfinite(exp).all() else math.nan
    return {"exposure_pct": time_in, "avg_abs_exposure_pct": avg_abs}


# --- everything at once -------------------------------------------------------------------------------

def metrics_from_arrays(returns: Sequence[float] | np.ndarray, periods_per_year: float,
                        equity: Sequence[float] | np.ndarray | None = None,
                        trades: Sequence[Mapping[str, Any]] = (), positions: Any = None, exposure: Any = None,
                        turnover: float = math.nan, costs_paid: float = math.nan, n_trials: int = 1,
                        trial_sharpes: Sequence[float] | None = None, bootstrap_samples: int = 1000,
                        seed: int = 0) -> dict[str, Any]:
    """Every metric of ``METRIC_KEYS`` from plain arrays (see ``compute_metrics`` for a BacktestResult).

    :param returns: simple per-bar returns, net of costs.
    :param periods_per_year: bars per year (``botcore.markets.periods_per_year``).
    :param equity: the equity curve (``len(returns) + 1`` points); rebuilt from returns starting at 1 if None.
    :param trades: closed trades (see ``trade_metrics``).
    :param n_trials: hyperparameter trials behind the model (DSR); 1 for baselines.
    :param trial_sharpes: their annualised validation Sharpes (DSR variance), may be empty.
    """
    r = _as_array(returns)
    eq = _as_array(equity) if equity is not None else equity_curve(r)
    sr_bar = sharpe_ratio(r, 1.0)
    skew, kurt = moments(r)
    sr0 = expected_max_sharpe(int(n_trials), trials_sharpe_variance(trial_sharpes, periods_per_year, r.size))
    ci_low, ci_high, ci_method = sharpe_ci(r, periods_per_year, bootstrap_samples, seed=seed)
    out: dict[str, Any] = {
        "total_return_pct": 100.0 * total_return(r),
        "annualized_return_pct": 100.0 * annualized_return(r, periods_per_year),
        "cagr_pct": 100.0 * cagr(r, periods_per_year),
        "volatility_pct": 100.0 * volatility(r, periods_per_year),
        "max_drawdown_pct": 100.0 * max_drawdown(eq),
        "max_drawdown_duration_bars": max_drawdown_duration(eq),
        "var_5_pct": 100.0 * value_at_risk(r, 0.05),
        "cvar_5_pct": 100.0 * conditional_value_at_risk(r, 0.05),
        "sharpe_ratio": sharpe_ratio(r, periods_per_year),
        "sortino_ratio": sortino_ratio(r, periods_per_year),
        "calmar_ratio": calmar_ratio(r, periods_per_year),
    }
    out.update(trade_metrics(list(trades)))
    out.update(exposure_metrics(positions, exposure))
    out.update({
        "turnover": float(turnover),
        "costs_paid": float(costs_paid),
        "psr": psr_from_stats(sr_bar, r.size, skew, kurt, 0.0),
        "dsr": psr_from_stats(sr_bar, r.size, skew, kurt, sr0),
        "sharpe_ci_low": ci_low,
        "sharpe_ci_high": ci_high,
        "sharpe_ci_method": ci_method,
        "n_bars": int(eq.size),
        "n_returns": int(r.size),
        "final_equity": float(eq[-1]) if eq.size else math.nan,
        "sharpe_per_period": sr_bar,
        "skewness": skew,
        "kurtosis": kurt,
        "n_trials": int(n_trials),
        "sharpe_threshold_dsr": sr0 * math.sqrt(periods_per_year) if math.isfinite(sr0) else math.nan,
    })
    return out


def compute_metrics(result: Any, periods_per_year: float, n_trials: int = 1,
                    trial_sharpes: Sequence[float] | None = None, bootstrap_samples: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """Every metric of ``METRIC_KEYS`` for a ``rl_env.backtest.BacktestResult`` (duck-typed: it needs
    ``returns``, ``equity``, ``trades``, ``positions``, ``exposure``, ``turnover`` and ``costs_paid``).

    :param periods_per_year: bars per year of the data (``botcore.markets.periods_per_year``).
    :param n_trials: hyperparameter trials (x seeds) behind the model, from its registry metadata; 1 = no
        selection (DSR equals PSR).
    :param trial_sharpes: the trials' annualised validation Sharpes (variance for the DSR); may be None/empty.
    :param bootstrap_samples: resamples for the Sharpe confidence interval (see ``sharpe_ci``: from
        ``ASYMPTOTIC_CI_RETURNS_PER_SAMPLE`` x this many returns on, the bootstrap's large-sample limit).
    :param seed: bootstrap seed (same seed, same interval).
    """
    return metrics_from_arrays(
        result.returns, periods_per_year, equity=result.equity, trades=result.trades,
        positions=getattr(result, "positions", None), exposure=getattr(result, "exposure", None),
        turnover=getattr(result, "turnover", math.nan), costs_paid=getattr(result, "costs_paid", math.nan),
        n_trials=n_trials, trial_sharpes=trial_sharpes, bootstrap_samples=bootstrap_samples, seed=seed)
