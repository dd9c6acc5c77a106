"""run_backtest: both engines, equity and trade bookkeeping, bind() for rule-based policies."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.backtest import BacktestResult, run_backtest
from evaluation.markets import random_walk_data
from rl_env import EnvConfig, MarketData


class RandomPolicy:
    def __init__(self, space, seed: int) -> None:
        self.space = space
        space.seed(seed)

    def predict(self, obs, deterministic=True):
        return self.space.sample(), None


class BuyAndHold:
    """A rule-based policy: uses bind(env) to see where it is."""

    def bind(self, env) -> None:
        self.env = env
        self.bound_at = env.t

    def predict(self, obs, deterministic=True):
        return np.array(2), None


@pytest.mark.parametrize("mode", ["discrete", "multidiscrete"])
def test_both_engines_give_the_same_result(mode):
    from rl_env import TradingEnv

    data = random_walk_data(150, seed=7)
    config = EnvConfig(window=5, action_mode=mode, commission_min=1.0, spread_bps=2.0, episode_length=30,
                       hindsight_weight=0.5, hindsight_horizon=2)
    space = TradingEnv(data, config).action_space
    fast = run_backtest(RandomPolicy(space, 1), data, config, engine="fast")
    bt = run_backtest(RandomPolicy(space, 1), data, config, engine="backtrader")
    assert isinstance(fast, BacktestResult) and fast.engine == "fast" and bt.engine == "backtrader"
    assert fast.n_bars == bt.n_bars == 150 - 4  # the whole split, despite episode_length in the config
    np.testing.assert_allclose(bt.equity, fast.equity, rtol=1e-9, atol=0)
    np.testing.assert_allclose(bt.positions, fast.positions, rtol=1e-9, atol=1e-12)
    assert len(bt.trades) == len(fast.trades) > 5
    assert bt.costs_paid == pytest.approx(fast.costs_paid, rel=1e-9)
    assert fast.config["hindsight_weight"] == 0.0  # evaluation never pays the hindsight bonus


def test_curve_trades_and_costs_are_consistent():
    data = random_walk_data(200, seed=3)
    config = EnvConfig(window=8, commission_rate=0.001, slippage_bps=5.0)
    from rl_env import TradingEnv

    res = run_backtest(RandomPolicy(TradingEnv(data, config).action_space, 4), data, config)
    assert res.equity[0] == config.initial_cash
    assert len(res.returns) == len(res.equity) - 1 == len(res.timestamps) - 1
    np.testing.assert_allclose(res.returns, res.equity[1:] / res.equity[:-1] - 1)
    np.testing.assert_array_equal(res.prices, data.close[7:])
    np.testing.assert_array_equal(res.timestamps, data.timestamps[7:])
    np.testing.assert_allclose(res.exposure, res.positions * res.prices / res.equity)
    # every currency unit of P&L is in some trade: the trades' net P&L adds up to the equity change
    assert sum(t["pnl"] for t in res.trades) == pytest.approx(res.equity[-1] - res.equity[0], rel=1e-9)
    assert all(t["duration_bars"] >= 1 and t["side"] in ("long", "short") and t["size"] > 0 for t in res.trades)
    assert all(t["entry_time"] <= t["exit_time"] for t in res.trades)
    assert res.costs_paid > res.commissions > 0 and res.turnover > 1


def test_buy_and_hold_hand_checked():
    close = np.array([100.0, 100, 110, 120, 90])
    data = MarketData.from_arrays(close, close + 1, close - 1, close)
    config = EnvConfig(window=1, commission_rate=0.001, slippage_bps=0.0, initial_cash=1000.0)
    policy = BuyAndHold()
    res = run_backtest(policy, data, config)
    assert policy.bound_at == 0
    units = 1000.0 / 100
    fee = units * 100 * 0.001
    np.testing.assert_allclose(res.equity, [1000, 1000 - fee, 1100 - fee, 1200 - fee, 900 - fee])
    np.testing.assert_allclose(res.positions, [0, units, units, units, units])
    [trade] = res.trades
    assert trade["open"] and trade["side"] == "long" and trade["size"] == pytest.approx(units)
    assert trade["entry_time"] == "2000-01-04" and trade["exit_time"] == "2000-01-07"
    assert trade["entry_price"] == 100 and trade["exit_price"] == 90 and trade["duration_bars"] == 3
    assert trade["pnl"] == pytest.approx(-100 - fee)
    assert trade["return_pct"] == pytest.approx(100 * (-100 - fee) / 1000)
    assert res.costs_paid == pytest.approx(fee) and res.turnover == pytest.approx(1000 / res.equity.mean())


def test_unknown_engine_is_a_user_error():
    from botcore.errors import UserError

    with pytest.raises(UserError, match="engine"):
        run_backtest(BuyAndHold(), random_walk_data(30), EnvConfig(window=4), engine="zipline")


def test_default_evaluation_is_fast_with_a_backtrader_parity_spot_check(workspace):
    """evaluate_bot.py's default engine is the fast one; each champion's first parity_bars bars are replayed on
    backtrader's broker and the gap is in the JSON (zero here: the engines agree); --parity-bars 0 skips it."""
    import json

    import data_pipeline
    import evaluate_bot
    from agents.config import load_config
    from agents.registry import Registry
    from agents.sb3_agent import save_sb3
    from datafeed.dataset import Dataset
    from rl_env import TradingEnv

    assert data_pipeline.main(["--symbols", "SYN", "--source", "synthetic", "--seed", "2", "--bars", "900",
                               "--quiet"]) == 0
    from stable_baselines3 import PPO

    cfg = load_config()
    train = MarketData.from_frame(Dataset.open("SYN", "1d").split("train"), "SYN", "1d")
    env_config = EnvConfig.from_config(cfg, action_mode="discrete", training=True)
    model = PPO("MlpPolicy", TradingEnv(train, env_config), seed=3, device="cpu", policy_kwargs={"net_arch": [8]})
    save_sb3(model, "ppo", {"net_arch": [8]}, workspace / "ppo.zip")
    record, _ = Registry().register(workspace / "ppo.zip", {
        "model_type": "backtrader", "algo": "ppo", "symbol": "SYN", "interval": "1d",
        "validation": {"sharpe_ratio": 0.1}, "env_config": env_config.to_dict(), "action_mode": "discrete",
        "feature_columns": list(train.feature_names)}, promote=True)

    def run(*flags: str) -> dict:
        assert evaluate_bot.main(["--symbol", "SYN", "--quiet", *flags]) == 0
        return json.loads(max((workspace / "results").glob("model_comparison_SYN_*.json")).read_text())

    out = run("--parity-bars", "50")
    assert out["engine"] == "fast" and out["models"][record.run_id]["engine"] == "fast"
    check = out["parity_check"][record.run_id]
    assert check["status"] == "ok" and check["bars"] == env_config.window + 50
    assert check["final_equity_diff_pct"] == 0.0 and check["max_equity_diff_pct"] == 0.0
    assert check["num_trades_backtrader"] == check["num_trades_fast"]
    assert out["models"][record.run_id]["parity_check"] == check
    import time

    time.sleep(1.1)  # result files are named by the second
    assert run("--parity-bars", "0")["parity_check"] == {}
