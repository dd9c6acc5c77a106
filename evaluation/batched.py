"""Batched prediction for backtests: the market encoding of every bar in one pass, the private part per step.

A backtest acts bar by bar, because each observation ends with the agent's own private state (position,
unrealised P&L, cash, time left), which depends on its earlier actions. The rest of the observation, the window
of market features, does not. For the model families of the toolkit the part of the network that reads only the
market features is computed for every bar of the split at once; each step then runs only the part that mixes in
the private state, in float64 numpy, with no torch call:

- DeepScalper: :meth:`deepscalper.agent.DeepScalper.split_policy` (macro encoder, the bars' share of the micro
  encoder's input projection and of the heads' input layer batched; recurrence and heads per step);
- stable-baselines3 PPO / A2C / DQN with an MLP policy over a ``Discrete`` action space: the first layer's
  market share ``W[:, :market] @ window + b`` batched; its private share and the later layers per step.

Exactness: the split sums round differently from the network's float32 forward (about 1e-7 relative), so a step
whose two best logits or Q values lie within ``TIE_TOLERANCE * (1 + max |value|)`` of each other is handed to the
model's own ``predict`` for that observation. The actions are therefore the ones bar-by-bar prediction takes
(``tests/test_batched_eval.py`` proves actions and equity identical). A policy of another kind (a Box action
space, a custom network, a baseline) returns None here and is stepped bar by bar.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from rl_env.trading_env import TradingEnv

TIE_TOLERANCE = 1e-4
"""Relative gap under which the two best actions count as tied (the split computation agrees with the float32
forward to about 1e-7; the guard leaves a margin of about a thousand)."""
CHUNK = 16384
"""Rows per batched matmul (bounds the memory of a wide observation window)."""

StepPredictor = Callable[[int, np.ndarray], Any]
"""``act(t, obs)``: the action for the observation ``obs`` of bar ``t``, or None when the caller must ask the
policy's own ``predict`` (a near tie)."""


def split_predictor(policy: Any, env: TradingEnv) -> StepPredictor | None:
    """A batched predictor of ``policy``'s deterministic actions on ``env``'s data, or None when the policy is
    not one this module can split (it is then stepped bar by bar)."""
    if not isinstance(env, TradingEnv) or type(env)._obs is not TradingEnv._obs:
        return None
    if callable(getattr(policy, "split_policy", None)) and env.config.action_mode == "multidiscrete":
        return policy.split_policy(env.observed_features(), tie_tolerance=TIE_TOLERANCE)
    layers = _sb3_layers(policy)
    if layers is None:
        return None
    return _mlp_predictor(layers, env)


def _sb3_layers(model: Any) -> list[Any] | None:
    """The SB3 model's deterministic-action network as a list of Linear/Tanh/ReLU modules, or None."""
    try:
        from gymnasium import spaces
        from stable_baselines3.common.distributions import CategoricalDistribution
        from stable_baselines3.common.policies import ActorCriticPolicy
        from stable_baselines3.common.torch_layers import FlattenExtractor
        from stable_baselines3.dqn.policies import DQNPolicy
        from torch import nn
    except ImportError:  # pragma: no cover - SB3 is a requirement
        return None
    policy = getattr(model, "policy", None)
    if not isinstance(getattr(model, "action_space", None), spaces.Discrete):
        return None
    if isinstance(policy, ActorCriticPolicy):
        extractor = policy.pi_features_extractor
        if not isinstance(policy.action_dist, CategoricalDistribution):
            return None
        layers = [*policy.mlp_extractor.policy_net, policy.action_net]
    elif isinstance(policy, DQNPolicy):
        extractor = policy.q_net.features_extractor
        layers = list(policy.q_net.q_net)
    else:
        return None
    if type(extractor) is not FlattenExtractor:
        return None
    if not layers or not isinstance(layers[0], nn.Linear):
        return None
    if not all(isinstance(m, (nn.Linear, nn.Tanh, nn.ReLU)) for m in layers):
        return None
    return layers


def _mlp_predictor(layers: list[Any], env: TradingEnv) -> StepPredictor:
    """Argmax of an MLP over TradingEnv observations with the first layer's market share batched."""
    from torch import nn

    first = layers[0]
    weight = first.weight.detach().cpu().double().numpy()
    bias = first.bias.detach().cpu().double().numpy() if first.bias is not None else np.zeros(weight.shape[0])
    market = env.window * env.n_features
    features = env.observed_features()
    flat = np.ascontiguousarray(features).reshape(-1)
    n_windows = env.n_bars - env.window + 1
    windows = np.lib.stride_tricks.as_strided(flat, shape=(n_windows, market), strides=(env.n_features * 4, 4),
                                              writeable=False)  # row s: bars s .. s + window - 1
    pre = np.full((env.n_bars, weight.shape[0]), np.nan)
    w_market = np.ascontiguousarray(weight[:, :market].T)
    for start in range(0, n_windows, CHUNK):
        rows = windows[start:start + CHUNK].astype(np.float64)
        pre[env.window - 1 + start: env.window - 1 + start + len(rows)] = rows @ w_market + bias
    w_private = weight[:, market:]
    rest: list[tuple[str, Any, Any]] = []
    for module in layers[1:]:
        if isinstance(module, nn.Linear):
            b = module.bias.detach().cpu().double().numpy() if module.bias is not None else 0.0
            rest.append(("linear", np.ascontiguousarray(module.weight.detach().cpu().double().numpy().T), b))
        else:
            rest.append(("tanh" if isinstance(module, nn.Tanh) else "relu", None, None))

    def act(t: int, obs: np.ndarray) -> Any:
        x = pre[t] + w_private @ obs[market:].astype(np.float64)
        for kind, w, b in rest:
            if kind == "linear":
                x = x @ w + b
            elif kind == "tanh":
                x = np.tanh(x)
            else:
                x = np.maximum(x, 0.0)
        values = x.tolist()
        if not math.isfinite(sum(values)):  # an overflow in the split sums: let the model decide
            return None
        i = max(range(len(values)), key=values.__getitem__)
        if len(values) > 1:
            second = max(values[:i] + values[i + 1:])
            if values[i] - second <= TIE_TOLERANCE * (1.0 + max(abs(v) for v in values)):
                return None
        return i

    return act
