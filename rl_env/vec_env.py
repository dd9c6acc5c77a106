"""TradingVecEnv: N copies of TradingEnv stepped together with numpy array operations (an SB3 VecEnv)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.rewards import REWARD_CODES, hindsight_bonuses, step_rewards
from rl_env.trading_env import N_PRIVATE, OBS_BOUND, TradingEnv


class TradingVecEnv(VecEnv):
    """``n_envs`` trading environments over the same data, stepped at once with array operations.

    Every env follows exactly the rules of :class:`~rl_env.trading_env.TradingEnv` (same observation,
    actions, fills, costs and rewards; tested to agree step by step). Episodes reset automatically: the
    observation returned for a finished env is the first of its next episode, and the last one is in
    ``infos[i]["terminal_observation"]`` (``infos[i]["TimeLimit.truncated"]`` marks an end of data or of
    episode length, as SB3 expects).

    With one env (and ``full_info=False``) the steps run through one :class:`TradingEnv`'s own fused step (array
    operations on one element cost more than they save); episode starts are still drawn here, so the results are
    the same either way (tests/test_vec_env.py).

    Per-step infos are lean (empty dicts except at episode ends) so the env is fast; the per-env values
    are on the object after each step as arrays: ``last_pnl``, ``last_cost``, ``last_commission``,
    ``last_fill_price`` (0 where none), ``last_fill_qty``, ``last_hindsight``, plus the state ``t``,
    ``cash``, ``units``, ``equity``. ``full_info=True`` also puts them in each info dict (slower).
    ``set_options({"start": t})`` (or a list of per-env dicts) before ``reset()`` forces start bars.

    :param data: the split.
    :param config: env settings (the same as TradingEnv's).
    :param n_envs: number of environments.
    :param seed: seed of the generator that draws episode starts (``seed()`` / ``reset`` reseed it).
    :param full_info: fill each step's info dicts with the TradingEnv info keys.
    """

    def __init__(self, data: MarketData, config: EnvConfig | None = None, n_envs: int = 1,
                 seed: int | None = None, full_info: bool = False) -> None:
        config = config or EnvConfig()
        self.template = TradingEnv(data, config)  # validates and precomputes the per-bar arrays
        tpl = self.template
        super().__init__(n_envs, tpl.observation_space, tpl.action_space)
        self.config, self.data, self.full_info = config, data, full_info
        self.window, self.n_features, self.n_private = tpl.window, tpl.n_features, N_PRIVATE
        self.n_bars = tpl.n_bars
        self._O, self._H, self._L, self._C = data.open, data.high, data.low, data.close
        self._vol = tpl.vol
        self._force_flat = tpl.force_flat
        self._future_vol = tpl.future_vol
        flat = np.ascontiguousarray(tpl._flat)
        wf = self.window * self.n_features
        # Row s of this view is the flat features of bars s .. s+window-1 (a window, oldest first).
        self._windows = np.lib.stride_tricks.as_strided(
            flat, shape=(self.n_bars - self.window + 1, wf), strides=(self.n_features * 4, 4), writeable=False)
        self._wf = wf
        self._levels = np.asarray(getattr(tpl, "levels", [0.0]), dtype=np.float64)
        self._offsets = np.asarray(config.price_offsets, dtype=np.float64)
        self._quantities = np.asarray(config.quantity_levels, dtype=np.float64)
        self._rng = np.random.default_rng(seed)
        self._first, self._last = tpl._first, self.n_bars - 1
        self._sessions = tpl._sessions
        z = np.zeros(n_envs)
        self.t, self.t0, self.t_end = (np.zeros(n_envs, dtype=np.int64) for _ in range(3))
        self.cash, self.units, self.avg_price, self.equity, self.peak = z.copy(), z.copy(), z.copy(), z.copy(), z.copy()
        self.last_pnl, self.last_cost, self.last_commission = z.copy(), z.copy(), z.copy()
        self.last_fill_price, self.last_fill_qty, self.last_hindsight = z.copy(), z.copy(), z.copy()
        self._actions: np.ndarray | None = None
        self._single = n_envs == 1 and not full_info  # step through self.template (see the class docstring)
        self._reset_envs(np.arange(n_envs), [{} for _ in range(n_envs)])

    # --- episode starts --------------------------------------------------------------------------------

    def _reset_envs(self, idx: np.ndarray, options: Sequence[dict[str, Any]]) -> None:
        c, first, last = self.config, self._first, self._last
        k = len(idx)
        t_end = None
        if self._sessions is not None:  # intraday training: one whole session per episode
            spans = self._sessions[self._rng.integers(len(self._sessions), size=k)]
            t0, t_end = spans[:, 0].copy(), spans[:, 1].copy()
        elif c.random_start and c.episode_length is not None and last - first > c.episode_length:
            t0 = self._rng.integers(first, last - c.episode_length + 1, size=k)
        else:
            t0 = np.full(k, first, dtype=np.int64)
        for j, opt in enumerate(options):
            if opt and "start" in opt:
                start = int(opt["start"])
                if not first <= start < last:
                    raise ValueError(f"start must be in [{first}, {last - 1}], got {start}")
                t0[j] = start
        self.t[idx] = t0
        self.t0[idx] = t0
        if t_end is None:
            t_end = np.full(k, last, dtype=np.int64)
        for j, opt in enumerate(options):
            if opt and "start" in opt:
                t_end[j] = last  # a forced start runs like a non-session episode
        self.t_end[idx] = t_end if c.episode_length is None else np.minimum(t_end, t0 + c.episode_length)
        init = float(c.initial_cash)
        self.cash[idx] = init
        self.units[idx] = 0.0
        self.avg_price[idx] = 0.0
        self.equity[idx] = init
        self.peak[idx] = init

    def _obs(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Observations of all envs, or of the envs ``idx``."""
        c = self.config
        t, units, cash, eq = self.t, self.units, self.cash, self.equity
        t_end, t0, avg = self.t_end, self.t0, self.avg_price
        if idx is not None:
            t, units, cash, eq, t_end, t0, avg = t[idx], units[idx], cash[idx], eq[idx], t_end[idx], t0[idx], avg[idx]
        obs = np.empty((len(t), self._wf + N_PRIVATE), dtype=np.float32)
        obs[:, : self._wf] = self._windows[t - self.window + 1]  # fancy indexing: a fast gather of rows
        close = self._C[t]
        positive = eq > 0
        safe_eq = np.where(positive, eq, 1.0)
        priv = np.empty((len(t), N_PRIVATE))
        priv[:, 0] = np.where(positive, units * close / (c.max_position * safe_eq), 0.0)
        priv[:, 1] = units * (close - avg) / c.initial_cash
        priv[:, 2] = np.where(positive, cash / safe_eq, 0.0)
        priv[:, 3] = (t_end - t) / (t_end - t0)
        np.clip(priv, -OBS_BOUND, OBS_BOUND, out=priv)
        obs[:, self._wf:] = priv
        return obs

    # --- VecEnv API ------------------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        if self._seeds[0] is not None:
            self._rng = np.random.default_rng(self._seeds[0])
        self._reset_envs(np.arange(self.num_envs), self._options)
        self._reset_seeds()
        self._reset_options()
        if self._single:
            return self._start_single()[None]
        return self._obs()

    def _start_single(self) -> np.ndarray:
        """One env: start the TradingEnv that steps it at the episode start ``_reset_envs`` drew."""
        env = self.template
        env._set_account(int(self.t0[0]))
        env.t_end = int(self.t_end[0])
        env._reset_engine()
        return env._obs()

    def _step_single(self) -> VecEnvStepReturn:
        """One env: TradingEnv's fused step, its state copied to the arrays, auto-reset as in step_wait."""
        env = self.template
        obs, reward, terminated, truncated, info = env.step(self._actions[0])
        self.t[0], self.cash[0], self.units[0], self.avg_price[0] = env.t, env.cash, env.units, env.avg_price
        self.equity[0], self.peak[0] = env.equity, env.peak
        self.last_pnl = np.array([info["pnl"]])
        self.last_cost = np.array([info["cost"]])
        self.last_commission = np.array([info["commission"]])
        self.last_fill_price = np.array([info["fill_price"]])
        self.last_fill_qty = np.array([info["fill_qty"]])
        self.last_hindsight = np.array([info["reward_hindsight"]])
        out: dict[str, Any] = {}
        done = terminated or truncated
        if done:
            out["terminal_observation"] = obs
            out["TimeLimit.truncated"] = bool(truncated)
            self._reset_envs(np.zeros(1, dtype=np.int64), [{}])
            obs = self._start_single()
        return obs[None], np.array([reward], dtype=np.float32), np.array([done]), [out]

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def _decide(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, t, units = self.config, self.t, self.units
        close, eq = self._C[t], self.equity
        lim = np.where(eq > 0, c.max_position * eq / close, 0.0)
        n = self.num_envs
        if c.action_mode == "multidiscrete":
            a = actions.reshape(n, -1).astype(np.int64)
            q = self._quantities[a[:, 1]]
            qty = q * lim
            low = -lim if c.allow_short else 0.0
            new = np.minimum(np.maximum(units + qty, low), lim)
            new = np.where(np.abs(new) <= 1e-12 * lim, 0.0, new)
            valid = (q != 0.0) & (lim > 0.0) & ((new - units > 0) == (qty > 0)) & (new != units)
            qty = np.where(valid, np.where(new == 0.0, -units, new - units), 0.0)
            limit = np.maximum(close * (1.0 + self._offsets[a[:, 0]] * self._vol[t]), 1e-9 * close)
        else:
            if c.action_mode == "discrete":
                target = self._levels[actions.reshape(n).astype(np.int64)]
            else:
                a = np.clip(actions.reshape(n, -1)[:, 0].astype(np.float64), -1.0, 1.0)
                target = a if c.allow_short else (a + 1.0) / 2.0
            current = np.where(lim > 0, units / np.where(lim > 0, lim, 1.0), 0.0)
            flat = target == 0.0
            trade = np.where(flat, units != 0.0, np.abs(target - current) > c.rebalance_band)
            qty = np.where(trade, np.where(flat, -units, target * lim - units), 0.0)
            limit = np.full(n, np.nan)
        ff = self._force_flat[t]
        if ff.any():
            qty = np.where(ff, -units, qty)
            limit = np.where(ff, np.nan, limit)
        return qty, limit

    def _fill(self, qty: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fill prices in bar t (already advanced): (price, filled mask, reference price)."""
        t, s = self.t, self.config.slip_perc
        o, h, lo = self._O[t], self._H[t], self._L[t]
        buy = qty > 0
        market = np.isnan(limit)
        lim = np.where(market, o, limit)
        if s:
            up, down = o * (1 + s), o * (1 - s)
            market_price = np.where(buy, np.minimum(up, h), np.maximum(down, lo))
            open_limit = np.where(buy, np.minimum(up, np.minimum(h, lim)), np.maximum(down, lim))
        else:
            market_price = open_limit = o
        at_open = np.where(buy, lim >= o, lim <= o)
        through = np.where(buy, lim >= lo, lim <= h)
        price = np.where(market, market_price, np.where(at_open, open_limit, lim))
        filled = (qty != 0) & (market | at_open | through)
        reference = np.where(market | at_open, o, price)
        return price, filled, reference

    def _execute(self, qty: np.ndarray, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, lev = self.config, self.config.margin_leverage
        size, avg, cash = self.units, self.avg_price, self.cash
        new = size + qty
        same = (size > 0) == (qty > 0)
        reduce = (new > 0) == (size > 0)
        to_flat, from_flat = new == 0.0, size == 0.0
        opened = np.where(to_flat, 0.0, np.where(from_flat | same, qty, np.where(reduce, 0.0, new)))
        closed = np.where(to_flat, qty, np.where(from_flat | same, 0.0, np.where(reduce, qty, -size)))
        has_closed, has_opened = closed != 0.0, opened != 0.0
        fee_c = np.maximum(np.abs(closed) * c.commission_rate * price, c.commission_min)
        closed_value = -closed * avg
        close_cash = np.where(closed_value > 0, closed_value / lev, closed_value)
        cash = np.where(has_closed, cash + (close_cash + -closed * (price - avg)) - fee_c, cash)
        opened_value = opened * price
        fee_o = np.maximum(np.abs(opened) * c.commission_rate * price, c.commission_min)
        trial = cash - np.where(opened_value > 0, opened_value / lev, opened_value) - fee_o
        ok = has_opened & (trial >= 0.0)
        self.cash = np.where(ok, trial, cash)
        opened = np.where(ok, opened, 0.0)
        executed = closed + opened
        commission = np.where(has_closed, fee_c, 0.0) + np.where(ok, fee_o, 0.0)
        # position update (backtrader's Position.update)
        new = size + executed
        grow = (size != 0.0) & ((size > 0) == (executed > 0))
        keep = (new > 0) == (size > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            grown_avg = (avg * size + executed * price) / new
        new_avg = np.where(new == 0.0, 0.0, np.where(size == 0.0, price,
                                                     np.where(grow, grown_avg, np.where(keep, avg, price))))
        moved = executed != 0.0
        self.avg_price = np.where(moved, new_avg, avg)
        self.units = np.where(moved, new, size)
        return executed, commission

    def step_wait(self) -> VecEnvStepReturn:
        if self._single:
            return self._step_single()
        c = self.config
        actions = self._actions
        t_dec = self.t.copy()
        qty, limit = self._decide(actions)
        self.t = t_dec + 1
        price, filled, reference = self._fill(qty, limit)
        qty = np.where(filled, qty, 0.0)
        executed, commission = self._execute(qty, np.where(filled, price, 1.0))
        moved = executed != 0.0
        close = self._C[self.t]
        lev = c.margin_leverage
        value = self.units * close
        unreal = self.units * (close - self.avg_price)
        equity = np.where(value > 0, self.cash + ((value - unreal) / lev + unreal), self.cash + value)
        before = self.equity
        pnl = equity - before
        init = c.initial_cash
        reward, self.peak = step_rewards(REWARD_CODES[c.reward], equity, before, self.peak, init, c.risk_aversion)
        if c.hindsight_weight > 0.0:
            bonus = hindsight_bonuses(c.hindsight_weight, self._C[np.minimum(t_dec + c.hindsight_horizon, self._last)],
                                      self._C[t_dec], self.units, init)
        else:
            bonus = np.zeros(self.num_envs)
        self.equity = equity
        self.last_pnl, self.last_commission, self.last_hindsight = pnl, commission, bonus
        self.last_fill_qty = executed
        self.last_fill_price = np.where(moved, price, 0.0)
        self.last_cost = commission + np.abs(executed) * np.abs(price - reference)
        terminated = equity <= c.ruin_fraction * init
        truncated = (self.t >= self.t_end) & ~terminated
        done = terminated | truncated
        obs = self._obs()
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if self.full_info:
            for i, info in enumerate(infos):
                info.update(equity=float(equity[i]), position=float(self.units[i]), pnl=float(pnl[i]),
                            cost=float(self.last_cost[i]), commission=float(commission[i]),
                            fill_price=float(self.last_fill_price[i]), fill_qty=float(executed[i]),
                            filled=bool(moved[i]), reward_hindsight=float(bonus[i]))
                if self._future_vol is not None:
                    info["future_vol"] = float(self._future_vol[t_dec[i]])
        if done.any():
            idx = np.flatnonzero(done)
            for i in idx:
                infos[i]["terminal_observation"] = obs[i].copy()
                infos[i]["TimeLimit.truncated"] = bool(truncated[i])
            self._reset_envs(idx, [{} for _ in idx])
            obs[idx] = self._obs(idx)
        return obs, (reward + bonus).astype(np.float32), done, infos

    def close(self) -> None:
        self.template.close()

    # --- attribute plumbing SB3 asks for --------------------------------------------------------------------

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.template, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"TradingVecEnv shares one configuration; cannot set {attr_name!r} per env")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        if method_name == "render":
            return [None for _ in self._get_indices(indices)]
        raise AttributeError(f"TradingVecEnv has no per-env method {method_name!r}")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
