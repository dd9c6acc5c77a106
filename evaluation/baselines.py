"""Baseline policies that every evaluation runs beside the trained models.

Each baseline decides a TARGET position as a fraction of ``max_position`` (1 = fully long, 0 = cash,
-1 = fully short) and translates it into the env's action so that the env holds exactly that target: ``Box``
actions take the fraction itself, except long-only, where the env reads a ``Box`` action ``a`` as the target
``(a + 1) / 2`` (rl_env.trading_env) and the baseline therefore sends ``2 * target - 1`` (cash is -1, fully long 1);
``Discrete`` actions take the nearest of the evenly spaced position levels. They follow the SB3 policy protocol used by
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


def box_action(target: Any, allow_short: bool) -> Any:
    """The ``Box`` action that makes the env hold ``target`` (a fraction of max_position): the target itself when
    shorting is allowed, ``2 * target - 1`` long-only (the env maps a long-only action ``a`` to ``(a + 1) / 2``;
    without this, a target of 0, cash, would be sent as the action 0 and held as half the capital long)."""
    return target if allow_short else 2.0 * target - 1.0


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

    @abc.abstractmethod
    def goals(self, close: np.ndarray, first: int, allow_short: bool) -> np.ndarray:
        """:meth:`target` for every bar at once (float64, one per bar; bar ``t`` from closes up to ``t`` only),
        as a run from decision bar ``first`` to the end would ask for it, bar after bar (``allow_short``: the
        env's setting)."""

    def targets(self, data: Any, config: Any) -> np.ndarray:
        """The env's target fraction for every bar: what ``TradingEnv`` makes of :meth:`predict`'s action at
        each bar (the same float32 rounding of a Box action, the same nearest level of a Discrete one), for
        :func:`evaluation.backtest.run_target_backtest`."""
        close = np.asarray(data.close, dtype=np.float64)
        allow_short = bool(config.allow_short)
        goal = np.asarray(self.goals(close, config.window - 1, allow_short), dtype=np.float64)
        if not allow_short:
            goal = np.maximum(goal, 0.0)
        if config.action_mode == "box":
            wanted = np.clip(goal, -1.0, 1.0) if allow_short else box_action(np.clip(goal, 0.0, 1.0), False)
            a = np.clip(wanted.astype(np.float32).astype(np.float64), -1.0, 1.0)
            return a if allow_short else (a + 1.0) / 2.0
        if config.action_mode == "discrete":
            levels = np.linspace(-1.0 if allow_short else 0.0, 1.0, config.position_levels)
            return levels[np.abs(levels[None, :] - goal[:, None]).argmin(axis=1)]
        raise ValueError(f"baseline {self.name!r} needs action_mode 'box' or 'discrete', not {config.action_mode!r}")

    def predict(self, obs: Any, deterministic: bool = True) -> tuple[Any, None]:
        if self.env is None:
            raise RuntimeError(f"baseline {self.name!r} must be bound to an env (bind(env)) before predict")
        goal = float(self.target())
        if not self._allow_short:
            goal = max(goal, 0.0)
        if self._box:
            a = float(box_action(np.float64(min(max(goal, -1.0), 1.0)), self._allow_short))
            return np.array([min(max(a, self._box_low), self._box_high)], dtype=np.float32), None
        assert self._levels is not None
        return int(np.argmin(np.abs(self._levels - goal))), None


class BuyAndHold(TargetPolicy):
    name = "buy_and_hold"

    def target(self) -> float:
        return 1.0

    def goals(self, close: np.ndarray, first: int, allow_short: bool) -> np.ndarray:
        return np.ones(len(close))


class Flat(TargetPolicy):
    name = "flat"

    def target(self) -> float:
        return 0.0

    def goals(self, close: np.ndarray, first: int, allow_short: bool) -> np.ndarray:
        return np.zeros(len(close))


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

    def goals(self, close: np.ndarray, first: int, allow_short: bool) -> np.ndarray:
        out = np.zeros(len(close))
        if len(close) < self.slow:
            return out
        # row j holds closes j .. j + slow - 1 (decision bar j + slow - 1); a row mean sums like the slice mean
        windows = np.lib.stride_tricks.sliding_window_view(close, self.slow)
        out[self.slow - 1:] = np.where(windows[:, -self.fast:].mean(axis=1) > windows.mean(axis=1), 1.0, 0.0)
        return out


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

    def goals(self, close: np.ndarray, first: int, allow_short: bool) -> np.ndarray:
        """One draw per decision bar from ``first`` on, as many as and in the order :meth:`target` draws them
        (numpy draws the same integers one at a time or as an array; tests/test_batched_eval.py checks it)."""
        choices = np.asarray((-1.0, 0.0, 1.0) if allow_short else (0.0, 1.0))
        out = np.zeros(len(close))
        draws = np.random.default_rng(self.seed).integers(len(choices), size=max(0, len(close) - 1 - first))
        out[first:len(close) - 1] = choices[draws]
        return out


def make_baselines(ma_fast: int = 10, ma_slow: int = 30, seed: int = 0) -> dict[str, TargetPolicy]:
    """The four baselines keyed by their names (``buy_and_hold``, ``flat``, ``ma_crossover``, ``random``)."""
    policies: list[TargetPolicy] = [BuyAndHold(), Flat(), MovingAverageCrossover(ma_fast, ma_slow), RandomPolicy(seed)]
    return {p.name: p for p in policies}
