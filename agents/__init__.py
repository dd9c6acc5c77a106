"""Agents: one adapter per algorithm family (build, learn, predict, save, load) and the model registry.

The registry (:mod:`agents.registry`) stores model files and their metadata and never imports an algorithm;
loading a registered model goes through :func:`load_registered`, which verifies the file's checksum first.
Model files hold JSON and tensors only, read with ``torch.load(..., weights_only=True)``: nothing a file holds
can run code when it is loaded (formats in :mod:`agents.sb3_agent` and :mod:`deepscalper.agent`). A model from
outside the registry is imported (:mod:`agents.importing`), never loaded where it lies.
Adapters load lazily, so importing this package does not import torch or stable-baselines3.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.base import Agent, AgentSpec, TrainingHooks
from agents.registry import ALGOS, Registry, RunRecord
from botcore.errors import ModelFileError

__all__ = ["Agent", "AgentSpec", "TrainingHooks", "ALGOS", "Registry", "RunRecord", "build_agent", "load_model",
           "load_registered"]


def build_agent(spec: AgentSpec, train_data: Any, env_config: Any) -> Agent:
    """A new agent of ``spec.algo`` on a training env over ``train_data``."""
    if spec.algo == "deepscalper":
        from agents.deepscalper_agent import DeepScalperAgent

        return DeepScalperAgent(spec, train_data, env_config)
    from agents.sb3_agent import SB3Agent

    return SB3Agent(spec, train_data, env_config)


def load_model(algo: str, path: Path, env: Any = None, device: str = "cpu") -> Any:
    """A trained model of ``algo`` from ``path`` on the torch ``device`` (``cpu`` or ``cuda``, resolved); it has
    ``predict(obs, deterministic=True)``."""
    if algo == "deepscalper":
        from deepscalper import DeepScalper

        return DeepScalper.load(path, env=env, device=device)
    if algo not in ALGOS:
        raise ModelFileError(f"{path}: unknown algo {algo!r}; expected one of {', '.join(ALGOS)}")
    from agents.sb3_agent import load_sb3

    return load_sb3(algo, path, env, device=device)


def load_registered(registry: Registry, record: RunRecord, env: Any = None, device: str = "cpu") -> Any:
    """Verify a registered model's checksum, then load it (see :func:`load_model`)."""
    registry.verify(record)
    if record.algo not in ALGOS:
        raise ModelFileError(f"{record.path / 'metadata.json'}: unknown algo {record.algo!r}; expected one of "
                             f"{', '.join(ALGOS)}")
    return load_model(record.algo, record.model_path, env, device)
