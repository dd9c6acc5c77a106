"""Signals: what a registered model decides on the newest prepared bar, computed by the env's own code.

A model trades forward (on paper, or live) through exactly the observation and order code of training and
backtests: :class:`ForwardEnv` is a :class:`~rl_env.trading_env.TradingEnv` over the bars seen so far, and the
order comes from ``TradingEnv.decide_order`` (sizing arithmetic in :mod:`rl_env.broker`).

One cell differs, on purpose. The observation's last cell is the fraction of the episode left, ``(t_end - t) /
(t_end - t0)``; in a backtest it depends on where the data ends, which forward trading cannot know. A model
trading forward sees it pinned at :data:`FORWARD_EPISODE_LEFT` (1.0: a whole episode ahead, what training
episodes start with). :class:`ForwardPolicy` pins it, in the signal, in the paper broker and in the parity
replay through ``run_backtest`` alike, so the three agree bar for bar.

``evaluate_bot.py --signal`` is the command line over :func:`compute_signals`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from agents import Registry, RunRecord, load_registered
from agents.registry import MODEL_TYPES
from botcore.errors import ModelFileError, UserError
from botcore.markets import infer_market
from datafeed.dataset import Dataset
from evaluation.backtest import evaluation_config, evaluation_env_config
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.trading_env import TradingEnv

logger = logging.getLogger(__name__)

FORWARD_EPISODE_LEFT = 1.0
"""The episode-progress cell a model sees when it trades forward (there is no episode end to count down to)."""


def forward_observation(obs: np.ndarray) -> np.ndarray:
    """A copy of an env observation with its episode-progress cell (the last) set to FORWARD_EPISODE_LEFT."""
    out = np.array(obs, dtype=np.float32, copy=True)
    out[..., -1] = FORWARD_EPISODE_LEFT
    return out


class ForwardPolicy:
    """A trained model acting as it does in forward trading (``predict`` sees :func:`forward_observation`).

    Pass it to :func:`evaluation.backtest.run_backtest` to replay forward trading: the backtest then decides
    exactly as the paper broker did on the same bars.

    :param model: a loaded model (``agents.load_registered``) with ``predict(obs, deterministic=True)``.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    @property
    def observation_space(self) -> Any:
        return getattr(self.model, "observation_space", None)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[Any, Any]:
        return self.model.predict(forward_observation(obs), deterministic=deterministic)

    def explain(self, obs: np.ndarray) -> dict[str, Any]:
        """Why the model acts as it does on ``obs``: its Q-values (DeepScalper, DQN), its action probabilities
        (PPO, A2C on discrete actions) or its action distribution's mean and standard deviation (box)."""
        return explain(self.model, forward_observation(obs))


def explain(model: Any, obs: np.ndarray) -> dict[str, Any]:
    """The numbers behind a model's decision on one observation (see :meth:`ForwardPolicy.explain`)."""
    if hasattr(model, "q_values"):  # DeepScalper: one row of Q-values per action branch
        return {"kind": "q_values", "values": [branch[0].tolist() for branch in model.q_values(obs)]}
    policy = getattr(model, "policy", None)
    if policy is None or not hasattr(policy, "obs_to_tensor"):
        return {}
    import torch

    with torch.no_grad():
        tensor, _ = policy.obs_to_tensor(obs)
        if hasattr(policy, "q_net"):  # DQN
            return {"kind": "q_values", "values": policy.q_net(tensor)[0].cpu().numpy().tolist()}
        dist = policy.get_distribution(tensor).distribution
        if hasattr(dist, "probs"):
            return {"kind": "action_probabilities", "values": dist.probs[0].cpu().numpy().tolist()}
        return {"kind": "action_distribution", "mean": dist.mean[0].cpu().numpy().tolist(),
                "std": dist.stddev[0].cpu().numpy().tolist()}


