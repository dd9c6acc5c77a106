"""TradingEnv: a single-asset trading environment over one prepared split, numpy only in the hot path."""
from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from botcore.errors import DataError
from rl_env.config import EnvConfig
from rl_env.data import MarketData

OBS_BOUND = 1e4  # observations are clipped to [-OBS_BOUND, OBS_BOUND] (finite bounds for the checkers)
N_PRIVATE = 4


# --- broker arithmetic (the rules of backtrader's BackBroker, on python floats) --------------------------

def market_fill_price(is_buy: bool, o: float, h: float, lo: float, slip: float) -> float:
    """Market order at the open, slipped against the trader but never outside the bar's range."""
    if not slip:
        return o
    if is_buy:
        p = o * (1 + slip)
        return p if p <= h else h
    p = o * (1 - slip)
    return p if p >= lo else lo


def limit_fill_price(is_buy: bool, limit: float, o: float, h: float, lo: float, slip: float) -> float | None:
    """Limit order: at the open (slipped, capped at the limit) if the open is already at least as good,
    at the limit if the bar trades through it, else None (no fill)."""
    if is_buy:
        if limit >= o:
            if not slip:
                return o
            cap = h if h < limit else limit
            p = o * (1 + slip)
            return p if p <= cap else cap
        return limit if limit >= lo else None
    if limit <= o:
        if not slip:
            return o
        p = o * (1 - slip)
        return p if p >= limit else limit
    return limit if limit <= h else None


def split_order(size: float, qty: float) -> tuple[float, float]:
    """(opened, closed) parts of an order of ``qty`` on a position of ``size`` (both signed like qty)."""
    new = size + qty
    if not new:
        return 0.0, qty
    if not size:
        return qty, 0.0
    if size > 0:
        if qty > 0:
            return qty, 0.0
        return (0.0, qty) if new > 0 else (new, -size)
    if qty < 0:
        return qty, 0.0
    return (0.0, qty) if new < 0 else (new, -size)


def update_position(size: float, avg_price: float, qty: float, price: float) -> tuple[float, float]:
    """New (size, average entry price) after executing ``qty`` at ``price``."""
    new = size + qty
    if not new:
        return 0.0, 0.0
    if not size:
        return new, price
    if (size > 0) == (qty > 0):
        return new, (avg_price * size + qty * price) / new
    if (new > 0) == (size > 0):
        return new, avg_price
    return new, price


def account_value(cash: float, size: float, avg_price: float, price: float, leverage: float) -> float:
    """Broker value: cash plus the position (a long's margin part unlevered, as backtrader does)."""
    value = size * price
    if value > 0:
        unrealised = size * (price - avg_price)
        return cash + ((value - unrealised) / leverage + unrealised)
    return cash + value


