"""The DeepScalper agent (Sun et al., CIKM 2022): a Branching Dueling Q-Network trained off-policy from
prioritized replay, with the hindsight bonus in the training reward and a volatility auxiliary task.

The algorithm is ``deepscalper_loss``: branch TD targets, dueling Q values, the importance-weighted TD loss plus
eta times the volatility loss, and the new replay priorities, in one function with the formulas in its docstring.
The training loop in ``learn`` reads top to bottom: act epsilon-greedily per branch, step the env, turn the last
n rewards into an n-step transition, store it, and every ``train_freq`` steps run ``gradient_steps`` updates of
``_train_step`` (the loss, Adam, a target update on schedule). Everything else is plumbing: schedules,
logging, checkpoints.

Training speed: with the default mingru encoder on the CPU the update runs ``deepscalper_gradients``, the same loss
and gradient without an autograd graph (the online and target passes stacked into one, hand-derived gradients
checked against autograd on ``deepscalper_loss`` by the tests), the parameters of both networks live in one
tensor (``TwinParameters``) so that clipping, Adam (torch's formulas on the flat buffers, the optimizer's
state_dict kept current) and target syncs are a few whole-model operations, and the epsilon-greedy action is
computed in numpy. Public torch APIs only.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import platform
import random
import time
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from botcore.atomic import atomic_path, to_jsonable
from botcore.errors import ModelFileError, UserError
from deepscalper.config import DeepScalperConfig
from deepscalper.networks import DeepScalperNet, SplitForward, TwinParameters
from deepscalper.replay import PrioritizedReplayBuffer, ReplayBuffer

logger = logging.getLogger(__name__)

FORMAT_NAME = "deepscalper-model"
FORMAT_VERSION = 1
_META = "deepscalper.json"
_STATE_FILES = ("policy.pth", "target_policy.pth", "optimizer.pth", "torch_rng.pth")
_REPLAY = "replay.npz"
CSV_COLUMNS = ("time/total_timesteps", "time/episodes", "time/updates", "time/fps", "rollout/exploration_rate",
               "train/per_beta", "losses/td", "losses/aux", "charts/q_mean", "charts/episode_reward",
               "charts/episode_pnl", "charts/episode_length")


def _env_spaces(env: Any) -> dict[str, Any]:
    """What the agent needs to know about a TradingEnv (multidiscrete mode)."""
    base = getattr(env, "unwrapped", env)
    if not isinstance(env.action_space, spaces.MultiDiscrete) or env.action_space.nvec.ndim != 1:
        raise UserError(f"DeepScalper needs an env in 'multidiscrete' action mode (limit offset x quantity), got "
                        f"action space {env.action_space}; build it with EnvConfig(action_mode='multidiscrete')")
    try:
        window, n_features, n_private = int(base.window), int(base.n_features), int(base.n_private)
    except AttributeError as exc:
        raise UserError(f"DeepScalper needs env.window, env.n_features and env.n_private ({exc})") from None
    obs_dim = int(np.prod(env.observation_space.shape))
    if window * n_features + n_private != obs_dim:
        raise UserError(f"observation length {obs_dim} != window {window} x features {n_features} + private "
                        f"{n_private}")
    levels = getattr(getattr(base, "config", None), "quantity_levels", None)
    return {"obs_dim": obs_dim, "nvec": [int(n) for n in env.action_space.nvec], "window": window,
            "n_features": n_features, "n_private": n_private,
            "quantity_levels": None if levels is None else [float(q) for q in levels]}


def quantity_targets(levels: Any, max_target: float) -> list[float]:
    """The positions a target quantity branch chooses from: the env's order levels (fractions of the position
    limit) no larger than ``max_target``, sorted (at least the smallest non-zero level and its sign mirror).

    Targets ON the order grid can be reached exactly by one order from any other target on it, so every
    sub-action means one position whatever the current one. (Targets between grid points, e.g. a quarter of the
    limit with orders of halves, cannot be reached: which order they send then depends on a rounding rule and
    on the position's drift with the price, so one sub-action meant "open half" when flat and "close" when long.)
    Default levels (-1, -0.5, 0, 0.5, 1) and ``max_target`` 0.5 give (-0.5, 0, 0.5): short, flat, long, and
    from long to short is one order of -1.
    """
    values = sorted({float(q) for q in levels})
    nonzero = [abs(q) for q in values if q != 0.0]
    bound = max(float(max_target), min(nonzero) if nonzero else 0.0) + 1e-9
    return [q for q in values if abs(q) <= bound]


def _cloned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of independent tensors (the parameters are views of TwinParameters' shared tensor, which
    torch.save would otherwise write whole into each file)."""
    return {k: v.clone() for k, v in state.items()}


def _gen_state(gen: np.random.Generator) -> dict[str, Any]:
    return gen.bit_generator.state


def _gen_from_state(state: dict[str, Any]) -> np.random.Generator:
    # The file names the bit generator: only numpy's own generators are accepted, never an arbitrary attribute.
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937"):
        raise ModelFileError(f"unknown random generator {name!r} in the saved state; the file is not a "
                             "DeepScalper model of this toolkit")
    gen = np.random.Generator(getattr(np.random, name)())
    gen.bit_generator.state = state
    return gen


# --- the algorithm: DeepScalper's loss on one replay batch -----------------------------------------------


@dataclass
class LossTerms:
    """What ``deepscalper_loss`` returns: the loss to differentiate and the numbers the plumbing needs."""

    loss: torch.Tensor
    """L = L_q + eta * L_vol, a scalar whose graph reaches the online network's parameters."""
    loss_q: torch.Tensor
    """L_q, the importance-weighted TD loss (detached)."""
    loss_vol: torch.Tensor | None
    """L_vol, the volatility loss (detached); None when eta = 0 or no transition in the batch has a target."""
    q_taken: torch.Tensor
    """Q_d(s, a_d) of the online network, (branches, B), detached."""
    priorities: torch.Tensor
    """New PER priorities |delta| per transition, (B,): the buffer adds eps and raises them to alpha."""


def deepscalper_loss(q_net: DeepScalperNet, q_target: DeepScalperNet, *, obs: torch.Tensor, actions: torch.Tensor,
                     returns: torch.Tensor, next_obs: torch.Tensor, discounts: torch.Tensor, weights: torch.Tensor,
                     vol_targets: torch.Tensor, aux_weight: float) -> LossTerms:
    """DeepScalper's objective (Sun et al., CIKM 2022) on a batch of B n-step transitions with D action branches.

    In the paper's order, for transition b and branch d (price offset, quantity), with theta the online
    network ``q_net`` and theta^- the target network ``q_target``:

    1. Dueling aggregation (``DeepScalperNet.heads``): one shared state value and one advantage head per branch::

           Q_d(s, a) = V(s) + A_d(s, a) - mean_a' A_d(s, a')

    2. Branch TD targets, one per branch (BDQ's "independent" targets, Tavakoli et al. 2018: each branch takes
       the max of its own Q_d, and the shared V(s') enters every branch's target through step 1)::

           y_{d,b} = R_b + g_b * max_a' Q_d(s'_b, a'; theta^-)

       with R_b the n-step return sum_k gamma^k r_{t+k} (the hindsight bonus is in r; the agent passes it
       divided by its fixed ``reward_scale``, which rescales every Q value alike and leaves the greedy actions
       unchanged) and g_b = gamma^n, or 0 when the episode terminated within the n steps. No gradient flows
       through y.
    3. The Q loss, mean over branches and batch, each transition weighted by its PER importance weight
       w_b = (N P(b))^-beta / max_j w_j::

           L_q = 1 / (D B) * sum_{d,b} w_b * (y_{d,b} - Q_d(s_b, a_{d,b}; theta))^2

    4. The auxiliary risk-aware task: the volatility head's forecast sigma_hat against the realised future
       volatility sigma (already divided by the agent's ``vol_scale``), over the set K of transitions whose
       future is known; the total loss::

           L_vol = 1 / |K| * sum_{b in K} (sigma_hat(s_b; theta) - sigma_b)^2
           L = L_q + eta * L_vol

    5. New priorities for the replay buffer: p_b = 1 / D * sum_d |y_{d,b} - Q_d(s_b, a_{d,b})|.

    :param obs: (B, obs_dim) float32; ``next_obs`` the observations n steps later (or at the episode's end).
    :param actions: (D, B) int64, the sub-action taken in each branch.
    :param returns: (B,) n-step returns R; ``discounts`` (B,) the bootstrap factors g.
    :param weights: (B,) PER importance weights (ones for uniform replay).
    :param vol_targets: (B,) scaled future volatility, NaN where unknown (near the end of the data).
    :param aux_weight: eta (0 = no auxiliary task).
    """
    # 1. dueling Q values (and the volatility forecast) of the online network at s, with a graph
    q, vol_pred = q_net.heads(q_net.embed(obs))  # (D, B, n), (B,)
    # 2. branch TD targets from the target network at s', without a graph (a smaller branch's padded
    #    sub-actions hold -1e9 and never win the max)
    with torch.no_grad():
        targets = returns + discounts * q_target(next_obs).max(dim=2).values  # (D, B)
    # 3. importance-weighted TD loss at the sub-actions taken
    q_taken = q.gather(2, actions.unsqueeze(2)).squeeze(2)  # (D, B)
    td = targets - q_taken
    loss_q = (weights * td.pow(2)).mean()
    # 4. auxiliary volatility loss, L = L_q + eta * L_vol
    loss, loss_vol = loss_q, None
    if aux_weight > 0:
        known = torch.isfinite(vol_targets)
        n_known = int(known.sum())
        if n_known:
            # masked rather than indexed (no data-dependent shapes); an unknown target contributes 0, no NaN
            error = torch.where(known, vol_pred - torch.nan_to_num(vol_targets), 0.0)
            loss_vol = error.pow(2).sum() / n_known
            loss = loss_q + aux_weight * loss_vol
            loss_vol = loss_vol.detach()
    # 5. new priorities
    priorities = td.detach().abs().mean(dim=0)
    return LossTerms(loss=loss, loss_q=loss_q.detach(), loss_vol=loss_vol, q_taken=q_taken.detach(),
                     priorities=priorities)


def deepscalper_gradients(q_net: DeepScalperNet, twin: TwinParameters, *, obs_pair: torch.Tensor,
                          actions: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor, weights: torch.Tensor,
                          vol_targets: torch.Tensor, aux_weight: float) -> LossTerms:
    """:func:`deepscalper_loss` and its gradient for a mingru network, without an autograd graph: the training
    fast path (the same formulas; tests compare terms and gradients with autograd on ``deepscalper_loss``).

    The online pass at s and the target pass at s' run as ONE stacked pass over ``twin`` (the online and target
    parameters of ``q_net`` stacked, :class:`~deepscalper.networks.TwinParameters`) with ``obs_pair`` = (s, s')
    of shape (2, B, obs_dim); the gradient of L = L_q + eta * L_vol, from::

        dL / dQ_d(s_b, a_{d,b}) = -2 w_b (y_{d,b} - Q_d(s_b, a_{d,b})) / (D B)
        dL / dsigma_hat_b      = 2 eta (sigma_hat_b - sigma_b) / |K|   (b in K, else 0)

    is taken through the network by ``DeepScalperNet.backward_online`` and written into ``twin.grads`` (the
    online parameters' ``.grad``). The other arguments are those of :func:`deepscalper_loss`; the returned
    ``loss`` is detached (its gradient is already written).
    """
    terms = _gradients(q_net, twin, obs_pair, actions.numpy(), returns.numpy(), discounts.numpy(), weights.numpy(),
                       vol_targets.numpy(), aux_weight)
    loss, loss_q, loss_vol, q_taken, priorities = (None if x is None else torch.as_tensor(x) for x in terms)
    return LossTerms(loss=loss, loss_q=loss_q, loss_vol=loss_vol, q_taken=q_taken, priorities=priorities)


def _gradients(q_net: DeepScalperNet, twin: TwinParameters, obs_pair: torch.Tensor, actions: np.ndarray,
               returns: np.ndarray, discounts: np.ndarray, weights: np.ndarray, vol_targets: np.ndarray,
               aux_weight: float) -> tuple[Any, Any, Any, np.ndarray, np.ndarray]:
    """:func:`deepscalper_gradients` with the small arguments as numpy arrays (views of the replay batch):
    returns (L, L_q, L_vol or None, Q(s, a_taken), priorities) as numpy values."""
    out, vol_pair, cache = q_net.forward_stacked(twin.stacked, obs_pair, keep=True)
    # The dueling aggregation and the loss arithmetic on (branches, B) numbers run in numpy on views of the
    # (CPU) tensors: the same element-wise formulas in the same dtype, at a fraction of a torch op's fixed cost.
    out_np, index = out.numpy(), actions
    n_branches, n_batch = index.shape
    branch, row = np.arange(n_branches)[:, None], np.arange(n_batch)[None, :]  # with index: the taken (d, b, a)
    valid, pad, counts = q_net.dueling_arrays(out_np.dtype)  # (D, 1, n_max) 1 / 0, 0 / -inf; (D, 1) sizes
    value, adv = out_np[:, 0, :, 0], out_np[:, 1:]  # (2, B), (2, D, B, n_max)
    adv_mean = (adv * valid).sum(axis=-1) / counts  # (2, D, B)
    # 1.-2. dueling Q and branch TD targets: y = R + g * (V' + max_a A'_d(a) - mean A'_d), real sub-actions only
    targets = returns + discounts * ((adv[1] + pad).max(axis=-1) + value[1] - adv_mean[1])
    # 3. importance-weighted TD loss at the sub-actions taken
    q_taken = adv[0][branch, row, index] + value[0] - adv_mean[0]  # (D, B)
    td = targets - q_taken
    weighted = weights * td
    loss = loss_q = (weighted * td).sum() / td.size  # numpy scalars of the batch's dtype
    # dL_q/dQ_d(s, a) = -2 w td / (D B), through Q_d = V + A_d - mean A_d to the heads' outputs
    d_q = weighted * (-2.0 / td.size)
    d_out = np.zeros(out_np.shape[1:], dtype=out_np.dtype)  # (1 + D, B, n_max)
    np.multiply(d_q[:, :, None], valid / -counts[:, :, None], out=d_out[1:])
    d_out[1 + branch, row, index] += d_q
    d_out[0, :, 0] = d_q.sum(axis=0)
    # 4. auxiliary volatility loss over the transitions whose target is known
    loss_vol, d_vol = None, None
    if aux_weight > 0:
        sigma = vol_targets
        known = np.isfinite(sigma)
        n_known = int(np.count_nonzero(known))
        if n_known:
            error = np.where(known, vol_pair[0].numpy() - sigma, sigma.dtype.type(0))
            loss_vol = np.dot(error, error) / n_known
            loss = loss_q + aux_weight * loss_vol
            d_vol = torch.from_numpy(error * (2.0 * aux_weight / n_known))
    q_net.backward_online(twin.stacked, cache, torch.from_numpy(d_out), d_vol, twin.grads)
    twin.attach_grads()
    # 5. new priorities
    return loss, loss_q, loss_vol, q_taken, np.abs(td).sum(axis=0) / n_branches


# --- the agent: acting, replay, schedules, checkpoints (plumbing around the loss) -------------------------


class DeepScalper:
    """DeepScalper with an SB3-like interface.

    :param env: a ``rl_env.TradingEnv`` in multidiscrete mode (or None when loading for prediction only).
        Build the TRAINING env with ``training_env_overrides(config)`` so that its reward carries the
        hindsight bonus and its info the future-volatility target; evaluate on an env with neither.
    :param config: hyperparameters (defaults: ``botcore.config.DEFAULTS["deepscalper"]``).
    :param seed: overrides ``config.seed``.
    :param overrides: any DeepScalperConfig field, e.g. ``learning_rate=3e-4``.

    Example::

        env = TradingEnv(data, EnvConfig(action_mode="multidiscrete", **training_env_overrides(cfg)))
        agent = DeepScalper(env, cfg, seed=0)
        agent.learn(20_000, progress_bar=True)
        action, _ = agent.predict(obs)           # array([price_offset_index, quantity_index])
        agent.save("models/run/model.zip")
    """

    def __init__(self, env: Any, config: DeepScalperConfig | None = None, seed: int | None = None,
                 **overrides: Any) -> None:
        cfg = config if config is not None else DeepScalperConfig()
        if seed is not None:
            overrides["seed"] = seed
        self.config = cfg.replace(**overrides) if overrides else cfg
        if self.config.seed is not None:  # seed once, here: python, numpy and torch (network initialisation)
            random.seed(self.config.seed)
            np.random.seed(self.config.seed % 2**32)
            torch.manual_seed(self.config.seed)
        self._build(_env_spaces(env))
        self.env: Any = None
        self.set_env(env)

    # --- construction -------------------------------------------------------------------------------

    def _build(self, env_spaces: dict[str, Any], targets: list[float] | None = None) -> None:
        """Networks, optimizer and counters for this env layout; ``targets`` the quantity branch's saved targets
        (None: :func:`quantity_targets` of the env's levels)."""
        cfg = self.config
        self.seed = cfg.seed
        self._rng = np.random.default_rng(cfg.seed)
        self.spaces = env_spaces
        # the agent's own sub-actions per branch: the env's, except a target quantity branch (its targets)
        self.nvec = np.asarray(env_spaces["nvec"], dtype=np.int64)
        self._targets: np.ndarray | None = None
        if cfg.quantity_branch == "target":
            levels = env_spaces.get("quantity_levels")
            if levels is None or len(levels) != int(self.nvec[-1]):
                raise UserError("quantity_branch 'target' needs the env's quantity_levels (a TradingEnv in "
                                "multidiscrete mode); use quantity_branch 'order' for other envs")
            self._levels = np.asarray(levels, dtype=np.float64)
            self._targets = np.asarray(quantity_targets(levels, cfg.max_target) if targets is None else targets,
                                       dtype=np.float64)
            self.nvec = np.r_[self.nvec[:-1], len(self._targets)].astype(np.int64)
        self.branch_sizes = [int(np.prod(self.nvec))] if cfg.single_branch else [int(n) for n in self.nvec]
        self.device = torch.device(cfg.device)
        net_args = (env_spaces["window"], env_spaces["n_features"], env_spaces["n_private"], self.branch_sizes,
                    cfg.hidden_size, cfg.rnn, cfg.micro_window, cfg.macro_window, cfg.time_left_input)
        self._position_cell = env_spaces["window"] * env_spaces["n_features"]  # TradingEnv: private[0] = position
        self.q_net = DeepScalperNet(*net_args).to(self.device)
        self.q_target = DeepScalperNet(*net_args).to(self.device)
        self.q_target.load_state_dict(self.q_net.state_dict())
        self.q_target.requires_grad_(False)
        # both networks' parameters in one tensor, the online gradients in one flat buffer (TwinParameters)
        self._twin = TwinParameters(self.q_net, self.q_target)
        self._params = list(self.q_net.parameters())
        self.optimizer = torch.optim.Adam(self._params, lr=cfg.learning_rate, fused=True)
        self._link_adam_state()
        self._batch_tensors: tuple[np.ndarray, torch.Tensor] | None = None
        # the training fast path (deepscalper_gradients): the mingru network on the CPU; other encoders and
        # devices train through autograd on deepscalper_loss
        self._fast_path = cfg.rnn == "mingru" and self.device.type == "cpu"
        self._online_arrays = self._twin.online_arrays() if self._fast_path else None
        self.replay_buffer: ReplayBuffer | None = None
        self.num_timesteps = 0
        self.n_updates = 0
        self.n_target_updates = 0
        self.episodes = 0
        self._planned_total = 0
        self.vol_scale: float | None = None
        self.reward_scale: float | None = None
        self.exploration_rate = cfg.exploration_initial_eps
        self._last_obs: np.ndarray | None = None
        self._env_seeded = False
        self._pending: deque[tuple[np.ndarray, np.ndarray, float, float]] = deque()
        self._episode = {"reward": 0.0, "pnl": 0.0, "length": 0}
        self._warned_no_vol = False
        self._stats: dict[str, list[float]] = {k: [] for k in ("td", "aux", "q", "ep_reward", "ep_pnl", "ep_len")}

    def set_env(self, env: Any) -> None:
        """Attach a (new) env with the same observation and action layout; the next ``learn`` resets it."""
        found = _env_spaces(env)
        if self.spaces.get("quantity_levels") is None:  # a model from before the levels were recorded
            found["quantity_levels"] = None
        if found != self.spaces:
            raise UserError(f"env does not match the model: model {self.spaces}, env {found}")
        self.env = env
        self._last_obs = None
        self._pending.clear()
        self._env_seeded = False

    def get_env(self) -> Any:
        return self.env

    @property
    def at_episode_boundary(self) -> bool:
        """True between episodes: a checkpoint saved now resumes exactly where an uninterrupted run would."""
        return self._last_obs is None

    # --- acting -------------------------------------------------------------------------------------

    def _env_actions(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The env's (price offset, signed order size) actions for the agent's branch actions (B, len(nvec)).

        With ``quantity_branch = "order"`` they are the same. With ``"target"`` the quantity branch names the
        position to hold, T_j (:func:`quantity_targets`: the env's quantity levels up to ``max_target``, as
        fractions of the position limit); the order sent is the quantity level nearest to ``T_j - position``
        (the observation's position cell, which drifts off the grid with the price; on a tie the larger order),
        so no order while the position is within half a level step of the target. With ``max_target = 0.5``
        and levels up to 1, a reversal from the largest long to the largest short is one order.
        """
        if self._targets is None:
            return actions
        position = obs[:, self._position_cell].astype(np.float64)
        delta = self._targets[actions[:, -1]] - position
        out = actions.copy()
        # nearest level; on a tie the larger order (a tie-break by position in the list would favour one side)
        distance = np.abs(delta[:, None] - self._levels[None, :]) - 1e-9 * np.abs(self._levels)[None, :]
        out[:, -1] = distance.argmin(axis=1)
        return out

    def _greedy(self, obs: np.ndarray) -> np.ndarray:
        """Greedy sub-action per branch for a batch (B, obs_dim) -> (B, len(nvec)) (the agent's own actions;
        :meth:`_env_actions` turns them into the env's)."""
        with torch.inference_mode():
            q = self.q_net(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        best = q.argmax(dim=2).T.cpu().numpy()
        if self.config.single_branch:
            return np.stack(np.unravel_index(best[:, 0], self.nvec), axis=1).astype(np.int64)
        return best.astype(np.int64)

    def _act_greedy(self, obs: np.ndarray) -> np.ndarray:
        """``_greedy`` for ONE observation while training, through ``DeepScalperNet.greedy_numpy``."""
        best = self.q_net.greedy_numpy(self._online_arrays, obs)
        if self.config.single_branch:
            return np.array(np.unravel_index(int(best[0]), self.nvec), dtype=np.int64)
        return best

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Action(s) for one observation (obs_dim,) -> (len(nvec),) or a batch (B, obs_dim) -> (B, len(nvec)).

        :param deterministic: greedy per branch; False = epsilon-greedy at the current exploration rate.
        """
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        batch = obs.reshape(1, -1) if single else obs.reshape(obs.shape[0], -1)
        if batch.shape[1] != self.spaces["obs_dim"]:
            raise UserError(f"observation length {batch.shape[1]} does not match the model's "
                            f"{self.spaces['obs_dim']}")
        actions = self._greedy(batch)
        if not deterministic:
            explore = self._rng.random(len(batch)) < self.exploration_rate
            if explore.any():
                actions[explore] = self._rng.integers(0, self.nvec, size=(int(explore.sum()), len(self.nvec)))
        actions = self._env_actions(batch, actions)
        return (actions[0] if single else actions), None

    def split_policy(self, bars: np.ndarray, tie_tolerance: float = 1e-4) -> Callable[[int, np.ndarray], list[Any]]:
        """Greedy actions over a whole split with the market encoding computed once for every bar
        (:class:`~deepscalper.networks.SplitForward`): ``decide(start, private)`` gives, for the observations of
        bars ``start .. start + K - 1`` whose private cells (the last ``n_private``, float32 as the observation
        holds them) are the K rows of ``private``, the list of K actions ``predict(obs)[0]`` would take, each
        None where a branch's two best Q values lie within ``tie_tolerance * (1 + max |Q|)`` of each other (the
        split sums may round differently from the network's float32 forward there; the caller then asks
        :meth:`predict`, so the actions stay exactly the forward's). One call decides a stretch of bars at once.

        :param bars: (n_bars, n_features) features of the split's bars, as the env's observations hold them.
        """
        split = SplitForward(self.q_net, bars)
        single, nvec, bounds = self.config.single_branch, self.nvec, split.bounds.tolist()
        obs_dim = self.spaces["obs_dim"]

        def decide(start: int, private: np.ndarray) -> list[Any]:
            q = split.q_block(start, private)
            k = len(q)
            rows = np.arange(k)
            with np.errstate(invalid="ignore", over="ignore"):
                ok = np.isfinite(q.sum(axis=1))  # an overflow in the split sums: let the network decide
                tol = tie_tolerance * (1.0 + np.abs(q).max(axis=1))
                best = np.empty((k, len(bounds) - 1), dtype=np.int64)
                for d, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                    branch = q[:, lo:hi]
                    i = branch.argmax(axis=1)  # the first of equal maxima, as the forward's argmax
                    if hi - lo > 1:
                        rest = branch.copy()
                        rest[rows, i] = -np.inf
                        ok &= branch[rows, i] - rest.max(axis=1) > tol
                    best[:, d] = i
            if single:
                best = np.stack(np.unravel_index(best[:, 0], nvec), axis=1).astype(np.int64)
            if self._targets is not None:
                # _env_actions reads the observation's position cell only: a read-only view whose every cell of
                # row j is private[j, 0] (the position) stands in for the K observations
                obs = np.broadcast_to(np.asarray(private, dtype=np.float32)[:, :1], (k, obs_dim))
                best = self._env_actions(obs, best)
            return [row if good else None for row, good in zip(best, ok.tolist())]

        return decide

    def q_values(self, observation: np.ndarray) -> list[np.ndarray]:
        """Per-branch Q values of a batch of observations (for inspection and tests)."""
        obs = np.asarray(observation, dtype=np.float32).reshape(-1, self.spaces["obs_dim"])
        with torch.inference_mode():
            q = self.q_net(torch.as_tensor(obs, device=self.device)).cpu().numpy()
        return [q[d, :, :n] for d, n in enumerate(self.branch_sizes)]

    def predict_volatility(self, observation: np.ndarray) -> np.ndarray:
        """The auxiliary head's forecast of future volatility (std of log returns), in return units."""
        obs = np.asarray(observation, dtype=np.float32).reshape(-1, self.spaces["obs_dim"])
        with torch.inference_mode():
            pred = self.q_net.volatility(self.q_net.embed(torch.as_tensor(obs, device=self.device)))
        return pred.cpu().numpy() * (self.vol_scale or 1.0)

    # --- schedules ----------------------------------------------------------------------------------

    def _progress(self) -> float:
        return min(1.0, self.num_timesteps / self._planned_total) if self._planned_total else 0.0

    def _epsilon(self) -> float:
        cfg = self.config
        frac = min(1.0, self._progress() / cfg.exploration_fraction)
        return cfg.exploration_initial_eps + frac * (cfg.exploration_final_eps - cfg.exploration_initial_eps)

    def _beta(self) -> float:
        return self.config.per_beta + (1.0 - self.config.per_beta) * self._progress()

    # --- training -----------------------------------------------------------------------------------

    def _make_buffer(self) -> ReplayBuffer:
        cfg = self.config
        if cfg.prioritized_replay:
            return PrioritizedReplayBuffer(cfg.buffer_size, self.spaces["obs_dim"], len(self.nvec), cfg.per_alpha,
                                           cfg.per_eps)
        return ReplayBuffer(cfg.buffer_size, self.spaces["obs_dim"], len(self.nvec))

    def _store(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool,
               truncated: bool, vol: float) -> None:
        """Queue the step; emit n-step transitions (all remaining ones at the end of an episode)."""
        gamma, n = self.config.gamma, self.config.n_step
        self._pending.append((obs, action, reward, vol))
        if terminated or truncated:
            rewards = [p[2] for p in self._pending]
            for i, (o, a, _, v) in enumerate(self._pending):
                ret = sum(gamma ** k * r for k, r in enumerate(rewards[i:]))
                discount = 0.0 if terminated else gamma ** (len(rewards) - i)
                self.replay_buffer.add(o, a, ret, next_obs, discount, v)
            self._pending.clear()
        elif len(self._pending) == n:
            o, a, _, v = self._pending[0]
            ret = sum(gamma ** k * p[2] for k, p in enumerate(self._pending))
            self.replay_buffer.add(o, a, ret, next_obs, gamma ** n, v)
            self._pending.popleft()

    def _train_step(self) -> None:
        """One gradient update: ``deepscalper_loss`` on a replay batch (the algorithm; for mingru on the CPU its
        graph-free twin ``deepscalper_gradients``), then plumbing: clip the gradient norm, step Adam, write the new
        priorities back, update the target network on schedule."""
        cfg = self.config
        batch = self.replay_buffer.sample(cfg.batch_size, self._rng, self._beta())
        aux_weight = cfg.aux_weight if cfg.use_aux else 0.0
        if aux_weight > 0 and self.vol_scale is None and np.isfinite(batch.vol_targets).any():
            # the head predicts volatility in units of its mean in the buffer, fixed once (saved with the model)
            scale = self.replay_buffer.mean_vol_target()
            self.vol_scale = scale if math.isfinite(scale) and scale > 0 else 1.0
        if cfg.scale_rewards and self.reward_scale is None:
            # Q in units of the typical n-step return, fixed once (saved with the model): a per-bar P&L of a
            # few basis points of the account would otherwise sit far below the random spread of the freshly
            # initialised advantage heads, whose noise then decides the greedy actions for thousands of updates
            scale = float(np.std(self.replay_buffer.returns[:len(self.replay_buffer)]))
            self.reward_scale = scale if math.isfinite(scale) and scale > 0 else 1.0
        if cfg.single_branch:  # the ablation's one branch indexes the joint (price, quantity) action
            actions = np.ravel_multi_index(tuple(batch.actions.T), self.nvec)[None]
        else:
            actions = batch.actions.T
        if self._fast_path:
            # no autograd graph here: inference mode skips autograd's dispatch on every tensor operation (the
            # buffers written in place are ordinary tensors that need no gradient)
            with torch.inference_mode():
                loss_q, loss_vol, q_mean, priorities = self._fast_gradients(batch, actions, aux_weight)
                self._clip_gradients()
                self._adam_step()
        else:
            def tensor(array: np.ndarray) -> torch.Tensor:
                return torch.as_tensor(array, device=self.device)

            terms = deepscalper_loss(
                self.q_net, self.q_target, obs=tensor(batch.obs), actions=tensor(actions),
                returns=tensor(batch.returns / np.float32(self.reward_scale or 1.0)),
                next_obs=tensor(batch.next_obs), discounts=tensor(batch.discounts), weights=tensor(batch.weights),
                vol_targets=tensor(batch.vol_targets / np.float32(self.vol_scale or 1.0)), aux_weight=aux_weight)
            self._twin.grad.zero_()  # autograd accumulates into the flat gradient buffer's views
            self._twin.attach_grads()
            terms.loss.backward()
            loss_q, q_mean = float(terms.loss_q), float(terms.q_taken.mean())
            loss_vol = float("nan") if terms.loss_vol is None else float(terms.loss_vol)
            priorities = terms.priorities.cpu().numpy()
            self._clip_gradients()
            self._adam_step()
        self.replay_buffer.update_priorities(batch.indices, priorities)
        self.n_updates += 1
        if self.n_updates % cfg.target_update_interval == 0:
            self._update_target()
        self._stats["td"].append(loss_q)
        self._stats["aux"].append(loss_vol)
        self._stats["q"].append(q_mean)

    def _fast_gradients(self, batch: Any, actions: np.ndarray, aux_weight: float) -> tuple[float, float, float,
                                                                                            np.ndarray]:
        """:func:`deepscalper_gradients` on a replay batch (its arrays are reused by every sample: their tensor
        views are made once). Returns (L_q, L_vol or NaN, mean Q(s, a_taken), new priorities)."""
        if self._batch_tensors is None or self._batch_tensors[0] is not batch.obs_pair:
            self._batch_tensors = (batch.obs_pair, torch.from_numpy(batch.obs_pair))
        # scaled in place in the batch's own (reused) arrays: numpy is cheaper than a torch op on 64 numbers
        batch.returns /= np.float32(self.reward_scale or 1.0)
        batch.vol_targets /= np.float32(self.vol_scale or 1.0)
        _, loss_q, loss_vol, q_taken, priorities = _gradients(
            self.q_net, self._twin, self._batch_tensors[1], actions, batch.returns, batch.discounts, batch.weights,
            batch.vol_targets, aux_weight)
        return float(loss_q), float("nan") if loss_vol is None else float(loss_vol), float(q_taken.mean()), priorities

    def _clip_gradients(self) -> None:
        """Scale the gradients so that their global L2 norm is at most ``max_grad_norm``: what
        ``torch.nn.utils.clip_grad_norm_`` does (coefficient max_norm / (norm + 1e-6), at most 1), on the one
        flat gradient buffer."""
        grad = self._twin.grad
        coefficient = self.config.max_grad_norm / (float(torch.linalg.vector_norm(grad)) + 1e-6)
        if coefficient < 1.0:
            grad.mul_(coefficient)

    def _link_adam_state(self) -> None:
        """Make the optimizer's per-parameter state (step, exp_avg, exp_avg_sq) views of three flat buffers
        (``_adam_step`` then updates all parameters in a few operations; ``optimizer.state_dict()`` stays
        current and keeps torch's format). Keeps the values of a loaded state; a fresh one starts at zero, as
        torch's Adam initialises it."""
        params, state = self._params, self.optimizer.state
        flat = self._twin.online
        self._adam_m, self._adam_v = torch.zeros_like(flat), torch.zeros_like(flat)
        self._adam_steps = torch.zeros(len(params), dtype=torch.float32, device=flat.device)
        offset = 0
        with torch.no_grad():
            for i, p in enumerate(params):
                n = p.numel()
                old = state.get(p, {})
                entry = dict(old)
                for key, buffer in (("exp_avg", self._adam_m), ("exp_avg_sq", self._adam_v)):
                    view = buffer[offset:offset + n].view_as(p)
                    if key in old:
                        view.copy_(old[key])
                    entry[key] = view
                if "step" in old:
                    self._adam_steps[i] = float(old["step"])
                entry["step"] = self._adam_steps[i]
                state[p] = entry
                offset += n
        # _adam_step needs one step count for all parameters (torch's Adam steps them together)
        self._adam_uniform = bool((self._adam_steps == self._adam_steps[:1]).all())

    def _adam_step(self) -> None:
        """``self.optimizer.step()`` (torch's Adam: the same formulas, to float rounding) on the flat parameter,
        gradient and moment buffers: six tensor operations instead of the optimizer's per-call Python machinery.
        Settings it does not implement (weight decay, amsgrad, maximize, several groups, parameters at
        different step counts) go through torch's ``step``.

        With m and v the moments and t the step: p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps),
        computed as p -= (lr sqrt(1 - b2^t) / (1 - b1^t)) * m / (sqrt(v) + eps sqrt(1 - b2^t)).
        """
        opt = self.optimizer
        group = opt.param_groups[0]
        if (len(opt.param_groups) != 1 or group["weight_decay"] or group["amsgrad"] or group["maximize"]
                or not self._adam_uniform):
            opt.step()
            self._adam_uniform = bool((self._adam_steps == self._adam_steps[:1]).all())
            return
        beta1, beta2 = group["betas"]
        steps = self._adam_steps
        steps += 1  # the optimizer state's step counts (views of this tensor)
        step = int(steps[0])
        bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
        grad, m, v = self._twin.grad, self._adam_m, self._adam_v
        m.lerp_(grad, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = v.sqrt().add_(group["eps"] * bias_correction2_sqrt)
        self._twin.online.addcdiv_(m, denom, value=-group["lr"] * bias_correction2_sqrt / (1.0 - beta1 ** step))

    def _update_target(self) -> None:
        """Hard copy (tau = 1) or Polyak averaging target <- target + tau * (online - target)."""
        tau, twin = self.config.tau, self._twin
        with torch.no_grad():  # every parameter at once: both networks live in one tensor (TwinParameters)
            if tau >= 1.0:
                twin.target.copy_(twin.online)
            else:
                twin.target.lerp_(twin.online, tau)
        self.n_target_updates += 1

    def learn(self, total_timesteps: int, callback: Callable[[dict[str, Any]], bool] | Any = None,
              progress_bar: bool = False, reset_num_timesteps: bool = False) -> DeepScalper:
        """Train for ``total_timesteps`` env steps (continuing the counters unless ``reset_num_timesteps``).

        Epsilon and the PER beta follow the planned total (steps done + ``total_timesteps``), so a run resumed
        from a checkpoint with ``learn(planned - done)`` keeps the uninterrupted run's schedules.

        :param callback: ``callable(locals_dict) -> bool`` or an object with ``on_step(agent) -> bool``,
            called after every env step; returning False stops training.
        :param progress_bar: show a tqdm bar.
        """
        if self.env is None:
            raise UserError("DeepScalper.learn needs an env: pass one to load(path, env=...) or call set_env(env)")
        if total_timesteps < 0:
            raise UserError(f"total_timesteps must be 0 or more, got {total_timesteps}")
        cfg = self.config
        if reset_num_timesteps:
            self.num_timesteps = 0
            self.episodes = 0
            self._last_obs = None
            self._pending.clear()
        if self.replay_buffer is None:
            self.replay_buffer = self._make_buffer()
        end = self.num_timesteps + int(total_timesteps)
        self._planned_total = end
        previous_threads = torch.get_num_threads()
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        on_step = getattr(callback, "on_step", None)
        from tqdm.auto import tqdm

        bar = tqdm(total=int(total_timesteps), disable=not progress_bar, unit="step", desc="DeepScalper")
        t0, steps0, bar_done = time.perf_counter(), self.num_timesteps, 0
        env, nvec = self.env, self.nvec
        self.q_net.train()
        try:
            while self.num_timesteps < end:
                if self._last_obs is None:
                    obs, _ = env.reset(seed=cfg.seed) if not self._env_seeded else env.reset()
                    self._env_seeded = True
                    self._last_obs = np.asarray(obs, dtype=np.float32)
                    self._episode = {"reward": 0.0, "pnl": 0.0, "length": 0}
                obs = self._last_obs
                # epsilon-greedy per branch (one draw decides exploration for the whole action)
                self.exploration_rate = self._epsilon()
                if self._rng.random() < self.exploration_rate:
                    action = self._rng.integers(0, nvec)
                elif self._online_arrays is not None:  # numpy, one observation (the same argmax to rounding)
                    action = self._act_greedy(obs)
                else:
                    action = self._greedy(obs[None])[0]
                next_obs, reward, terminated, truncated, info = env.step(self._env_actions(obs[None], action[None])[0])
                next_obs = np.asarray(next_obs, dtype=np.float32)
                self.num_timesteps += 1
                reward = float(reward)
                ep = self._episode
                ep["reward"] += reward
                ep["pnl"] += float(info.get("pnl", 0.0))
                ep["length"] += 1
                vol = float(info.get("future_vol", np.nan)) if cfg.use_aux else np.nan
                if cfg.use_aux and "future_vol" not in info and not self._warned_no_vol:
                    logger.warning("use_aux is on but the env reports no future_vol (build it with vol_horizon > 0);"
                                   " the volatility head is not trained")
                    self._warned_no_vol = True
                self._store(obs, action, reward, next_obs, terminated, truncated, vol)
                if terminated or truncated:
                    self.episodes += 1
                    self._stats["ep_reward"].append(ep["reward"])
                    self._stats["ep_pnl"].append(ep["pnl"])
                    self._stats["ep_len"].append(ep["length"])
                    self._last_obs = None
                else:
                    self._last_obs = next_obs
                if (self.num_timesteps > cfg.learning_starts and self.num_timesteps % cfg.train_freq == 0
                        and len(self.replay_buffer) >= cfg.batch_size):
                    for _ in range(cfg.gradient_steps):
                        self._train_step()
                if self.num_timesteps % cfg.log_interval == 0:
                    self._log(time.perf_counter() - t0, self.num_timesteps - steps0)
                if progress_bar and (self.num_timesteps % 100 == 0 or self.num_timesteps == end):
                    bar.update(self.num_timesteps - steps0 - bar_done)
                    bar_done = self.num_timesteps - steps0
                if on_step is not None:
                    if on_step(self) is False:
                        break
                elif callback is not None and callback(locals()) is False:
                    break
        finally:
            bar.close()
            torch.set_num_threads(previous_threads)
        if any(self._stats.values()):
            self._log(time.perf_counter() - t0, self.num_timesteps - steps0)
        return self

    # --- logging ------------------------------------------------------------------------------------

    def _log(self, elapsed: float, steps: int) -> None:
        """One row of progress.csv (means since the last row) and one INFO line."""
        def mean(key: str) -> float:
            values = [v for v in self._stats[key] if math.isfinite(v)]
            return float(np.mean(values)) if values else float("nan")

        row = {"time/total_timesteps": self.num_timesteps, "time/episodes": self.episodes,
               "time/updates": self.n_updates, "time/fps": round(steps / elapsed, 1) if elapsed > 0 else "",
               "rollout/exploration_rate": round(self.exploration_rate, 4), "train/per_beta": round(self._beta(), 4),
               "losses/td": mean("td"), "losses/aux": mean("aux"), "charts/q_mean": mean("q"),
               "charts/episode_reward": mean("ep_reward"), "charts/episode_pnl": mean("ep_pnl"),
               "charts/episode_length": mean("ep_len")}
        for key in self._stats:
            self._stats[key].clear()
        # Only the statistics measured since the last row: none of td, aux or q before the first gradient update.
        shown = " ".join(f"{name} {row[key]:{spec}}" for name, key, spec in (
            ("td", "losses/td", ".3g"), ("aux", "losses/aux", ".3g"), ("q", "charts/q_mean", ".3g"),
            ("episode pnl", "charts/episode_pnl", ".2f")) if math.isfinite(row[key]))
        logger.info("step %d eps %.3f %s", self.num_timesteps, self.exploration_rate,
                    shown if self.n_updates else f"{shown} (no gradient update yet)".strip())
        if self.config.log_dir:
            path = Path(self.config.log_dir) / "progress.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists()
            with open(path, "a", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                                 for k, v in row.items()})

    # --- save / load --------------------------------------------------------------------------------

    def save(self, path: str | Path, include_buffer: bool = False) -> None:
        """Write ONE zip file atomically: JSON metadata, torch state dicts, and the replay buffer (npz)
        when ``include_buffer`` (a resumable training checkpoint)."""
        env_rng = None
        base = getattr(self.env, "unwrapped", self.env)
        if base is not None and getattr(base, "_np_random", None) is not None:
            env_rng = _gen_state(base._np_random)
        py_state = random.getstate()
        meta = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": self.config.to_dict(),
            "spaces": self.spaces,
            "counters": {"num_timesteps": self.num_timesteps, "n_updates": self.n_updates,
                         "n_target_updates": self.n_target_updates, "episodes": self.episodes,
                         "planned_total": self._planned_total},
            "vol_scale": self.vol_scale, "reward_scale": self.reward_scale,
            "quantity_targets": None if self._targets is None else self._targets.tolist(),
            "exploration_rate": self.exploration_rate,
            "env_seeded": self._env_seeded, "at_episode_boundary": self.at_episode_boundary,
            "rng": {"agent": _gen_state(self._rng), "python": [py_state[0], list(py_state[1]), py_state[2]],
                    "env": env_rng},
            "has_buffer": bool(include_buffer and self.replay_buffer is not None),
            "versions": {"torch": torch.version.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
        }
        # the tensors are views of shared buffers (TwinParameters, the flat Adam moments): saved as clones, so
        # each file holds its own tensors only, in torch's usual layout
        optimizer_state = self.optimizer.state_dict()
        optimizer_state["state"] = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                                    for i, s in optimizer_state["state"].items()}
        states = {"policy.pth": _cloned(self.q_net.state_dict()),
                  "target_policy.pth": _cloned(self.q_target.state_dict()),
                  "optimizer.pth": optimizer_state, "torch_rng.pth": {"cpu": torch.get_rng_state()}}
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_META, json.dumps(to_jsonable(meta), indent=1))
            for name, state in states.items():
                buf = io.BytesIO()
                torch.save(state, buf)
                zf.writestr(name, buf.getvalue())
            if meta["has_buffer"]:
                buf = io.BytesIO()
                np.savez(buf, **self.replay_buffer.state_arrays())
                zf.writestr(_REPLAY, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, env: Any = None, device: str | None = None) -> DeepScalper:
        """Load a model or checkpoint written by ``save``.

        :param env: attach this env (its layout must match; its RNG is restored from a checkpoint).
        :raises ModelFileError: naming the file when it is missing, truncated, corrupt or incompatible.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such model file")
        try:
            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.read(_META).decode("utf-8"))
                if meta.get("format") != FORMAT_NAME:
                    raise ModelFileError(f"{path}: not a DeepScalper model (format {meta.get('format')!r})")
                if meta.get("format_version") != FORMAT_VERSION:
                    raise ModelFileError(f"{path}: DeepScalper model format version {meta.get('format_version')} "
                                         f"is not supported (this code reads version {FORMAT_VERSION})")
                states = {name: torch.load(io.BytesIO(zf.read(name)), map_location=device or "cpu",
                                           weights_only=True) for name in _STATE_FILES}
                replay = None
                if meta.get("has_buffer"):
                    with np.load(io.BytesIO(zf.read(_REPLAY)), allow_pickle=False) as npz:
                        replay = {k: npz[k] for k in npz.files}
        except ModelFileError:
            raise
        except Exception as exc:  # zip, CRC, JSON, unpickling and truncation errors all mean the same here
            raise ModelFileError(f"{path}: corrupt or unreadable DeepScalper model file "
                                 f"({type(exc).__name__}: {exc})") from exc
        try:
            # models saved before these settings existed: the paper's order sizes and a whole-window macro encoder
            saved = {"quantity_branch": "order", "macro_window": 0, "scale_rewards": False, "time_left_input": True,
                     **meta["config"]}
            config = DeepScalperConfig.from_dict({**saved, **({"device": device} if device else {})})
            agent = cls.__new__(cls)
            agent.config = config
            targets = meta.get("quantity_targets")
            if targets is None and config.quantity_branch == "target" and meta["spaces"].get("quantity_levels"):
                # saved before the targets were recorded: the levels scaled to max_target (quarters between them)
                levels = np.asarray(meta["spaces"]["quantity_levels"], dtype=np.float64)
                targets = (levels * (config.max_target / max(1e-12, float(np.abs(levels).max())))).tolist()
            agent._build({"quantity_levels": None, **meta["spaces"],
                          "nvec": [int(n) for n in meta["spaces"]["nvec"]]}, targets)
            agent.env = None
            agent.q_net.load_state_dict(states["policy.pth"])
            agent.q_target.load_state_dict(states["target_policy.pth"])
            agent.optimizer.load_state_dict(states["optimizer.pth"])
            agent._link_adam_state()
            counters = meta["counters"]
            agent.num_timesteps = int(counters["num_timesteps"])
            agent.n_updates = int(counters["n_updates"])
            agent.n_target_updates = int(counters["n_target_updates"])
            agent.episodes = int(counters["episodes"])
            agent._planned_total = int(counters["planned_total"])
            agent.vol_scale = meta["vol_scale"]
            agent.reward_scale = meta.get("reward_scale")
            agent.exploration_rate = float(meta["exploration_rate"])
            agent._rng = _gen_from_state(meta["rng"]["agent"])
            if replay is not None:
                agent.replay_buffer = agent._make_buffer()
                agent.replay_buffer.load_state_arrays(replay)
                # a training checkpoint: restore the global generators too, for an exact resume
                py = meta["rng"]["python"]
                random.setstate((py[0], tuple(py[1]), py[2]))
                torch.set_rng_state(states["torch_rng.pth"]["cpu"])
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{path}: incompatible DeepScalper model file ({type(exc).__name__}: {exc})") from exc
        if env is not None:
            try:
                agent.set_env(env)
            except UserError as exc:
                raise ModelFileError(f"{path}: model does not fit this env: {exc}") from None
            env_rng = meta["rng"].get("env")
            if replay is not None and meta.get("env_seeded") and env_rng is not None:
                getattr(env, "unwrapped", env).np_random = _gen_from_state(env_rng)
                agent._env_seeded = True
        return agent
