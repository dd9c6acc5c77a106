"""A planted regime market, and DeepScalper trained on it: a learnable pattern versus a pure random walk.

Data (seeded): a hidden regime s_t in {-1, +1} switches with probability ``switch_prob`` per bar; the next
bar's log return is ``drift * s_t + sigma * noise``; bars open at the previous close. Two features per bar:
the regime s_t (known at bar t's close, so it predicts the NEXT return: a planted, learnable signal) and the
bar's own standardised log return. The random-walk control has ``drift = 0``: the regime feature is then
useless and there is nothing to learn.

The agent trains on one series (random 200-bar episodes, hindsight bonus and volatility target on, costs of
the project's defaults: commission 5 bp, slippage 1 bp) and is evaluated greedily on a FRESH series from the
same process (different seed) in an env without hindsight (reward == P&L), from its first bar to its last.
Reported: annualised Sharpe (252 bars a year, ddof=1) of the agent's equity returns net of costs, its
t-statistic (per-bar mean / standard error), total return, and buy-and-hold over the same bars.
"""
from __future__ import annotations

import numpy as np

from deepscalper import DeepScalper, DeepScalperConfig, training_env_overrides
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.trading_env import TradingEnv

WINDOW = 4
ENV_KW = dict(window=WINDOW, action_mode="multidiscrete", commission_rate=0.0005, slippage_bps=1.0,
              close_at_session_end=False)
AGENT_KW = dict(hidden_size=32, learning_rate=1e-3, gamma=0.9, batch_size=64, buffer_size=20_000,
                learning_starts=500, target_update_interval=200, exploration_fraction=0.3,
                exploration_final_eps=0.05, micro_window=WINDOW, rnn="mingru")


def planted_series(n_bars: int, seed: int, drift: float = 0.004, sigma: float = 0.01,
                   switch_prob: float = 0.05) -> MarketData:
    """Regime-drift bars with the regime as a feature (``drift=0``: a pure random walk)."""
    rng = np.random.default_rng(seed)
    flips = rng.random(n_bars) < switch_prob
    regime = np.where(np.cumsum(flips) % 2 == 0, 1.0, -1.0) * (1 if rng.random() < 0.5 else -1)
    log_ret = np.zeros(n_bars)
    log_ret[1:] = drift * regime[:-1] + sigma * rng.standard_normal(n_bars - 1)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.r_[close[0], close[:-1]]
    wiggle = sigma * 0.5 * np.abs(rng.standard_normal((2, n_bars)))
    high = np.maximum(open_, close) * (1 + wiggle[0])
    low = np.minimum(open_, close) * (1 - wiggle[1])
    features = np.stack([regime, log_ret / sigma], axis=1).astype(np.float32)
    return MarketData.from_arrays(open_, high, low, close, features=features,
                                  feature_names=["f_regime", "f_log_return"])


def evaluate(agent: DeepScalper, data: MarketData) -> dict[str, float]:
    """Greedy run over the whole series in an evaluation env (no hindsight, reward == P&L)."""
    env = TradingEnv(data, EnvConfig(**ENV_KW, episode_length=None, random_start=False))
    obs, info = env.reset()
    equity = [info["equity"]]
    first = env.t
    done = False
    while not done:
        action, _ = agent.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        assert reward == info["pnl"] / env.config.initial_cash  # no hindsight bonus in evaluation
        equity.append(info["equity"])
        done = terminated or truncated
    equity_arr = np.asarray(equity)
    returns = equity_arr[1:] / equity_arr[:-1] - 1.0
    std = returns.std(ddof=1)
    close = data.close[first:first + len(equity_arr)]
    bh_returns = close[1:] / close[:-1] - 1.0
    return {"sharpe": float(np.sqrt(252) * returns.mean() / std) if std > 0 else 0.0,
            "t_stat": float(returns.mean() / std * np.sqrt(len(returns))) if std > 0 else 0.0,
            "total_return_pct": float(100 * (equity_arr[-1] / equity_arr[0] - 1)),
            "bh_return_pct": float(100 * (close[-1] / close[0] - 1)),
            "bh_sharpe": float(np.sqrt(252) * bh_returns.mean() / bh_returns.std(ddof=1))}


VARIANTS = {"full": {}, "no_hindsight": {"use_hindsight": False}, "no_aux": {"use_aux": False},
            "single_branch": {"single_branch": True}}


def run(pattern: bool, steps: int, seed: int, train_bars: int = 3000, test_bars: int = 1000,
        **overrides: object) -> dict[str, float]:
    """Train on one seeded series and evaluate on a fresh one; ``pattern=False`` is the random walk.

    :param overrides: DeepScalperConfig fields, e.g. the ablation switches of ``VARIANTS``.
    """
    drift = 0.004 if pattern else 0.0
    cfg = DeepScalperConfig(**{**AGENT_KW, **overrides}, seed=seed)
    train_env = TradingEnv(planted_series(train_bars, 1000 + seed, drift),
                           EnvConfig(**ENV_KW, episode_length=200, **training_env_overrides(cfg)))
    agent = DeepScalper(train_env, cfg)
    agent.learn(steps)
    return evaluate(agent, planted_series(test_bars, 2000 + seed, drift))
