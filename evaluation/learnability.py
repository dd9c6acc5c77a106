"""The learnability suite: seeded synthetic markets with known edges, each with its ORACLE, so that every learned
figure reads as a fraction of what was there to learn.

A market is a generating process with a planted edge (or none) and a strength. It is turned into OHLCV bars and
then goes through the toolkit's real feature pipeline (:func:`datafeed.splits.prepare_splits`: cleaning,
indicators, chronological splits with embargoes, train-only normalisation), so an agent sees exactly what a
user's agent sees. A family whose edge lives in a hidden state adds that state as one more feature column
(``f_state``, +1 / -1, known at the bar's close).

Families (``strength`` in brackets; log returns ``r_t``, noise ``e_t ~ N(0, 1)``):

- ``momentum`` [phi > 0]: ``r_t = phi * r_{t-1} + sigma * e_t`` on daily bars. Oracle: hold ``sign(r_t)``.
- ``mean_reversion`` [phi > 0]: the same AR(1) with ``-phi``. Oracle: hold ``-sign(r_t)``.
- ``vol_regime`` [drift per bar]: a hidden two-state Markov chain (calm: ``+drift``, volatility ``sigma``;
  turbulent: ``-2 * drift``, volatility ``2 * sigma``; mean stays 60 and 30 bars), visible as ``f_state``.
  Oracle: long when calm, short when turbulent.
- ``intraday`` [drift per bar]: hourly bars, seven a session (09:30 .. 15:30); the drift of a bar depends on its
  time of day (``+drift`` for the 2nd and 3rd bar of the session, ``-drift`` for the 4th and 5th, ``+drift`` for
  the 6th, 0 otherwise); the pipeline's time-of-day features (``f_tod_sin``, ``f_tod_cos`` and their
  harmonics) carry it. Oracle: hold the sign of the next bar's drift.
- ``drift`` [drift per bar]: a random walk with drift. Oracle: buy and hold.
- ``random_walk``: driftless, nothing to learn (the canary). Oracle: flat (Sharpe undefined).

Bars open at the previous close times a small gap, so a market order at the next open pays slippage like real
bars. The oracle knows the process and the state, and trades through the SAME env, fills and costs as the agents
(:func:`evaluation.backtest.run_backtest`, target positions with market orders); it ignores costs when it
decides, so it is the best policy only up to its turnover, and a learner may even beat it by trading less.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from botcore.markets import infer_market, periods_per_year
from datafeed.splits import prepare_splits
from evaluation.backtest import BacktestResult, evaluation_env_config, run_backtest
from evaluation.baselines import BuyAndHold, TargetPolicy
from evaluation.metrics import probabilistic_sharpe_ratio, sharpe_ratio
from rl_env.data import MarketData

FAMILIES = ("momentum", "mean_reversion", "vol_regime", "intraday", "drift", "random_walk")
PLANTED = ("momentum", "mean_reversion", "vol_regime", "intraday")
"""Families with an edge that buy and hold does not have (the goals are judged on these)."""
DEFAULT_STRENGTH = {"momentum": 0.3, "mean_reversion": 0.3, "vol_regime": 0.002, "intraday": 0.002,
                    "drift": 0.001, "random_walk": 0.0}
SESSION_BARS = 7
INTRADAY_PATTERN = np.array([0.0, 1.0, 1.0, -1.0, -1.0, 1.0, 0.0])
"""Drift sign of each bar of an hourly session (the 1st bar carries the overnight gap, the last is traded flat)."""


@dataclass(frozen=True)
class MarketSpec:
    """One synthetic market: a family, its strength, its length and its per-bar volatility.

    :param family: one of :data:`FAMILIES`.
    :param strength: the family's edge parameter (see the module docstring); None = :data:`DEFAULT_STRENGTH`.
    :param n_bars: bars generated (a few dozen are warm-up for the indicators and embargoes between splits).
    :param sigma: volatility of a bar's log return.
    """

    family: str
    strength: float | None = None
    n_bars: int = 3000
    sigma: float = 0.01

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown market family {self.family!r}; use one of {', '.join(FAMILIES)}")
        if self.strength is None:
            object.__setattr__(self, "strength", DEFAULT_STRENGTH[self.family])

    @property
    def name(self) -> str:
        return self.family if self.family == "random_walk" else f"{self.family}_{self.strength:g}"

    @property
    def interval(self) -> str:
        return "1h" if self.family == "intraday" else "1d"

    @property
    def planted(self) -> bool:
        return self.family in PLANTED


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    noise = sigma * rng.standard_normal(n)
    r = np.empty(n)
    r[0] = noise[0]
    for i in range(1, n):
        r[i] = phi * r[i - 1] + noise[i]
    return r


def _regimes(rng: np.random.Generator, n: int, stay: tuple[float, float]) -> np.ndarray:
    """A two-state Markov chain (0 calm, 1 turbulent) with the given mean stays in bars."""
    leave = 1.0 / np.asarray(stay)
    u = rng.random(n)
    state = np.empty(n, dtype=np.int64)
    s = int(rng.random() < stay[1] / sum(stay))
    for i in range(n):
        if u[i] < leave[s]:
            s = 1 - s
        state[i] = s
    return state


def _timestamps(spec: MarketSpec) -> pd.DatetimeIndex:
    if spec.interval == "1d":
        return pd.bdate_range("2010-01-04", periods=spec.n_bars, name="timestamp")
    days = pd.bdate_range("2010-01-04", periods=-(-spec.n_bars // SESSION_BARS))
    stamps = (days.values[:, None] + np.timedelta64(570, "m") + np.arange(SESSION_BARS) * np.timedelta64(60, "m"))
    return pd.DatetimeIndex(stamps.ravel()[:spec.n_bars], name="timestamp")


def generate_market(spec: MarketSpec, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(raw OHLCV bars, per-bar truth) of one seeded market.

    The truth frame (same index) holds ``target``, the oracle's position in [-1, 1] decided at the bar's close,
    and, for ``vol_regime``, ``f_state`` (the planted state feature, +1 calm / -1 turbulent).
    """
    rng = np.random.default_rng([seed, FAMILIES.index(spec.family)])
    n, sigma, k = spec.n_bars, spec.sigma, float(spec.strength)
    index = _timestamps(spec)
    truth = pd.DataFrame(index=index)
    if spec.family in ("momentum", "mean_reversion"):
        phi = k if spec.family == "momentum" else -k
        r = _ar1(rng, n, phi, sigma)
        truth["target"] = np.sign(phi * r)
    elif spec.family == "vol_regime":
        state = _regimes(rng, n, (60.0, 30.0))
        drift, vol = np.where(state == 0, k, -2.0 * k), np.where(state == 0, sigma, 2.0 * sigma)
        r = np.zeros(n)
        r[1:] = drift[:-1] + vol[:-1] * rng.standard_normal(n - 1)  # bar t+1 follows the state seen at bar t
        truth["f_state"] = np.where(state == 0, 1.0, -1.0)
        truth["target"] = truth["f_state"]
    elif spec.family == "intraday":
        slot = np.arange(n) % SESSION_BARS
        drift = k * INTRADAY_PATTERN[slot]
        r = drift + sigma * rng.standard_normal(n)
        truth["target"] = np.r_[INTRADAY_PATTERN[(slot[:-1] + 1) % SESSION_BARS], 0.0]
    elif spec.family == "drift":
        r = k + sigma * rng.standard_normal(n)
        truth["target"] = 1.0
    else:  # random_walk
        r = sigma * rng.standard_normal(n)
        truth["target"] = 0.0
    r[0] = 0.0
    close = 100.0 * np.exp(np.cumsum(r))
    open_ = np.r_[100.0, close[:-1]] * np.exp(0.05 * sigma * rng.standard_normal(n))
    body_hi, body_lo = np.maximum(open_, close), np.minimum(open_, close)
    high = body_hi * np.exp(np.abs(0.4 * sigma * rng.standard_normal(n)))
    low = body_lo * np.exp(-np.abs(0.4 * sigma * rng.standard_normal(n)))
    volume = np.round(1e6 * np.exp(0.3 * rng.standard_normal(n)))
    raw = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)
    return raw, truth