def session_lag(interval: str, config: EnvConfig) -> int:
    """Bars that must follow a bar before a forward decision on it is the env's: 2 on intraday data with
    ``close_at_session_end``, 0 otherwise.

    The env orders the position flat at the decision on bar ``t`` when bar ``t+1`` is the last of its session
    (date), and whether it is shows only on bar ``t+2``'s date (``TradingEnv.force_flat[t] =
    session_last[t+1]``). Deciding on bar ``t`` once bar ``t+2`` is stored applies exactly that rule, with the
    env's own code; the model still sees bars up to ``t`` only, and its order still fills in bar ``t+1``.
    """
    return 2 if interval != "1d" and config.close_at_session_end else 0  # intraday as MarketData.intraday


class ForwardEnv(TradingEnv):
    """TradingEnv over the bars seen so far, placed at any bar with any account, for one forward decision.

    ``observe`` gives the observation of bar ``t`` for an account ``(cash, units, avg_price, equity)`` with the
    env's own observation code; ``decide_order`` (inherited) then turns the model's action into the order.
    Both read bars up to ``t`` only (features, volatility, close), and the session flattening reads the dates
    of bars ``t+1`` and ``t+2`` as the env does (:func:`session_lag`): a decision is possible on the bars
    ``< decidable``. Without session flattening (daily bars) TradingEnv still needs a bar after its first
    decision bar, so the env holds a copy of the last bar after it (a placeholder nothing reads): ``data`` may
    end on the decision bar, as it does in forward trading.
    """

    def __init__(self, data: MarketData, config: EnvConfig) -> None:
        config = evaluation_config(config)
        lag = session_lag(data.interval, config)
        self.decidable = data.n_bars - lag
        super().__init__(data if lag else _with_placeholder(data), config)
        self.reset(seed=0)

    def observe(self, t: int, cash: float, units: float, avg_price: float, equity: float) -> np.ndarray:
        if not self.window - 1 <= t < self.decidable:
            raise ValueError(f"bar {t} has no full observation window or is not decidable yet "
                             f"({self.decidable} decidable bars)")
        self.t, self.cash, self.units, self.avg_price, self.equity = t, cash, units, avg_price, equity
        return self._obs()


def _with_placeholder(data: MarketData) -> MarketData:
    """``data`` and a copy of its last bar one day later (see :class:`ForwardEnv`)."""
    def extend(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, a[-1:]])

    stamps = np.concatenate([data.timestamps, data.timestamps[-1:] + np.timedelta64(1, "D")])
    return MarketData(data.symbol, data.interval, stamps, extend(data.open), extend(data.high), extend(data.low),
                      extend(data.close), extend(data.volume), extend(data.features), list(data.feature_names))


# --- the signal command -------------------------------------------------------------------------------

@dataclass
class Decision:
    """One model's decision on one bar.

    :param bar: index of the bar in the data the decision was computed on.
    :param action: the model's raw action (a list for array actions).
    :param units: signed units ordered (0 = no order); ``limit_price`` None = a market order at the next open.
    :param target_fraction: discrete/box: the target position as a fraction of the position limit.
    :param why: the model's Q-values or action probabilities (:func:`explain`).
    """

    bar: int
    timestamp: str
    close: float
    action: Any
    units: float
    limit_price: float | None
    target_fraction: float | None
    position_units: float
    equity: float
    why: dict[str, Any] = field(default_factory=dict)

    @property
    def side(self) -> str:
        return "buy" if self.units > 0 else "sell" if self.units < 0 else "hold"


def bar_time(ts: np.datetime64, interval: str) -> str:
    """A bar's time as in the split files: ``YYYY-MM-DD`` for daily bars, ``YYYY-MM-DD HH:MM:SS`` intraday."""
    return str(np.datetime_as_string(ts, unit="D" if interval == "1d" else "s")).replace("T", " ")


def action_to_json(action: Any) -> Any:
    arr = np.asarray(action)
    return arr.item() if arr.ndim == 0 else arr.reshape(-1).tolist()


def target_fraction(env: TradingEnv, action: Any) -> float | None:
    """The target position (fraction of the limit) a discrete or box action asks for; None for limit orders."""
    mode = env.config.action_mode
    if mode == "discrete":
        return float(env.levels[int(np.asarray(action).reshape(-1)[0])])
    if mode == "box":
        a = min(1.0, max(-1.0, float(np.asarray(action, dtype=np.float64).reshape(-1)[0])))
        return a if env.config.allow_short else (a + 1.0) / 2.0
    return None


