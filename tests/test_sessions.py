"""Intraday training episodes are trading sessions; daily data and evaluation are unaffected."""
from __future__ import annotations

import numpy as np

from evaluation.markets import random_walk_data
from rl_env import EnvConfig, TradingEnv, TradingVecEnv

WINDOW = 4


def _intraday(n_bars: int = 7 * 30):
    return random_walk_data(n_bars, seed=3, n_features=2, interval="1h")  # 7 bars per date


def _days(data, t):
    return data.timestamps[t].astype("datetime64[D]")


def test_session_spans_start_after_the_window_and_end_at_the_sessions_last_bar():
    data = _intraday()
    spans = data.session_spans(WINDOW - 1)
    assert spans[0].tolist() == [WINDOW - 1, 6]  # the first date: from the first full window to its last bar
    assert spans[1].tolist() == [7, 13]
    assert len(spans) == 30
    days = data.timestamps.astype("datetime64[D]")
    assert all(days[a] == days[b] for a, b in spans)


def test_intraday_training_episodes_are_single_sessions_and_end_flat():
    data = _intraday()
    env = TradingEnv(data, EnvConfig(window=WINDOW, action_mode="discrete", episode_length=256))
    starts = set()
    for episode in range(40):
        obs, info = env.reset(seed=episode)
        t0 = env.t
        starts.add(t0)
        assert t0 == WINDOW - 1 or _days(data, t0 - 1) != _days(data, t0)  # a session's first decision bar
        done, steps = False, 0
        while not done:
            _, _, terminated, truncated, info = env.step(2)  # always long
            done, steps = terminated or truncated, steps + 1
        assert _days(data, env.t) == _days(data, t0)  # ended inside the session it started in
        assert env.t == len(data.close) - 1 or _days(data, env.t + 1) != _days(data, env.t)  # at its last bar
        assert info["position"] == 0.0  # closed at the session's end
    assert len(starts) > 10


def test_episode_length_caps_a_session():
    data = _intraday()
    env = TradingEnv(data, EnvConfig(window=WINDOW, action_mode="discrete", episode_length=3))
    env.reset(seed=1)
    t0 = env.t
    for _ in range(3):
        *_, truncated, _ = env.step(1)
    assert truncated and env.t == t0 + 3


def test_vec_env_draws_sessions_too():
    data = _intraday()
    venv = TradingVecEnv(data, EnvConfig(window=WINDOW, action_mode="discrete", episode_length=256), n_envs=8, seed=0)
    venv.reset()
    for t0, t_end in zip(venv.t0, venv.t_end):
        assert _days(data, t0) == _days(data, t_end)
        assert t_end == len(data.close) - 1 or _days(data, t_end + 1) != _days(data, t_end)


def test_switch_off_and_daily_data_and_evaluation_keep_long_episodes():
    intraday = _intraday()
    off = TradingEnv(intraday, EnvConfig(window=WINDOW, action_mode="discrete", episode_length=50,
                                         session_episodes=False))
    off.reset(seed=0)
    assert off.t_end - off.t == 50
    evaluation = TradingEnv(intraday, EnvConfig(window=WINDOW, action_mode="discrete", episode_length=None,
                                                random_start=False))
    evaluation.reset(seed=0)
    assert (evaluation.t, evaluation.t_end) == (WINDOW - 1, len(intraday.close) - 1)
    daily = random_walk_data(300, seed=1, n_features=2)
    env = TradingEnv(daily, EnvConfig(window=WINDOW, action_mode="discrete", episode_length=50))
    env.reset(seed=0)
    assert env.t_end - env.t == 50
    assert np.all(daily.session_last())  # every daily bar is its own date