@dataclass
class PreparedMarket:
    """A market after the feature pipeline: the three split frames (as in the split files, plus ``f_state``
    where the family plants it), the oracle's targets per split, and the annualisation factor."""

    spec: MarketSpec
    seed: int
    symbol: str
    splits: dict[str, pd.DataFrame]
    targets: dict[str, np.ndarray]
    ppy: float

    def data(self, split: str) -> MarketData:
        return MarketData.from_frame(self.splits[split], self.symbol, self.spec.interval)


def prepare_market(spec: MarketSpec, seed: int, cfg: Mapping[str, Any], symbol: str = "SYN") -> PreparedMarket:
    """Generate the market and run it through :func:`datafeed.splits.prepare_splits` with ``cfg``'s data section
    (the user's indicators, split fractions, embargo and train-only normalisation)."""
    raw, truth = generate_market(spec, seed)
    splits = prepare_splits(raw, dict(cfg), symbol, spec.interval)
    targets = {}
    for name, frame in splits.items():
        rows = truth.loc[frame.index]
        if "f_state" in rows:
            splits[name] = pd.concat([frame, rows[["f_state"]]], axis=1)
        targets[name] = rows["target"].to_numpy(dtype=np.float64)
    return PreparedMarket(spec, seed, symbol, splits, targets,
                          periods_per_year(spec.interval, infer_market(symbol)))


