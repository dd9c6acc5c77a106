"""DeepScalper as a toolkit agent: a TradingEnv in multidiscrete (limit order) mode with the hindsight bonus
and the volatility target of the training env."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from agents.base import Agent, AgentSpec, TrainingHooks
from botcore.atomic import atomic_path
from deepscalper import DeepScalper, DeepScalperConfig
from rl_env.trading_env import TradingEnv


class DeepScalperAgent(Agent):
    """DeepScalper on a TradingEnv; checkpoints hold the replay buffer, so resume is exact."""

    def __init__(self, spec: AgentSpec, train_data: Any, env_config: Any):
        self.spec = spec
        self.env = TradingEnv(train_data, env_config)
        self.env.reset(seed=spec.seed)
        values = dict(spec.cfg["deepscalper"])
        values.update(spec.hyperparams)
        values["seed"] = spec.seed
        if spec.log_dir is not None:
            values["log_dir"] = str(spec.log_dir)
        self.config = DeepScalperConfig.from_dict(values)
        self.hyperparameters = dataclasses.asdict(self.config)
        self.model = DeepScalper(self.env, self.config, seed=spec.seed)

    def learn(self, n_steps: int, hooks: TrainingHooks) -> None:
        def callback(local: dict[str, Any]) -> bool:
            done = bool(local.get("terminated") or local.get("truncated"))
            steps = self.model.num_timesteps
            if not hooks.step(steps, float((local.get("info") or {}).get("pnl", 0.0)), done, int(done)):
                return False
            # between episodes the checkpoint holds the env's RNG too: the resumed run continues exactly
            return hooks.safe_point(steps) if self.model.at_episode_boundary else True

        self.model.learn(n_steps, callback=callback, reset_num_timesteps=False)

    def save_model(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.model.save(tmp, include_buffer=False)

    def save_checkpoint(self, folder: Path, generation: int) -> list[str]:
        name = f"model_{generation}.zip"
        with atomic_path(folder / name) as tmp:
            self.model.save(tmp, include_buffer=True)
        return [name]

    def load_checkpoint(self, folder: Path, files: list[str], extra_rng: dict[str, Any], resumed_at: int) -> None:
        self.model = DeepScalper.load(folder / files[0], env=self.env)

    def load_model(self, path: Path) -> None:
        self.model = DeepScalper.load(path, env=self.env)

    def close(self) -> None:
        self.env.close()
