"""The toolkit's training_config.json schema: botcore's base sections plus the sections the agents own.

Defaults in code (each section's owner), overridden by training_config.json, overridden by command-line flags.
Every script and package loads its config here; see :mod:`botcore.config` for the rules and messages.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from botcore import config as base
from botcore.errors import ConfigError
from deepscalper.config import CONFIG_CHECKS as DEEPSCALPER_CHECKS
from deepscalper.config import CONFIG_DEFAULTS as DEEPSCALPER_DEFAULTS

INTERVALS = base.INTERVALS
MODEL_TYPES = base.MODEL_TYPES
SB3_ALGOS = base.SB3_ALGOS


BROKERS = ("paper", "alpaca")

SECTION_EXTRAS: dict[str, dict[str, Any]] = {
    "training_params": {
        # steps left at their default: a round trains at least this many passes over the training split's bars
        # (training.job.default_steps; 0 = exactly training_params.steps)
        "min_passes": 1.0,
    },
    "registry": {
        "forward_min_bars": 60,  # forward returns before a shadow challenger is judged for promotion
    },
    "trading": {
        "broker": "paper",  # paper (the local paper broker, the default) | alpaca (an Alpaca paper account)
        "alpaca": {
            "paper": True,  # the paper-trading endpoint; live trading is not offered
            "base_url": None,  # null = alpaca-py's own paper URL
            "key_env": "APCA_API_KEY_ID",  # the environment variables holding the credentials (never the config)
            "secret_env": "APCA_API_SECRET_KEY",
        },
    },
}
"""Keys added to base sections: the least training per round on long training splits (training.job), the forward
promotion rule (evaluation.promotion) and the broker choice (trading.brokers)."""

EXTRA_CHECKS = {
    "training_params.min_passes": base.check_non_negative,
    "registry.forward_min_bars": lambda v: None if v >= 10 else "must be 10 or more (the paired bootstrap needs 10)",
    "trading.broker": base.check_choice(*BROKERS),
    "trading.alpaca.paper": lambda v: None if v is True else "must be true: only Alpaca paper accounts are supported",
    "trading.alpaca.base_url": lambda v: None if v is None or (isinstance(v, str) and v.startswith(("http://",
                                                                                                   "https://")))
    else "must be an http(s) URL or null (alpaca-py's paper endpoint)",
    "trading.alpaca.key_env": lambda v: None if v.strip() else "must name an environment variable",
    "trading.alpaca.secret_env": lambda v: None if v.strip() else "must name an environment variable",
}


def _with_agent_sections() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in base.BASE_DEFAULTS.items():
        if key == "sb3":  # the agents' sections side by side, as in the file written by --create-config
            out["deepscalper"] = dict(DEEPSCALPER_DEFAULTS)
        out[key] = {**value, **SECTION_EXTRAS[key]} if key in SECTION_EXTRAS else value
    return out


DEFAULTS: dict[str, Any] = _with_agent_sections()
"""Every key of training_config.json with its default."""

SCHEMA = base.Schema(DEFAULTS, {**base.BASE_CHECKS, **EXTRA_CHECKS,
                                **{f"deepscalper.{k}": check for k, check in DEEPSCALPER_CHECKS.items()}})


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                required: bool = False, assignments: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults <- the config file (``./training_config.json`` or ``path``) <- ``assignments`` (``--set
    KEY=VALUE``) <- ``overrides`` (from flags), validated on load (ConfigError, exit code 2, one line naming
    the key)."""
    return base.load_config(path, overrides, required, SCHEMA, assignments)


def write_default_config(path: str | Path) -> None:
    """Write every key with its default (``automate_training.py --create-config``)."""
    base.write_default_config(path, SCHEMA)


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str) -> str:
    """The torch device to train on: ``cpu``; ``cuda`` (ConfigError, exit code 2, when torch sees no GPU: a
    CPU build of torch, no driver or no device); ``auto`` = ``cuda`` when torch sees a GPU, else ``cpu``.

    Resolved where the job runs (a worker process or another machine), so ``auto`` means that machine's GPU.
    """
    if requested not in DEVICES:
        raise ConfigError(f"--device {requested!r} is not a device; use auto, cpu or cuda")
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "auto":
        return "cpu"
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    raise ConfigError(f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA GPU on this machine; "
                           "use --device cpu or --device auto")
