"""run_backtest: run any policy over a whole split in the fast engine or in backtrader's broker."""
from __future__ import annotations

import bisect
import contextlib
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from botcore.errors import DataError, UserError
from evaluation.metrics import sharpe_ratio
from rl_env.broker import account_value, execute, fill_price, flatten_order, position_limit, target_order
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.trading_env import TradingEnv, split_order

logger = logging.getLogger(__name__)
ENGINES = ("fast", "backtrader")


class Policy(Protocol):
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[Any, Any]: ...


@dataclass
class BacktestResult:
    """One policy's run over a split.

    Arrays hold one value per bar from the first decision bar (``window - 1``) to the last bar reached
    (the end of the split, or the bar where ruin ended the run).

    :param timestamps: datetime64[ns] per bar.
    :param equity: account value marked at each bar's close; ``equity[0] = initial_cash``.
    :param returns: simple returns ``equity[i+1] / equity[i] - 1`` (length ``len(equity) - 1``).
    :param positions: signed units held at each bar's close.
    :param exposure: position value / equity at each bar's close.
    :param prices: close per bar.
    :param trades: round trips, each a dict with entry_time, exit_time (ISO strings), side ("long" |
        "short"), size (largest |units| held), entry_price (average), exit_price (average), pnl (net of
        commissions; slippage and spread are in the fill prices), return_pct (pnl / (entry_price * size) *
        100), duration_bars, open (True for a position still held at the end, marked at the last close and
        without an exit commission).
    :param fills: every executed order in time order, each a dict with time (ISO string of the bar it filled
        in), bar (that bar's row in the split's data), qty (signed units: buy > 0) and price (the fill price,
        slippage and spread included, always inside that bar's low..high): what the trades plot marks.
    :param lows: low of each bar of the curve (as ``prices``), so a plot can show the range fills happen in.
    :param highs: high of each bar of the curve.
    :param costs_paid: commissions plus slippage and spread paid, in currency.
    :param turnover: traded notional / mean equity.
    :param engine: "fast" or "backtrader".
    :param n_bars: bars in the curve (``len(equity)``).
    """

    timestamps: np.ndarray
    equity: np.ndarray
    returns: np.ndarray
    positions: np.ndarray
    exposure: np.ndarray
    prices: np.ndarray
    trades: list[dict[str, Any]]
    costs_paid: float
    turnover: float
    engine: str
    n_bars: int
    commissions: float = 0.0
    n_fills: int = 0
    terminated: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    fills: list[dict[str, Any]] = field(default_factory=list)
    lows: np.ndarray = field(default_factory=lambda: np.empty(0))
    highs: np.ndarray = field(default_factory=lambda: np.empty(0))


# Cost and account settings taken from the CURRENT config for every model and baseline alike (like for like);
# the rest of a model's env settings (window, action mode, position limits) come from its own training run.
SHARED_ENV_FIELDS = ("initial_cash", "commission_rate", "commission_min", "slippage_bps", "spread_bps")


def evaluation_config(config: EnvConfig) -> EnvConfig:
    """The config of an evaluation run: whole split from the first decision bar, no hindsight bonus."""
    return config.replace(episode_length=None, random_start=False, hindsight_weight=0.0, hindsight_horizon=0,
                          vol_horizon=0)


def evaluation_env_config(cfg: dict[str, Any], action_mode: str, trained: dict[str, Any] | None = None,
                          market: str = "equity", **overrides: Any) -> EnvConfig:
    """The one way an evaluation or validation env config is built.

    :param cfg: the resolved config; its costs and initial cash apply to every model and baseline alike.
    :param action_mode: the policy's action mode (``box`` for the baselines).
    :param trained: a registered model's stored ``env_config``: its window, action mode and position limits
        are kept (the model was trained with them), costs and cash come from ``cfg``.
    :param market: the evaluated data's market (equity, fx, crypto): its default costs fill the config's nulls
        (:func:`botcore.markets.resolve_costs`).
    :param overrides: EnvConfig fields (e.g. the baselines' ``window``).
    """
    current = EnvConfig.from_config(cfg, action_mode, training=False, market=market, **overrides)
    if trained is None:
        return current
    return evaluation_config(EnvConfig.from_dict(trained).replace(
        **{k: getattr(current, k) for k in SHARED_ENV_FIELDS}))


