"""run_backtest: run any policy over a whole split in the fast engine or in backtrader's broker."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from botcore.errors import UserError
from evaluation.metrics import sharpe_ratio
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


# Cost and account settings taken from the CURRENT config for every model and baseline alike (like for like);
# the rest of a model's env settings (window, action mode, position limits) come from its own training run.
SHARED_ENV_FIELDS = ("initial_cash", "commission_rate", "commission_min", "slippage_bps", "spread_bps")


def evaluation_config(config: EnvConfig) -> EnvConfig:
    """The config of an evaluation run: whole split from the first decision bar, no hindsight bonus."""
    return config.replace(episode_length=None, random_start=False, hindsight_weight=0.0, hindsight_horizon=0,
                          vol_horizon=0)


def evaluation_env_config(cfg: dict[str, Any], action_mode: str, trained: dict[str, Any] | None = None,
                          **overrides: Any) -> EnvConfig:
    """The one way an evaluation or validation env config is built.

    :param cfg: the resolved config; its costs and initial cash apply to every model and baseline alike.
    :param action_mode: the policy's action mode (``box`` for the baselines).
    :param trained: a registered model's stored ``env_config``: its window, action mode and position limits
        are kept (the model was trained with them), costs and cash come from ``cfg``.
    :param overrides: EnvConfig fields (e.g. the baselines' ``window``).
    """
    current = EnvConfig.from_config(cfg, action_mode, training=False, **overrides)
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
        self.size = 0.0
        self.avg = 0.0
        self.current: dict[str, Any] | None = None

    def _fee(self, part: float, price: float) -> float:
        fee = abs(part) * self.rate * price
        return fee if fee >= self.minimum else self.minimum

    def fill(self, bar: int, qty: float, price: float) -> None:
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
            "entry_time": _iso(self.timestamps[cur["entry_bar"]], self.daily),
            "exit_time": _iso(self.timestamps[bar], self.daily), "side": cur["side"], "size": cur["size"],
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
                 deterministic: bool = True) -> BacktestResult:
    """Run ``policy`` over the whole of ``data`` and return the equity curve, positions, trades and costs.

    The env is built with :func:`evaluation_config` (whole split, no hindsight bonus). The policy needs
    ``predict(obs, deterministic=True) -> (action, state)`` (stable-baselines3 style); if it has
    ``bind(env)`` that is called once after the reset (rule-based baselines read ``env.t`` and ``env.data``).

    :param engine: "fast" (TradingEnv) or "backtrader" (BacktraderEnv: backtrader's broker fills).
    """
    config = evaluation_config(config)
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
        while not (terminated or truncated):
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
    idx = np.asarray(bars)
    equity_arr = np.asarray(equity, dtype=np.float64)
    prices = data.close[idx]
    pos = np.asarray(positions, dtype=np.float64)
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
        terminated=bool(terminated), config=config.to_dict(),
    )
