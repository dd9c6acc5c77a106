"""Checkpoints of unfinished training runs, the global RNG state they carry, and the training-curves file.

A checkpoint folder (``models/checkpoints/{SYM}_{INTERVAL}_{model_type}_{run_id}/``) holds ``state.json``
(counters, round history, RNG states, the job spec) and the generation files it names (model, replay buffer),
all written atomically; ``state.json`` is replaced last, so a ``kill -9`` at any moment leaves a consistent
checkpoint.

One process at a time trains a run: :func:`start_run` locks the run's folder (``fcntl`` on ``.lock`` inside it,
released by the kernel even when the process is killed), and a second process that tries to resume the same
run gets a one-line error naming the holder. It also cleans up after crashed runs: checkpoint folders that
never got a ``state.json`` or whose run is registered already, interrupted registrations
(:meth:`agents.registry.Registry.recover`), temporary files of interrupted atomic writes, and the temporary
folders of Optuna trials whose process is gone.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import tensorboard_writer
from agents.registry import PRUNING_SUFFIX, Registry, RunRecord, folder_size, new_run_id
from botcore import paths
from botcore.atomic import STALE_TEMP_SECONDS, atomic_write_text, remove_stale_temp_files
from botcore.errors import UserError
from botcore.lock import WorkspaceLock, describe_holder, pid_alive
from botcore.symbols import safe_name

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
BEST_FILE = "best.zip"
RUN_LOCK = ".lock"
TRIAL_PREFIX = "trial_"


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


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def claim_run(folder: Path, label: str) -> WorkspaceLock:
    """Lock a run's checkpoint folder (created when missing) for this process.

    :raises UserError: another live process trains this run.
    """
    lock = WorkspaceLock(folder / RUN_LOCK, role="training")
    if not lock.acquire(detail=label):
        raise UserError(f"run {folder.name} is being trained by another process, {describe_holder(lock.holder())}; "
                        "wait for it to finish or stop it first")
    return lock


def start_run(symbol: str, interval: str, model_type: str, algo: str, resume: bool,
              label: str) -> tuple[str, Path, dict[str, Any] | None, WorkspaceLock]:
    """Clean up after crashed runs, then claim the run to train: with ``resume`` the newest unfinished one
    (when there is one), else a new one.

    :return: (run id, checkpoint folder, the checkpoint state when resuming, the run's lock: release it when
        the job ends).
    :raises UserError: the run to resume is being trained by another process.
    """
    sweep_leftovers()
    if resume:
        folder = find_unfinished(symbol, interval, model_type, algo)
        if folder is not None:
            lock = claim_run(folder, label)
            state = _read_state(folder)
            if state is not None and state.get("status") != "finished":
                logger.info("%s: resuming %s at step %d", label, folder.name, state["num_timesteps"])
                return state["run_id"], folder, state, lock
            lock.release()  # it finished between the search and the claim
            if not (folder / STATE_FILE).exists():
                shutil.rmtree(folder, ignore_errors=True)
        logger.warning("%s: no unfinished run to resume; starting a new one", label)
    run_id = new_run_id()
    folder = checkpoints_root() / run_name(symbol, interval, model_type, run_id)
    return run_id, folder, None, claim_run(folder, label)


def trial_folder(name: str) -> Path:
    """A temporary folder for an Optuna trial's files, named with this process's pid so that
    :func:`sweep_leftovers` can tell a dead trial's folder from a live one's."""
    return Path(tempfile.mkdtemp(prefix=f"{TRIAL_PREFIX}{os.getpid()}_{name}_"))


def sweep_leftovers(older_than: float = STALE_TEMP_SECONDS) -> None:
    """Remove what crashed runs left behind, never anything a live process uses (see the module docstring)."""
    Registry(paths.models_dir()).recover()
    root = checkpoints_root()
    folders = [f for f in root.iterdir() if f.is_dir()] if root.is_dir() else []
    cutoff = time.time() - older_than
    for folder in list(folders):
        state = _read_state(folder)
        if state is None and (folder / STATE_FILE).exists():
            continue  # unreadable: find_unfinished says so, and the user decides
        never_saved = state is None and folder.stat().st_mtime < cutoff
        registered = state is not None and state.get("status") == "finished"
        if (never_saved or registered) and WorkspaceLock(folder / RUN_LOCK).holder() is None:
            shutil.rmtree(folder, ignore_errors=True)
            folders.remove(folder)
            logger.warning("removed %s: %s", folder, "a run that stopped before its first checkpoint" if never_saved
                           else "a run already registered")
    curves = paths.results_dir() / "training_curves"
    curve_folders = [f for f in curves.iterdir() if f.is_dir()] if curves.is_dir() else []
    for folder in [paths.models_dir(), root, *folders, paths.results_dir(), *curve_folders]:
        for tmp in remove_stale_temp_files(folder, older_than=older_than):
            logger.warning("removed %s, left by an interrupted write", tmp)
    for folder in root.glob(f".*{PRUNING_SUFFIX}") if root.is_dir() else []:
        shutil.rmtree(folder, ignore_errors=True)
        logger.warning("removed %s, a checkpoint whose pruning was interrupted", folder)
    for folder in Path(tempfile.gettempdir()).glob(f"{TRIAL_PREFIX}*"):
        pid = folder.name[len(TRIAL_PREFIX):].split("_", 1)[0]
        if folder.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning("removed %s, the temporary folder of an Optuna trial whose process is gone", folder)


def stale_checkpoints(symbol: str | None = None) -> list[Path]:
    """Checkpoint folders that ``--resume`` can never pick: of the unfinished runs of one symbol, interval,
    model type and algorithm, only the newest is resumed (:func:`find_unfinished`), so the older ones only take
    space (a DeepScalper checkpoint holds its replay buffer: about 120 MB with the defaults)."""
    root = checkpoints_root()
    groups: dict[tuple[str, str, str, str], list[tuple[str, Path]]] = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        state = _read_state(folder) if folder.is_dir() and not folder.name.startswith(".") else None
        spec = state.get("spec") if state else None
        if not isinstance(spec, dict) or state.get("status") == "finished":
            continue
        if symbol and spec.get("symbol") != symbol:
            continue
        key = (str(spec.get("symbol")), str(spec.get("interval")), str(spec.get("model_type")), str(spec.get("algo")))
        groups.setdefault(key, []).append((str(state.get("updated", "")), folder))
    return [folder for found in groups.values() for _, folder in sorted(found, reverse=True)[1:]]


def prune(keep: int, symbol: str | None = None, dry_run: bool = False,
          registry: Registry | None = None) -> list[tuple[str, Path, int]]:
    """``train_bot.py --prune --keep N``: remove the registered runs beyond the newest ``keep`` per symbol,
    interval and model type (never a champion or the previous champion kept for rollback:
    :meth:`agents.registry.Registry.prune`) with their training curves and TensorBoard folders, and the stale
    checkpoints (:func:`stale_checkpoints`) that no process is training.

    A checkpoint is claimed with its run lock before it goes (a process resuming it meanwhile keeps it), then
    renamed to a hidden ``.{name}.pruning`` folder and deleted; :func:`sweep_leftovers` finishes an interrupted
    deletion.

    :return: (what, path, bytes freed) per removed item: what is ``run`` or ``checkpoint``.
    """
    registry = registry or Registry(paths.models_dir())
    freed: list[tuple[str, Path, int]] = []
    runs: list[tuple[RunRecord, int]] = registry.prune(keep, symbol, dry_run=dry_run)
    for record, size in runs:
        extra = 0
        for folder in (paths.results_dir() / "training_curves" / record.path.name,
                       tensorboard_root() / record.path.name):
            if folder.is_dir():
                extra += folder_size(folder)
                if not dry_run:
                    shutil.rmtree(folder, ignore_errors=True)
        freed.append(("run", record.path, size + extra))
    for folder in stale_checkpoints(symbol):
        lock = WorkspaceLock(folder / RUN_LOCK, role="training")
        if not lock.acquire(detail="pruning"):
            logger.info("keeping %s: a process is training it", folder.name)
            continue
        try:
            size = folder_size(folder)
            if not dry_run:
                doomed = folder.with_name(f".{folder.name}{PRUNING_SUFFIX}")
                os.rename(folder, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                logger.info("pruned stale checkpoint %s (%d bytes)", folder.name, size)
        finally:
            lock.release()
        freed.append(("checkpoint", folder, size))
    return freed


def tensorboard_root() -> Path:
    """``results/tensorboard``: one folder per run, named like its registry folder (``tensorboard --logdir``)."""
    return paths.results_dir() / "tensorboard"


class Curves:
    """Training curves as CSV (``step,tag,value``; tags ``charts/episode_pnl`` and ``eval/val_sharpe``) and,
    with ``tensorboard_dir``, the same scalars as TensorBoard events in that folder."""

    def __init__(self, path: Path, resume_from: int | None, tensorboard_dir: Path | None = None):
        self.path = path
        self._writer = tensorboard_writer(tensorboard_dir) if tensorboard_dir is not None else None
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
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self._fh.close()
        if self._writer is not None:
            self._writer.close()