class Oracle(TargetPolicy):
    """The best position knowing the generating process: the market's ``target`` at the env's bar."""

    name = "oracle"

    def __init__(self, targets: np.ndarray) -> None:
        super().__init__()
        self.targets = np.asarray(targets, dtype=np.float64)

    def target(self) -> float:
        return float(self.targets[self.env.t])

    def goals(self, close: np.ndarray, first: int, allow_short: bool) -> np.ndarray:
        """Every bar's target at once (the process's truth per bar, known at the bar's close)."""
        return self.targets.copy()


def reference_backtests(market: PreparedMarket, cfg: Mapping[str, Any], split: str) -> dict[str, BacktestResult]:
    """The oracle and buy and hold on one split, through the same env, fills and costs as the agents (target
    positions, market orders, the config's window so that they trade the same bars)."""
    config = evaluation_env_config(dict(cfg), "box")
    data = market.data(split)
    return {"oracle": run_backtest(Oracle(market.targets[split]), data, config),
            "buy_and_hold": run_backtest(BuyAndHold(), data, config)}


def score(result: BacktestResult, ppy: float) -> dict[str, float]:
    """Annualised Sharpe net of costs (0.0 for a policy that never holds a position: flat equity), PSR against
    zero, round-trip trades and total return."""
    sharpe = sharpe_ratio(result.returns, ppy)
    psr = probabilistic_sharpe_ratio(result.returns)
    return {"sharpe": 0.0 if math.isnan(sharpe) else float(sharpe), "psr": 0.0 if math.isnan(psr) else float(psr),
            "trades": float(len(result.trades)),
            "return_pct": float(100.0 * (result.equity[-1] / result.equity[0] - 1.0))}


