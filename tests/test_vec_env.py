"""TradingVecEnv: step-by-step agreement with TradingEnv, automatic reset, seeding, SB3 PPO training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from evaluation.markets import random_walk_data
from rl_env import EnvConfig, TradingEnv, TradingVecEnv


def _actions(mode: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if mode == "discrete":
        return rng.integers(0, 3, n)
    if mode == "multidiscrete":
        return rng.integers(0, 5, (n, 2))
    return rng.uniform(-1, 1, (n, 1)).astype(np.float32)


@pytest.mark.parametrize("mode", ["discrete", "multidiscrete", "box"])
@pytest.mark.parametrize("reward", ["equity", "log_return", "risk_adjusted"])
def test_vec_env_matches_single_envs_exactly(mode, reward):
    data = random_walk_data(300, seed=11, interval="1h")  # intraday: session closes included
    config = EnvConfig(window=6, action_mode=mode, reward=reward, episode_length=40, hindsight_weight=0.1,
                       hindsight_horizon=3, vol_horizon=3, commission_min=1.0, spread_bps=2.0,
                       allow_short=reward != "log_return")
    starts = [10, 57, 123, 200]
    vec = TradingVecEnv(data, config, n_envs=4, seed=0, full_info=True)
    vec.set_options([{"start": s} for s in starts])
    vec_obs = vec.reset()
    envs = [TradingEnv(data, config) for _ in starts]
    single = [env.reset(options={"start": s})[0] for env, s in zip(envs, starts)]
    np.testing.assert_array_equal(vec_obs, np.stack(single))
    rng = np.random.default_rng(2)
    fills = 0
    for _ in range(39):
        actions = _actions(mode, rng, 4)
        vec_obs, vec_rew, vec_done, vec_infos = vec.step(actions)
        for i, env in enumerate(envs):
            obs, rew, term, trunc, info = env.step(actions[i])
            np.testing.assert_array_equal(vec_obs[i], obs)
            assert vec_rew[i] == np.float32(rew)
            assert not vec_done[i] and not (term or trunc)
            for key in ("equity", "position", "pnl", "cost", "fill_price", "fill_qty", "reward_hindsight",
                        "future_vol"):
                np.testing.assert_equal(vec_infos[i][key], info[key])
            fills += info["filled"]
    assert fills > 20


@pytest.mark.parametrize("mode", ["discrete", "multidiscrete", "box"])
@pytest.mark.parametrize("session_episodes", [False, True])
def test_one_env_steps_through_trading_env_exactly_like_the_array_path(mode, session_episodes):
    """n_envs=1 runs TradingEnv's own step (full_info=True keeps the array path): same observations, rewards,
    dones, terminal observations, episode starts and per-env arrays over many automatic resets."""
    data = random_walk_data(400, seed=5, interval="1h")
    config = EnvConfig(window=6, action_mode=mode, episode_length=25, session_episodes=session_episodes,
                       hindsight_weight=0.1, hindsight_horizon=3, commission_min=1.0, reward="risk_adjusted")
    fast, arrays = TradingVecEnv(data, config, 1, seed=3), TradingVecEnv(data, config, 1, seed=3, full_info=True)
    assert fast._single and not arrays._single
    np.testing.assert_array_equal(fast.reset(), arrays.reset())
    rng = np.random.default_rng(9)
    dones = 0
    for _ in range(300):
        actions = _actions(mode, rng, 1)
        a, b = fast.step(actions), arrays.step(actions)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[0].dtype == b[0].dtype == np.float32 and a[1].dtype == b[1].dtype == np.float32
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2], b[2])
        if a[2][0]:
            dones += 1
            np.testing.assert_array_equal(a[3][0]["terminal_observation"], b[3][0]["terminal_observation"])
            assert a[3][0]["TimeLimit.truncated"] == b[3][0]["TimeLimit.truncated"]
        for name in ("t", "t0", "t_end", "cash", "units", "avg_price", "equity", "peak", "last_pnl", "last_cost",
                     "last_commission", "last_fill_price", "last_fill_qty", "last_hindsight"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(arrays, name), err_msg=name)
    assert dones >= 8


def test_auto_reset_terminal_observation_and_seeding():
    data = random_walk_data(200, seed=4)
    config = EnvConfig(window=5, episode_length=10)
    vec = TradingVecEnv(data, config, n_envs=3, seed=1)
    vec.seed(5)
    vec.reset()
    first_starts = vec.t0.copy()
    for step in range(10):
        obs, _, done, infos = vec.step(np.full(3, 2))
        assert done.all() == (step == 9)  # every env truncates exactly at its 10th step
    for i in range(3):
        assert infos[i]["TimeLimit.truncated"] is True
        assert infos[i]["terminal_observation"][-1] == 0.0  # no time left
        assert obs[i][-1] == 1.0 and vec.units[i] == 0.0  # a fresh episode
    other = TradingVecEnv(data, config, n_envs=3)
    other.seed(5)
    other.reset()
    np.testing.assert_array_equal(other.t0, first_starts)


def test_sb3_ppo_trains_on_vec_env():
    torch.manual_seed(0)
    data = random_walk_data(400, seed=8)
    vec = TradingVecEnv(data, EnvConfig(window=8, episode_length=64), n_envs=4, seed=0)
    model = PPO("MlpPolicy", vec, n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    probe = torch.as_tensor(vec.reset())  # fixed observations to compare the policy on, before and after

    def action_probs() -> torch.Tensor:
        with torch.no_grad():
            return model.policy.get_distribution(probe).distribution.probs

    before = action_probs()
    model.learn(total_timesteps=512)
    # SB3 saw our episode ends: every env truncates after exactly episode_length (64) steps, so the second
    # rollout (steps 65..128 of each env) opens on fresh episodes and holds no other episode start
    buffer = model.rollout_buffer
    assert buffer.episode_starts[0].all() and not buffer.episode_starts[1:].any()
    # it trained on finite observations and non-trivial rewards, and that moved the policy
    assert np.isfinite(buffer.observations).all() and np.isfinite(buffer.rewards).all()
    assert np.abs(buffer.rewards[:-1]).max() > 0  # (the last row also holds SB3's bootstrap of the truncation)
    after = action_probs()
    assert torch.isfinite(after).all() and (after - before).abs().max() > 1e-4, (after - before).abs().max()
    action, _ = model.predict(vec.reset(), deterministic=True)
    assert action.shape == (4,)


def test_vectorised_reward_and_bonus_equal_the_scalar_rule():
    from rl_env.rewards import REWARD_CODES, hindsight_bonus, hindsight_bonuses, step_reward, step_rewards

    rng = np.random.default_rng(3)
    n = 2000
    before = rng.uniform(-50.0, 2e5, n)
    before[:20] = 0.0
    equity = before * np.exp(rng.normal(0.0, 0.05, n))
    equity[20:40] = -1.0
    peak = np.maximum(before, rng.uniform(5e4, 2e5, n))
    units = np.where(rng.random(n) < 0.3, 0.0, rng.normal(0.0, 100.0, n))
    ahead, close = rng.uniform(50, 150, n), rng.uniform(50, 150, n)
    for code in REWARD_CODES.values():
        batch, batch_peak = step_rewards(code, equity, before, peak.copy(), 1e5, 0.5)
        for i in range(n):
            r, p = step_reward(code, float(equity[i]), float(before[i]), float(peak[i]), 1e5, 0.5)
            assert p == batch_peak[i]
            if code == REWARD_CODES["log_return"]:  # numpy's vectorised log may differ from libm's in the last bit
                assert r == pytest.approx(batch[i], rel=4e-16, abs=0.0)
            else:
                assert np.float64(r).tobytes() == batch[i].tobytes()
    bonuses = hindsight_bonuses(0.1, ahead, close, units, 1e5)
    for i in range(n):
        assert np.float64(hindsight_bonus(0.1, ahead[i], close[i], units[i], 1e5)).tobytes() == bonuses[i].tobytes()