def validation_score(policy: Policy, data: MarketData, config: EnvConfig, ppy: float) -> tuple[float, Any]:
    """(annualised Sharpe net of costs, BacktestResult) of ``policy`` acting deterministically on ``data`` (the
    validation split) with the fast engine: the score that keeps the best round and decides promotion."""
    result = run_backtest(policy, data, config, engine="fast", deterministic=True)
    return float(sharpe_ratio(result.returns, ppy)), result


def make_env(data: MarketData, config: EnvConfig, engine: str = "fast") -> TradingEnv:
    """A TradingEnv (engine "fast") or a BacktraderEnv (engine "backtrader")."""
    if engine == "fast":
        return TradingEnv(data, config)
    if engine == "backtrader":
        from rl_env.backtrader_env import BacktraderEnv

        return BacktraderEnv(data, config)
    raise UserError(f"unknown engine {engine!r}; use fast or backtrader")


def _iso(ts: np.datetime64, daily: bool) -> str:
    return str(ts.astype("datetime64[D]" if daily else "datetime64[s]")).replace("T", " ")


class _TradeBook:
    """Turns fills into round-trip trades (a trade runs from a flat position back to flat or to a reversal)."""

    def __init__(self, config: EnvConfig, timestamps: np.ndarray, daily: bool) -> None:
        self.rate, self.minimum = config.commission_rate, config.commission_min
        self.timestamps, self.daily = timestamps, daily
        self.trades: list[dict[str, Any]] = []
        self.fills: list[dict[str, Any]] = []
        self.size = 0.0
        self.avg = 0.0
        self.current: dict[str, Any] | None = None
        self._labels: dict[int, str] = {}

    def label_bars(self, bars: np.ndarray) -> None:
        """Format the time stamps of ``bars`` in one call (the target engine knows its fill bars in advance)."""
        unit = "D" if self.daily else "s"
        text = np.char.replace(np.datetime_as_string(self.timestamps[bars], unit=unit), "T", " ")
        self._labels.update(zip(bars.tolist(), text.tolist()))

    def _label(self, bar: int) -> str:
        label = self._labels.get(bar)
        if label is None:
            label = self._labels[bar] = _iso(self.timestamps[bar], self.daily)
        return label

    def _fee(self, part: float, price: float) -> float:
        fee = abs(part) * self.rate * price
        return fee if fee >= self.minimum else self.minimum

    def fill(self, bar: int, qty: float, price: float) -> None:
        self.fills.append({"time": self._label(bar), "bar": int(bar), "qty": float(qty),
                           "price": float(price)})
        opened, closed = split_order(self.size, qty)
        if closed:
            cur = self.current
            cur["pnl"] += -closed * (price - self.avg) - self._fee(closed, price)
            cur["exit_value"] += abs(closed) * price
            cur["exit_units"] += abs(closed)
            self.size += closed
            if not self.size:
                self._finish(bar, open_=False)
        if opened:
            if self.current is None:
                self.current = {"entry_bar": bar, "side": "long" if opened > 0 else "short", "pnl": 0.0,
                                "entry_value": 0.0, "entry_units": 0.0, "exit_value": 0.0, "exit_units": 0.0,
                                "size": 0.0}
                self.avg = 0.0
            cur = self.current
            cur["pnl"] -= self._fee(opened, price)
            new = self.size + opened
            self.avg = (self.avg * self.size + opened * price) / new
            self.size = new
            cur["entry_value"] += abs(opened) * price
            cur["entry_units"] += abs(opened)
            cur["size"] = max(cur["size"], abs(new))

    def _finish(self, bar: int, open_: bool) -> None:
        cur, self.current = self.current, None
        entry_price = cur["entry_value"] / cur["entry_units"]
        exit_price = cur["exit_value"] / cur["exit_units"] if cur["exit_units"] else float("nan")
        self.trades.append({
            "entry_time": self._label(cur["entry_bar"]), "exit_time": self._label(bar), "side": cur["side"],
            "size": cur["size"],
            "entry_price": entry_price, "exit_price": exit_price, "pnl": cur["pnl"],
            "return_pct": 100.0 * cur["pnl"] / (entry_price * cur["size"]),
            "duration_bars": int(bar - cur["entry_bar"]), "open": open_,
        })

    def finish_open(self, bar: int, close: float) -> None:
        """Mark a position still held at the end at the last close (no exit commission)."""
        if self.current is None or not self.size:
            return
        cur = self.current
        cur["pnl"] += self.size * (close - self.avg)
        cur["exit_value"] += abs(self.size) * close
        cur["exit_units"] += abs(self.size)
        self._finish(bar, open_=True)