def positions_by_session_bar(result: BacktestResult) -> list[float]:
    """Mean position held over the i-th bar of a session (i = 0 .. bars a session - 1), as a fraction of the
    largest position held in the run (signed: + long, - short); empty for daily bars.

    The position at a bar's close in ``result`` is the one held over that bar (filled at its open), so entry i
    is the mean exposure over the sessions' i-th bars (a session that the run enters part-way, its first, is
    counted from the run's first bar). Read beside the oracle's: it shows which bars of the session a learner
    trades (``bench/learnability.py`` records it per intraday run).
    """
    stamps = np.asarray(result.timestamps)
    days = stamps.astype("datetime64[D]")
    if len(stamps) < 2 or not np.any(days[1:] == days[:-1]):
        return []
    new_day = np.r_[True, days[1:] != days[:-1]]
    first = np.maximum.accumulate(np.where(new_day, np.arange(len(days)), 0))
    slot = np.arange(len(days)) - first
    exposure = np.nan_to_num(np.asarray(result.exposure, dtype=np.float64))
    scale = float(np.abs(exposure).max()) or 1.0
    return [round(float(exposure[slot == i].mean()) / scale, 3) for i in range(int(slot.max()) + 1)]


def oracle_fraction(sharpe: float, oracle_sharpe: float) -> float:
    """``sharpe / oracle_sharpe``; nan when the oracle has no edge to share (driftless markets)."""
    return sharpe / oracle_sharpe if oracle_sharpe > 0.1 else math.nan


# --- results: one row per (market, agent, seed), summarised per (market, agent) ----------------------------


@dataclass
class RunRow:
    """One agent trained on one seeded market and scored out of sample (test split)."""

    market: str
    family: str
    agent: str
    seed: int
    test_sharpe: float
    oracle_sharpe: float
    bh_sharpe: float
    psr: float
    trades: float
    train_sharpe: float
    val_sharpe: float
    oracle_val_sharpe: float
    seconds: float
    seconds_to_half_oracle: float = math.nan
    steps: int = 0
    curve: list[tuple[float, int, float]] = field(default_factory=list)
    """(seconds, steps, validation Sharpe) at every validation during training."""
    session_positions: list[float] = field(default_factory=list)
    """Intraday markets: the agent's mean position over each bar of the session on the test split
    (:func:`positions_by_session_bar`); empty for daily bars."""
    oracle_session_positions: list[float] = field(default_factory=list)
    """The same for the oracle."""

    @property
    def fraction(self) -> float:
        return oracle_fraction(self.test_sharpe, self.oracle_sharpe)

    @property
    def gap(self) -> float:
        """Training-split Sharpe minus validation Sharpe (large = memorised the training window)."""
        return self.train_sharpe - self.val_sharpe

    @property
    def meets_goal(self) -> bool:
        """Out-of-sample Sharpe at least half the oracle's and above buy and hold."""
        return self.test_sharpe >= 0.5 * self.oracle_sharpe and self.test_sharpe > self.bh_sharpe


def seconds_to_fraction(curve: Sequence[tuple[float, int, float]], target: float) -> float:
    """Wall-clock seconds at the first validation whose Sharpe reaches ``target`` (nan if none did)."""
    for seconds, _, sharpe in curve:
        if math.isfinite(sharpe) and sharpe >= target:
            return float(seconds)
    return math.nan


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarise(rows: Sequence[RunRow]) -> list[dict[str, Any]]:
    """One record per (market, agent): mean and spread (sample sd) over seeds, goal count, PSR > 0.95 count."""
    groups: dict[tuple[str, str], list[RunRow]] = {}
    for r in rows:
        groups.setdefault((r.market, r.agent), []).append(r)
    out = []
    for (market, agent), rs in groups.items():
        rec: dict[str, Any] = {"market": market, "family": rs[0].family, "agent": agent, "seeds": len(rs)}
        for key, values in (("test_sharpe", [r.test_sharpe for r in rs]), ("fraction", [r.fraction for r in rs]),
                            ("oracle_sharpe", [r.oracle_sharpe for r in rs]), ("bh_sharpe", [r.bh_sharpe for r in rs]),
                            ("psr", [r.psr for r in rs]), ("trades", [r.trades for r in rs]),
                            ("gap", [r.gap for r in rs]), ("seconds", [r.seconds for r in rs]),
                            ("seconds_to_half_oracle", [r.seconds_to_half_oracle for r in rs])):
            rec[key], rec[key + "_sd"] = _mean_sd(values)
        rec["goal_met"] = sum(r.meets_goal for r in rs)
        rec["reached_half_oracle"] = sum(math.isfinite(r.seconds_to_half_oracle) for r in rs)
        rec["psr_above_95"] = sum(r.psr > 0.95 for r in rs)
        out.append(rec)
    return out


