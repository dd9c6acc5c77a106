"""The model registry: every finished training run, its metadata, its checksum and the champions.

Layout under ``models/`` (relative to the workspace)::

    models/{SAFE_SYM}_{INTERVAL}_{model_type}_{run_id}/model.zip       the trained model (one file)
    models/{SAFE_SYM}_{INTERVAL}_{model_type}_{run_id}/metadata.json   everything about the run
    models/champions.json                                              "SYM/INTERVAL/model_type" -> run_id
    models/champion_history.json                                       every change of champion, with its reason
    models/backup_<timestamp>/...                                      old versions of replaced files
    models/checkpoints/<run>/                                          unfinished runs (train_bot.py)

``metadata["sha256"]`` is the model file's checksum; :meth:`Registry.verify` checks it before every load, so
a tampered or truncated model is refused with a :class:`~botcore.errors.ModelFileError` naming the file.
The registry never imports an algorithm: :func:`agents.load_registered` verifies, then loads.

Champions: per symbol, interval and model type one run is the champion. The registry does not judge models:
whether a new run replaces the champion is decided by the one promotion rule
(:func:`evaluation.promotion.decide_promotion`, applied by the training job on the run's validation bars) and
passed to :meth:`Registry.register`; the registry records the decision and its reason in the run's metadata and
in ``champion_history.json``, and :meth:`Registry.rollback` restores the previous champion.

Several processes may register at the same time (``train_bot.py --workers``): registrations and writes to
``champions.json`` happen under an exclusive ``fcntl`` lock on ``models/.registry.lock``.

Registration is all or nothing: the run folder is assembled under a hidden staging name
(``models/.{run folder}.staging``: the model file, then ``metadata.json``), synced to disk, and renamed into
place as the last step, so a run folder either is complete or does not exist. ``champions.json`` is replaced
(atomically) after that; a crash in between leaves the new run registered as a challenger. Leftovers of an
interrupted registration (a staging folder, or a run folder without ``metadata.json`` from older versions) are
removed, with a warning, by the next registration or by :meth:`Registry.recover`; the run's checkpoint is kept
until it is registered, so ``train_bot.py --resume`` registers it again. Registering a run id that is already
registered returns that registration. An unreadable ``champions.json`` does not block registration: the run is
registered as a challenger and the file is left for the user to restore.
"""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import logging
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botcore import paths
from botcore.atomic import atomic_path, atomic_write_json, fsync_folder, sha256_file
from botcore.errors import ModelFileError, UserError
from botcore.symbols import safe_name, validate_symbol

logger = logging.getLogger(__name__)

MODEL_FILE = "model.zip"
METADATA_FILE = "metadata.json"
CHAMPIONS_FILE = "champions.json"
HISTORY_FILE = "champion_history.json"
LOCK_FILE = ".registry.lock"
BACKUP_PREFIX = "backup_"
STAGING_SUFFIX = ".staging"
PRUNING_SUFFIX = ".pruning"
MODEL_TYPES = ("deepscalper", "backtrader")
ALGOS = ("deepscalper", "ppo", "a2c", "dqn")


@dataclass
class RunRecord:
    """One registered run.

    :param run_id: ``{YYYYmmddTHHMMSS}_{6 hex}``; sorts by creation time.
    :param model_type: ``deepscalper`` or ``backtrader``.
    :param algo: ``deepscalper``, ``ppo``, ``a2c`` or ``dqn``.
    :param path: the run's folder.
    :param model_path: the model file inside it.
    :param metadata: the content of ``metadata.json``.
    :param is_champion: whether ``champions.json`` names this run for its symbol, interval and model type.
    """

    run_id: str
    model_type: str
    algo: str
    symbol: str
    interval: str
    path: Path
    model_path: Path
    metadata: dict[str, Any] = field(repr=False)
    is_champion: bool = False

    @property
    def key(self) -> str:
        """The champion key ``SYM/INTERVAL/model_type``."""
        return champion_key(self.symbol, self.interval, self.model_type)

    @property
    def score(self) -> float:
        """The validation score (annualised Sharpe net of costs on the val split); nan when undefined."""
        return validation_score(self.metadata)

    @property
    def created(self) -> str:
        return str(self.metadata.get("created", ""))


