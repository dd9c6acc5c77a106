"""The toolkit's training_config.json schema: botcore's base sections plus the sections the agents own.

Defaults in code (each section's owner), overridden by training_config.json, overridden by command-line flags.
Every script and package loads its config here; see :mod:`botcore.config` for the rules and messages.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from botcore import config as base
from deepscalper.config import CONFIG_CHECKS as DEEPSCALPER_CHECKS
from deepscalper.config import CONFIG_DEFAULTS as DEEPSCALPER_DEFAULTS

INTERVALS = base.INTERVALS
MODEL_TYPES = base.MODEL_TYPES
SB3_ALGOS = base.SB3_ALGOS


def _with_agent_sections() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in base.BASE_DEFAULTS.items():
        if key == "sb3":  # the agents' sections side by side, as in the file written by --create-config
            out["deepscalper"] = dict(DEEPSCALPER_DEFAULTS)
        out[key] = value
    return out


DEFAULTS: dict[str, Any] = _with_agent_sections()
"""Every key of training_config.json with its default."""

SCHEMA = base.Schema(DEFAULTS, {**base.BASE_CHECKS,
                                **{f"deepscalper.{k}": check for k, check in DEEPSCALPER_CHECKS.items()}})


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                required: bool = False) -> dict[str, Any]:
    """Defaults <- the config file (``./training_config.json`` or ``path``) <- ``overrides`` (from flags),
    validated on load (ConfigError, exit code 2, one line naming the key)."""
    return base.load_config(path, overrides, required, SCHEMA)


def write_default_config(path: str | Path) -> None:
    """Write every key with its default (``automate_training.py --create-config``)."""
    base.write_default_config(path, SCHEMA)
