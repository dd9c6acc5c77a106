"""Significance of comparisons between strategies: a paired test of two Sharpe ratios and the Probability of
Backtest Overfitting (PBO). Pure numpy functions of aligned per-bar return series, conventions as in
:mod:`evaluation.metrics` (simple returns, ``ddof=1``, risk-free rate 0, too little data gives ``nan``).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation.metrics import ZERO_STD, sharpe_ratio


def _aligned(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"paired series must have the same length ({x.size} != {y.size})")
    return x, y


def _block_indices(rng: np.random.Generator, n: int, block: int, rows: int) -> np.ndarray:
    """Moving-block bootstrap indices: ``rows`` resamples of length ``n`` built from blocks of ``block`` bars,
    each block starting at a uniformly drawn bar (wrapping around), so autocorrelation within a block is kept."""
    n_blocks = -(-n // block)
    starts = rng.integers(0, n, size=(rows, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]) % n
    return idx.reshape(rows, n_blocks * block)[:, :n]


def _sharpes(sample: np.ndarray, periods_per_year: float) -> np.ndarray:
    mean = sample.mean(axis=1)
    std = sample.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std >= ZERO_STD, mean / std * math.sqrt(periods_per_year), 0.0)


def sharpe_difference_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                           periods_per_year: float, n_samples: int = 2000, confidence: float = 0.95,
                           seed: int = 0, block: int | None = None) -> dict[str, Any]:
    """Is strategy ``a``'s Sharpe ratio higher than ``b``'s on the SAME bars? A paired moving-block bootstrap.

    Both series are resampled with the same block indices (so their correlation is kept), and the annualised
    Sharpe difference ``SR(a) - SR(b)`` is computed for each of ``n_samples`` resamples. A flat series counts as
    Sharpe 0 (a strategy that does not trade earns nothing, which is what it is compared on).

    :param block: bars per block; default ``ceil(T ** (1/3))`` (a common rule for the moving-block bootstrap).
    :return: ``difference`` (on the original series), ``ci_low``/``ci_high`` (percentile interval),
        ``p_value`` (one-sided: the share of resamples with a difference <= 0; small = ``a`` is significantly
        better), ``n_returns`` and ``block``. Fewer than 10 returns or a NaN: every number is nan.
    """
    x, y = _aligned(a, b)
    n = x.size
    out: dict[str, Any] = {"difference": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
                           "n_returns": int(n), "block": None, "n_samples": int(n_samples)}
    if n < 10 or not (np.isfinite(x).all() and np.isfinite(y).all()) or n_samples < 1:
        return out
    block = int(block or max(1, math.ceil(n ** (1.0 / 3.0))))
    sr_x, sr_y = sharpe_ratio(x, periods_per_year), sharpe_ratio(y, periods_per_year)
    diff = (0.0 if math.isnan(sr_x) else sr_x) - (0.0 if math.isnan(sr_y) else sr_y)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    diffs: list[np.ndarray] = []
    done = 0
    while done < n_samples:
        rows = min(chunk, n_samples - done)
        idx = _block_indices(rng, n, block, rows)
        diffs.append(_sharpes(x[idx], periods_per_year) - _sharpes(y[idx], periods_per_year))
        done += rows
    values = np.concatenate(diffs)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    out.update(difference=float(diff), ci_low=float(low), ci_high=float(high),
               p_value=float(np.mean(values <= 0.0)), block=block)
    return out


def probability_of_backtest_overfitting(returns: np.ndarray, n_blocks: int = 16,
                                        max_splits: int = 5000, seed: int = 0) -> dict[str, Any]:
    """PBO by combinatorially symmetric cross-validation (Bailey, Borwein, Lopez de Prado and Zhu, 2015).

    ``returns`` is a T x N matrix: the per-bar returns of N competing configurations on the same T bars. The rows
    are cut into ``n_blocks`` (even) contiguous blocks; for each way of choosing half of the blocks as in-sample
    (the rest out-of-sample), the configuration with the best in-sample Sharpe is found and its relative rank
    ``w`` among the N out-of-sample Sharpes taken (``w = rank / (N + 1)``, rank 1 = worst); the logit is
    ``ln(w / (1 - w))``. PBO is the share of splits whose logit is <= 0: the in-sample winner does no better
    than the out-of-sample median. About 0.5 on pure noise; a real, stable edge drives it toward 0.

    :param max_splits: when C(n_blocks, n_blocks/2) exceeds it, that many splits are drawn at random (seeded).
    :return: ``pbo``, ``n_splits``, ``n_configurations``, ``n_blocks`` and the mean logit; nan when there are
        fewer than 2 configurations or fewer than 2 bars per block.
    """
    m = np.asarray(returns, dtype=np.float64)
    out: dict[str, Any] = {"pbo": math.nan, "n_splits": 0, "n_configurations": int(m.shape[1]) if m.ndim == 2 else 0,
                           "n_blocks": int(n_blocks), "mean_logit": math.nan}
    if m.ndim != 2 or m.shape[1] < 2 or n_blocks < 2 or n_blocks % 2 or m.shape[0] < 2 * n_blocks:
        return out
    if not np.isfinite(m).all():
        return out
    t, n_conf = m.shape
    edges = np.linspace(0, t, n_blocks + 1).astype(int)
    blocks = [np.arange(edges[i], edges[i + 1]) for i in range(n_blocks)]
    half = n_blocks // 2
    total = math.comb(n_blocks, half)
    if total <= max_splits:
        combos: Any = itertools.combinations(range(n_blocks), half)
    else:
        rng = np.random.default_rng(seed)
        combos = (tuple(sorted(rng.choice(n_blocks, size=half, replace=False))) for _ in range(max_splits))
    logits = []
    for combo in combos:
        chosen = set(combo)
        ins = np.concatenate([blocks[i] for i in range(n_blocks) if i in chosen])
        oos = np.concatenate([blocks[i] for i in range(n_blocks) if i not in chosen])
        best = int(np.argmax(_column_sharpes(m[ins])))
        oos_sr = _column_sharpes(m[oos])
        rank = float(np.sum(oos_sr < oos_sr[best]) + 0.5 * (np.sum(oos_sr == oos_sr[best]) - 1) + 1)
        w = rank / (n_conf + 1)
        logits.append(math.log(w / (1.0 - w)))
    arr = np.asarray(logits)
    out.update(pbo=float(np.mean(arr <= 0.0)), n_splits=int(arr.size), mean_logit=float(arr.mean()))
    return out


def _column_sharpes(m: np.ndarray) -> np.ndarray:
    """Per-bar Sharpe of each column; a flat column counts as 0."""
    mean = m.mean(axis=0)
    std = m.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std >= ZERO_STD, mean / std, 0.0)
