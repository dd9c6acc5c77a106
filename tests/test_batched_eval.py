"""Batched evaluation equals bar-by-bar evaluation exactly: actions, fills, costs, equity.

``run_backtest(..., batched=True)`` (the default on the fast engine) computes a model's market encoding for
every bar in one pass (evaluation.batched, DeepScalper.split_policy) and runs the baselines on the target
engine (run_target_backtest); ``batched=False`` asks the policy for every bar through its own ``predict`` and
steps the env. The two must agree bit for bit.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from deepscalper import DeepScalper, DeepScalperConfig
from evaluation.backtest import run_backtest, run_target_backtest
from evaluation.baselines import BuyAndHold, Flat, MovingAverageCrossover, RandomPolicy
from evaluation.batched import split_predictor
from evaluation.markets import random_walk_data
from rl_env import EnvConfig, TradingEnv

SCALARS = ("costs_paid", "commissions", "turnover", "n_fills", "n_bars", "terminated")


def _same_bits(a: float, b: float) -> bool:
    return struct.pack("<d", float(a)) == struct.pack("<d", float(b))


def assert_same_backtest(batched, stepped) -> None:
    for name in ("equity", "positions", "returns", "exposure", "timestamps"):
        x, y = getattr(batched, name), getattr(stepped, name)
        assert x.shape == y.shape and x.tobytes() == y.tobytes(), name
    for name in SCALARS:
        x, y = getattr(batched, name), getattr(stepped, name)
        assert (_same_bits(x, y) if isinstance(x, float) else x == y), (name, x, y)
    assert batched.fills == stepped.fills
    assert batched.trades == stepped.trades


# --- baselines on the target engine ------------------------------------------------------------------------

BASELINES = {"buy_and_hold": BuyAndHold, "flat": Flat, "ma": lambda: MovingAverageCrossover(3, 8),
             "random": lambda: RandomPolicy(7)}


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("mode", ["box", "discrete"])
@pytest.mark.parametrize("allow_short", [True, False])
@pytest.mark.parametrize("interval", ["1d", "1h"])
def test_vectorised_baselines_equal_env_stepped(name, mode, allow_short, interval):
    data = random_walk_data(700, seed=3, n_features=2, interval=interval, vol=0.02)
    config = EnvConfig(window=10, action_mode=mode, allow_short=allow_short, commission_rate=0.001,
                       commission_min=1.0, slippage_bps=5.0, spread_bps=2.0, rebalance_band=0.02,
                       margin_leverage=2.0, max_position=1.0)
    stepped = run_backtest(BASELINES[name](), data, config, batched=False)
    batched = run_backtest(BASELINES[name](), data, config)
    assert_same_backtest(batched, stepped)
    if name in ("buy_and_hold", "ma", "random"):
        assert stepped.n_fills > 0


def test_target_engine_follows_band_drift_cash_rule_and_ruin():
    """Rebalances inside a constant target (the position drifting out of a tight band), orders the cash rule
    drops (leverage 1 with a minimum commission) and ruin all come out as the env makes them."""
    data = random_walk_data(900, seed=11, n_features=1, vol=0.04)
    drift = EnvConfig(window=5, action_mode="box", rebalance_band=0.001, commission_rate=0.002, max_position=0.5)
    dropped = drift.replace(margin_leverage=1.0, max_position=1.0, commission_min=5000.0)  # 100% + fee > cash
    fills = {}
    for config in (drift, dropped):
        for policy in (BuyAndHold, lambda: MovingAverageCrossover(2, 5), lambda: RandomPolicy(1)):
            stepped = run_backtest(policy(), data, config, batched=False)
            assert_same_backtest(run_backtest(policy(), data, config), stepped)
            fills.setdefault(config.margin_leverage, []).append(stepped.n_fills)
    assert fills[2.0][0] > 20  # buy and hold: the band kept it rebalancing under one constant target
    assert fills[1.0][0] == 0  # every buy dropped by the cash rule, bar after bar
    ruin = EnvConfig(window=5, action_mode="box", ruin_fraction=0.97, max_position=3.0, commission_rate=0.01)
    stepped = run_backtest(RandomPolicy(2), data, ruin, batched=False)
    assert stepped.terminated and stepped.n_bars < 900
    assert_same_backtest(run_target_backtest(RandomPolicy(2), data, ruin), stepped)


def test_random_baseline_draws_the_same_integers_in_one_call():
    """RandomPolicy.goals relies on numpy drawing the same integers one by one as in one array."""
    for k in (2, 3):
        one = np.random.default_rng(5)
        singles = [int(one.integers(k)) for _ in range(5000)]
        assert np.random.default_rng(5).integers(k, size=5000).tolist() == singles


# --- models: market encoding batched -----------------------------------------------------------------------

def _deepscalper(data, seed: int, **kw):
    env = TradingEnv(data, EnvConfig(window=6, action_mode="multidiscrete", episode_length=None,
                                     random_start=False))
    cfg = DeepScalperConfig(hidden_size=16, micro_window=4, **kw)
    return DeepScalper(env, cfg, seed=seed), env.config


@pytest.mark.parametrize("kw", [dict(rnn="mingru"), dict(rnn="gru", macro_window=3), dict(rnn="lstm"),
                                dict(rnn="mingru", single_branch=True), dict(rnn="gru", quantity_branch="order"),
                                dict(rnn="mingru", time_left_input=True, macro_window=0)])
def test_deepscalper_batched_equals_bar_by_bar(kw):
    data = random_walk_data(900, seed=4, n_features=3, interval="1h", vol=0.02)
    fills = []
    for seed in (0, 1):
        agent, config = _deepscalper(data, seed, **kw)
        stepped = run_backtest(agent, data, config, batched=False)
        batched = run_backtest(agent, data, config)
        assert_same_backtest(batched, stepped)
        fills.append(stepped.n_fills)
    # the comparison covered trading (an untrained network may hold one target, flat, for a whole seed)
    assert max(fills) > 5


def test_near_ties_go_to_the_models_own_predict():
    """A network whose Q values tie everywhere: the split path declines every step, predict decides."""
    data = random_walk_data(300, seed=2, n_features=3)
    agent, config = _deepscalper(data, 0)
    with torch.no_grad():
        agent.q_net.heads_out_weight.zero_()
        agent.q_net.heads_out_bias.zero_()
    env = TradingEnv(data, config)
    obs, _ = env.reset(seed=0)
    act = split_predictor(agent, env)
    assert act is not None and act(env.t, obs) is None
    assert_same_backtest(run_backtest(agent, data, config), run_backtest(agent, data, config, batched=False))


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn"])
def test_sb3_batched_equals_bar_by_bar(algo, monkeypatch):
    from agents.sb3_agent import algo_class

    monkeypatch.setattr("evaluation.batched.CHUNK", 97)  # the market share computed in many chunks as bars come

    data = random_walk_data(800, seed=6, n_features=3, interval="1h", vol=0.02)
    config = EnvConfig(window=8, action_mode="discrete", position_levels=5, episode_length=None,
                       random_start=False)
    kwargs = {"learning_starts": 0} if algo == "dqn" else {}
    for seed in (0, 1):
        model = algo_class(algo)("MlpPolicy", TradingEnv(data, config), seed=seed, device="cpu",
                                 policy_kwargs={"net_arch": [16, 16]}, **kwargs)
        env = TradingEnv(data, config)
        env.reset(seed=0)
        assert split_predictor(model, env) is not None
        stepped = run_backtest(model, data, config, batched=False)
        assert_same_backtest(run_backtest(model, data, config), stepped)
        assert stepped.n_fills > 5


def test_unsupported_policies_are_stepped_bar_by_bar():
    """A Box-action SB3 model has no argmax to guard: it is not split (and still backtests)."""
    from stable_baselines3 import PPO

    data = random_walk_data(200, seed=1, n_features=2)
    config = EnvConfig(window=5, action_mode="box", episode_length=None, random_start=False)
    model = PPO("MlpPolicy", TradingEnv(data, config), seed=0, device="cpu", policy_kwargs={"net_arch": [8]})
    env = TradingEnv(data, config)
    env.reset(seed=0)
    assert split_predictor(model, env) is None
    assert_same_backtest(run_backtest(model, data, config), run_backtest(model, data, config, batched=False))


# --- stretches decided ahead ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["discrete", "multidiscrete"])
@pytest.mark.parametrize("leverage,short,max_position", [(1.0, True, 1.0), (2.0, True, 3.0), (1.0, False, 1.0),
                                                         (4.0, True, 10.0)])
def test_held_private_is_what_the_observations_hold(mode, leverage, short, max_position):
    """TradingEnv.held_private, computed at a bar, gives the private cells of every later observation up to the
    next fill, byte for byte (long, short, leveraged and ruined accounts)."""
    data = random_walk_data(600, seed=9, n_features=2, interval="1h", vol=0.03)
    config = EnvConfig(window=5, action_mode=mode, margin_leverage=leverage, allow_short=short,
                       max_position=max_position, commission_rate=0.001, slippage_bps=3.0, ruin_fraction=0.2,
                       episode_length=None, random_start=False)
    env = TradingEnv(data, config)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(4)
    env.action_space.seed(4)
    ahead, since, checked, fills = env.held_private(env.t, env.t_end), env.t, 0, 0
    hold = np.array([0, config.quantity_levels.index(0.0)]) if mode == "multidiscrete" else 0
    action, done = hold, False
    while not done:
        assert obs[-4:].tobytes() == ahead[env.t - since].tobytes(), env.t
        checked += 1
        if rng.random() < 0.05:  # now and then a new order; else no order (multidiscrete) or the same target
            action = env.action_space.sample()
        elif mode == "multidiscrete":
            action = hold
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if info["filled"]:
            fills += 1
            ahead, since = env.held_private(env.t, env.t_end + 1), env.t
    assert fills >= 5 and (checked > 500 or terminated)  # the whole split, or ruin (10x the equity, leverage 4)


def test_planner_decides_stretches_not_bars():
    """The planned predictor asks the network once per stretch between fills, not once per bar, and its actions
    are the model's own (the backtests above prove them equal; here the number of batched calls)."""
    data = random_walk_data(1500, seed=4, n_features=3, interval="1h", vol=0.02)
    agent, config = _deepscalper(data, 1)
    env = TradingEnv(data, config.replace(episode_length=None, random_start=False))
    obs, _ = env.reset(seed=0)
    act = split_predictor(agent, env)
    calls = []
    decide = act.decide
    act.decide = lambda start, private: calls.append(len(private)) or decide(start, private)
    done, fills, steps = False, 0, 0
    while not done:
        action = act(env.t, obs)
        expected = agent.predict(obs)[0]
        if action is not None:
            assert np.array_equal(action, expected)
        obs, _, terminated, truncated, info = env.step(expected)
        fills += info["filled"]
        steps += 1
        done = terminated or truncated
    assert fills > 5
    assert len(calls) <= 2 * fills + steps // 32 + 2  # a new stretch after each fill (and its growth)
    assert sum(calls) >= steps


