"""Checkpoints of unfinished training runs, the global RNG state they carry, and the training-curves file.

A checkpoint folder (``models/checkpoints/{SYM}_{INTERVAL}_{model_type}_{run_id}/``) holds ``state.json``
(counters, round history, RNG states, the job spec) and the generation files it names (model, replay buffer),
all written atomically; ``state.json`` is replaced last, so a ``kill -9`` at any moment leaves a consistent
checkpoint.
"""
from __future__ import annotations

import csv
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from botcore import paths
from botcore.atomic import atomic_write_text
from botcore.symbols import safe_name

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
BEST_FILE = "best.zip"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the one place the project seeds the global generators)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state()
    return {"python": _tuples_to_lists(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "torch": torch.get_rng_state().tolist()}


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(_lists_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _tuples_to_lists(x: Any) -> Any:
    return [_tuples_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _lists_to_tuples(x: Any) -> Any:
    return tuple(_lists_to_tuples(v) for v in x) if isinstance(x, list) else x


def checkpoints_root() -> Path:
    return paths.models_dir() / CHECKPOINTS


def run_name(symbol: str, interval: str, model_type: str, run_id: str) -> str:
    return f"{safe_name(symbol)}_{interval}_{model_type}_{run_id}"


def find_unfinished(symbol: str, interval: str, model_type: str, algo: str | None = None) -> Path | None:
    """The newest checkpoint folder of an unfinished run of this symbol, interval and model type."""
    root = checkpoints_root()
    if not root.is_dir():
        return None
    prefix = f"{safe_name(symbol)}_{interval}_{model_type}_"
    found = []
    for folder in root.iterdir():
        state_file = folder / STATE_FILE
        if not folder.name.startswith(prefix) or not state_file.is_file():
            continue
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            logger.warning("ignoring unreadable checkpoint state %s", state_file)
            continue
        if state.get("status") == "finished" or (algo and state.get("spec", {}).get("algo") != algo):
            continue
        found.append((state.get("updated", ""), folder))
    return max(found)[1] if found else None


class Curves:
    """Training curves as CSV (``step,tag,value``; tags ``charts/episode_pnl`` and ``eval/val_sharpe``)."""

    def __init__(self, path: Path, resume_from: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from is not None and path.exists():
            # rows written after the checkpoint we resume from describe steps that will be redone
            with open(path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.reader(fh)]
            kept = [rows[0]] + [r for r in rows[1:] if len(r) == 3 and r[0].isdigit() and int(r[0]) <= resume_from]
            atomic_write_text(path, "".join(",".join(r) + "\n" for r in kept))
        elif not path.exists() or resume_from is None:
            atomic_write_text(path, "step,tag,value\n")
        self._fh = open(path, "a", encoding="utf-8", newline="")

    def add(self, step: int, tag: str, value: float) -> None:
        self._fh.write(f"{step},{tag},{value:.10g}\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
