"""The DeepScalper agent (Sun et al., CIKM 2022): a Branching Dueling Q-Network trained off-policy from
prioritized replay, with the hindsight bonus in the training reward and a volatility auxiliary task.

The training loop in ``learn`` reads top to bottom: act epsilon-greedily per branch, step the env, turn the last
n rewards into an n-step transition, store it, and every ``train_freq`` steps run ``gradient_steps`` updates of
``_train_step`` (the algorithm). Everything else is plumbing: schedules, logging, checkpoints.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from botcore.atomic import atomic_path, to_jsonable
from botcore.errors import ModelFileError, UserError
from deepscalper.config import DeepScalperConfig
from deepscalper.networks import DeepScalperNet, pair_parameters
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
    return {"obs_dim": obs_dim, "nvec": [int(n) for n in env.action_space.nvec], "window": window,
            "n_features": n_features, "n_private": n_private}


def _gen_state(gen: np.random.Generator) -> dict[str, Any]:
    return gen.bit_generator.state


def _gen_from_state(state: dict[str, Any]) -> np.random.Generator:
    gen = np.random.Generator(getattr(np.random, state["bit_generator"])())
    gen.bit_generator.state = state
    return gen


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

    def _build(self, env_spaces: dict[str, Any]) -> None:
        cfg = self.config
        self.seed = cfg.seed
        self._rng = np.random.default_rng(cfg.seed)
        self.spaces = env_spaces
        self.nvec = np.asarray(env_spaces["nvec"], dtype=np.int64)
        self.branch_sizes = [int(np.prod(self.nvec))] if cfg.single_branch else [int(n) for n in self.nvec]
        self.device = torch.device(cfg.device)
        net_args = (env_spaces["window"], env_spaces["n_features"], env_spaces["n_private"], self.branch_sizes,
                    cfg.hidden_size, cfg.rnn, cfg.micro_window)
        self.q_net = DeepScalperNet(*net_args).to(self.device)
        self.q_target = DeepScalperNet(*net_args).to(self.device)
        self.q_target.load_state_dict(self.q_net.state_dict())
        self.q_target.requires_grad_(False)
        # fused path: online and target weights live in stacked tensors ([0] online, [1] target) so that one
        # batched pass computes Q(obs) and Q_target(next_obs); the target stays a separate, synced copy
        self._stacks = pair_parameters(self.q_net, self.q_target) if self.q_net.fused else None
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=cfg.learning_rate, fused=True)
        self._online_params = list(self.q_net.parameters())
        self._target_params = list(self.q_target.parameters())
        self.replay_buffer: ReplayBuffer | None = None
        self.num_timesteps = 0
        self.n_updates = 0
        self.n_target_updates = 0
        self.episodes = 0
        self._planned_total = 0
        self.vol_scale: float | None = None
        self.exploration_rate = cfg.exploration_initial_eps
        self._last_obs: np.ndarray | None = None
        self._env_seeded = False
        self._pending: deque[tuple[np.ndarray, np.ndarray, float, float]] = deque()
        self._episode = {"reward": 0.0, "pnl": 0.0, "length": 0}
        self._warned_no_vol = False
        self._act_input: torch.Tensor | None = None
        self._adam_lists: tuple[list[torch.Tensor], ...] | None = None  # set by the first _adam_step
        self._batch_views: tuple[np.ndarray, dict[str, torch.Tensor]] | None = None
        self._stats: dict[str, list[float]] = {k: [] for k in ("td", "aux", "q", "ep_reward", "ep_pnl", "ep_len")}

    def set_env(self, env: Any) -> None:
        """Attach a (new) env with the same observation and action layout; the next ``learn`` resets it."""
        found = _env_spaces(env)
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

    def _q(self, obs: torch.Tensor) -> torch.Tensor:
        """Q values (branches, B, n) of the online net, without a graph (the fused path for mingru)."""
        if self.q_net.fused:
            return self.q_net.forward_fused(obs)[0]
        with torch.inference_mode():
            return self.q_net(obs)

    def _greedy(self, obs: np.ndarray) -> np.ndarray:
        """Greedy sub-action per branch for a batch (B, obs_dim) -> (B, len(nvec))."""
        best = self._q(torch.as_tensor(obs, dtype=torch.float32, device=self.device)).argmax(dim=2).T.cpu().numpy()
        if self.config.single_branch:
            return np.stack(np.unravel_index(best[:, 0], self.nvec), axis=1).astype(np.int64)
        return best.astype(np.int64)

    def _act_greedy(self, obs: np.ndarray) -> np.ndarray:
        """``_greedy`` for ONE observation while training: copied into a reused input tensor."""
        if self._act_input is None:
            self._act_input = torch.zeros(1, self.spaces["obs_dim"])
        self._act_input.numpy()[0] = obs
        best = self._q(self._act_input)[:, 0].argmax(dim=1).numpy()
        if self.config.single_branch:
            return np.array(np.unravel_index(int(best[0]), self.nvec), dtype=np.int64)
        return best.astype(np.int64)

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
        return (actions[0] if single else actions), None

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
        """One gradient update: per-branch TD targets from the target net, loss averaged over branches,
        importance-weighted; plus eta * MSE of the volatility head on transitions with a future-vol target.

        With the mingru encoder the networks run their fused path (``forward_fused``/``backward_fused``: the
        same function and gradients, without an autograd graph); otherwise autograd differentiates the loss.
        """
        cfg = self.config
        net = self.q_net
        batch = self.replay_buffer.sample(cfg.batch_size, self._rng, self._beta())
        if self._batch_views is None or self._batch_views[0] is not batch.obs:  # the buffer reuses its arrays
            self._batch_views = (batch.obs, {name: torch.from_numpy(getattr(batch, name)) for name in
                                             ("obs", "next_obs", "returns", "discounts", "weights", "obs_pair")})
        t = self._batch_views[1]
        if cfg.single_branch:
            actions = torch.from_numpy(np.ravel_multi_index(tuple(batch.actions.T), self.nvec)[None, :, None])
        else:
            actions = torch.from_numpy(batch.actions).T[:, :, None]  # (branches, B, 1)
        if net.fused:  # online(obs) and target(next_obs) in one stacked pass; gradients for the online half
            q_pair, vol_pair, cache = net.forward_pair(self._stacks, t["obs_pair"], keep=True)
            q, vol_pred, next_q = q_pair[0], vol_pair[0], q_pair[1]
        else:
            with torch.no_grad():
                next_q = self.q_target(t["next_obs"])
            (q, vol_pred), cache = net.heads(net.embed(t["obs"])), None
        with torch.no_grad():  # y_d = R + gamma^k * max_a Q_target_d(s', a), one target per branch
            targets = torch.addcmul(t["returns"], t["discounts"], next_q.max(dim=2).values)
        q_taken = q.gather(2, actions).squeeze(2)  # (branches, B)
        td = targets - q_taken
        loss_td = (t["weights"] * td.pow(2)).mean()  # mean over branches and batch
        loss = loss_td
        loss_aux = float("nan")
        d_vol = None
        if cfg.use_aux and cfg.aux_weight > 0:
            valid = np.isfinite(batch.vol_targets)
            n_valid = int(valid.sum())
            if self.vol_scale is None and n_valid:
                scale = self.replay_buffer.mean_vol_target()
                self.vol_scale = scale if math.isfinite(scale) and scale > 0 else 1.0
            if n_valid:  # MSE over the transitions whose future volatility is known (nan near the data's end)
                target_vol = np.where(valid, batch.vol_targets / np.float32(self.vol_scale or 1.0), 0.0)
                err = (vol_pred - torch.from_numpy(target_vol.astype(np.float32))) * torch.from_numpy(valid)
                aux = err.pow(2).sum() / n_valid
                loss = loss + cfg.aux_weight * aux
                loss_aux = float(aux.detach())
                if cache is not None:
                    d_vol = err * (2.0 * cfg.aux_weight / n_valid)
        if cache is None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:  # d loss / d q_taken = -2 w td / (branches * B)
            net.backward_fused(cache, actions, td * t["weights"] * (-2.0 / td.numel()), d_vol)
        self._clip_gradients()
        self._adam_step()
        td_abs = td.detach().abs().mean(dim=0).numpy()
        self.replay_buffer.update_priorities(batch.indices, td_abs)
        self.n_updates += 1
        if self.n_updates % cfg.target_update_interval == 0:
            self._update_target()
        self._stats["td"].append(float(loss_td.detach()))
        self._stats["aux"].append(loss_aux)
        self._stats["q"].append(float(q_taken.detach().mean()))

    def _clip_gradients(self) -> None:
        """Scale the gradients so that their global L2 norm is at most ``max_grad_norm`` (as torch's
        clip_grad_norm_, in four foreach ops)."""
        flat = self.q_net.flat_grad if self.q_net.fused else None
        if flat is not None:  # the fused path's gradients are views of one flat buffer
            flat.mul_(torch.clamp(self.config.max_grad_norm / (torch.linalg.vector_norm(flat) + 1e-6), max=1.0))
            return
        grads = [p.grad for p in self._online_params]
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_mul_(grads, torch.clamp(self.config.max_grad_norm / (total + 1e-6), max=1.0))

    def _adam_step(self) -> None:
        """``self.optimizer.step()``: the first call goes through torch's Adam (it creates the state); later
        calls run the same fused Adam kernel directly on lists of the optimizer's own state tensors (so its
        state_dict stays current), skipping the per-call Python overhead of ``Optimizer.step``."""
        opt = self.optimizer
        group = opt.param_groups[0]
        if self._adam_lists is None:
            opt.step()
            if (len(opt.param_groups) == 1 and group["fused"]
                    and not (group["amsgrad"] or group["maximize"] or group["decoupled_weight_decay"])):
                states = [opt.state[p] for p in group["params"]]
                self._adam_lists = (group["params"], [s["exp_avg"] for s in states],
                                    [s["exp_avg_sq"] for s in states], [s["step"] for s in states])
            return
        params, exp_avgs, exp_avg_sqs, steps = self._adam_lists
        grads = [p.grad for p in params]
        if any(g is None for g in grads):  # torch's Adam skips such parameters
            opt.step()
            return
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                           lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                           eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)

    def _update_target(self) -> None:
        """Hard copy (tau = 1) or Polyak averaging target <- target + tau * (online - target)."""
        with torch.no_grad():
            if self.config.tau >= 1.0:
                torch._foreach_copy_(self._target_params, self._online_params)
            else:
                torch._foreach_lerp_(self._target_params, self._online_params, self.config.tau)
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
                else:
                    action = self._act_greedy(obs)
                next_obs, reward, terminated, truncated, info = env.step(action)
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
        logger.info("step %d eps %.3f td %.3g aux %.3g q %.3g episode pnl %.2f", self.num_timesteps,
                    self.exploration_rate, row["losses/td"], row["losses/aux"], row["charts/q_mean"],
                    row["charts/episode_pnl"])
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
            "vol_scale": self.vol_scale, "exploration_rate": self.exploration_rate,
            "env_seeded": self._env_seeded, "at_episode_boundary": self.at_episode_boundary,
            "rng": {"agent": _gen_state(self._rng), "python": [py_state[0], list(py_state[1]), py_state[2]],
                    "env": env_rng},
            "has_buffer": bool(include_buffer and self.replay_buffer is not None),
            "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        }
        # cloned: the fused path's parameters are views of stacked (online, target) tensors
        states = {"policy.pth": {k: v.clone() for k, v in self.q_net.state_dict().items()},
                  "target_policy.pth": {k: v.clone() for k, v in self.q_target.state_dict().items()},
                  "optimizer.pth": self.optimizer.state_dict(), "torch_rng.pth": {"cpu": torch.get_rng_state()}}
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
            config = DeepScalperConfig.from_dict({**meta["config"], **({"device": device} if device else {})})
            agent = cls.__new__(cls)
            agent.config = config
            agent._build({**meta["spaces"], "nvec": [int(n) for n in meta["spaces"]["nvec"]]})
            agent.env = None
            agent.q_net.load_state_dict(states["policy.pth"])
            agent.q_target.load_state_dict(states["target_policy.pth"])
            agent.optimizer.load_state_dict(states["optimizer.pth"])
            counters = meta["counters"]
            agent.num_timesteps = int(counters["num_timesteps"])
            agent.n_updates = int(counters["n_updates"])
            agent.n_target_updates = int(counters["n_target_updates"])
            agent.episodes = int(counters["episodes"])
            agent._planned_total = int(counters["planned_total"])
            agent.vol_scale = meta["vol_scale"]
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
