"""DeepScalper (Sun et al., CIKM 2022): a risk-aware Branching Dueling Q-Network agent for intraday trading.

``from deepscalper import DeepScalper, DeepScalperConfig``; see ``deepscalper.agent`` for the method.
``DeepScalper`` loads on first use, so that reading the agent's config does not import torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from deepscalper.config import DeepScalperConfig, training_env_overrides

__all__ = ["DeepScalper", "DeepScalperConfig", "training_env_overrides"]


def __getattr__(name: str) -> Any:
    if name == "DeepScalper":
        value = import_module("deepscalper.agent").DeepScalper
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deepscalper' has no attribute {name!r}")
