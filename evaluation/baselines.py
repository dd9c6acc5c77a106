"""Baseline policies that every evaluation runs beside the trained models.

Each baseline decides a TARGET position as a fraction of ``max_position`` (1 = fully long, 0 = cash,
-1 = fully short) and translates it into the env's action: ``Box`` actions take the fraction itself, ``Discrete``
actions the nearest of the evenly spaced position levels. They follow the SB3 policy protocol used by
``rl_env.backtest.run_backtest``: ``predict(obs, deterministic=True) -> (action, None)`` and ``bind(env)``, which
the backtest calls once after ``reset`` so that a baseline can read ``env.t`` (the bar whose close was just
seen) and the env's market data. Baselines look only at closes up to and including ``env.t``: no look-ahead.

- ``BuyAndHold``: fully long from the first decision to the end.
- ``Flat``: always in cash (equity stays at the initial cash; its Sharpe ratio is undefined).
- ``MovingAverageCrossover(fast, slow)``: long while the simple moving average of the last ``fast`` closes is
  above that of the last ``slow`` closes, otherwise in cash (long/flat, the classic rule); in cash until
  ``slow`` closes have been seen.
- ``RandomPolicy(seed)``: each bar a target drawn uniformly from {-1, 0, 1} ({0, 1} when shorting is not
  allowed) with ``numpy.random.default_rng(seed)``, re-seeded at every ``bind``: the same seed gives the same
  trades. A coin-flipping trader: what "no skill, same costs" looks like.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np


class TargetPolicy(abc.ABC):
    """Base class: subclasses implement ``target()`` -> a position fraction in [-1, 1]."""

    name = "baseline"

    def __init__(self) -> None:
        self.env: Any = None
        self._levels: np.ndarray | None = None
        self._box = False
        self._allow_short = True

    def bind(self, env: Any) -> None:
        """Attach to the env after ``reset`` (read the action space and whether shorting is allowed)."""
        import gymnasium as gym

        self.env = env
        config = getattr(env, "config", None)
        self._allow_short = bool(getattr(config, "allow_short", True))
        space = env.action_space
        if isinstance(space, gym.spaces.Box):
            self._box = True
            self._box_low, self._box_high = float(space.low.ravel()[0]), float(space.high.ravel()[0])
            self._allow_short = self._allow_short and self._box_low < 0
        elif isinstance(space, gym.spaces.Discrete):
            self._box = False
            low = -1.0 if self._allow_short else 0.0
            self._levels = np.linspace(low, 1.0, int(space.n))
        else:
            raise ValueError(f"baseline {self.name!r} needs a Box or Discrete action space (target positions), "
                             f"not {space}; evaluate baselines with action_mode 'box' or 'discrete'")

    @abc.abstractmethod
    def target(self) -> float:
        """The wanted position as a fraction of max_position, from data up to ``env.t`` only."""

    def predict(self, obs: Any, deterministic: bool = True) -> tuple[Any, None]:
        if self.env is None:
            raise RuntimeError(f"baseline {self.name!r} must be bound to an env (bind(env)) before predict")
        goal = float(self.target())
        if not self._allow_short:
            goal = max(goal, 0.0)
        if self._box:
            return np.array([min(max(goal, self._box_low), self._box_high)], dtype=np.float32), None
        assert self._levels is not None
        return int(np.argmin(np.abs(self._levels - goal))), None


class BuyAndHold(TargetPolicy):
    name = "buy_and_hold"

    def target(self) -> float:
        return 1.0


class Flat(TargetPolicy):
    name = "flat"

    def target(self) -> float:
        return 0.0


class MovingAverageCrossover(TargetPolicy):
    """Long while SMA(fast) > SMA(slow) of the closes seen so far, else cash.

    :param fast: bars in the fast average.
    :param slow: bars in the slow average (must be longer than ``fast``).
    """

    name = "ma_crossover"

    def __init__(self, fast: int = 10, slow: int = 30) -> None:
        super().__init__()
        if not 0 < fast < slow:
            raise ValueError(f"moving-average crossover needs 0 < fast < slow (got fast={fast}, slow={slow})")
        self.fast, self.slow = int(fast), int(slow)

    def target(self) -> float:
        t = int(self.env.t)
        if t + 1 < self.slow:
            return 0.0
        closes = np.asarray(self.env.data.close[t + 1 - self.slow: t + 1], dtype=np.float64)  # past only
        return 1.0 if closes[-self.fast:].mean() > closes.mean() else 0.0


class RandomPolicy(TargetPolicy):
    """Uniformly random target each bar from {-1, 0, 1} (or {0, 1} long-only); seeded, re-seeded at ``bind``."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def bind(self, env: Any) -> None:
        super().bind(env)
        self.rng = np.random.default_rng(self.seed)

    def target(self) -> float:
        choices = (-1.0, 0.0, 1.0) if self._allow_short else (0.0, 1.0)
        return choices[int(self.rng.integers(len(choices)))]


def make_baselines(ma_fast: int = 10, ma_slow: int = 30, seed: int = 0) -> dict[str, TargetPolicy]:
    """The four baselines keyed by their names (``buy_and_hold``, ``flat``, ``ma_crossover``, ``random``)."""
    policies: list[TargetPolicy] = [BuyAndHold(), Flat(), MovingAverageCrossover(ma_fast, ma_slow), RandomPolicy(seed)]
    return {p.name: p for p in policies}