def run_backtest(policy: Policy, data: MarketData, config: EnvConfig, engine: str = "fast",
                 deterministic: bool = True, batched: bool = True) -> BacktestResult:
    """Run ``policy`` over the whole of ``data`` and return the equity curve, positions, trades and costs.

    The env is built with :func:`evaluation_config` (whole split, no hindsight bonus). The policy needs
    ``predict(obs, deterministic=True) -> (action, state)`` (stable-baselines3 style); if it has
    ``bind(env)`` that is called once after the reset (rule-based baselines read ``env.t`` and ``env.data``).

    :param engine: "fast" (TradingEnv) or "backtrader" (BacktraderEnv: backtrader's broker fills).
    :param batched: with deterministic actions, a model that :func:`evaluation.batched.split_predictor` can split
        gets its market encoding computed for all bars in one pass and its actions decided a stretch of bars at a
        time (on either engine: the actions are the model's own), and on the fast engine a baseline with
        vectorised targets runs on :func:`run_target_backtest` (fills only where its target moves); both give
        exactly the bar-by-bar result (tests/test_batched_eval.py). False asks ``predict`` bar by bar.
    """
    config = evaluation_config(config)
    fast = engine == "fast" and deterministic and batched
    if fast and callable(getattr(policy, "targets", None)) and config.action_mode in ("box", "discrete"):
        return run_target_backtest(policy, data, config)
    env = make_env(data, config, engine)
    try:
        obs, info = env.reset(seed=0)
        if hasattr(policy, "bind"):
            policy.bind(env)
        bars = [env.t]
        equity = [info["equity"]]
        positions = [info["position"]]
        book = _TradeBook(config, data.timestamps, daily=not data.intraday)
        costs = commissions = traded = 0.0
        n_fills = 0
        terminated = truncated = False
        with compute_threads(1):
            predictor = None
            if deterministic and batched:
                from evaluation.batched import split_predictor

                predictor = split_predictor(policy, env)
            while not (terminated or truncated):
                action = None if predictor is None else predictor(env.t, obs)
                if action is None:
                    action, _ = policy.predict(obs, deterministic=deterministic)
                obs, _, terminated, truncated, info = env.step(action)
                bars.append(env.t)
                equity.append(info["equity"])
                positions.append(info["position"])
                costs += info["cost"]
                commissions += info["commission"]
                if info["filled"]:
                    n_fills += 1
                    traded += abs(info["fill_qty"]) * info["fill_price"]
                    book.fill(env.t, info["fill_qty"], info["fill_price"])
    finally:
        env.close()
    return _result(data, config, engine, np.asarray(bars), np.asarray(equity, dtype=np.float64),
                   np.asarray(positions, dtype=np.float64), book, costs, commissions, traded, n_fills, terminated)


