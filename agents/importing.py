"""Importing a model from outside the registry: check it, then copy it in as a new challenger run.

Scripts load models from the registry only (``evaluate_bot.py --models`` takes run ids). A model trained
elsewhere comes in through ``train_bot.py --import-model PATH [--symbol SYM]``, which calls
:func:`import_model`. PATH is a run folder in this toolkit's own format, as ``models/`` holds them:
``model.zip`` and ``metadata.json``. Before anything is registered, a private copy of the model file is
checked:

1. its sha256 is the one ``metadata.json`` records;
2. it is a zip of exactly the members of its format (``agents.sb3_agent`` or ``deepscalper.agent``, a model
   without a replay buffer), with parseable JSON;
3. it loads: tensors with ``torch.load(..., weights_only=True)``, into networks built from the file's spaces,
   so every shape fits.

Then that copy is registered through :meth:`~agents.registry.Registry.register` under a new run id, as a
challenger: an imported model is never promoted automatically (its recorded scores were not computed here).
``metadata["imported"]`` records where it came from.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from agents import load_model
from agents.config import INTERVALS
from agents.registry import ALGOS, METADATA_FILE, MODEL_FILE, Registry, RunRecord
from botcore.atomic import sha256_file
from botcore.errors import ModelFileError, UserError
from botcore.symbols import validate_symbol

logger = logging.getLogger(__name__)

_MAX_METADATA_BYTES = 16 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
# keys the registry writes for the new run; the source's values go to metadata["imported"]
_REGISTRY_KEYS = ("run_id", "sha256", "created", "promotion", "model_file", "imported")


def import_model(source: Path | str, registry: Registry, symbol: str | None = None) -> RunRecord:
    """Check the run folder ``source`` and register a copy of its model as a new challenger run.

    :param symbol: register it under this symbol (default: the one it was trained on).
    :raises UserError: ``source`` is not a run folder.
    :raises ModelFileError: naming the file, when the checksum, the format or the tensors are wrong.
    """
    folder = Path(source)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; --import-model takes a run folder holding {MODEL_FILE} and "
                        f"{METADATA_FILE}, as train_bot.py writes them under models/")
    model_file, meta_file = folder / MODEL_FILE, folder / METADATA_FILE
    for path in (model_file, meta_file):
        if not path.is_file():
            raise UserError(f"{folder} holds no {path.name}; --import-model takes a run folder holding "
                            f"{MODEL_FILE} and {METADATA_FILE}, as train_bot.py writes them under models/")
    meta = _read_metadata(meta_file)
    algo = meta["algo"]
    with tempfile.TemporaryDirectory(prefix="import_") as tmp:
        copy = Path(tmp) / MODEL_FILE  # checked and registered: the source may change in the meantime
        shutil.copyfile(model_file, copy)
        try:
            actual = sha256_file(copy)
            if actual != meta["sha256"]:
                raise ModelFileError(f"{model_file} fails its sha256 check (expected {meta['sha256'][:12]}..., "
                                     f"found {actual[:12]}...): it was modified after training; not imported")
            if algo == "deepscalper":  # the SB3 loader checks its members itself
                _check_deepscalper_members(copy)
            load_model(algo, copy)
        except ModelFileError as exc:
            raise ModelFileError(str(exc).replace(str(copy), str(model_file))) from exc
        record, _ = registry.register(copy, _run_metadata(meta, folder, symbol), promote=False)
    logger.info("imported %s as run %s (%s %s %s, challenger)", folder, record.run_id, record.symbol,
                record.interval, record.algo)
    return record


def _read_metadata(path: Path) -> dict[str, Any]:
    """``metadata.json``, with what registering needs checked."""
    if path.stat().st_size > _MAX_METADATA_BYTES:
        raise ModelFileError(f"{path} is larger than {_MAX_METADATA_BYTES} bytes; not a run's metadata")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path} must hold a JSON object")
    algo, model_type = meta.get("algo"), meta.get("model_type")
    if algo not in ALGOS:
        raise ModelFileError(f"{path}: algo {algo!r} is not one of {', '.join(ALGOS)}")
    expected_type = "deepscalper" if algo == "deepscalper" else "backtrader"
    if model_type != expected_type:
        raise ModelFileError(f"{path}: model_type {model_type!r} does not go with algo {algo!r} "
                             f"(expected {expected_type!r})")
    if meta.get("interval") not in INTERVALS:
        raise ModelFileError(f"{path}: interval {meta.get('interval')!r} is not one of {', '.join(INTERVALS)}")
    if not isinstance(meta.get("sha256"), str) or not _SHA256.fullmatch(meta["sha256"]):
        raise ModelFileError(f"{path} holds no valid sha256 of its model file; it cannot be checked, so it is "
                             "not imported")
    if meta.get("model_file", MODEL_FILE) != MODEL_FILE:
        raise ModelFileError(f"{path}: model_file must be {MODEL_FILE!r}, got {meta.get('model_file')!r}")
    try:
        validate_symbol(meta.get("symbol"))
    except UserError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return meta


def _check_deepscalper_members(path: Path) -> None:
    """The zip holds exactly DeepScalper's model members (a registered model: no replay buffer)."""
    from deepscalper.agent import _META, _STATE_FILES  # imported here: deepscalper.agent imports torch

    expected = {_META, *_STATE_FILES}
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"model file {path} is not a zip file: {exc}") from None
    if sorted(names) != sorted(expected):
        raise ModelFileError(f"model file {path} holds {sorted(names)}; a deepscalper model file holds exactly "
                             f"{sorted(expected)}")


def _run_metadata(meta: dict[str, Any], folder: Path, symbol: str | None) -> dict[str, Any]:
    """The new run's metadata: the source's, its registry bookkeeping moved to ``imported``."""
    out = {k: v for k, v in meta.items() if k not in _REGISTRY_KEYS}
    if symbol is not None:
        out["symbol"] = validate_symbol(symbol)
        if out["symbol"] != validate_symbol(meta["symbol"]):
            logger.warning("%s was trained on %s; it is registered under %s", folder, meta["symbol"], out["symbol"])
    out["imported"] = {"from": str(folder.resolve()), "run_id": meta.get("run_id"), "symbol": meta["symbol"],
                       "created": meta.get("created"), "sha256": meta["sha256"]}
    return out
