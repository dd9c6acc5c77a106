"""What a training job needs of an agent, whatever its algorithm family.

An adapter builds the agent for a training env, trains it (``learn``), saves and loads the trained model and
its checkpoints, and exposes ``policy`` (anything with ``predict(obs, deterministic=True)``) for backtests.
One adapter per family: :mod:`agents.deepscalper_agent` and :mod:`agents.sb3_agent`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TrainingHooks:
    """What the agents call while they learn: ``safe_point(steps) -> continue?`` where a checkpoint may be taken
    and a stop request honoured, and ``step(steps, pnl, done, n_done) -> continue?`` after every env step
    (pnl and done of the first env, n_done = episodes that ended in this step over all envs)."""

    def __init__(self, safe_point: Callable[[int], bool], step: Callable[[int, float, bool, int], bool]):
        self.safe_point = safe_point
        self.step = step


@dataclass
class AgentSpec:
    """Everything an adapter needs to build its agent.

    :param algo: ``deepscalper``, ``ppo``, ``a2c`` or ``dqn``.
    :param cfg: the resolved training_config (sections ``deepscalper`` and ``sb3`` are read).
    :param hyperparams: values that override the config's (an Optuna trial's).
    :param seed: seed of the agent and its env.
    :param engine: env an SB3 agent trains on: ``fast`` (TradingVecEnv) or ``backtrader`` (BacktraderEnv).
    :param total_steps: the planned training steps (sizes SB3 DQN's buffer and schedules).
    :param log_dir: folder for the agent's own progress.csv, or None.
    :param device: torch device the agent trains on (``cpu`` or ``cuda``, resolved already).
    :param tensorboard_dir: folder for TensorBoard event files, or None (off).
    """

    algo: str
    cfg: dict[str, Any]
    seed: int
    hyperparams: dict[str, Any] = field(default_factory=dict)
    engine: str = "fast"
    total_steps: int = 0
    log_dir: Path | None = None
    device: str = "cpu"
    tensorboard_dir: Path | None = None


class Agent(ABC):
    """The adapter interface; ``model`` is the trained policy object of the family's own library."""

    model: Any
    hyperparameters: dict[str, Any]

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    @property
    def policy(self) -> Any:
        return self.model

    @abstractmethod
    def learn(self, n_steps: int, hooks: TrainingHooks) -> None:
        ...

    @abstractmethod
    def save_model(self, path: Path) -> None:
        ...

    @abstractmethod
    def load_model(self, path: Path) -> None:
        ...

    @abstractmethod
    def save_checkpoint(self, folder: Path, generation: int) -> list[str]:
        ...

    @abstractmethod
    def load_checkpoint(self, folder: Path, files: list[str], extra_rng: dict[str, Any], resumed_at: int) -> None:
        ...

    def rng_state(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def close(self) -> None:
        ...


TENSORBOARD_FLUSH_SECONDS = 10
"""How often event files are written out: a running job shows up in TensorBoard within this many seconds."""


def tensorboard_writer(folder: Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``folder`` (created when missing): the one way the
    toolkit writes TensorBoard scalars of its own (stable-baselines3 writes its own through its logger)."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(folder), flush_secs=TENSORBOARD_FLUSH_SECONDS)
