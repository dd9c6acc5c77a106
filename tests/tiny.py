"""The tiny training configuration the script-level tests share: nets of 16 units, 64-bar episodes, short
rollouts, so that each training in a test takes a second or two. Each test module adds its own
``training_params`` (steps, checkpoints, seed) with :func:`tiny_config`."""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

BASE: dict[str, Any] = {
    "data": {"source": "synthetic"},
    "env": {"window": 8, "episode_length": 64},
    "sb3": {"net_arch": [16], "n_steps": 64, "batch_size": 32},
    "deepscalper": {"hidden_size": 16, "batch_size": 16, "learning_starts": 50, "buffer_size": 5000,
                    "target_update_interval": 50},
    "evaluation": {"bootstrap_samples": 50},
}


def tiny_config(symbols: list[str], training_params: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A fresh copy of the tiny configuration for ``symbols`` with ``training_params`` and any further
    top-level ``sections`` (which replace the base's section of the same name)."""
    config = {"symbols": list(symbols), **copy.deepcopy(BASE), "training_params": dict(training_params)}
    config.update(copy.deepcopy(sections))
    return config


def prepare_root(root: Path, config: dict[str, Any], bars: int, seed: int = 7) -> Path:
    """``root`` with ``config`` as its training_config.json and the data of one synthetic symbol ("SYN", ``bars``
    bars of ``seed``) made by data_pipeline.py's own main. Module-scoped fixtures call it once and copy the
    result into each test's workspace with :func:`copy_prepared`."""
    import data_pipeline

    old = os.getcwd()
    os.chdir(root)
    try:
        (root / "training_config.json").write_text(json.dumps(config))
        assert data_pipeline.main(["--symbols", "SYN", "--source", "synthetic", "--seed", str(seed), "--bars",
                                   str(bars), "--quiet"]) == 0
    finally:
        os.chdir(old)
    return root


def copy_prepared(prepared: Path, workspace: Path) -> Path:
    """Copy a :func:`prepare_root` folder's data and config into a test's (empty) workspace."""
    shutil.copytree(prepared / "data", workspace / "data")
    shutil.copy(prepared / "training_config.json", workspace / "training_config.json")
    return workspace


def dataset_state(workspace: Path) -> dict[str, object]:
    """Every file of ``workspace``'s data/ (bytes), manifests without their creation time and hash, for comparing
    the datasets two runs wrote."""
    state: dict[str, object] = {}
    for path in sorted((workspace / "data").glob("*")):
        if path.name.endswith("_manifest.json"):
            manifest = json.loads(path.read_text())
            state[path.name] = {k: v for k, v in manifest.items() if k not in ("created", "manifest_hash")}
        elif path.is_file() and not path.name.startswith("."):
            state[path.name] = path.read_bytes()
    return state
