"""Batched prediction for backtests: the market encoding of every bar in one pass, the private part by stretches.

A backtest acts bar by bar, because each observation ends with the agent's own private state (position,
unrealised P&L, cash, time left), which depends on its earlier actions. The rest of the observation, the window
of market features, does not. For the model families of the toolkit the part of the network that reads only the
market features is computed for every bar of the split at once:

- DeepScalper: :meth:`deepscalper.agent.DeepScalper.split_policy` (macro encoder, the bars' share of the micro
  encoder's input projection and of the heads' input layer batched; recurrence and heads per decision);
- stable-baselines3 PPO / A2C / DQN with an MLP policy over a ``Discrete`` action space: the first layer's
  market share ``W[:, :market] @ window + b`` batched (in chunks, as the run reaches them); its private share and
  the later layers per decision.

The part that mixes in the private state is not run bar by bar either: between two fills the account does not
change, so the private cells of every coming observation are known in advance
(:meth:`rl_env.trading_env.TradingEnv.held_private`), and a stretch of bars is decided in one array pass, in
float64 numpy with no torch call (:class:`_Planner`). Every real observation's private cells are compared byte
for byte with those its action was decided from; a fill changes them and starts a new stretch from that bar.

Exactness: the split sums round differently from the network's float32 forward (about 1e-7 relative), so a bar
whose two best logits or Q values lie within ``TIE_TOLERANCE * (1 + max |value|)`` of each other is handed to the
model's own ``predict`` for that observation. The actions are therefore the ones bar-by-bar prediction takes
(``tests/test_batched_eval.py`` proves actions and equity identical, on the fast engine and on backtrader's). A
policy of another kind (a Box action space, a custom network, a baseline) returns None here and is stepped bar by
bar.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rl_env.trading_env import N_PRIVATE, TradingEnv

TIE_TOLERANCE = 1e-4
"""Relative gap under which the two best actions count as tied (the split computation agrees with the float32
forward to about 1e-7; the guard leaves a margin of about a thousand)."""
CHUNK = 16384
"""Rows per batched matmul (bounds the memory of a wide observation window)."""

StepPredictor = Callable[[int, np.ndarray], Any]
"""``act(t, obs)``: the action for the observation ``obs`` of bar ``t``, or None when the caller must ask the
policy's own ``predict`` (a near tie)."""
BlockDecider = Callable[[int, np.ndarray], list[Any]]
"""``decide(start, private)``: the actions for the observations of bars ``start .. start + K - 1`` whose private
cells are the K rows of ``private`` (float32, as the observations hold them), each None for a near tie."""
MIN_PLAN, FIRST_PLAN, MAX_PLAN = 4, 16, 4096
"""Bars decided ahead in one batched call. After a fill the next stretch is twice the bars the last one served,
between MIN_PLAN and FIRST_PLAN (a policy that trades every few bars gets short stretches); a stretch that runs
out without a fill is followed by one twice as long, up to MAX_PLAN, so the bars decided in vain after a fill stay
fewer than those used. A held position's stretch ends at the next session end (its forced flat fills there)."""


def split_predictor(policy: Any, env: TradingEnv) -> StepPredictor | None:
    """A batched predictor of ``policy``'s deterministic actions on ``env``'s data, or None when the policy is
    not one this module can split (it is then stepped bar by bar)."""
    if not isinstance(env, TradingEnv) or type(env)._obs is not TradingEnv._obs:
        return None
    if callable(getattr(policy, "split_policy", None)) and env.config.action_mode == "multidiscrete":
        return _Planner(policy.split_policy(env.observed_features(), tie_tolerance=TIE_TOLERANCE), env)
    layers = _sb3_layers(policy)
    if layers is None:
        return None
    return _Planner(_mlp_decider(layers, env), env)


