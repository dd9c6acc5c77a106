"""BacktraderEnv: checkers, agreement with TradingEnv (fills and equity), clean shutdown, PPO training."""
from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from evaluation.markets import random_walk_data
from rl_env import BacktraderEnv, EnvConfig, MarketData, TradingEnv


def _worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "backtrader-env"]


@pytest.mark.parametrize("mode", ["discrete", "multidiscrete", "box"])
def test_check_env_both_checkers(mode):
    data = random_walk_data(80, seed=1)
    config = EnvConfig(window=5, action_mode=mode, episode_length=20)
    env = BacktraderEnv(data, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
        sb3_check_env(env)
    env.close()
    assert not _worker_threads()


def _run_pair(data: MarketData, config: EnvConfig, actions) -> tuple[list, list]:
    fast, broker = TradingEnv(data, config), BacktraderEnv(data, config)
    traces = []
    for env in (fast, broker):
        obs, info = env.reset()
        trace = [(obs, info["equity"], 0.0, 0.0, 0.0)]
        for action in actions:
            obs, _, term, trunc, info = env.step(action)
            trace.append((obs, info["equity"], info["fill_qty"], info["fill_price"], info["commission"]))
            if term or trunc:
                break
        traces.append(trace)
        env.close()
    return traces[0], traces[1]


def _assert_agree(a, b) -> int:
    assert len(a) == len(b)
    fills = 0
    for (obs_a, eq_a, q_a, p_a, c_a), (obs_b, eq_b, q_b, p_b, c_b) in zip(a, b):
        assert eq_b == pytest.approx(eq_a, rel=1e-9, abs=0)
        assert q_b == pytest.approx(q_a, rel=1e-9, abs=1e-12)
        assert p_b == pytest.approx(p_a, rel=1e-9, abs=0)
        assert c_b == pytest.approx(c_a, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(obs_b, obs_a, rtol=1e-6, atol=1e-6)
        fills += q_a != 0
    return fills


@pytest.mark.parametrize("mode,short,interval", [("discrete", True, "1h"), ("discrete", False, "1d"),
                                                 ("multidiscrete", True, "1d"), ("multidiscrete", False, "1h"),
                                                 ("box", True, "1d")])
def test_agreement_with_fast_env_on_random_actions(mode, short, interval):
    data = random_walk_data(260, seed=21, interval=interval, gap_vol=0.006)
    config = EnvConfig(window=6, action_mode=mode, allow_short=short, episode_length=None, random_start=False,
                       commission_rate=0.001, commission_min=2.0, slippage_bps=3.0, spread_bps=4.0,
                       max_position=1.5)
    space = TradingEnv(data, config).action_space
    space.seed(3)
    actions = [space.sample() for _ in range(300)]
    a, b = _run_pair(data, config, actions)
    assert len(a) == 260 - 5
    assert _assert_agree(a, b) > 50


def test_agreement_limits_that_fill_and_do_not_and_cash_rejections():
    data = random_walk_data(200, seed=5, gap_vol=0.01)
    config = EnvConfig(window=4, action_mode="multidiscrete", episode_length=None, random_start=False,
                       price_offsets=(-2.0, -0.5, 0.0, 0.5, 2.0), quantity_levels=(-1.0, -0.5, 0.0, 0.5, 1.0),
                       margin_leverage=1.0, max_position=1.0, commission_rate=0.002, slippage_bps=5.0)
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 5, 2) for _ in range(200)]
    fast = TradingEnv(data, config)
    fast.reset()
    outcomes = set()
    for action in actions:
        qty, limit = fast.decide_order(action)
        _, _, _, trunc, info = fast.step(action)
        if qty:
            outcomes.add(("filled" if info["filled"] else "unfilled", "buy" if qty > 0 else "sell"))
        if trunc:
            break
    assert outcomes == {("filled", "buy"), ("unfilled", "buy"), ("filled", "sell"), ("unfilled", "sell")}
    a, b = _run_pair(data, config, actions)
    _assert_agree(a, b)
    # cash rule: a buy sized at the close that the gap-up open makes unaffordable is dropped by both brokers
    gap = MarketData.from_arrays([100, 100, 105, 105], [100, 100, 106, 106], [100, 100, 104, 104],
                                 [100, 100, 105, 105])
    strict = EnvConfig(window=1, episode_length=None, random_start=False, margin_leverage=1.0, max_position=0.99,
                       commission_rate=0.0, slippage_bps=0.0)
    a, b = _run_pair(gap, strict, [1, 2, 2])
    _assert_agree(a, b)
    assert a[2][2] == 0.0  # 990 units sized at close 100 cost 103,950 at the 105 open: more than the cash
    assert a[3][2] == pytest.approx(0.99 * 100_000 / 105)  # sized at close 105: affordable, fills


def test_clean_shutdown_after_close_reset_mid_episode_and_many_episodes():
    data = random_walk_data(120, seed=2)
    env = BacktraderEnv(data, EnvConfig(window=4, episode_length=3))
    env.reset(seed=0)
    env.step(2)
    assert len(_worker_threads()) == 1
    env.reset()  # mid-episode: the old worker stops
    assert len(_worker_threads()) == 1
    for _ in range(300):  # many episodes, each ending at its last bar or reset early
        env.reset()
        done = False
        while not done:
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            done = term or trunc
        assert len(_worker_threads()) <= 1
    env.reset()
    env.step(0)
    env.close()
    assert not _worker_threads()
    env.close()  # idempotent
    with pytest.raises(RuntimeError):
        env.step(1)


def test_sb3_ppo_trains_on_backtrader_env():
    torch.manual_seed(0)
    env = BacktraderEnv(random_walk_data(300, seed=3), EnvConfig(window=8, episode_length=64))
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    probe = torch.as_tensor(np.stack([TradingEnv(env.data, env.config).reset(options={"start": s})[0]
                                      for s in (10, 100, 200)]))  # the same observations, without a worker

    def action_probs() -> torch.Tensor:
        with torch.no_grad():
            return model.policy.get_distribution(probe).distribution.probs

    before = action_probs()
    model.learn(total_timesteps=256)
    # SB3's Monitor saw our episode ends (truncation after episode_length steps) and the env's P&L rewards
    episodes = list(model.ep_info_buffer)
    assert [e["l"] for e in episodes] == [64] * 4
    assert all(np.isfinite(e["r"]) for e in episodes) and any(e["r"] != 0 for e in episodes)
    after = action_probs()  # and training on them moved the policy
    assert torch.isfinite(after).all() and (after - before).abs().max() > 1e-4, (after - before).abs().max()
    env.close()
    assert not _worker_threads()