@pytest.mark.parametrize("model", ["deepscalper", "ppo"])
def test_batched_actions_on_backtraders_broker_equal_bar_by_bar(model):
    """On the backtrader engine (the parity spot-check, ``--engine backtrader``) the batched predictor decides
    the actions too (from backtrader's own account in the observation): the run equals bar-by-bar prediction."""
    data = random_walk_data(400, seed=8, n_features=3, interval="1h", vol=0.02)
    if model == "deepscalper":
        policy, config = _deepscalper(data, 0)
    else:
        from stable_baselines3 import PPO

        config = EnvConfig(window=8, action_mode="discrete", position_levels=5, episode_length=None,
                           random_start=False)
        policy = PPO("MlpPolicy", TradingEnv(data, config), seed=1, device="cpu", policy_kwargs={"net_arch": [16]})
    stepped = run_backtest(policy, data, config, engine="backtrader", batched=False)
    assert_same_backtest(run_backtest(policy, data, config, engine="backtrader"), stepped)
    assert stepped.n_fills > 3


@pytest.mark.parametrize("kw", [dict(rnn="mingru"), dict(rnn="gru", macro_window=3), dict(rnn="lstm"),
                                dict(rnn="mingru", time_left_input=True, macro_window=0),
                                dict(rnn="gru", single_branch=True)])
