"""DeepScalper as a toolkit agent: a TradingEnv in multidiscrete (limit order) mode with the hindsight bonus
and the volatility target of the training env."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from agents.base import Agent, AgentSpec, TrainingHooks, tensorboard_writer
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
        values["device"] = spec.device
        self.config = DeepScalperConfig.from_dict(values)
        self.hyperparameters = dataclasses.asdict(self.config)
        self.model = DeepScalper(self.env, self.config, seed=spec.seed)
        self._mirror = (_ProgressMirror(spec.log_dir / "progress.csv", spec.tensorboard_dir)
                        if spec.log_dir is not None and spec.tensorboard_dir is not None else None)

    def learn(self, n_steps: int, hooks: TrainingHooks) -> None:
        def callback(local: dict[str, Any]) -> bool:
            done = bool(local.get("terminated") or local.get("truncated"))
            steps = self.model.num_timesteps
            if self._mirror is not None and self.config.log_interval and steps % self.config.log_interval == 0:
                self._mirror.sync()  # the row DeepScalper wrote at this step
            if not hooks.step(steps, float((local.get("info") or {}).get("pnl", 0.0)), done, int(done)):
                return False
            # between episodes the checkpoint holds the env's RNG too: the resumed run continues exactly
            return hooks.safe_point(steps) if self.model.at_episode_boundary else True

        try:
            self.model.learn(n_steps, callback=callback, reset_num_timesteps=False)
        finally:
            if self._mirror is not None:
                self._mirror.sync()  # the last row, written after the loop

    def save_model(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.model.save(tmp, include_buffer=False)

    def save_checkpoint(self, folder: Path, generation: int) -> list[str]:
        name = f"model_{generation}.zip"
        with atomic_path(folder / name) as tmp:
            self.model.save(tmp, include_buffer=True)
        return [name]

    def load_checkpoint(self, folder: Path, files: list[str], extra_rng: dict[str, Any], resumed_at: int) -> None:
        self.model = DeepScalper.load(folder / files[0], env=self.env, device=self.spec.device)

    def load_model(self, path: Path) -> None:
        self.model = DeepScalper.load(path, env=self.env, device=self.spec.device)

    def close(self) -> None:
        self.env.close()
        if self._mirror is not None:
            self._mirror.close()


class _ProgressMirror:
    """Copies the rows DeepScalper appends to its ``progress.csv`` (losses, epsilon, Q-values, episode
    statistics, one row every ``log_interval`` steps) to TensorBoard, so the two always hold the same numbers.
    Rows already in the file when training starts (a resumed run's) were copied by the earlier session."""

    SKIPPED = frozenset({"time/total_timesteps", "charts/episode_pnl"})
    """The step itself, and the episode P&L the job writes for every episode (``charts/episode_pnl``)."""

    def __init__(self, csv_path: Path, tensorboard_dir: Path):
        self.csv_path = csv_path
        self.offset = csv_path.stat().st_size if csv_path.is_file() else 0
        self.columns: list[str] | None = None
        self.writer = tensorboard_writer(tensorboard_dir)

    def sync(self) -> None:
        """Write the rows appended since the last call (whole lines only)."""
        if not self.csv_path.is_file():
            return
        with open(self.csv_path, "rb") as fh:
            if self.columns is None:
                self.columns = fh.readline().decode("utf-8").strip().split(",")
                self.offset = max(self.offset, fh.tell())
            fh.seek(self.offset)
            data = fh.read()
        whole = data[: data.rfind(b"\n") + 1]
        self.offset += len(whole)
        for line in whole.decode("utf-8").splitlines():
            row = dict(zip(self.columns, line.split(",")))
            step = int(row.get("time/total_timesteps") or 0)
            for tag, text in row.items():
                if tag in self.SKIPPED or not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()