def _cell(mean: float, sd: float, digits: int = 2) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(sd) else f"{mean:.{digits}f}"


def format_table(summary: Sequence[Mapping[str, Any]], markdown: bool = False) -> str:
    """The learnability table: markets x agents, mean ± sd over seeds."""
    head = ["market", "agent", "seeds", "test Sharpe", "of oracle", "oracle", "B&H", "PSR", "trades",
            "train-val gap", "goal met", "s to half oracle"]
    lines = []
    for s in summary:
        reached = f"{s['reached_half_oracle']}/{s['seeds']}"
        half = f"{s['seconds_to_half_oracle']:.0f} ({reached})" if math.isfinite(s["seconds_to_half_oracle"]) \
            else f"n/a ({reached})"
        goal = f"{s['goal_met']}/{s['seeds']}" if s["family"] in PLANTED else \
            f"PSR>0.95: {s['psr_above_95']}/{s['seeds']}" if s["family"] == "random_walk" else "-"
        lines.append([s["market"], s["agent"], str(s["seeds"]), _cell(s["test_sharpe"], s["test_sharpe_sd"]),
                      _cell(s["fraction"], s["fraction_sd"]), _cell(s["oracle_sharpe"], s["oracle_sharpe_sd"]),
                      _cell(s["bh_sharpe"], s["bh_sharpe_sd"]), _cell(s["psr"], s["psr_sd"]),
                      f"{s['trades']:.0f}", _cell(s["gap"], s["gap_sd"]), goal, half])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(row) + " |" for row in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in lines])


def plot_summary(summary: Sequence[Mapping[str, Any]], rows: Sequence[RunRow], path: str | Path) -> Path:
    """Two panels: test Sharpe per market and agent (bars: mean, whiskers: sd, dots: seeds, diamond: the oracle),
    and validation Sharpe against wall-clock seconds during training (one line per run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markets = list(dict.fromkeys(s["market"] for s in summary))
    agents = list(dict.fromkeys(s["agent"] for s in summary))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(8.0, 1.6 * len(markets) * max(1, len(agents)) / 3), 9))
    width = 0.8 / max(1, len(agents))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, agent in enumerate(agents):
        for i, market in enumerate(markets):
            rec = next((s for s in summary if s["market"] == market and s["agent"] == agent), None)
            if rec is None:
                continue
            x = i + (j - (len(agents) - 1) / 2) * width
            ax.bar(x, rec["test_sharpe"], width, yerr=rec["test_sharpe_sd"], color=colors[j % len(colors)],
                   label=agent if i == 0 else None, alpha=0.8)
            seeds = [r.test_sharpe for r in rows if r.market == market and r.agent == agent]
            ax.plot([x] * len(seeds), seeds, "k.", ms=3)
    for i, market in enumerate(markets):
        oracle = [s["oracle_sharpe"] for s in summary if s["market"] == market][0]
        ax.plot(i, oracle, "kD", ms=6, label="oracle" if i == 0 else None)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(markets)), markets, rotation=20)
    ax.set_ylabel("test Sharpe (annualised, net of costs)")
    ax.legend(fontsize=8, ncol=min(4, len(agents) + 1))
    for r in rows:
        if r.curve:
            j = agents.index(r.agent)
            ax2.plot([c[0] for c in r.curve], [c[2] for c in r.curve], color=colors[j % len(colors)], lw=0.7,
                     alpha=0.6)
    ax2.set_xlabel("wall-clock seconds of training")
    ax2.set_ylabel("validation Sharpe")
    ax2.axhline(0.0, color="grey", lw=0.8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