def _result(data: MarketData, config: EnvConfig, engine: str, idx: np.ndarray, equity_arr: np.ndarray,
            pos: np.ndarray, book: _TradeBook, costs: float, commissions: float, traded: float, n_fills: int,
            terminated: bool) -> BacktestResult:
    """The BacktestResult of a run over bars ``idx`` (both engines and the target engine build it here)."""
    prices = data.close[idx]
    book.finish_open(int(idx[-1]), float(prices[-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        exposure = np.where(equity_arr > 0, pos * prices / equity_arr, 0.0)
        returns = equity_arr[1:] / equity_arr[:-1] - 1.0
    logger.debug("backtest %s %s (%s): %d bars, %d fills, final equity %.2f", data.symbol, data.interval, engine,
                 len(idx), n_fills, equity_arr[-1])
    return BacktestResult(
        timestamps=data.timestamps[idx], equity=equity_arr, returns=returns, positions=pos, exposure=exposure,
        prices=prices, trades=book.trades, costs_paid=float(costs),
        turnover=float(traded / equity_arr.mean()) if equity_arr.mean() > 0 else float("nan"),
        engine=engine, n_bars=len(idx), commissions=float(commissions), n_fills=n_fills,
        terminated=bool(terminated), config=config.to_dict(), fills=book.fills, lows=data.low[idx],
        highs=data.high[idx],
    )


def run_target_backtest(policy: Any, data: MarketData, config: EnvConfig) -> BacktestResult:
    """The fast engine's backtest of a policy whose target positions are known for every bar in advance (the
    baselines: ``policy.targets(data, config)`` gives the env's target fraction per bar), without stepping
    the env bar by bar.

    The account changes only where an order fills, so the run is simulated from order to order: the bars where
    the target changes or a session ends are decided one by one with :mod:`rl_env.broker`'s functions (the
    env's own arithmetic), the equity between them is marked with array operations, and every other bar is
    checked, as an array, for an order the env would have sent there (the position drifting outside the
    rebalance band) or for ruin; such a bar restarts the simulation from it. The result equals
    ``run_backtest(..., batched=False)`` exactly (fills, costs, equity; tests/test_batched_eval.py).
    """
    config = evaluation_config(config)
    sim = _TargetSimulation(data, config, np.asarray(policy.targets(data, config), dtype=np.float64))
    sim.run()
    return sim.result()


class _TargetSimulation:
    """State of :func:`run_target_backtest`: the account from fill to fill and the fills so far."""

    def __init__(self, data: MarketData, config: EnvConfig, targets: np.ndarray) -> None:
        n, window = data.n_bars, config.window
        if n < window + 1:
            raise DataError(f"{data.symbol or 'data'} {data.interval}: {n} bars, but a window of {window} needs at "
                            f"least {window + 1}; use more data or a smaller env.window")
        if targets.shape != (n,):
            raise ValueError(f"targets must hold one value per bar ({n}), not shape {targets.shape}")
        self.data, self.config, self.targets = data, config, targets
        self.first, self.last = window - 1, n - 1
        self.close = np.asarray(data.close, dtype=np.float64)
        self.force_flat = np.zeros(n, dtype=bool)
        if data.intraday and config.close_at_session_end:
            self.force_flat[:-1] = data.session_last()[1:]  # as TradingEnv: the next bar closes its session
        candidate = self.force_flat.copy()
        candidate[1:] |= targets[1:] != targets[:-1]
        self.candidates = np.flatnonzero(candidate[:self.last])
        # .item(t) reads python floats (the env's arithmetic) without converting whole columns to lists
        self._open, self._high, self._low = (np.asarray(x, dtype=np.float64).item for x in (data.open, data.high,
                                                                                             data.low))
        self._close_at, self._target_at, self._flat_at = self.close.item, targets.item, self.force_flat.item
        self.ruin = config.ruin_fraction * config.initial_cash
        self._lev, self._max_position, self._band = config.margin_leverage, config.max_position, config.rebalance_band
        self._slip, self._rate, self._min_fee = config.slip_perc, config.commission_rate, config.commission_min
        # the account from bar change_bars[i] on (state after the fill in that bar) and the fills
        self.change_bars, self.cash, self.units, self.avg = [self.first], [float(config.initial_cash)], [0.0], [0.0]
        self.fills: list[tuple[int, float, float, float, float]] = []  # (bar, units, price, commission, cost)
        self.end = self.last
        self.terminated = False

    def _decide(self, t: int) -> None:
        """TradingEnv's decision at bar t and its fill in bar t + 1 (decide_order + _advance: a market order)."""
        lev = self._lev
        cash, units, avg = self.cash[-1], self.units[-1], self.avg[-1]
        close = self._close_at(t)
        if self._flat_at(t):
            qty = flatten_order(units)
        else:
            equity = account_value(cash, units, avg, close, lev)
            qty = target_order(self._target_at(t), units, position_limit(self._max_position, equity, close),
                               self._band)
        if not qty:
            return
        t1 = t + 1
        price, reference = fill_price(qty, math.nan, self._open(t1), self._high(t1), self._low(t1), self._slip)
        cash, units, avg, executed, commission = execute(cash, units, avg, qty, price, self._rate, self._min_fee, lev)
        if not executed:
            return
        self.change_bars.append(t1)
        self.cash.append(cash)
        self.units.append(units)
        self.avg.append(avg)
        self.fills.append((t1, executed, price, commission, commission + abs(executed) * abs(price - reference)))

    def _marks(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(units, equity) at the closes of bars lo .. hi - 1 from the recorded account states."""
        bars = np.arange(lo, hi)
        first = bisect.bisect_right(self.change_bars, lo) - 1  # the state bar lo starts with, and those after it
        k = np.searchsorted(np.asarray(self.change_bars[first:]), bars, side="right") - 1
        cash, units, avg = (np.asarray(x[first:])[k] for x in (self.cash, self.units, self.avg))
        close = self.close[lo:hi]
        value = units * close
        unrealised = units * (close - avg)
        lev = self.config.margin_leverage
        return units, np.where(value > 0, cash + ((value - unrealised) / lev + unrealised), cash + value)

    def _truncate(self, bar: int) -> None:
        """Forget the fills in bars after ``bar`` (their decisions were taken from a wrong account)."""
        while self.change_bars[-1] > bar:
            for x in (self.change_bars, self.cash, self.units, self.avg):
                x.pop()
        while self.fills and self.fills[-1][0] > bar:
            self.fills.pop()

    def _first_missed(self, lo: int, hi: int, decided: np.ndarray) -> tuple[int | None, int | None]:
        """(first decision bar in lo .. hi - 1 not in ``decided`` where the env would send an order, first bar
        in lo + 1 .. hi whose equity is at or below the ruin level), each None when there is none."""
        c = self.config
        units, equity = self._marks(lo, hi + 1)
        close, target = self.close[lo:hi], self.targets[lo:hi]
        u, eq = units[:-1], equity[:-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            lim = np.where(eq > 0, c.max_position * eq / close, 0.0)
            current = np.where(lim > 0, u / lim, 0.0)
        holding = u != 0.0
        order = np.where(target == 0.0, holding, np.abs(target - current) > c.rebalance_band)
        order = np.where(self.force_flat[lo:hi], holding, order)
        order[decided - lo] = False
        missed = np.flatnonzero(order)
        ruined = np.flatnonzero(equity[1:] <= self.ruin)
        return (int(missed[0]) + lo if len(missed) else None), (int(ruined[0]) + lo + 1 if len(ruined) else None)

    def run(self) -> None:
        p, width = self.first, 4096
        while p < self.last:
            q = min(p + width, self.last)
            lo, hi = np.searchsorted(self.candidates, [p + 1, q])
            decided = np.r_[p, self.candidates[lo:hi]]
            for t in decided.tolist():
                self._decide(t)
            missed, ruined = self._first_missed(p, q, decided)
            if missed is not None and (ruined is None or missed < ruined):
                self._truncate(missed)
                p, width = missed, max(256, width // 4)
                continue
            if ruined is not None:
                self._truncate(ruined)
                self.end, self.terminated = ruined, True
                return
            p, width = q, min(width * 2, 1 << 16)

    def result(self) -> BacktestResult:
        idx = np.arange(self.first, self.end + 1)
        units, equity = self._marks(self.first, self.end + 1)
        book = _TradeBook(self.config, self.data.timestamps, daily=not self.data.intraday)
        book.label_bars(np.asarray([f[0] for f in self.fills] + [self.end], dtype=np.int64))
        costs = commissions = traded = 0.0
        for bar, executed, price, commission, cost in self.fills:
            costs += cost
            commissions += commission
            traded += abs(executed) * price
            book.fill(bar, executed, price)
        return _result(self.data, self.config, "fast", idx, equity, units, book, costs, commissions, traded,
                       len(self.fills), self.terminated)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch on ``n`` threads (when torch is in use), then restore the count. A backtest
    predicts one observation at a time; a second thread only adds hand-off costs (bench/evaluate_speed.py)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """Run the block with torch and numpy's BLAS on ``n`` threads each (:func:`torch_threads`; the BLAS count
    through threadpoolctl when it is installed), then restore the counts. A backtest's matrix products are small
    (one observation, or one stretch of bars decided ahead): on a shared machine a second BLAS thread that has to
    wait for a core made a 256-row float64 product about a hundred times slower (19.5 ms against 0.19 ms, measured
    side by side at a load of 10 on the 2-core machine), and on an idle one it gains little at that size."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it numpy's BLAS keeps its own thread count
        limits: Any = contextlib.nullcontext()
    else:
        limits = threadpool_limits(n, user_api="blas")
    with torch_threads(n), limits:
        yield
