"""The reward of one env step, for every env: one scalar rule and its vectorised form for TradingVecEnv.

With ``E`` the equity marked at the close of the bar after the decision and ``E0`` the equity before it:

- ``equity``: ``(E - E0) / initial_cash``;
- ``log_return``: ``log(max(E, 1e-9 * initial_cash) / E0)`` (``-1`` once ``E0 <= 0``);
- ``risk_adjusted``: ``E / E0 - 1 - risk_aversion * max(0, DD - DD0)``, where ``DD = 1 - E / peak`` is the
  drawdown from the episode's peak equity after this bar and ``DD0 = 1 - E0 / peak0`` the one before it
  (only NEW drawdown is penalised).

The DeepScalper hindsight bonus (training envs only) adds ``w * (close[t + h] - close[t]) * units / initial_cash``
for the units held over the step. ``tests/test_env_paths.py`` and ``tests/test_vec_env.py`` prove the scalar
and vectorised forms equal bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

REWARD_CODES = {"equity": 0, "log_return": 1, "risk_adjusted": 2}


def step_reward(code: int, equity: float, before: float, peak: float, initial: float,
                risk_aversion: float) -> tuple[float, float]:
    """(reward, new peak equity) of one step; ``code`` is ``REWARD_CODES[config.reward]``."""
    if code == 0:
        return (equity - before) / initial, peak
    if code == 1:
        return (math.log(max(equity, 1e-9 * initial) / before) if before > 0 else -1.0), peak
    ret = equity / before - 1.0 if before > 0 else -1.0
    dd0 = 1.0 - before / peak
    peak = max(peak, equity)
    return ret - risk_aversion * max(0.0, (1.0 - equity / peak) - dd0), peak


def step_rewards(code: int, equity: np.ndarray, before: np.ndarray, peak: np.ndarray, initial: float,
                 risk_aversion: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`step_reward` over a batch of envs (arrays of equal length)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if code == 0:
            return (equity - before) / initial, peak
        if code == 1:
            return np.where(before > 0, np.log(np.maximum(equity, 1e-9 * initial) / before), -1.0), peak
        ret = np.where(before > 0, equity / before - 1.0, -1.0)
        dd0 = 1.0 - before / peak
        peak = np.maximum(peak, equity)
        return ret - risk_aversion * np.maximum(0.0, (1.0 - equity / peak) - dd0), peak


def hindsight_bonus(weight: float, ahead: float, close: float, units: float, initial: float) -> float:
    """``w * (close[t + h] - close[t]) * units / initial_cash``: the hindsight bonus of one step (0 when flat)."""
    return weight * (ahead - close) * units / initial if units else 0.0


def hindsight_bonuses(weight: float, ahead: np.ndarray, close: np.ndarray, units: np.ndarray,
                      initial: float) -> np.ndarray:
    """:func:`hindsight_bonus` over a batch of envs."""
    return np.where(units != 0.0, weight * (ahead - close) * units / initial, 0.0)
