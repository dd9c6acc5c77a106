"""TradingEnv: a single-asset trading environment over one prepared split, numpy only in the hot path."""
from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from botcore.errors import DataError
from rl_env.broker import (
    account_value,
    execute,
    fill_price,
    flatten_order,
    limit_order,
    position_limit,
    target_order,
)
from rl_env.broker import market_fill_price as market_fill_price  # re-exported: the broker's names stay importable
from rl_env.broker import split_order as split_order
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.rewards import REWARD_CODES, hindsight_bonus, step_reward

OBS_BOUND = 1e4  # observations are clipped to [-OBS_BOUND, OBS_BOUND] (finite bounds for the checkers)
N_PRIVATE = 4
_NAN = math.nan
_INTS = (int, np.integer)


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
    ``TradingEnv(data: MarketData, config: EnvConfig | None = None)``. The config is read once, in
    ``__init__`` (changing ``env.config`` afterwards has no effect: build a new env).
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
        f = self.n_features
        # The flat features plus N_PRIVATE padding cells: one slice copy of window * n_features + N_PRIVATE
        # cells makes an observation whose last N_PRIVATE cells are then overwritten with the private state.
        self._flat_pad = np.zeros(n * f + N_PRIVATE, dtype=np.float32)
        self._flat_pad[: n * f] = np.clip(data.features, -OBS_BOUND, OBS_BOUND).astype(np.float32).ravel()
        self._flat = self._flat_pad[: n * f]
        self.vol = data.past_volatility(config.vol_window)
        self._vol = self.vol.tolist()
        session_last = data.session_last()
        self.force_flat = np.zeros(n, dtype=bool)
        if data.intraday and config.close_at_session_end:
            self.force_flat[:-1] = session_last[1:]  # the next bar closes its session
        self._force_flat = self.force_flat.tolist()
        self.future_vol = self._future_vol(config.vol_horizon) if config.vol_horizon > 0 else None
        self._future_vol_list = None if self.future_vol is None else self.future_vol.tolist()
        self._slip = config.slip_perc
        self._slip_up, self._slip_down = 1 + self._slip, 1 - self._slip
        self._lev = config.margin_leverage
        self._first = self.window - 1
        # Intraday training episodes are whole sessions (a day's trading), drawn at random.
        self._sessions = None
        if data.intraday and config.session_episodes and config.random_start:
            spans = data.session_spans(self._first)
            self._sessions = spans if len(spans) else None
        # Settings the hot path reads, looked up once.
        self._wf = self.window * f
        self._max_position = config.max_position
        self._initial = config.initial_cash
        self._band = config.rebalance_band
        self._rate, self._min_fee = config.commission_rate, config.commission_min
        self._ruin_level = config.ruin_fraction * config.initial_cash
        self._reward_code = REWARD_CODES[config.reward]
        self._hindsight = config.hindsight_weight > 0.0
        self._mode = ("discrete", "multidiscrete", "box").index(config.action_mode)
        self._allow_short = config.allow_short
        # step() runs the fused numpy engine unless a subclass brings its own broker (BacktraderEnv).
        cls = type(self)
        self._fused = (cls._advance is TradingEnv._advance and cls._mark is TradingEnv._mark
                       and cls.decide_order is TradingEnv.decide_order and cls._obs is TradingEnv._obs
                       and cls._execute is TradingEnv._execute)

        self._obs_dim = obs_dim = self.window * self.n_features + N_PRIVATE
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, (obs_dim,), np.float32)
        if config.action_mode == "discrete":
            lo = -1.0 if config.allow_short else 0.0
            self.levels = np.linspace(lo, 1.0, config.position_levels).tolist()
            self._levels = self.levels
            self.action_space = spaces.Discrete(config.position_levels)
        elif config.action_mode == "multidiscrete":
            self.action_space = spaces.MultiDiscrete([len(config.price_offsets), len(config.quantity_levels)])
            self._levels = None
        else:
            self._levels = None
            self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._offsets = list(config.price_offsets)
        self._quantities = list(config.quantity_levels)
        self._set_account(0)

    def observed_features(self) -> np.ndarray:
        """(n_bars, n_features) float32: every bar's features as observations hold them (clipped to
        ``OBS_BOUND``); the observation at bar ``t`` starts with rows ``t - window + 1 .. t``. A read-only view."""
        view = self._flat.reshape(self.n_bars, self.n_features)
        view.flags.writeable = False
        return view

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
        elif self._sessions is not None:  # intraday training: one whole session per episode
            t0, session_end = (int(x) for x in self._sessions[int(self.np_random.integers(len(self._sessions)))])
            return t0, session_end if c.episode_length is None else min(session_end, t0 + c.episode_length)
        elif c.random_start and c.episode_length is not None and last - self._first > c.episode_length:
            t0 = int(self.np_random.integers(self._first, last - c.episode_length + 1))
        else:
            t0 = self._first
        t_end = last if c.episode_length is None else min(last, t0 + c.episode_length)
        return t0, t_end

    def _obs(self) -> np.ndarray:
        t, eq, units = self.t, self.equity, self.units
        close = self._close[t]
        if eq > 0:
            position, cash = units * close / (self._max_position * eq), self.cash / eq
        else:
            position = cash = 0.0
        unrealised = units * (close - self.avg_price) / self._initial
        return self._make_obs(t, position, unrealised, cash)

    def _make_obs(self, t: int, position: float, unrealised: float, cash: float) -> np.ndarray:
        """The observation at bar ``t``: one slice copy of the window (plus N_PRIVATE padding cells that
        are overwritten) and the private state, each clipped to [-OBS_BOUND, OBS_BOUND]."""
        b = OBS_BOUND
        if position > b:
            position = b
        elif position < -b:
            position = -b
        if unrealised > b:
            unrealised = b
        elif unrealised < -b:
            unrealised = -b
        if cash > b:
            cash = b
        elif cash < -b:
            cash = -b
        wf = self._wf
        start = (t + 1) * self.n_features - wf
        obs = self._flat_pad[start:start + wf + N_PRIVATE].copy()
        cells = memoryview(obs)  # float32 item stores, the same rounding as numpy's float64 -> float32 cast
        cells[wf] = position
        cells[wf + 1] = unrealised
        cells[wf + 2] = cash
        t_end = self.t_end
        cells[wf + 3] = (t_end - t) / (t_end - self.t0)
        return obs

    def held_private(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, N_PRIVATE) float32: the private cells of the observations at bars ``start .. stop - 1``
        if the account stays as it is now (no fill from here on): the mark to market and :meth:`_obs`'s arithmetic
        in the same order, as arrays (``tests/test_batched_eval.py`` checks the bytes against the observations).
        A batched predictor decides a stretch of bars in advance from these; it must compare each real
        observation's cells with them (a fill changes the account, and so the cells from its bar on)."""
        close = np.asarray(self.data.close[start:stop], dtype=np.float64)
        cash, units, avg = self.cash, self.units, self.avg_price
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            value = units * close
            unrealised = units * (close - avg)
            equity = np.where(value > 0, cash + ((value - unrealised) / self._lev + unrealised), cash + value)
            positive = equity > 0
            position = np.where(positive, units * close / (self._max_position * equity), 0.0)
            cash_share = np.where(positive, cash / equity, 0.0)
            out = np.empty((len(close), N_PRIVATE), dtype=np.float64)
            out[:, 0] = np.clip(position, -OBS_BOUND, OBS_BOUND)
            out[:, 1] = np.clip(unrealised / self._initial, -OBS_BOUND, OBS_BOUND)
            out[:, 2] = np.clip(cash_share, -OBS_BOUND, OBS_BOUND)
            out[:, 3] = (self.t_end - np.arange(start, stop, dtype=np.float64)) / (self.t_end - self.t0)
        return out.astype(np.float32)

    def _info(self) -> dict[str, Any]:
        """The info of reset(): the step info keys with nothing traded yet."""
        info = {"equity": self.equity, "position": self.units, "pnl": 0.0, "cost": 0.0, "commission": 0.0,
                "fill_price": 0.0, "fill_qty": 0.0, "filled": False, "reward_hindsight": 0.0}
        if self._future_vol_list is not None:
            info["future_vol"] = self._future_vol_list[self.t]
        return info

    # --- order decision (shared by every engine) -------------------------------------------------------

    def decide_order(self, action: Any) -> tuple[float, float]:
        """Translate an action at bar ``self.t`` into ``(signed units, limit price)``; limit nan = market,
        units 0 = no order. The sizing arithmetic is :mod:`rl_env.broker`'s."""
        t = self.t
        close, units = self._close[t], self.units
        if self._force_flat[t]:
            return flatten_order(units), _NAN
        lim = position_limit(self._max_position, self.equity, close)
        mode = self._mode
        if mode == 1:  # multidiscrete
            values = (action if type(action) is np.ndarray else np.asarray(action)).reshape(-1)[:2].tolist()
            i_off, i_q = (int(a) for a in values)
            return limit_order(self._quantities[i_q], self._offsets[i_off], self._vol[t], close, units, lim,
                               self.config.allow_short)
        if mode == 0:  # discrete
            index = int(action) if isinstance(action, _INTS) else int(np.asarray(action).reshape(-1)[0])
            target = self._levels[index]
        else:  # box
            a = float((action if type(action) is np.ndarray else np.asarray(action, dtype=np.float64)).flat[0])
            if a < -1.0:
                a = -1.0
            elif a > 1.0:
                a = 1.0
            target = a if self.config.allow_short else (a + 1.0) / 2.0
        return target_order(target, units, lim, self._band), _NAN

    # --- execution (the fast engine; BacktraderEnv overrides _advance) ---------------------------------

    def _advance(self, qty: float, limit: float) -> tuple[float, float, float, float]:
        """Execute the order in bar t+1 and move there (:func:`rl_env.broker.fill_price`). Returns (executed
        units, fill price or 0.0, commission, slippage cost)."""
        t1 = self.t + 1
        self.t = t1
        if not qty:
            return 0.0, 0.0, 0.0, 0.0
        price, reference = fill_price(qty, limit, self._open[t1], self._high[t1], self._low[t1], self._slip)
        if price is None:
            return 0.0, 0.0, 0.0, 0.0
        executed, commission = self._execute(qty, price)
        return executed, (price if executed else 0.0), commission, abs(executed) * abs(price - reference)

    def _execute(self, qty: float, price: float) -> tuple[float, float]:
        """Execute ``qty`` units at ``price`` on the account (:func:`rl_env.broker.execute`: the close and open
        parts, the cash rule, the new size and average entry price). Returns (executed units, commission)."""
        self.cash, self.units, self.avg_price, executed, commission = execute(
            self.cash, self.units, self.avg_price, qty, price, self._rate, self._min_fee, self._lev)
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
        if not self._fused:
            return self._step_engine(action)
        # The numpy engine, fused: decide_order + _advance + _mark + reward + _obs in one frame, with the
        # same arithmetic in the same order (the results are bit for bit those of _step_engine).
        t = self.t
        t_end = self.t_end
        if t >= t_end:
            raise RuntimeError("step() called after the episode ended; call reset()")
        units, before = self.units, self.equity
        closes = self._close
        close = closes[t]
        limit = _NAN
        if self._force_flat[t]:
            qty = -units if units else 0.0
        elif self._mode == 0:  # discrete: decide_order inlined
            lim = self._max_position * before / close if before > 0 else 0.0
            try:  # ints and numpy integers index the list directly (as int(action) would)
                target = self._levels[action]
            except TypeError:
                target = self._levels[int(np.asarray(action).reshape(-1)[0])]
            if target == 0.0:
                qty = -units if units else 0.0
            else:
                current = units / lim if lim > 0 else 0.0
                qty = 0.0 if abs(target - current) <= self._band else target * lim - units
        elif self._mode == 1:  # multidiscrete: decide_order inlined (limit_order is the broker's)
            i_off, i_q = (action.tolist() if type(action) is np.ndarray and action.shape == (2,)
                          else np.asarray(action).reshape(-1)[:2].tolist())
            lim = self._max_position * before / close if before > 0 else 0.0
            fraction, offset = self._quantities[int(i_q)], self._offsets[int(i_off)]
            qty = 0.0
            if fraction != 0.0 and lim > 0.0:  # limit_order inlined
                want = fraction * lim
                new = units + want
                low = -lim if self._allow_short else 0.0
                if new > lim:
                    new = lim
                elif new < low:
                    new = low
                if abs(new) <= 1e-12 * lim:
                    new = 0.0
                if (new - units > 0) == (want > 0) and new != units:
                    qty = -units if new == 0.0 else new - units
                    limit = close * (1.0 + offset * self._vol[t])
                    floor = 1e-9 * close
                    if floor > limit:
                        limit = floor
        else:
            qty, limit = self.decide_order(action)
        t1 = t + 1
        self.t = t1
        executed = price = commission = slip_cost = 0.0
        if qty:
            o = self._open[t1]
            if limit != limit:  # market order: market_fill_price inlined
                if not self._slip:
                    fill = o
                elif qty > 0:
                    fill = o * self._slip_up
                    h = self._high[t1]
                    if not fill <= h:  # (not <=: a nan fill is capped, as in market_fill_price)
                        fill = h
                else:
                    fill = o * self._slip_down
                    lo = self._low[t1]
                    if not fill >= lo:
                        fill = lo
                reference = o
            else:  # limit order: limit_fill_price inlined
                slip = self._slip
                if qty > 0:
                    if limit >= o:
                        if not slip:
                            fill = o
                        else:
                            h = self._high[t1]
                            cap = h if h < limit else limit
                            fill = o * self._slip_up
                            if not fill <= cap:
                                fill = cap
                        reference = o
                    else:
                        fill = reference = limit if limit >= self._low[t1] else None
                elif limit <= o:
                    if not slip:
                        fill = o
                    else:
                        fill = o * self._slip_down
                        if not fill >= limit:
                            fill = limit
                    reference = o
                else:
                    fill = reference = limit if limit <= self._high[t1] else None
            if fill is not None:  # _execute inlined (the broker's execute)
                self.cash, self.units, self.avg_price, executed, commission = execute(
                    self.cash, self.units, self.avg_price, qty, fill, self._rate, self._min_fee, self._lev)
                if executed:
                    price = fill
                slip_cost = abs(executed) * abs(fill - reference)
            units = self.units
        # mark to market at close[t1] (account_value inlined)
        cash, avg = self.cash, self.avg_price
        mark = closes[t1]
        value = units * mark
        if value > 0:
            unrealised = units * (mark - avg)
            equity = cash + ((value - unrealised) / self._lev + unrealised)
        else:
            equity = cash + value
        self.equity = equity
        pnl = equity - before
        initial = self._initial
        reward, self.peak = step_reward(self._reward_code, equity, before, self.peak, initial,
                                        self.config.risk_aversion)
        bonus = 0.0
        if self._hindsight and units:
            c = self.config
            bonus = hindsight_bonus(c.hindsight_weight, closes[min(t + c.hindsight_horizon, self.n_bars - 1)],
                                    close, units, initial)
            reward += bonus
        terminated = equity <= self._ruin_level
        info = {"equity": equity, "position": units, "pnl": pnl, "cost": commission + slip_cost,
                "commission": commission, "fill_price": price, "fill_qty": executed, "filled": executed != 0.0,
                "reward_hindsight": bonus}
        if self._future_vol_list is not None:
            info["future_vol"] = self._future_vol_list[t]
        # the observation (_obs and _make_obs inlined: keep the three in step)
        if equity > 0:
            position, cash = units * mark / (self._max_position * equity), cash / equity
        else:
            position = cash = 0.0
        unrealised = units * (mark - avg) / initial
        b = OBS_BOUND
        if position > b:
            position = b
        elif position < -b:
            position = -b
        if unrealised > b:
            unrealised = b
        elif unrealised < -b:
            unrealised = -b
        if cash > b:
            cash = b
        elif cash < -b:
            cash = -b
        wf = self._wf
        start = (t1 + 1) * self.n_features - wf
        obs = self._flat_pad[start:start + wf + N_PRIVATE].copy()
        cells = memoryview(obs)
        cells[wf] = position
        cells[wf + 1] = unrealised
        cells[wf + 2] = cash
        cells[wf + 3] = (t_end - t1) / (t_end - self.t0)
        return obs, reward, terminated, t1 >= t_end and not terminated, info

    def _step_engine(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """step() through the engine hooks (decide_order, _advance, _mark, _obs): engines with their own
        broker (BacktraderEnv) run this."""
        c, t = self.config, self.t
        if t >= self.t_end:
            raise RuntimeError("step() called after the episode ended; call reset()")
        qty, limit = self.decide_order(action)
        executed, price, commission, slip_cost = self._advance(qty, limit)
        before = self.equity
        self.equity = equity = self._mark()
        pnl = equity - before
        initial = c.initial_cash
        reward, self.peak = step_reward(REWARD_CODES[c.reward], equity, before, self.peak, initial, c.risk_aversion)
        bonus = 0.0
        if c.hindsight_weight > 0.0 and self.units:
            bonus = hindsight_bonus(c.hindsight_weight, self._close[min(t + c.hindsight_horizon, self.n_bars - 1)],
                                    self._close[t], self.units, initial)
            reward += bonus
        terminated = equity <= c.ruin_fraction * initial
        truncated = self.t >= self.t_end and not terminated
        info = {"equity": equity, "position": self.units, "pnl": pnl, "cost": commission + slip_cost,
                "commission": commission, "fill_price": price, "fill_qty": executed, "filled": executed != 0.0,
                "reward_hindsight": bonus}
        if self._future_vol_list is not None:
            info["future_vol"] = self._future_vol_list[t]
        return self._obs(), reward, terminated, truncated, info