def decide_on_last_bar(policy: ForwardPolicy, data: MarketData, config: EnvConfig) -> Decision:
    """Replay ``policy`` over ``data`` as :func:`~evaluation.backtest.run_backtest` does (same env, same reset,
    same account from the first decision bar), then let it decide on the last bar.

    The result is the backtest's own decision on that bar: a backtest over ``data`` plus later bars takes the
    same action there (no look-ahead), which ``tests/test_trading.py`` checks.
    """
    env = TradingEnv(data, evaluation_config(config))
    try:
        obs, _ = env.reset(seed=0)
        while env.t < env.t_end:
            action, _ = policy.predict(obs, deterministic=True)
            obs, _, terminated, _, _ = env.step(action)
            if terminated:
                raise UserError(f"the model's account was ruined at bar {env.t} of the replay "
                                f"({bar_time(data.timestamps[env.t], data.interval)}); it has no signal")
        action, _ = policy.predict(obs, deterministic=True)
        units, limit = env.decide_order(action)
        t = env.t
        return Decision(bar=t, timestamp=bar_time(data.timestamps[t], data.interval), close=float(data.close[t]),
                        action=action_to_json(action), units=float(units),
                        limit_price=None if math.isnan(limit) else float(limit),
                        target_fraction=target_fraction(env, action), position_units=float(env.units),
                        equity=float(env.equity), why=policy.explain(obs))
    finally:
        env.close()


def model_env_config(record: RunRecord, cfg: dict[str, Any]) -> EnvConfig:
    """The env a registered model trades in: its stored ``env_config`` (window, actions, limits) with the
    current config's costs and cash (as evaluate_bot.py builds it)."""
    stored = record.metadata.get("env_config")
    if not isinstance(stored, dict):
        raise ModelFileError(f"{record.path}/metadata.json holds no env_config; cannot rebuild the model's env")
    return evaluation_env_config(cfg, record.metadata.get("action_mode") or "discrete", trained=stored,
                                 market=infer_market(record.symbol))


def check_features(record: RunRecord, data: MarketData) -> None:
    """UserError when the data's feature columns are not the ones the model was trained on."""
    meta = record.metadata
    trained = meta.get("feature_columns") or (meta.get("dataset") or {}).get("feature_columns")
    if trained and list(trained) != list(data.feature_names):
        raise UserError(f"model {record.run_id} was trained on {len(trained)} feature columns, the prepared data of "
                        f"{data.symbol} {data.interval} has {len(data.feature_names)} others; prepare the data with "
                        "the model's indicators (data.indicators) or retrain it")


def training_data_end(record: RunRecord) -> str | None:
    """The last bar the model's training or model selection saw: the end of its validation split (or of the
    training data used), as written in its metadata. Bars after it are forward data for this model."""
    dataset = record.metadata.get("dataset") or {}
    ends = [str(((dataset.get("ranges") or {}).get("val") or {}).get("end") or ""),
            str((dataset.get("train_used") or {}).get("end") or "")[:19].replace("T", " ")]
    ends = [e for e in ends if e]
    return max(ends) if ends else None


def select_records(registry: Registry, symbol: str, interval: str, model: str) -> list[RunRecord]:
    """``champion``: the champion of each model type of the symbol; otherwise the run id named."""
    if model != "champion":
        record = registry.get(model)
        if record.symbol != symbol or record.interval != interval:
            raise UserError(f"model {record.run_id} was trained on {record.symbol} {record.interval}, not on "
                            f"{symbol} {interval}")
        return [record]
    records = [r for r in (registry.champion(symbol, interval, m) for m in MODEL_TYPES) if r is not None]
    if not records:
        raise UserError(f"no champion for {symbol} {interval} yet; train one with: python train_bot.py --symbol "
                        f"{symbol}, or name a run with --model RUN")
    return records