def test_split_forward_equals_the_network_in_float64(kw):
    """SplitForward.q_block (a stretch of bars at once) is the network's forward, regrouped: against the same
    network in float64 it agrees to 1e-7 (the network's dueling centring holds 1/n as a float32 constant; the rest
    agrees to float64 rounding), a thousand times inside the tie guard."""
    import copy

    from deepscalper.networks import SplitForward

    data = random_walk_data(300, seed=5, n_features=3, interval="1h", vol=0.02)
    agent, config = _deepscalper(data, 0, **kw)
    env = TradingEnv(data, config)
    features = env.observed_features()
    split = SplitForward(agent.q_net, features)
    start, k = 40, 60
    private = np.random.default_rng(0).normal(size=(k, 4)).astype(np.float32)
    obs = np.stack([np.r_[features[t - config.window + 1:t + 1].ravel(), private[t - start]]
                    for t in range(start, start + k)]).astype(np.float64)
    with torch.no_grad():
        reference = copy.deepcopy(agent.q_net).double()(torch.from_numpy(obs)).numpy()
    q = split.q_block(start, private)
    bounds = split.bounds.tolist()
    for d, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        np.testing.assert_allclose(q[:, lo:hi], reference[d, :, :hi - lo], rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(split.q(start + 3, private[3]), q[3], rtol=1e-12, atol=1e-12)
