"""stable-baselines3 PPO / A2C / DQN as a toolkit agent, on TradingVecEnv (fast) or BacktraderEnv."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Agent, AgentSpec, TrainingHooks
from botcore.atomic import atomic_path
from botcore.errors import ModelFileError

SB3_ALGOS = ("ppo", "a2c", "dqn")


def algo_class(algo: str) -> Any:
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[algo]


def sb3_hyperparameters(spec: AgentSpec) -> dict[str, Any]:
    """The keyword arguments of the SB3 algorithm: the config's ``sb3`` section with the trial's overrides."""
    s = dict(spec.cfg["sb3"])
    hp = dict(spec.hyperparams)
    if "hidden_size" in hp:  # Optuna / grid name for a two-layer net
        hp["net_arch"] = [int(hp["hidden_size"])] * 2
        del hp["hidden_size"]
    s.update({k: v for k, v in hp.items() if k in s})
    extra = {k: v for k, v in hp.items() if k not in s}
    total_steps = spec.total_steps
    out: dict[str, Any] = {"learning_rate": float(s["learning_rate"]), "gamma": float(s["gamma"]),
                           "net_arch": list(s["net_arch"]), "n_envs": int(s["n_envs"])}
    if spec.algo == "ppo":
        out.update(n_steps=int(s["n_steps"]), batch_size=int(s["batch_size"]))
    elif spec.algo == "a2c":
        out.update(n_steps=int(s["n_steps"]))
    else:  # dqn: SB3's defaults (1M buffer, 10k target interval) do not fit runs of a few thousand steps
        out.update(batch_size=int(s["batch_size"]), buffer_size=int(min(100_000, max(total_steps, 1000))),
                   learning_starts=int(min(1000, total_steps // 10)),
                   target_update_interval=int(max(1, min(1000, total_steps // 20))),
                   exploration_fraction=0.2, train_freq=4)
    out.update(extra)
    return out


class SB3Agent(Agent):
    """A stable-baselines3 PPO / A2C / DQN on TradingVecEnv (fast) or BacktraderEnv (in a DummyVecEnv)."""

    def __init__(self, spec: AgentSpec, train_data: Any, env_config: Any):
        self.spec = spec
        self.train_data, self.env_config = train_data, env_config
        self.hyperparameters = sb3_hyperparameters(spec)
        self.n_envs = int(self.hyperparameters.pop("n_envs"))
        self.env = self._make_env(spec.seed)
        self.model = self._new_model()
        self._attach_logger()

    def _attach_logger(self) -> None:
        """SB3's own progress.csv (losses, entropy, ...) beside the curves file."""
        if self.spec.log_dir is not None:
            from stable_baselines3.common.logger import configure

            self.model.set_logger(configure(str(self.spec.log_dir), ["csv"]))

    def _make_env(self, seed: int) -> Any:
        if self.spec.engine == "fast":
            from rl_env.vec_env import TradingVecEnv

            return TradingVecEnv(self.train_data, self.env_config, self.n_envs, seed=seed)
        from stable_baselines3.common.vec_env import DummyVecEnv

        from rl_env.backtrader_env import BacktraderEnv

        venv = DummyVecEnv([lambda: BacktraderEnv(self.train_data, self.env_config)] * self.n_envs)
        venv.seed(seed)
        return venv

    def _new_model(self) -> Any:
        kwargs = dict(self.hyperparameters)
        net_arch = kwargs.pop("net_arch")
        return algo_class(self.spec.algo)("MlpPolicy", self.env, policy_kwargs={"net_arch": net_arch},
                                          seed=self.spec.seed, device="cpu", verbose=0, **kwargs)

    def learn(self, n_steps: int, hooks: TrainingHooks) -> None:
        self.model.learn(n_steps, callback=_callback_class()(hooks), reset_num_timesteps=False)

    def save_model(self, path: Path) -> None:
        with atomic_path(path) as tmp:  # the temp name ends in .tmp, so SB3 adds no .zip of its own
            self.model.save(tmp)

    def save_checkpoint(self, folder: Path, generation: int) -> list[str]:
        files = [f"model_{generation}.zip"]
        self.save_model(folder / files[0])
        if self.spec.algo == "dqn":
            files.append(f"buffer_{generation}.pkl")
            with atomic_path(folder / files[1]) as tmp:
                self.model.save_replay_buffer(tmp)
        return files

    def rng_state(self) -> dict[str, Any]:
        return {"action_space": self.model.action_space.np_random.bit_generator.state}

    def load_checkpoint(self, folder: Path, files: list[str], extra_rng: dict[str, Any], resumed_at: int) -> None:
        self.env.close()
        self.env = self._make_env(self.spec.seed + 1 + resumed_at)
        try:
            self.model = algo_class(self.spec.algo).load(folder / files[0], env=self.env, device="cpu")
            if len(files) > 1:
                self.model.load_replay_buffer(folder / files[1])
        except Exception as exc:
            raise ModelFileError(f"checkpoint {folder / files[0]} cannot be loaded: {type(exc).__name__}: {exc}; "
                                 "start a new run without --resume") from exc
        # SB3's load reseeds the env with the run's seed; a resumed run must not replay its first episodes
        self.env.seed(self.spec.seed + 1 + resumed_at)
        self._attach_logger()
        self.model._last_obs = None  # the env is new: learn() must reset it instead of reusing a stale obs
        if "action_space" in extra_rng:
            self.model.action_space.np_random.bit_generator.state = extra_rng["action_space"]

    def load_model(self, path: Path) -> None:
        self.model = algo_class(self.spec.algo).load(path, env=self.env, device="cpu")

    def close(self) -> None:
        self.env.close()


def load_sb3(algo: str, path: Path, env: Any = None) -> Any:
    """A trained SB3 model from its file (no checksum here: the caller verifies)."""
    try:
        return algo_class(algo).load(path, env=env, device="cpu")
    except Exception as exc:  # SB3 raises many kinds (zip, pickle, shape, key errors) for a bad file
        raise ModelFileError(f"model file {path} cannot be loaded as a {algo.upper()} model: "
                             f"{type(exc).__name__}: {exc}") from exc


@functools.cache
def _callback_class() -> type:
    """Built on first use, so that importing this module does not import torch and stable-baselines3."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SB3Callback(BaseCallback):
        """Checkpoints and stop requests at rollout starts (safe points); progress on every step."""

        def __init__(self, hooks: TrainingHooks):
            super().__init__(verbose=0)
            self.hooks = hooks
            self.halt = False

        def _on_rollout_start(self) -> None:
            if not self.hooks.safe_point(self.model.num_timesteps):
                self.halt = True

        def _on_step(self) -> bool:
            if self.halt:
                return False
            infos, dones = self.locals.get("infos") or [{}], self.locals.get("dones")
            done = bool(dones[0]) if dones is not None else False
            n_done = int(np.sum(dones)) if dones is not None else 0
            pnl = infos[0].get("pnl")
            if pnl is None:  # TradingVecEnv keeps its per-env values on the object, not in the infos
                last = getattr(self.training_env, "last_pnl", None)
                pnl = float(last[0]) if last is not None else 0.0
            return self.hooks.step(self.model.num_timesteps, float(pnl), done, n_done)

    return SB3Callback