@dataclass
class PromotionDecision:
    """What :meth:`Registry.register` decided about a new run."""

    promoted: bool
    reason: str
    score: float
    champion_score: float | None
    previous_champion: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "reason": self.reason, "score": self.score,
                "champion_score": self.champion_score, "previous_champion": self.previous_champion}


def champion_key(symbol: str, interval: str, model_type: str) -> str:
    return f"{validate_symbol(symbol)}/{interval}/{model_type}"


def validation_score(metadata: dict[str, Any]) -> float:
    """``metadata["validation"]["sharpe_ratio"]`` as a float (nan when missing, null or not a number)."""
    value = (metadata.get("validation") or {}).get("sharpe_ratio")
    try:
        score = float(value)
    except (TypeError, ValueError):
        return math.nan
    return score


_RUN_FOLDER = re.compile(r"^.+_[0-9a-z]+_(deepscalper|backtrader)_\d{8}T\d{6}_[0-9a-f]{6}$")


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}_{secrets.token_hex(3)}"


class Registry:
    """Read and write the registry under ``root`` (default ``models/`` in the current workspace).

    :param root: the models folder.
    :param keep_backups: how many ``backup_<timestamp>`` folders to keep (oldest pruned first).
    """

    def __init__(self, root: Path | str | None = None, keep_backups: int = 5, shadow_challengers: int = 0):
        self.root = Path(root) if root is not None else paths.models_dir()
        if keep_backups < 1:
            raise ValueError("keep_backups must be 1 or more")
        if shadow_challengers < 0:
            raise ValueError("shadow_challengers must be 0 or more")
        self.keep_backups = int(keep_backups)
        self.shadow_challengers = int(shadow_challengers)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], root: Path | str | None = None) -> Registry:
        """A registry with ``registry.keep_backups`` and ``trading.shadow_challengers`` from a loaded config."""
        reg = cfg.get("registry", {})
        shadow = (cfg.get("trading") or {}).get("shadow_challengers", 0)
        return cls(root, keep_backups=reg.get("keep_backups", 5), shadow_challengers=int(shadow or 0))

    # --- reading ----------------------------------------------------------------------------------

    def runs(self, symbol: str | None = None, interval: str | None = None,
             model_type: str | None = None) -> list[RunRecord]:
        """Registered runs, newest first, optionally filtered. Folders with unreadable metadata are skipped
        with a warning (``get`` on them raises)."""
        want_symbol = validate_symbol(symbol) if symbol else None
        champions = self._read_champions()
        records = []
        for folder in self._run_folders():
            try:
                record = self._read_record(folder, champions)
            except ModelFileError as exc:
                logger.warning("skipping %s: %s", folder, exc)
                continue
            if want_symbol and record.symbol != want_symbol:
                continue
            if interval and record.interval != interval:
                continue
            if model_type and record.model_type != model_type:
                continue
            records.append(record)
        records.sort(key=lambda r: (r.created, r.run_id), reverse=True)
        return records

    def get(self, run_id_or_path: str | Path) -> RunRecord:
        """A run by its id, its folder name, its folder path or its model file path.

        :raises UserError: when no run matches (the message lists the known ids).
        :raises ModelFileError: when the run's metadata is missing or corrupt.
        """
        text = str(run_id_or_path)
        candidate = Path(text)
        if candidate.name in (MODEL_FILE, METADATA_FILE):
            candidate = candidate.parent
        if candidate.is_dir() and (candidate / METADATA_FILE).exists():
            return self._read_record(candidate, self._read_champions())
        matches = [f for f in self._run_folders() if f.name == text or f.name.endswith(f"_{text}")]
        if len(matches) == 1:
            return self._read_record(matches[0], self._read_champions())
        known = [f.name for f in self._run_folders()]
        if len(matches) > 1:
            raise UserError(f"run {text!r} is ambiguous: {', '.join(m.name for m in matches)}")
        ids = ["_".join(name.rsplit("_", 2)[-2:]) for name in known]
        hint = difflib.get_close_matches(text, ids + known, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        listing = (", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")) if ids else \
            "none (train one with train_bot.py)"
        raise UserError(f"no registered run {text!r} under {self.root}{extra}; known runs: {listing}")

    def champion(self, symbol: str, interval: str, model_type: str) -> RunRecord | None:
        """The champion for a symbol, interval and model type, or None (none promoted, or its folder is gone)."""
        run_id = self._read_champions().get(champion_key(symbol, interval, model_type))
        if not run_id:
            return None
        try:
            return self.get(run_id)
        except UserError as exc:
            logger.warning("champion %s for %s is not usable: %s", run_id,
                           champion_key(symbol, interval, model_type), exc)
            return None

    def champions(self) -> list[RunRecord]:
        """Every champion whose run folder is readable, sorted by key."""
        out = []
        for key, run_id in sorted(self._read_champions().items()):
            try:
                out.append(self.get(run_id))
            except UserError as exc:
                logger.warning("champion %s for %s is not usable: %s", run_id, key, exc)
        return out

    # --- checksums and loading --------------------------------------------------------------------

    def verify(self, record: RunRecord) -> None:
        """Raise ModelFileError unless the model file exists and matches the sha256 in its metadata."""
        expected = record.metadata.get("sha256")
        if not record.model_path.is_file():
            raise ModelFileError(f"model file {record.model_path} is missing; retrain it or restore it from "
                                 f"{self.root}/{BACKUP_PREFIX}*")
        if not isinstance(expected, str) or len(expected) != 64:
            raise ModelFileError(f"{record.path / METADATA_FILE} holds no valid sha256 for {record.model_path}; "
                                 "the model cannot be checked, so it is not loaded")
        actual = sha256_file(record.model_path)
        if actual != expected:
            raise ModelFileError(
                f"model file {record.model_path} fails its sha256 check (expected {expected[:12]}..., found "
                f"{actual[:12]}...): it was modified or truncated after training; retrain it or restore a copy")

    # --- writing ----------------------------------------------------------------------------------

    def register(self, model_file: Path | str, metadata: dict[str, Any], promote: bool = True,
                 run_id: str | None = None, reason: str | None = None) -> tuple[RunRecord, PromotionDecision]:
        """Copy a trained model into a new run folder, write its metadata (with sha256) and decide promotion.

        :param model_file: the saved model (it is copied, not moved).
        :param metadata: must hold model_type, algo, symbol, interval and ``validation.sharpe_ratio``
            (may be nan/None); ``run_id``, ``sha256``, ``created`` and ``promotion`` are filled in here.
        :param promote: the promotion rule's decision (:func:`evaluation.promotion.decide_promotion`): True makes
            the run the champion of its symbol, interval and model type, False registers it as a challenger.
        :param run_id: a chosen id (default: a new time-stamped one).
        :param reason: why (recorded in the metadata and the champion history).
        """
        source = Path(model_file)
        if not source.is_file():
            raise ModelFileError(f"model file {source} does not exist; nothing to register")
        for key in ("model_type", "algo", "symbol", "interval"):
            if not metadata.get(key):
                raise ValueError(f"metadata needs {key!r}")
        if metadata["model_type"] not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}")
        if metadata["algo"] not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}")
        symbol = validate_symbol(metadata["symbol"])
        run_id = run_id or new_run_id()
        name = f"{safe_name(symbol)}_{metadata['interval']}_{metadata['model_type']}_{run_id}"
        folder = self.root / name
        with self._locked():
            self._recover_locked()
            if folder.exists():
                return self._registered_before(folder, run_id)
            try:
                current = self.champion(symbol, metadata["interval"], metadata["model_type"])
            except ModelFileError as exc:
                logger.warning("%s; %s is registered as a challenger and champions.json is left as it is", exc, name)
                current, promote, unreadable = None, False, True
            else:
                unreadable = False
            staging = self.root / f".{name}{STAGING_SUFFIX}"
            try:
                staging.mkdir(parents=True)
                with atomic_path(staging / MODEL_FILE) as tmp:
                    shutil.copyfile(source, tmp)
                meta = dict(metadata)
                meta.update(run_id=run_id, symbol=symbol, sha256=sha256_file(staging / MODEL_FILE),
                            created=meta.get("created") or datetime.now(UTC).isoformat(timespec="microseconds"),
                            model_file=MODEL_FILE)
                decision = self._decide(current, validation_score(meta), promote, reason)
                if unreadable:
                    decision.reason = (f"{self.root / CHAMPIONS_FILE} is unreadable, so nothing was compared; "
                                       "registered as a challenger")
                meta["promotion"] = decision.to_dict()
                atomic_write_json(staging / METADATA_FILE, meta)
                fsync_folder(staging)
                os.rename(staging, folder)  # the one step that makes the run visible, complete
                fsync_folder(self.root)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise ModelFileError(f"could not register {name} in {self.root}: {exc.strerror or exc}; nothing was "
                                     "registered (free some space or fix the permissions, then run train_bot.py "
                                     "--resume: the checkpoint is kept)") from exc
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if decision.promoted:
                try:
                    self._write_champion(champion_key(symbol, meta["interval"], meta["model_type"]), run_id,
                                         decision.reason)
                except OSError as exc:  # the run is registered; only its promotion is lost
                    decision.promoted = False
                    decision.reason = (f"{decision.reason}, but {self.root / CHAMPIONS_FILE} could not be written "
                                       f"({exc.strerror or exc}); it stays a challenger (Registry.set_champion "
                                       "promotes it by hand)")
                    logger.error("%s: %s", folder.name, decision.reason)
        logger.info("registered %s (%s): %s", folder.name, "champion" if decision.promoted else "challenger",
                    decision.reason)
        return self._read_record(folder, self._read_champions_or_none()), decision

    def recover(self) -> list[Path]:
        """Remove what interrupted registrations left (see the module docstring); returns the removed folders."""
        if not self.root.is_dir():
            return []
        with self._locked():
            return self._recover_locked()

    def set_champion(self, record: RunRecord, reason: str = "set by hand",
                     evidence: dict[str, Any] | None = None) -> None:
        """Make ``record`` the champion of its key regardless of scores (a manual promotion, or one decided
        outside training: the forward promotion of a shadow challenger, whose ``evidence`` (the rule's numbers)
        is recorded with the reason in the champion history)."""
        self.verify(record)
        with self._locked():
            self._write_champion(record.key, record.run_id, reason, evidence)
        logger.info("%s is now the champion of %s", record.run_id, record.key)

    def champion_history(self, key: str | None = None) -> list[dict[str, Any]]:
        """Every change of champion, oldest first (of one ``SYM/INTERVAL/model_type`` key, or all)."""
        path = self.root / HISTORY_FILE
        if not path.is_file():
            return []
        try:
            events = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{path} is unreadable ({exc}); restore it from {self.root}/{BACKUP_PREFIX}*") \
                from exc
        if not isinstance(events, list):
            raise ModelFileError(f"{path} must hold a list; restore it from {self.root}/{BACKUP_PREFIX}*")
        return [e for e in events if isinstance(e, dict) and (key is None or e.get("key") == key)]

    def rollback(self, symbol: str, interval: str, model_type: str) -> RunRecord:
        """Restore the champion before the current one (its files and metadata are kept in the registry);
        UserError when there is none to go back to. The rollback is itself recorded in the history."""
        key = champion_key(symbol, interval, model_type)
        with self._locked():
            current = self._read_champions().get(key)
            if current is None:
                raise UserError(f"{key} has no champion to roll back")
            previous = self._rollback_target(key, current)
            if previous is None:
                raise UserError(f"{key}: the champion {current} has no earlier champion to go back to")
            record = self.get(previous)
            self.verify(record)
            self._write_champion(key, record.run_id, f"rollback from {current}")
        logger.warning("%s: rolled back from %s to %s", key, current, record.run_id)
        return self.get(previous)

    def _rollback_target(self, key: str, current: str) -> str | None:
        """The run :meth:`rollback` would restore for ``key``: the champion before the promotion that made
        ``current`` champion (None when there is none)."""
        for event in reversed(self.champion_history(key)):
            if event.get("run_id") == current and not event.get("rollback"):
                return event.get("previous")
        return None

    @staticmethod
    def shadow_runs(runs: Iterable[RunRecord], n: int) -> list[RunRecord]:
        """The challengers that trade in shadow beside the champion: the newest ``n`` non-champion runs of
        ``runs`` (one symbol, interval and model type, newest first as :meth:`runs` lists them). The one rule,
        used by the paper accounts (``trading.paper``) and by :meth:`prune`, which keeps them."""
        return [r for r in runs if not r.is_champion][:max(0, int(n))]

    def protected_runs(self) -> dict[str, str]:
        """Run id -> why :meth:`prune` never removes it: every champion, the previous champion that
        :meth:`rollback` would restore, and the newest ``shadow_challengers`` challengers per symbol, interval
        and model type (their paper accounts gather the forward evidence that can promote them)."""
        protected: dict[str, str] = {}
        if self.shadow_challengers:
            groups: dict[tuple[str, str, str], list[RunRecord]] = {}
            for record in self.runs():
                groups.setdefault((record.symbol, record.interval, record.model_type), []).append(record)
            for (symbol, interval, model_type), records in groups.items():
                for record in self.shadow_runs(records, self.shadow_challengers):
                    protected[record.run_id] = (f"shadow challenger of {symbol}/{interval}/{model_type} "
                                                "(trading on paper)")
        champions = self._read_champions()
        for key, run_id in champions.items():
            target = self._rollback_target(key, run_id)
            if target:
                protected[target] = f"previous champion of {key} (kept for rollback)"
        for key, run_id in champions.items():
            protected[run_id] = f"champion of {key}"
        return protected

    def prune(self, keep: int, symbol: str | None = None, dry_run: bool = False) -> list[tuple[RunRecord, int]]:
        """Remove the registered runs beyond the newest ``keep`` of each symbol, interval and model type, except
        champions, the previous champions kept for rollback and the shadow challengers (:meth:`protected_runs`).

        Under the registry lock, each run folder is first renamed to a hidden ``.{name}.pruning`` folder (one
        atomic step: it stops being a run), then deleted; a crash in between leaves a hidden folder that
        :meth:`recover` deletes. Registrations and promotions wait for the lock, so a run promoted meanwhile is
        never removed.

        :param keep: newest runs kept per group (1 or more); champions and rollback targets are kept on top.
        :param symbol: only this symbol's runs.
        :param dry_run: remove nothing, say what would go.
        :return: (record, bytes on disk) of every run removed (or that would be), oldest group order.
        """
        if keep < 1:
            raise UserError(f"--keep {keep}: keep at least 1 run per symbol and model type")
        removed: list[tuple[RunRecord, int]] = []
        with self._locked():
            protected = self.protected_runs()
            groups: dict[tuple[str, str, str], list[RunRecord]] = {}
            for record in self.runs(symbol):  # newest first
                groups.setdefault((record.symbol, record.interval, record.model_type), []).append(record)
            for records in groups.values():
                for record in records[keep:]:
                    if record.run_id in protected:
                        continue
                    size = folder_size(record.path)
                    if not dry_run:
                        doomed = record.path.with_name(f".{record.path.name}{PRUNING_SUFFIX}")
                        os.rename(record.path, doomed)
                        fsync_folder(self.root)
                        shutil.rmtree(doomed, ignore_errors=True)
                        logger.info("pruned run %s (%d bytes)", record.path.name, size)
                    removed.append((record, size))
        return removed

    def backup(self, files: Iterable[Path]) -> Path | None:
        """Copy the existing ``files`` (inside the models folder) to a new ``backup_<timestamp>/`` folder,
        keeping their relative paths, then prune old backups. Returns the backup folder (None if nothing)."""
        existing = [Path(f) for f in files if Path(f).exists()]
        if not existing:
            return None
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime()) + f"_{time.time_ns() % 1_000_000_000:09d}"
        target = self.root / f"{BACKUP_PREFIX}{stamp}"
        target.mkdir(parents=True, exist_ok=False)
        for item in existing:
            try:
                rel = item.resolve().relative_to(self.root.resolve())
            except ValueError:
                rel = Path(item.name)
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if item.is_dir():
                shutil.copytree(item, dest)
            else:
                shutil.copy2(item, dest)
        self.prune_backups()
        return target

    def backups(self) -> list[Path]:
        """Backup folders, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(BACKUP_PREFIX))

    def prune_backups(self) -> list[Path]:
        """Delete the oldest backups beyond ``keep_backups``; returns the deleted folders."""
        folders = self.backups()
        old = folders[: len(folders) - self.keep_backups] if len(folders) > self.keep_backups else []
        for folder in old:
            shutil.rmtree(folder, ignore_errors=True)
        return old

    # --- internals --------------------------------------------------------------------------------

    @staticmethod
    def _decide(current: RunRecord | None, score: float, promote: bool, reason: str | None) -> PromotionDecision:
        champ_score = current.score if current is not None else None
        champ_id = current.run_id if current is not None else None
        if promote:
            return PromotionDecision(True, reason or "promoted by request", score, champ_score, champ_id)
        return PromotionDecision(False, reason or "registered as a challenger (promotion not requested)", score,
                                 champ_score, champ_id)

    def _recover_locked(self) -> list[Path]:
        """Remove staging folders (only a live registration, which holds the lock, has one) and run folders
        that lack their metadata (left by versions that wrote the folder in place)."""
        removed = []
        for path in sorted(self.root.iterdir()):
            if not path.is_dir():
                continue
            staging = path.name.startswith(".") and path.name.endswith((STAGING_SUFFIX, PRUNING_SUFFIX))
            if not staging and not (_RUN_FOLDER.match(path.name) and not (path / METADATA_FILE).exists()):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            if path.name.endswith(PRUNING_SUFFIX):
                logger.warning("removed %s, a run whose pruning was interrupted", path)
                continue
            logger.warning("removed %s, left by an interrupted registration (the run's checkpoint is kept until it "
                           "is registered: train_bot.py --resume registers it)", path)
        return removed

    def _registered_before(self, folder: Path, run_id: str) -> tuple[RunRecord, PromotionDecision]:
        """The existing registration of ``run_id`` (a session that registered it stopped before it could
        retire the run's checkpoint, and a resume registers it again)."""
        record = self._read_record(folder, self._read_champions_or_none())
        if record.run_id != run_id:
            raise ModelFileError(f"{folder} already holds run {record.run_id}, not {run_id}")
        logger.warning("%s was already registered; keeping that registration", folder.name)
        p = record.metadata.get("promotion") or {}
        return record, PromotionDecision(bool(p.get("promoted")), str(p.get("reason", "registered before")),
                                         validation_score(record.metadata), p.get("champion_score"),
                                         p.get("previous_champion"))

    def _read_champions_or_none(self) -> dict[str, str]:
        try:
            return self._read_champions()
        except ModelFileError:
            return {}

    def _write_champion(self, key: str, run_id: str, reason: str, evidence: dict[str, Any] | None = None) -> None:
        champions = self._read_champions()
        previous = champions.get(key)
        champions[key] = run_id
        target = self.root / CHAMPIONS_FILE
        self.backup([target])
        atomic_write_json(target, dict(sorted(champions.items())))
        if previous == run_id:
            return
        try:
            history = self.champion_history()
        except ModelFileError as exc:  # a damaged history never blocks a promotion; it starts again
            logger.warning("%s; starting a new champion history", exc)
            history = []
        history.append({"time": datetime.now(UTC).isoformat(timespec="seconds"), "key": key, "run_id": run_id,
                        "previous": previous, "reason": reason, "rollback": reason.startswith("rollback from"),
                        **({"evidence": evidence} if evidence else {})})
        atomic_write_json(self.root / HISTORY_FILE, history)

    def _read_champions(self) -> dict[str, str]:
        target = self.root / CHAMPIONS_FILE
        if not target.exists():
            return {}
        try:
            data = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{target} is unreadable ({exc}); restore it from "
                                 f"{self.root}/{BACKUP_PREFIX}*") from exc
        if not isinstance(data, dict):
            raise ModelFileError(f"{target} must hold a JSON object; restore it from {self.root}/{BACKUP_PREFIX}*")
        return {str(k): str(v) for k, v in data.items()}

    def _run_folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir()
                if p.is_dir() and not p.name.startswith((BACKUP_PREFIX, ".")) and p.name != "checkpoints"
                and (p / METADATA_FILE).exists()]

    def _read_record(self, folder: Path, champions: dict[str, str]) -> RunRecord:
        meta_file = folder / METADATA_FILE
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFileError(f"{meta_file} is missing; {folder} is not a registered run") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{meta_file} is unreadable: {exc}") from None
        if not isinstance(meta, dict):
            raise ModelFileError(f"{meta_file} must hold a JSON object")
        missing = [k for k in ("run_id", "model_type", "algo", "symbol", "interval") if not meta.get(k)]
        if missing:
            raise ModelFileError(f"{meta_file} lacks {', '.join(missing)}")
        record = RunRecord(run_id=meta["run_id"], model_type=meta["model_type"], algo=meta["algo"],
                           symbol=meta["symbol"], interval=meta["interval"], path=folder,
                           model_path=folder / meta.get("model_file", MODEL_FILE), metadata=meta)
        record.is_champion = champions.get(record.key) == record.run_id
        return record

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def folder_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symbolic links not followed); 0 when it is gone."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_size
    return total