def compute_signals(symbol: str, cfg: dict[str, Any], model: str = "champion",
                    now: datetime | None = None) -> dict[str, Any]:
    """The decision of the model(s) on the newest prepared bar of ``symbol`` (the test split's last bar).

    Each model replays the test split from its first decision bar, as the backtest does, and decides on the
    newest bar: the order (side, units, limit price or market), the target position for discrete and box
    actions, and why (Q-values or action probabilities).

    :param model: ``champion`` (the champion of each model type) or a run id.
    :param now: the time against which the model's age and the data's staleness are measured.
    :return: a JSON-able dict: symbol, interval, the bar, whether the data is stale, one entry per model.
    """
    now = now or datetime.now(UTC)
    interval = cfg["data"]["interval"]
    dataset = Dataset.open(symbol, interval)
    data = MarketData.from_frame(dataset.split("test"), symbol=symbol, interval=interval)
    newest = data.timestamps[-1].astype("datetime64[s]").astype(datetime).replace(tzinfo=UTC)
    age_days = (now - newest).total_seconds() / 86400.0
    limit_days = float(cfg["monitoring"]["max_data_age_days"])
    registry = Registry.from_config(cfg)
    models = []
    for record in select_records(registry, symbol, interval, model):
        config = model_env_config(record, cfg)
        check_features(record, data)
        policy = ForwardPolicy(load_registered(registry, record))
        decision = decide_on_last_bar(policy, data, config)
        created = _parse_time(record.created)
        models.append({
            "run_id": record.run_id, "model_type": record.model_type, "algo": record.algo,
            "is_champion": record.is_champion, "created": record.created,
            "model_age_days": None if created is None else round((now - created).total_seconds() / 86400.0, 2),
            "training_data_end": training_data_end(record), "action_mode": config.action_mode,
            "decision": {"side": decision.side, "units": decision.units, "limit_price": decision.limit_price,
                         "order_type": "none" if not decision.units else
                         "market" if decision.limit_price is None else "limit",
                         "target_fraction": decision.target_fraction, "action": decision.action,
                         "replay_position_units": decision.position_units, "replay_equity": decision.equity,
                         "why": decision.why},
        })
    return {"symbol": symbol, "interval": interval, "bar": bar_time(data.timestamps[-1], interval),
            "close": float(data.close[-1]), "data_age_days": round(age_days, 2), "stale": age_days > limit_days,
            "max_data_age_days": limit_days, "replay_start": bar_time(data.timestamps[0], interval),
            "manifest_hash": dataset.hash, "models": models}


def format_signals(out: dict[str, Any]) -> str:
    """The human-readable ``--signal`` output of :func:`compute_signals`."""
    stale = (f"STALE: {out['data_age_days']:.1f} days old, more than monitoring.max_data_age_days "
             f"{out['max_data_age_days']:g}; update the data first" if out["stale"]
             else f"{out['data_age_days']:.1f} days old")
    lines = [f"{out['symbol']} {out['interval']}: newest bar {out['bar']} (close {out['close']:.4f}; {stale})"]
    for m in out["models"]:
        d = m["decision"]
        if d["order_type"] == "none":
            order = "no order (hold)"
        else:
            price = "at the next open" if d["order_type"] == "market" else f"limit {d['limit_price']:.4f}"
            order = f"{d['side']} {abs(d['units']):.4f} units {price}"
        target = "" if d["target_fraction"] is None else f"; target position {d['target_fraction']:+.2f} of the limit"
        age = "?" if m["model_age_days"] is None else f"{m['model_age_days']:.1f}"
        role = "champion" if m["is_champion"] else "challenger"
        lines.append(f"  {m['model_type']} {m['algo']} {m['run_id']} ({role}, {age} days old, trained on data to "
                     f"{m['training_data_end'] or '?'}): {order}{target}")
        lines.append(f"    replayed from {out['replay_start']}: position {d['replay_position_units']:.4f} units, "
                     f"equity {d['replay_equity']:.2f}")
        if d["why"]:
            lines.append(f"    why ({d['why']['kind']}): {_short(d['why'])}")
    return "\n".join(lines)


def _short(why: dict[str, Any]) -> str:
    def fmt(values: Any) -> str:
        if isinstance(values, list):
            return "[" + ", ".join(fmt(v) for v in values) + "]"
        return f"{values:.4g}"

    return "; ".join(f"{k} {fmt(v)}" for k, v in why.items() if k != "kind")


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
