"""TradingEnv: checkers, hand-computed fills and costs, no look-ahead, determinism, config and data loading."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from agents.config import DEFAULTS
from botcore.errors import ConfigError, DataError
from botcore.markets import MARKET_COSTS
from deepscalper.config import DeepScalperConfig, training_env_overrides
from evaluation.markets import random_walk_data
from rl_env import EnvConfig, MarketData, TradingEnv

ALL_MODES = [(mode, short) for mode in ("discrete", "multidiscrete", "box") for short in (True, False)]


def bars(open_, high, low, close, interval="1d", timestamps=None) -> MarketData:
    return MarketData.from_arrays(np.array(open_, float), np.array(high, float), np.array(low, float),
                                  np.array(close, float), features=np.zeros((len(close), 1)),
                                  timestamps=timestamps, interval=interval)


def cfg(**kw) -> EnvConfig:
    base = dict(window=1, initial_cash=10_000.0, commission_rate=0.001, commission_min=0.0, slippage_bps=10.0,
                spread_bps=0.0, episode_length=None, random_start=False, margin_leverage=2.0)
    base.update(kw)
    return EnvConfig(**base)


@pytest.mark.parametrize("mode,short", ALL_MODES)
def test_check_env_every_mode_without_warnings(mode, short):
    data = random_walk_data(120, seed=1, interval="1h")
    config = EnvConfig(window=8, action_mode=mode, allow_short=short, episode_length=40, vol_horizon=3,
                       hindsight_weight=0.1, hindsight_horizon=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(TradingEnv(data, config), skip_render_check=True)
        sb3_check_env(TradingEnv(data, config))


def test_market_orders_long_then_flat_hand_computed():
    # bar:      0     1     2     3
    data = bars([100, 101, 103, 104], [101, 103, 104, 106], [99, 100, 101, 103], [100, 102, 101, 105])
    env = TradingEnv(data, cfg())
    obs, info = env.reset()
    assert env.t == 0 and info["equity"] == 10_000.0
    _, reward, term, trunc, info = env.step(2)  # target +1: 100 units (10,000 / close 100)
    fill = 101 * 1.001  # next open plus 10 bp slippage
    fee = 100 * 0.001 * fill
    assert info["filled"] and info["fill_qty"] == pytest.approx(100)
    assert info["fill_price"] == pytest.approx(fill)
    assert info["commission"] == pytest.approx(fee)
    assert info["cost"] == pytest.approx(fee + 100 * (fill - 101))
    assert info["equity"] == pytest.approx(10_000 + 100 * (102 - fill) - fee)
    assert info["pnl"] == pytest.approx(100 * (102 - fill) - fee)
    assert reward == pytest.approx(info["pnl"] / 10_000)
    assert not term and not trunc and env.t == 1
    _, _, _, _, info = env.step(1)  # flat: sell 100 at open 103 less slippage
    exit_fill = 103 * 0.999
    fee2 = 100 * 0.001 * exit_fill
    assert info["fill_price"] == pytest.approx(exit_fill) and info["fill_qty"] == pytest.approx(-100)
    assert info["position"] == 0.0
    assert info["equity"] == pytest.approx(10_000 + 100 * (exit_fill - fill) - fee - fee2)
    _, _, _, trunc, info = env.step(1)  # flat stays flat: no order
    assert not info["filled"] and info["pnl"] == 0.0 and trunc  # end of data truncates


def test_short_reversal_pays_two_minimum_commissions():
    data = bars([50, 50, 52, 49], [51, 51, 53, 50], [49, 49, 51, 48], [50, 51, 52, 49])
    env = TradingEnv(data, cfg(commission_rate=0.0001, commission_min=5.0, slippage_bps=0.0))
    env.reset()
    _, _, _, _, info = env.step(0)  # target -1: short 200 units at open 50
    assert info["fill_qty"] == pytest.approx(-200) and info["fill_price"] == 50
    assert info["commission"] == 5.0  # 200 * 50 * 1e-4 = 1 < minimum 5
    eq1 = 10_000 - 200 * (51 - 50) - 5.0
    assert info["equity"] == pytest.approx(eq1)
    _, _, _, _, info = env.step(2)  # reverse to +1: close 200 and open eq1/51 units at 52
    units_long = eq1 / 51
    assert info["fill_qty"] == pytest.approx(200 + units_long)
    assert info["commission"] == 10.0  # two parts, each at the minimum
    assert info["position"] == pytest.approx(units_long)
    assert info["equity"] == pytest.approx(10_000 - 200 * (52 - 50) - 15.0)  # marked at close 52 = fill
    _, _, _, _, info = env.step(1)  # flat at open 49
    assert info["equity"] == pytest.approx(10_000 - 200 * 2 - 15.0 + units_long * (49 - 52) - 5.0)
    assert env.equity == pytest.approx(10_000 - 200 * 2 - 15.0 + units_long * (49 - 52) - 5.0)


def _vol(closes, window=2):
    return bars(closes, closes, closes, closes).past_volatility(window)


def test_limit_orders_fill_only_when_traded_through():
    closes = [100, 101, 100, 101, 100, 101, 100.9]
    vol = _vol(closes)
    limit_buy = 100 * (1 - vol[2])  # offset -1 at bar 2
    assert 0 < vol[2] < 0.02
    data = bars([100, 100.5, 100.5, 101, 100.2, 100.5, 100.8],
                [100, 101, 100.5, 101.5, 100.5, 101.2, 101.0],
                [100, 100.5, 100, limit_buy + 0.5, 98, 100.4, 100.7], closes)
    config = cfg(action_mode="multidiscrete", price_offsets=(-1.0, 0.0, 1.0), quantity_levels=(-1.0, 0.0, 1.0),
                 slippage_bps=0.0, commission_rate=0.0, vol_window=2, allow_short=False)
    env = TradingEnv(data, config)
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step([0, 2])  # buy 100 at limit 100*(1-vol); bar 3 low stays above it: cancelled
    assert not info["filled"] and info["position"] == 0.0
    _, _, _, _, info = env.step([1, 1])  # no order; bar 4 trades down to 98: the old order must not fill
    assert not info["filled"]
    _, _, _, _, info = env.step([2, 2])  # buy limit 100*(1+vol) above the open 100.5 of bar 5 -> at the open
    assert info["filled"] and info["fill_price"] == 100.5 and info["position"] == pytest.approx(100)
    _, _, _, trunc, info = env.step([1, 0])  # sell lim = equity/close units at limit 101 (offset 0): bar 6
    left = 100 - (10_000 + 100 * 0.5) / 101  # high reaches 101; the order is sized against the position limit
    assert info["filled"] and info["fill_price"] == 101.0 and info["position"] == pytest.approx(left)
    assert info["equity"] == pytest.approx(10_000.0 + (100 - left) * 0.5 + left * 0.4) and trunc


def test_limit_fills_at_limit_inside_bar_and_at_slipped_open_when_better():
    closes = [100, 101, 100, 98, 99.5]
    vol = _vol(closes)
    limit_buy = 100 * (1 - vol[2])
    assert 98 * (1 - vol[3]) < 99 * 0.998  # the sell limit is well under the slipped open
    data = bars([100, 100.5, 100.5, 99.5, 99], [100, 101, 100.5, 100, 100], [100, 100.5, 100, 97.5, 98.9],
                closes)
    config = cfg(action_mode="multidiscrete", price_offsets=(-1.0, 1.0), quantity_levels=(-1.0, 1.0),
                 slippage_bps=20.0, commission_rate=0.0, vol_window=2, allow_short=False)
    env = TradingEnv(data, config)
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step([0, 1])  # buy limit below the open 99.5; low 98.5 trades through: at the limit
    assert info["fill_price"] == pytest.approx(limit_buy)
    assert info["cost"] == 0.0  # a limit filled at its own price pays no slippage
    units = info["position"]
    _, _, _, _, info = env.step([0, 0])  # sell limit below the market: opens 99 -> at 99 less 20 bp
    assert info["fill_price"] == pytest.approx(99 * 0.998)
    assert info["fill_qty"] == pytest.approx(-units) and info["cost"] == pytest.approx(units * 99 * 0.002)


def test_cash_rule_drops_a_buy_that_cash_cannot_pay():
    data = bars([100, 110, 110], [100, 111, 111], [100, 109, 109], [100, 110, 110])
    env = TradingEnv(data, cfg(margin_leverage=1.0, slippage_bps=0.0))
    env.reset()
    _, _, _, _, info = env.step(2)  # 100 units sized at close 100, but the open gaps to 110: 11,000 > cash
    assert not info["filled"] and info["position"] == 0.0 and info["equity"] == 10_000.0


def test_session_end_forces_flat_before_the_last_bar():
    stamps = np.array(["2024-01-02T14:00", "2024-01-02T15:00", "2024-01-02T16:00", "2024-01-03T14:00",
                       "2024-01-03T15:00"], dtype="datetime64[ns]")
    data = bars([10, 10, 11, 12, 12], [10, 11, 12, 13, 13], [10, 10, 11, 12, 12], [10, 11, 11.5, 12, 12.5],
                interval="1h", timestamps=stamps)
    env = TradingEnv(data, cfg(slippage_bps=0.0, commission_rate=0.0))
    env.reset()
    _, _, _, _, info = env.step(2)  # long 1000 units at open[1] = 10
    assert info["position"] == pytest.approx(1000)
    _, _, _, _, info = env.step(2)  # bar 2 closes the session: forced flat at its open (11), whatever the action
    assert info["position"] == 0.0 and info["fill_price"] == 11.0
    assert info["equity"] == pytest.approx(11_000)
    _, _, _, _, info = env.step(2)  # decided at the session's last close: fills at the next session's open
    assert info["fill_price"] == 12.0 and info["position"] == pytest.approx(11_000 / 11.5)
    _, _, _, _, info = env.step(2)  # bar 4 is the data's (and its session's) last bar: flat at its open
    assert info["position"] == 0.0 and info["fill_price"] == 12.0
    off = TradingEnv(data, cfg(slippage_bps=0.0, commission_rate=0.0, close_at_session_end=False))
    off.reset()
    off.step(2)
    _, _, _, _, info = off.step(2)
    assert info["position"] == pytest.approx(1000)


def test_action_at_t_never_earns_the_move_into_t():
    # a 50% jump from bar 0 to bar 1; the decision at bar 1 must not earn it
    data = bars([100, 100, 150, 150], [100, 150, 151, 151], [100, 100, 149, 149], [100, 150, 150, 151])
    env = TradingEnv(data, cfg(slippage_bps=0.0, commission_rate=0.0))
    env.reset(options={"start": 1})
    _, _, _, _, info = env.step(2)
    assert info["fill_price"] == 150.0 and info["pnl"] == pytest.approx(0.0)


@pytest.mark.parametrize("mode", ["discrete", "multidiscrete", "box"])
def test_changing_the_future_never_changes_the_past(mode):
    base = random_walk_data(200, seed=3)
    cut = 120
    changed = random_walk_data(200, seed=3)
    rng = np.random.default_rng(9)
    for name in ("open", "high", "low", "close"):
        getattr(changed, name)[cut + 1:] *= rng.uniform(0.5, 1.5)
    changed.high[cut + 1:] = np.maximum.reduce([changed.open, changed.high, changed.low, changed.close])[cut + 1:]
    changed.low[cut + 1:] = np.minimum.reduce([changed.open, changed.high, changed.low, changed.close])[cut + 1:]
    changed.features[cut + 1:] += 5.0
    config = EnvConfig(window=8, action_mode=mode, episode_length=None, random_start=False)
    runs = []
    for data in (base, changed):
        env = TradingEnv(data, config)
        env.action_space.seed(4)
        obs, _ = env.reset()
        trace = [obs]
        while env.t < cut:
            obs, reward, _, _, info = env.step(env.action_space.sample())
            trace += [obs, reward, info["equity"], info["position"], info["fill_price"]]
        runs.append(trace)
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_same_seed_same_trajectory_and_random_starts():
    data = random_walk_data(400, seed=2)
    config = EnvConfig(window=8, episode_length=50)

    def rollout(seed):
        env = TradingEnv(data, config)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        out = [env.t, obs]
        for _ in range(30):
            obs, r, *_ = env.step(env.action_space.sample())
            out += [obs, r]
        return out

    a, b = rollout(7), rollout(7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    starts = set()
    env = TradingEnv(data, config)
    env.reset(seed=0)
    for _ in range(10):
        env.reset()
        starts.add(env.t)
        assert 7 <= env.t <= 399 - 50
    assert len(starts) > 1


def test_episode_bounds_ruin_and_truncation():
    data = random_walk_data(100, seed=0)
    env = TradingEnv(data, EnvConfig(window=10, episode_length=None, random_start=False))
    env.reset()
    steps, done = 0, False
    while not done:
        _, _, term, trunc, _ = env.step(1)
        steps += 1
        done = term or trunc
    assert steps == 100 - 10 and trunc and not term
    crash = bars([100, 100, 5, 5], [100, 100, 5, 5], [100, 100, 5, 5], [100, 100, 5, 5])
    env = TradingEnv(crash, cfg(slippage_bps=0.0))
    env.reset()
    _, _, term, trunc, info = env.step(2)
    _, _, term, trunc, info = env.step(2)
    assert term and not trunc and info["equity"] <= 1_000


def test_observation_layout():
    data = random_walk_data(60, seed=5, n_features=2)
    env = TradingEnv(data, EnvConfig(window=4, episode_length=20, random_start=False, slippage_bps=0.0))
    obs, _ = env.reset()
    assert obs.shape == (4 * 2 + 4,) and env.n_private == 4 and env.window == 4 and env.n_features == 2
    np.testing.assert_array_equal(obs[:8], data.features[0:4].ravel())
    assert obs[-4:].tolist() == [0.0, 0.0, 1.0, 1.0]
    obs, *_ = env.step(2)
    np.testing.assert_array_equal(obs[:8], data.features[1:5].ravel())
    assert obs[-1] == pytest.approx(19 / 20)
    position_value = env.units * data.close[4]
    assert obs[-4] == pytest.approx(position_value / env.equity, rel=1e-6)
    assert obs[-2] == pytest.approx(env.cash / env.equity, rel=1e-6)


def test_hindsight_bonus_and_future_vol():
    data = random_walk_data(80, seed=6)
    config = EnvConfig(window=5, episode_length=None, random_start=False, hindsight_weight=0.1,
                       hindsight_horizon=3, vol_horizon=4)
    env = TradingEnv(data, config)
    _, info = env.reset()
    lr = np.diff(np.log(data.close))
    assert info["future_vol"] == pytest.approx(np.std(lr[4:8]))
    t = env.t
    _, reward, _, _, info = env.step(2)
    bonus = 0.1 * (data.close[t + 3] - data.close[t]) * env.units / config.initial_cash
    assert info["reward_hindsight"] == pytest.approx(bonus) and bonus != 0
    assert reward == pytest.approx(info["pnl"] / config.initial_cash + bonus)
    assert info["future_vol"] == pytest.approx(np.std(lr[t:t + 4]))
    env.reset(options={"start": 77})
    _, _, _, _, info = env.step(1)
    assert math.isnan(info["future_vol"])


def test_reward_variants():
    data = bars([100, 100, 110, 90], [100, 110, 110, 100], [100, 100, 100, 90], [100, 110, 100, 95])
    for reward in ("log_return", "risk_adjusted"):
        env = TradingEnv(data, cfg(slippage_bps=0.0, commission_rate=0.0, reward=reward, risk_aversion=2.0))
        env.reset()
        _, r1, _, _, _ = env.step(2)  # 100 units at 100 -> close 110: +10%
        _, r2, _, _, _ = env.step(2)  # close 100: -1000 on 11,000
        if reward == "log_return":
            assert r1 == pytest.approx(math.log(1.1)) and r2 == pytest.approx(math.log(10 / 11))
        else:
            assert r1 == pytest.approx(0.1)
            assert r2 == pytest.approx(-1 / 11 - 2.0 * (1 / 11))


def test_env_config_from_config_and_round_trip():
    cfg_tree = {k: v for k, v in DEFAULTS.items()}
    shaping = training_env_overrides(DeepScalperConfig.from_dict(DEFAULTS["deepscalper"]))
    train = EnvConfig.from_config(cfg_tree, "multidiscrete", training=True, **shaping)
    assert train.hindsight_weight == DEFAULTS["deepscalper"]["hindsight_weight"]
    assert train.hindsight_horizon == DEFAULTS["deepscalper"]["hindsight_horizon"]
    assert train.vol_horizon == DEFAULTS["deepscalper"]["vol_horizon"] and train.random_start
    assert train.commission_rate == MARKET_COSTS["equity"]["commission_rate"]  # null in the config: the default
    plain = EnvConfig.from_config(cfg_tree, "discrete", training=True)
    assert plain.hindsight_weight == 0.0 and plain.episode_length == DEFAULTS["env"]["episode_length"]
    evaluation = EnvConfig.from_config(cfg_tree, "multidiscrete", training=False, **shaping)
    assert evaluation.hindsight_weight == 0.0 and evaluation.vol_horizon == 0 and evaluation.episode_length is None
    for key in ("margin_leverage", "risk_aversion", "ruin_fraction", "rebalance_band", "vol_window"):
        assert getattr(plain, key) == DEFAULTS["env"][key]  # every result-changing setting comes from the config
    assert not evaluation.random_start
    assert EnvConfig.from_dict(train.to_dict()) == train
    with pytest.raises(ConfigError):
        EnvConfig.from_dict({**train.to_dict(), "windw": 3})
    with pytest.raises(ConfigError):
        EnvConfig(action_mode="continuous")


def test_market_data_from_frame_round_trip_and_bad_values():
    data = random_walk_data(50, seed=1)
    import pandas as pd

    frame = pd.DataFrame({"timestamp": data.timestamps, "open": data.open, "high": data.high, "low": data.low,
                          "close": data.close, "volume": data.volume,
                          **{name: data.features[:, i] for i, name in enumerate(data.feature_names)}})
    loaded = MarketData.from_frame(frame, "SYN", "1d")
    assert loaded.symbol == "SYN" and loaded.interval == "1d" and loaded.feature_names == data.feature_names
    np.testing.assert_allclose(loaded.close, data.close)
    np.testing.assert_array_equal(loaded.timestamps, data.timestamps)
    with pytest.raises(DataError, match="feature columns"):
        MarketData.from_frame(frame[["timestamp", "open", "high", "low", "close", "volume"]], "SYN", "1d")
    frame.loc[3, "close"] = np.nan
    with pytest.raises(DataError, match="NaN"):
        MarketData.from_frame(frame, "SYN", "1d")
    with pytest.raises(DataError, match="window"):
        TradingEnv(data, EnvConfig(window=60))


@pytest.mark.slow
def test_memory_stays_flat_over_a_thousand_episodes():
    """1,000 episodes of TradingEnv and of the one-env TradingVecEnv (every mode, random starts, fills): the
    memory Python holds after the 1,000th episode is what it was after the 100th (nothing accumulates)."""
    import tracemalloc

    from rl_env import TradingVecEnv

    data = random_walk_data(400, seed=3, interval="1h")
    rng = np.random.default_rng(0)
    for mode in ("discrete", "multidiscrete", "box"):
        config = EnvConfig(window=6, action_mode=mode, episode_length=6, hindsight_weight=0.1, hindsight_horizon=2,
                           vol_horizon=3)
        env, vec = TradingEnv(data, config), TradingVecEnv(data, config, 1, seed=0)
        env.reset(seed=0)
        vec.reset()
        actions = [env.action_space.sample() for _ in range(64)]
        tracemalloc.start()
        try:
            held = {}
            for episode in range(1, 1001):
                done = False
                while not done:
                    _, _, terminated, truncated, _ = env.step(actions[int(rng.integers(64))])
                    done = terminated or truncated
                env.reset()
                while not vec.step(np.asarray([actions[int(rng.integers(64))]]))[2][0]:
                    pass
                if episode in (100, 1000):
                    held[episode] = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert held[1000] - held[100] < 16_384, (mode, held)