class _Planner:
    """Decides stretches of bars ahead: between two fills the account does not change, so the private cells of
    every coming observation are known (:meth:`TradingEnv.held_private`) and the actions of a whole stretch come
    from one batched call. Each real observation's private cells are compared, byte for byte, with the ones its
    action was decided from; the first that differs (a fill changed the account) starts a new stretch from its
    bar. An action is therefore always the one decided from that very observation."""

    def __init__(self, decide: BlockDecider, env: TradingEnv) -> None:
        self.decide, self.env = decide, env
        self.start = 0
        self.cells: list[bytes] = []
        self.actions: list[Any] = []
        self.flat_bars = np.flatnonzero(env.force_flat)  # decisions that flatten a held position (session ends)

    def __call__(self, t: int, obs: np.ndarray) -> Any:
        i = t - self.start
        mine = obs[-N_PRIVATE:].tobytes()
        planned = len(self.cells)
        if 0 <= i < planned and self.cells[i] == mine:
            return self.actions[i]
        env = self.env
        if i == planned:  # the stretch ran out without a fill: a longer one
            size = min(MAX_PLAN, max(MIN_PLAN, 2 * planned))
        else:  # a fill: start short again (twice the bars the last stretch served, at most FIRST_PLAN)
            size = min(FIRST_PLAN, max(MIN_PLAN, 2 * min(max(i, 0), planned)))
        stop = min(t + size, env.t_end)
        if env.units:  # a held position is flattened at the next session end: the account changes in the bar after
            k = int(np.searchsorted(self.flat_bars, t))
            if k < len(self.flat_bars):
                stop = min(stop, int(self.flat_bars[k]) + 1)
        private = env.held_private(t, stop)
        whole = private.tobytes()
        width = N_PRIVATE * private.itemsize
        if whole[:width] != mine:  # not the account the env holds (an engine with its own broker): this bar alone
            self.cells, self.actions = [], []
            return self.decide(t, obs[-N_PRIVATE:].reshape(1, -1))[0]
        self.start = t
        self.cells = [whole[j:j + width] for j in range(0, len(whole), width)]
        self.actions = self.decide(t, private)
        return self.actions[0]


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


def _mlp_decider(layers: list[Any], env: TradingEnv) -> BlockDecider:
    """Argmax of an MLP over TradingEnv observations with the first layer's market share batched: computed for
    ``CHUNK`` bars at a time as the run reaches them (a run that ends in ruin early does not pay for the rest)."""
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
    offset = env.window - 1  # bar of windows[0]
    pre = np.empty((env.n_bars, weight.shape[0]))
    pre[:offset] = np.nan
    ready = [offset]  # bars below ready[0] hold their market share
    w_market = np.ascontiguousarray(weight[:, :market].T)
    w_private = np.ascontiguousarray(weight[:, market:].T)
    rest: list[tuple[str, Any, Any]] = []
    for module in layers[1:]:
        if isinstance(module, nn.Linear):
            b = module.bias.detach().cpu().double().numpy() if module.bias is not None else 0.0
            rest.append(("linear", np.ascontiguousarray(module.weight.detach().cpu().double().numpy().T), b))
        else:
            rest.append(("tanh" if isinstance(module, nn.Tanh) else "relu", None, None))

    def decide(start: int, private: np.ndarray) -> list[Any]:
        stop = start + len(private)
        while ready[0] < stop:
            lo = ready[0]
            hi = min(lo + CHUNK, env.n_bars)
            pre[lo:hi] = windows[lo - offset:hi - offset].astype(np.float64) @ w_market + bias
            ready[0] = hi
        x = pre[start:stop] + np.asarray(private, dtype=np.float64) @ w_private
        for kind, w, b in rest:
            if kind == "linear":
                x = x @ w + b
            elif kind == "tanh":
                x = np.tanh(x)
            else:
                x = np.maximum(x, 0.0)
        return _decided(x)

    return decide


def _decided(values: np.ndarray) -> list[Any]:
    """Argmax of each row of ``values`` (K, n) as a Python int, None where the row is not finite (an overflow in
    the split sums) or its two best values lie within ``TIE_TOLERANCE * (1 + max |value|)``: the model decides."""
    k, n = values.shape
    best = values.argmax(axis=1)  # the first of equal maxima, as torch's argmax
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(values.sum(axis=1))
        if n > 1:
            rows = np.arange(k)
            rest = values.copy()
            rest[rows, best] = -np.inf
            ok &= values[rows, best] - rest.max(axis=1) > TIE_TOLERANCE * (1.0 + np.abs(values).max(axis=1))
    return [i if good else None for i, good in zip(best.tolist(), ok.tolist())]
