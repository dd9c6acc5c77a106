"""EnvConfig: every setting of the trading environments in one dataclass (read from training_config.json)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botcore.errors import ConfigError
from botcore.markets import resolve_costs

ACTION_MODES = ("discrete", "multidiscrete", "box")
REWARDS = ("equity", "log_return", "risk_adjusted")


@dataclass
class EnvConfig:
    """Settings shared by TradingEnv, TradingVecEnv and BacktraderEnv."""

    window: int = 32
    """Bars of features in one observation."""
    action_mode: str = "discrete"
    """discrete (target position levels) | multidiscrete (limit offset x signed quantity) | box (target in [-1, 1])."""
    initial_cash: float = 100_000.0
    """Starting cash of every episode."""
    allow_short: bool = True
    """Allow negative positions."""
    max_position: float = 1.0
    """Position limit: |position value| / equity at decision time (orders are sized against it)."""
    position_levels: int = 3
    """discrete mode: evenly spaced targets in [-max_position, max_position] ([0, max] when long-only)."""
    price_offsets: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    """multidiscrete mode: limit price = close * (1 + offset * vol), vol = std of past returns."""
    quantity_levels: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    """multidiscrete mode: signed order size as a fraction of max_position (0 = no order)."""
    reward: str = "equity"
    """equity (change in equity / initial_cash) | log_return | risk_adjusted (return - risk_aversion * new drawdown)."""
    episode_length: int | None = 256
    """Steps per training episode; None = the whole split from its first decision bar (evaluation)."""
    close_at_session_end: bool = True
    """Intraday data: be flat over the last bar of each session (date)."""
    commission_rate: float = 0.0005
    """Commission as a fraction of traded notional."""
    commission_min: float = 0.0
    """Minimum commission per executed part of an order, in currency."""
    slippage_bps: float = 1.0
    """Adverse slippage on market orders (and on limit orders filled at the open), basis points."""
    spread_bps: float = 0.0
    """Bid-ask spread in basis points; half of it is paid on market orders."""
    hindsight_weight: float = 0.0
    """DeepScalper hindsight bonus weight w (training only; 0 = off)."""
    hindsight_horizon: int = 0
    """Hindsight horizon h in bars."""
    vol_horizon: int = 0
    """Bars of future log returns in info["future_vol"] (0 = not reported)."""
    random_start: bool = True
    """Training: start episodes at random bars drawn from np_random; False = start at the first decision bar."""
    session_episodes: bool = True
    """Intraday training (random_start): an episode is one trading session, from a random session's first
    decision bar to its last bar (episode_length caps it). Evaluation always runs the whole split."""
    vol_window: int = 20
    """Bars of past returns in the volatility that scales limit offsets."""
    margin_leverage: float = 2.0
    """Broker buying power: a buy's opening part needs cost / margin_leverage + commission in cash."""
    rebalance_band: float = 0.05
    """discrete/box: no order unless the target differs from the current position by more than this
    fraction of max_position (or the target is flat)."""
    risk_aversion: float = 0.5
    """risk_adjusted reward: penalty per unit of new drawdown."""
    ruin_fraction: float = 0.1
    """The episode terminates when equity falls to this fraction of initial_cash or below."""

    def __post_init__(self) -> None:
        self.price_offsets = tuple(float(x) for x in self.price_offsets)
        self.quantity_levels = tuple(float(x) for x in self.quantity_levels)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible setting."""
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"env config: {key} = {getattr(self, key)!r} {why}")

        if self.action_mode not in ACTION_MODES:
            raise bad("action_mode", f"must be one of {', '.join(ACTION_MODES)}")
        if self.reward not in REWARDS:
            raise bad("reward", f"must be one of {', '.join(REWARDS)}")
        if self.window < 1:
            raise bad("window", "must be 1 or more")
        if self.initial_cash <= 0:
            raise bad("initial_cash", "must be greater than 0")
        if not 0 < self.max_position <= 10:
            raise bad("max_position", "must be in (0, 10]")
        if self.position_levels < 2:
            raise bad("position_levels", "must be 2 or more")
        if not self.price_offsets or not self.quantity_levels:
            raise ConfigError("env config: price_offsets and quantity_levels must be non-empty lists")
        if any(abs(q) > 1 for q in self.quantity_levels):
            raise bad("quantity_levels", "must lie in [-1, 1] (fractions of max_position)")
        if any(o <= -1e3 or o >= 1e3 for o in self.price_offsets):
            raise bad("price_offsets", "must be moderate multiples of volatility")
        if self.episode_length is not None and self.episode_length < 1:
            raise bad("episode_length", "must be 1 or more, or None for the whole split")
        for key in ("commission_rate", "commission_min", "slippage_bps", "spread_bps", "hindsight_weight",
                    "rebalance_band", "risk_aversion", "ruin_fraction"):
            if getattr(self, key) < 0:
                raise bad(key, "must be 0 or more")
        if self.commission_rate >= 0.1:
            raise bad("commission_rate", "must be below 0.1")
        if self.hindsight_horizon < 0 or self.vol_horizon < 0:
            raise ConfigError("env config: hindsight_horizon and vol_horizon must be 0 or more")
        if self.hindsight_weight > 0 and self.hindsight_horizon < 1:
            raise bad("hindsight_horizon", "must be 1 or more when hindsight_weight > 0")
        if self.vol_window < 2:
            raise bad("vol_window", "must be 2 or more")
        if self.margin_leverage < 1:
            raise bad("margin_leverage", "must be 1 or more")
        if self.ruin_fraction >= 1:
            raise bad("ruin_fraction", "must be below 1")

    @property
    def slip_perc(self) -> float:
        """Price impact of a market order as a fraction: half the spread plus the slippage."""
        return (self.spread_bps / 2.0 + self.slippage_bps) / 1e4

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], action_mode: str = "discrete", training: bool = True,
                    market: str = "equity", **overrides: Any) -> EnvConfig:
        """Build from the resolved config tree (``load_config()``): reads ``cfg["env"]`` and
        ``cfg["data"]["costs"]``, whose nulls take ``market``'s default costs
        (:func:`botcore.markets.resolve_costs`; numbers in the config win).

        ``training=False`` (evaluation and validation) runs the whole split from its first decision bar with no
        training-only shaping: ``episode_length=None``, ``random_start=False``, no hindsight bonus and no
        volatility target, whatever the overrides say. An agent that shapes its training env (DeepScalper's
        hindsight bonus) passes its settings as overrides with ``training=True``.

        :param overrides: any EnvConfig field, applied last.
        """
        env, costs = cfg["env"], resolve_costs(cfg["data"]["costs"], market).values
        kwargs: dict[str, Any] = dict(
            window=int(env["window"]), action_mode=action_mode, initial_cash=float(env["initial_cash"]),
            allow_short=bool(env["allow_short"]), max_position=float(env["max_position"]),
            position_levels=int(env["position_levels"]), price_offsets=tuple(env["price_offsets"]),
            quantity_levels=tuple(env["quantity_levels"]), reward=env["reward"],
            episode_length=int(env["episode_length"]) if env.get("episode_length") else None,
            close_at_session_end=bool(env["close_at_session_end"]),
            session_episodes=bool(env["session_episodes"]),
            commission_rate=float(costs["commission_rate"]), commission_min=float(costs["commission_min"]),
            slippage_bps=float(costs["slippage_bps"]), spread_bps=float(costs["spread_bps"]),
            vol_window=int(env["vol_window"]), margin_leverage=float(env["margin_leverage"]),
            rebalance_band=float(env["rebalance_band"]), risk_aversion=float(env["risk_aversion"]),
            ruin_fraction=float(env["ruin_fraction"]), random_start=training,
        )
        kwargs.update(overrides)
        if not training:
            kwargs.update(episode_length=None, random_start=False, hindsight_weight=0.0, hindsight_horizon=0,
                          vol_horizon=0)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["price_offsets"] = list(self.price_offsets)
        d["quantity_levels"] = list(self.quantity_levels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnvConfig:
        """Inverse of :meth:`to_dict`; an unknown key raises ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"env config: unknown key(s) {', '.join(unknown)}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> EnvConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