class TradingEnv(gym.Env):
    """Trade one asset bar by bar, long and/or short, with realistic fills and costs.

    ## Description
    At step ``t`` the agent has seen bar ``t`` up to its close (``env.t``) and decides. Its order is
    executed in bar ``t+1`` and never at a price it has already seen:

    * **market order**: fills at ``open[t+1] * (1 ± s)`` with ``s = (spread_bps/2 + slippage_bps) / 1e4``
      (``+`` for buys), capped at ``high[t+1]`` / ``low[t+1]``;
    * **limit order** at ``L = close[t] * (1 + offset * vol[t])``, ``vol[t]`` = std of the last
      ``vol_window`` close-to-close returns up to ``t``: a buy fills only if ``low[t+1] <= L`` (a sell only
      if ``high[t+1] >= L``), at ``L``; if the open is already at least as good it fills at the open slipped
      by ``s`` but never worse than ``L``; otherwise it is cancelled;
    * **commission** ``max(commission_rate * |units| * price, commission_min)``, charged per executed part
      (a reversal long -> short pays once to close and once to open);
    * **cash rule**: the part of an order that opens or adds to a position executes only if cash stays
      ``>= 0`` after paying ``cost / margin_leverage`` plus its commission (shorts credit their proceeds);
      otherwise that part is dropped (backtrader's BackBroker rule);
    * equity is marked at ``close[t+1]``: ``cash + units * close`` (a long's cost basis counted at
      ``1 / margin_leverage``, exactly as backtrader's broker does).

    Orders are sized at decision time against ``lim = max_position * equity[t] / close[t]`` units (the
    position limit, which bounds leverage). On intraday data with ``close_at_session_end`` the env orders
    the position flat at the decision before a session's (date's) last bar, so it is flat through that bar,
    whatever the action.

    ## Action Space
    * ``discrete``: ``Discrete(position_levels)``, target position ``k`` of evenly spaced levels in
      ``[-1, 1]`` (``[0, 1]`` long-only) times ``lim``; market orders.
    * ``multidiscrete``: ``MultiDiscrete([len(price_offsets), len(quantity_levels)])``: a limit order at
      ``price_offsets[i]`` volatilities from the close for ``quantity_levels[j] * lim`` units (signed;
      ``0`` = no order), clipped to the position limit.
    * ``box``: ``Box(-1, 1, (1,))`` target position fraction of ``lim`` (long-only maps ``a`` to
      ``(a + 1) / 2``); market orders.
    In discrete and box modes no order is sent unless the target differs from the current position by
    more than ``rebalance_band`` (or the target is flat and the position is not).

    ## Observation Space
    ``Box(-1e4, 1e4, (window * n_features + 4,), float32)``:

    | index | value |
    |---|---|
    | ``0 .. window*n_features-1`` | features of bars ``t-window+1 .. t``, oldest row first |
    | ``-4`` | position value / (max_position * equity), signed |
    | ``-3`` | unrealised P&L (vs the average entry price) / initial_cash |
    | ``-2`` | cash / equity |
    | ``-1`` | time left in the episode, 1 at the start, 0 at its last bar |

    ## Rewards
    With ``E`` the equity: ``equity``: ``(E[t+1] - E[t]) / initial_cash`` (net of every cost);
    ``log_return``: ``log(E[t+1] / E[t])``; ``risk_adjusted``: ``E[t+1]/E[t] - 1 - risk_aversion *
    max(0, DD[t+1] - DD[t])`` with ``DD`` the drawdown from the episode's equity peak. Only when
    ``hindsight_weight = w > 0`` (DeepScalper training, never in evaluation) the reward adds
    ``w * (close[t+h] - close[t]) * units[t+1] / initial_cash`` (``h = hindsight_horizon``, clipped at the
    end of the data). ``info["pnl"] = E[t+1] - E[t]`` is always the P&L really earned.

    ## Starting State
    Cash ``initial_cash``, no position. Training (``random_start``): the first decision bar is drawn from
    ``self.np_random`` so that ``episode_length`` steps fit; otherwise the episode starts at bar
    ``window - 1`` and runs to the end of the split (``episode_length=None``). ``reset(options={"start": t})``
    forces a start bar.

    ## Episode End
    Terminated (ruin) when equity falls to ``ruin_fraction * initial_cash`` or below. Truncated at the last
    bar of the episode or of the data.

    ## Info
    ``equity, position`` (units held), ``pnl, cost`` (commission plus slippage/spread paid this step),
    ``commission, fill_price`` (0.0 if none), ``fill_qty`` (signed units executed), ``filled``,
    ``reward_hindsight``; ``future_vol`` when ``vol_horizon > 0``: std of the log returns of closes
    ``t+1 .. t+vol_horizon`` where ``t`` is the bar of the observation the action was chosen from (the
    training target for that observation; nan near the end of the data). ``reset`` reports the same keys.
    ``fill_price`` is 0.0 when nothing filled (not NaN: gymnasium's determinism check compares infos
    with ``==``, and NaN never equals NaN); ``filled`` says whether anything executed.

    ## Arguments
    ``TradingEnv(data: MarketData, config: EnvConfig | None = None)``.
    """

    metadata = {"render_modes": []}

    def __init__(self, data: MarketData, config: EnvConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EnvConfig()
        self.data = data
        self.window = config.window
        self.n_features = data.n_features
        self.n_private = N_PRIVATE
        n = data.n_bars
        if n < self.window + 1:
            raise DataError(f"{data.symbol or 'data'} {data.interval}: {n} bars, but a window of {self.window} "
                            f"needs at least {self.window + 1}; use more data or a smaller env.window")
        self.n_bars = n
        # Python lists make scalar access in step() cheap; arrays are kept for vectorised users.
        self._open, self._high, self._low, self._close = (data.open.tolist(), data.high.tolist(),
                                                           data.low.tolist(), data.close.tolist())
        self._flat = np.clip(data.features, -OBS_BOUND, OBS_BOUND).astype(np.float32).ravel()
        self.vol = data.past_volatility(config.vol_window)
        self._vol = self.vol.tolist()
        session_last = data.session_last()
        self.force_flat = np.zeros(n, dtype=bool)
        if data.intraday and config.close_at_session_end:
            self.force_flat[:-1] = session_last[1:]  # the next bar closes its session
        self._force_flat = self.force_flat.tolist()
        self.future_vol = self._future_vol(config.vol_horizon) if config.vol_horizon > 0 else None
        self._slip = config.slip_perc
        self._lev = config.margin_leverage
        self._first = self.window - 1

        self._obs_dim = obs_dim = self.window * self.n_features + N_PRIVATE
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, (obs_dim,), np.float32)
        if config.action_mode == "discrete":
            lo = -1.0 if config.allow_short else 0.0
            self.levels = np.linspace(lo, 1.0, config.position_levels).tolist()
            self.action_space = spaces.Discrete(config.position_levels)
        elif config.action_mode == "multidiscrete":
            self.action_space = spaces.MultiDiscrete([len(config.price_offsets), len(config.quantity_levels)])
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._offsets = list(config.price_offsets)
        self._quantities = list(config.quantity_levels)
        self._set_account(0)

    # --- helpers -------------------------------------------------------------------------------------

    def _future_vol(self, horizon: int) -> np.ndarray:
        close = self.data.close
        lr = np.zeros(self.n_bars)
        lr[1:] = np.log(close[1:] / close[:-1])
        out = np.full(self.n_bars, np.nan)
        if self.n_bars > horizon:
            windows = np.lib.stride_tricks.sliding_window_view(lr[1:], horizon)  # row t: lr[t+1 .. t+horizon]
            out[: len(windows)] = windows.std(axis=1)
        return out

    def _set_account(self, t0: int) -> None:
        c = self.config
        self.t = self.t0 = t0
        self.cash = float(c.initial_cash)
        self.units = 0.0
        self.avg_price = 0.0
        self.equity = self.peak = float(c.initial_cash)
        self.t_end = self.n_bars - 1

    def _choose_start(self, options: dict[str, Any] | None) -> tuple[int, int]:
        c, last = self.config, self.n_bars - 1
        if options and "start" in options:
            t0 = int(options["start"])
            if not self._first <= t0 < last:
                raise ValueError(f"start must be in [{self._first}, {last - 1}], got {t0}")
        elif c.random_start and c.episode_length is not None and last - self._first > c.episode_length:
            t0 = int(self.np_random.integers(self._first, last - c.episode_length + 1))
        else:
            t0 = self._first
        t_end = last if c.episode_length is None else min(last, t0 + c.episode_length)
        return t0, t_end

    def _obs(self) -> np.ndarray:
        t, f, eq = self.t, self.n_features, self.equity
        close = self._close[t]
        if eq > 0:
            position, cash = self.units * close / (self.config.max_position * eq), self.cash / eq
        else:
            position = cash = 0.0
        unrealised = self.units * (close - self.avg_price) / self.config.initial_cash
        b = OBS_BOUND
        obs = np.empty(self._obs_dim, dtype=np.float32)
        obs[:-N_PRIVATE] = self._flat[(t - self.window + 1) * f:(t + 1) * f]
        obs[-N_PRIVATE:] = (min(max(position, -b), b), min(max(unrealised, -b), b), min(max(cash, -b), b),
                            (self.t_end - t) / (self.t_end - self.t0))
        return obs

    def _info(self) -> dict[str, Any]:
        """The info of reset(): the step info keys with nothing traded yet."""
        info = {"equity": self.equity, "position": self.units, "pnl": 0.0, "cost": 0.0, "commission": 0.0,
                "fill_price": 0.0, "fill_qty": 0.0, "filled": False, "reward_hindsight": 0.0}
        if self.future_vol is not None:
            info["future_vol"] = float(self.future_vol[self.t])
        return info

    # --- order decision (shared by every engine) -------------------------------------------------------

    def decide_order(self, action: Any) -> tuple[float, float]:
        """Translate an action at bar ``self.t`` into ``(signed units, limit price)``; limit nan = market,
        units 0 = no order."""
        c, t = self.config, self.t
        close, eq, units = self._close[t], self.equity, self.units
        if self._force_flat[t]:
            return -units if units else 0.0, math.nan
        lim = c.max_position * eq / close if eq > 0 else 0.0
        mode = c.action_mode
        if mode == "multidiscrete":
            i_off, i_q = (int(a) for a in np.asarray(action).reshape(-1)[:2])
            q = self._quantities[i_q]
            if q == 0.0 or lim <= 0.0:
                return 0.0, math.nan
            qty = q * lim
            new = units + qty
            low = -lim if c.allow_short else 0.0
            if new > lim:
                new = lim
            elif new < low:
                new = low
            if abs(new) <= 1e-12 * lim:
                new = 0.0
            if (new - units > 0) != (qty > 0) or new == units:
                return 0.0, math.nan
            qty = -units if new == 0.0 else new - units
            limit = close * (1.0 + self._offsets[i_off] * self._vol[t])
            return qty, max(limit, 1e-9 * close)
        if mode == "discrete":
            index = int(action) if isinstance(action, (int, np.integer)) else int(np.asarray(action).reshape(-1)[0])
            target = self.levels[index]
        else:
            a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
            target = a if c.allow_short else (a + 1.0) / 2.0
        if target == 0.0:
            return -units if units else 0.0, math.nan
        current = units / lim if lim > 0 else 0.0
        if abs(target - current) <= c.rebalance_band:
            return 0.0, math.nan
        return target * lim - units, math.nan

    # --- execution (the fast engine; BacktraderEnv overrides _advance) ---------------------------------

    def _advance(self, qty: float, limit: float) -> tuple[float, float, float, float]:
        """Execute the order in bar t+1 and move there. Returns (executed units, fill price or
        0.0, commission, slippage cost)."""
        t1 = self.t + 1
        self.t = t1
        if not qty:
            return 0.0, 0.0, 0.0, 0.0
        o, h, lo = self._open[t1], self._high[t1], self._low[t1]
        is_buy = qty > 0
        if limit != limit:  # market
            price = market_fill_price(is_buy, o, h, lo, self._slip)
            reference = o
        else:
            price = limit_fill_price(is_buy, limit, o, h, lo, self._slip)
            if price is None:
                return 0.0, 0.0, 0.0, 0.0
            reference = o if (limit >= o if is_buy else limit <= o) else price
        executed, commission = self._execute(qty, price)
        return executed, (price if executed else 0.0), commission, abs(executed) * abs(price - reference)

    def _execute(self, qty: float, price: float) -> tuple[float, float]:
        size, avg = self.units, self.avg_price
        opened, closed = split_order(size, qty)
        cash, commission = self.cash, 0.0
        rate, minimum = self.config.commission_rate, self.config.commission_min
        if closed:
            closed_value = -closed * avg
            close_cash = closed_value / self._lev if closed_value > 0 else closed_value
            cash += close_cash + -closed * (price - avg)
            fee = abs(closed) * rate * price
            if fee < minimum:
                fee = minimum
            cash -= fee
            commission += fee
        if opened:
            opened_value = opened * price
            trial = cash - (opened_value / self._lev if opened_value > 0 else opened_value)
            fee = abs(opened) * rate * price
            if fee < minimum:
                fee = minimum
            trial -= fee
            if trial < 0.0:
                opened = 0.0  # not enough cash: the opening part is dropped
            else:
                cash = trial
                commission += fee
        executed = closed + opened
        self.cash = cash
        if executed:
            self.units, self.avg_price = update_position(size, avg, executed, price)
        return executed, commission

    def _mark(self) -> float:
        return account_value(self.cash, self.units, self.avg_price, self._close[self.t], self._lev)

    # --- gymnasium API -------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        t0, t_end = self._choose_start(options)
        self._set_account(t0)
        self.t_end = t_end
        self._reset_engine()
        return self._obs(), self._info()

    def _reset_engine(self) -> None:
        """Hook for engines with their own broker (BacktraderEnv)."""

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        c, t = self.config, self.t
        if t >= self.t_end:
            raise RuntimeError("step() called after the episode ended; call reset()")
        qty, limit = self.decide_order(action)
        executed, price, commission, slip_cost = self._advance(qty, limit)
        before = self.equity
        self.equity = equity = self._mark()
        pnl = equity - before
        kind, initial = c.reward, c.initial_cash
        if kind == "equity":
            reward = pnl / initial
        elif kind == "log_return":
            reward = math.log(max(equity, 1e-9 * initial) / before) if before > 0 else -1.0
        else:
            ret = equity / before - 1.0 if before > 0 else -1.0
            dd0 = 1.0 - before / self.peak
            self.peak = max(self.peak, equity)
            reward = ret - c.risk_aversion * max(0.0, (1.0 - equity / self.peak) - dd0)
        bonus = 0.0
        if c.hindsight_weight > 0.0 and self.units:
            ahead = self._close[min(t + c.hindsight_horizon, self.n_bars - 1)]
            bonus = c.hindsight_weight * (ahead - self._close[t]) * self.units / initial
            reward += bonus
        terminated = equity <= c.ruin_fraction * initial
        truncated = self.t >= self.t_end and not terminated
        info = {"equity": equity, "position": self.units, "pnl": pnl, "cost": commission + slip_cost,
                "commission": commission, "fill_price": price, "fill_qty": executed, "filled": executed != 0.0,
                "reward_hindsight": bonus}
        if self.future_vol is not None:
            info["future_vol"] = float(self.future_vol[t])
        return self._obs(), reward, terminated, truncated, info
