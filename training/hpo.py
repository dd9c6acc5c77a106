"""Hyperparameter search with Optuna for train_bot.py ``--optimize``.

Objective: the validation Sharpe ratio (annualised, net of costs, val split, fast engine) of a model trained
with the trial's hyperparameters, averaged over ``seeds`` seeds (seed, seed+1, ...). A trial whose every seed
gives an undefined Sharpe (a policy that never trades) has no value and is recorded as failed.

Samplers: TPE (default), a grid over ``optimize.grid`` from the config (``--sampler grid``), or random.
Pruning: a median pruner over the intermediate validation scores of the first seed (reported at every
validation: each iteration's end, and every ``eval_every`` steps; when neither gives more than one, a trial
validates every quarter of its steps).

Storage: any URL Optuna supports (``sqlite:///results/optuna.db`` by default). Several processes, or machines
sharing one PostgreSQL/MySQL database, work on the same study at once: the study is created once, then every
worker loads it and runs its share of the trials.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

from botcore.errors import ConfigError, UserError
from botcore.redact import redact
from botcore.signals import StopFlag
from botcore.symbols import safe_name
from training.job import JobResult, JobSpec, run_job
from training.session import Session
from training.workers import run_in_workers, run_jobs

logger = logging.getLogger(__name__)

# name -> (kind, arguments): "log" (low, high) log-uniform float, "float" (low, high), "cat" [choices]
SEARCH_SPACES: dict[str, dict[str, tuple[str, Any]]] = {
    "deepscalper": {
        "learning_rate": ("log", (1e-5, 1e-3)), "hidden_size": ("cat", [32, 64, 128]),
        "gamma": ("cat", [0.9, 0.95, 0.99]), "batch_size": ("cat", [32, 64, 128]),
        "hindsight_weight": ("log", (1e-3, 1e-1)), "aux_weight": ("cat", [0.5, 1.0]),
        "target_update_interval": ("cat", [250, 500, 1000]),
    },
    "ppo": {
        "learning_rate": ("log", (1e-5, 1e-3)), "hidden_size": ("cat", [32, 64, 128]),
        "gamma": ("cat", [0.9, 0.95, 0.99]), "n_steps": ("cat", [128, 256, 512]),
        "batch_size": ("cat", [32, 64, 128]), "ent_coef": ("log", (1e-4, 1e-1)),
    },
    "a2c": {
        "learning_rate": ("log", (1e-5, 1e-3)), "hidden_size": ("cat", [32, 64, 128]),
        "gamma": ("cat", [0.9, 0.95, 0.99]), "n_steps": ("cat", [5, 16, 64]), "ent_coef": ("log", (1e-4, 1e-1)),
    },
    "dqn": {
        "learning_rate": ("log", (1e-5, 1e-3)), "hidden_size": ("cat", [32, 64, 128]),
        "gamma": ("cat", [0.9, 0.95, 0.99]), "batch_size": ("cat", [32, 64, 128]),
        "exploration_fraction": ("float", (0.05, 0.5)), "target_update_interval": ("cat", [250, 500, 1000]),
    },
}


@dataclasses.dataclass
class StudySettings:
    """One study: where it lives, how it samples, how many trials and seeds."""

    storage: str
    study_name: str
    sampler: str  # tpe | grid | random
    trials: int
    seeds: int
    grid: dict[str, list[Any]]

    @property
    def storage_redacted(self) -> str:
        return redact(self.storage)


def default_study_name(spec: JobSpec) -> str:
    return f"{safe_name(spec.symbol)}_{spec.interval}_{spec.model_type}_{spec.algo}"


def check_grid(algo: str, grid: dict[str, Any]) -> dict[str, list[Any]]:
    """The grid for ``algo`` (only its tunable names; lists of values), or ConfigError."""
    space = SEARCH_SPACES[algo]
    if not grid:
        raise ConfigError("optimize.grid is empty; give lists of values, e.g. "
                          '{"learning_rate": [1e-4, 3e-4], "hidden_size": [32, 64]}')
    out = {}
    for name, values in grid.items():
        if name not in space:
            raise ConfigError(f"optimize.grid: {name!r} is not tunable for {algo}; use {', '.join(space)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"optimize.grid.{name} must be a non-empty list of values")
        out[name] = values
    return out


_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_file(db: Path, url: str) -> None:
    """An existing, non-empty file must be an SQLite database: SQLite would fail later with a cryptic error."""
    if db.is_dir():
        raise UserError(f"Optuna storage {redact(url)}: {db} is a folder, not a database file; "
                        "give a file name, e.g. --storage sqlite:///results/optuna.db")
    try:
        with open(db, "rb") as fh:
            header = fh.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"Optuna storage {redact(url)}: cannot read {db}: {exc.strerror or exc}") from None
    if header and header != _SQLITE_HEADER:
        raise UserError(f"Optuna storage {redact(url)}: {db} is not an SQLite database; give a new file or an "
                        "existing Optuna .db file, e.g. --storage sqlite:///results/optuna.db")


def _storage(url: str) -> Any:
    import optuna

    if url.startswith("sqlite:///"):
        db = url[len("sqlite:///"):].split("?", 1)[0]
        if db and db != ":memory:":
            _check_sqlite_file(Path(db), url)
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        try:  # concurrent writers wait for the lock instead of failing at once
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
        except Exception as exc:  # a damaged database, an unwritable folder
            raise UserError(f"cannot open Optuna storage {redact(url)}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # bad URL, missing driver, unreachable server
        raise UserError(f"cannot open Optuna storage {redact(url)}: {type(exc).__name__}: {exc}") from exc


def _sampler(settings: StudySettings, seed: int) -> Any:
    import optuna

    if settings.sampler == "grid":
        return optuna.samplers.GridSampler(settings.grid, seed=seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def create_study(settings: StudySettings, seed: int) -> Any:
    """Create the study (or load it when it exists), once, before workers start."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=settings.study_name, storage=_storage(settings.storage),
                               direction="maximize", sampler=_sampler(settings, seed),
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
                               load_if_exists=True)


def suggest(trial: Any, algo: str, settings: StudySettings) -> dict[str, Any]:
    """The trial's hyperparameters: the grid's names for a grid search, else the algorithm's whole space."""
    if settings.sampler == "grid":
        return {name: trial.suggest_categorical(name, values) for name, values in settings.grid.items()}
    params = {}
    for name, (kind, arg) in SEARCH_SPACES[algo].items():
        if kind == "log":
            params[name] = trial.suggest_float(name, arg[0], arg[1], log=True)
        elif kind == "float":
            params[name] = trial.suggest_float(name, arg[0], arg[1])
        else:
            params[name] = trial.suggest_categorical(name, arg)
    return params


class _Stopped(Exception):
    """A stop request ended a trial (the study stops after it)."""


def _objective(base: JobSpec, settings: StudySettings, stop: StopFlag) -> Any:
    import optuna

    def objective(trial: Any) -> float:
        params = suggest(trial, base.algo, settings)
        eval_every = base.eval_every
        if not eval_every and base.iterations == 1:
            eval_every = max(1, base.steps // 4)

        reported: set[int] = set()

        def report(step: int, score: float) -> None:
            if math.isfinite(score) and step not in reported:  # a round's end may fall on an eval_every step
                reported.add(step)
                trial.report(score, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation Sharpe {score:.3f} at step {step}")

        scores = []
        for k in range(settings.seeds):
            spec = dataclasses.replace(base, hyperparams=params, seed=base.seed + k, register=False,
                                       checkpoints=False, resume=False, quiet=True, eval_every=eval_every,
                                       cfg=base.cfg, trial_sharpes=[])
            result: JobResult = run_job(spec, stop, report if k == 0 else None)
            if result.status == "stopped":
                raise _Stopped
            scores.append(result.val_sharpe)
        trial.set_user_attr("seed_sharpes", [s if math.isfinite(s) else None for s in scores])
        finite = [s for s in scores if math.isfinite(s)]
        if not finite:
            trial.set_user_attr("failure", "validation Sharpe undefined for every seed (the policy never trades)")
            return float("nan")  # Optuna records the trial as failed
        return float(sum(finite) / len(finite))

    return objective


def optimize(base: JobSpec, settings: StudySettings, trials: int, worker_index: int = 0,
             stop: StopFlag | None = None) -> int:
    """Run ``trials`` trials of the study in this process; returns how many were run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop = stop or StopFlag()
    study = optuna.load_study(study_name=settings.study_name, storage=_storage(settings.storage),
                              sampler=_sampler(settings, base.seed + 1000 * worker_index),
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    before = len(study.trials)

    def stop_callback(study: Any, _trial: Any) -> None:
        if stop.requested:
            study.stop()

    try:
        study.optimize(_objective(base, settings, stop), n_trials=trials, callbacks=[stop_callback],
                       catch=(UserError,), gc_after_trial=True)
    except _Stopped:
        logger.warning("optimization stopped by a signal")
    return len(study.trials) - before


@dataclasses.dataclass
class StudySummary:
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    n_trials: int  # finished trials (complete, pruned, failed): the configurations tried
    n_complete: int
    n_pruned: int
    n_failed: int
    trial_sharpes: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize(settings: StudySettings) -> StudySummary:
    """Best trial and counts of the whole study (every session that worked on it)."""
    import optuna

    study = optuna.load_study(study_name=settings.study_name, storage=_storage(settings.storage))
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == state.COMPLETE]
    pruned = [t for t in trials if t.state == state.PRUNED]
    failed = [t for t in trials if t.state == state.FAIL]
    if not complete:
        raise UserError(f"no trial of study {settings.study_name!r} finished with a defined validation Sharpe "
                        f"({len(pruned)} pruned, {len(failed)} failed); try more steps or more trials")
    best = max(complete, key=lambda t: t.value)
    return StudySummary(best_params=dict(best.params), best_value=float(best.value), best_trial=best.number,
                        n_trials=len(complete) + len(pruned) + len(failed), n_complete=len(complete),
                        n_pruned=len(pruned), n_failed=len(failed), trial_sharpes=[float(t.value) for t in complete])


# --- the search, then the final model -----------------------------------------------------------------

def optimize_then_train(spec: JobSpec, cfg: dict[str, Any], session: Session, stop: StopFlag, log_file: Path,
                        study_name: str | None = None, quiet: bool = False) -> JobResult:
    """Run the study (in ``--workers`` processes sharing its storage), then retrain the best trial's
    hyperparameters with the session's seed and register it with the study's trial count."""
    opt = cfg["optimize"]
    settings = StudySettings(storage=opt["storage"], study_name=study_name or default_study_name(spec),
                                 sampler=opt["sampler"], trials=opt["trials"], seeds=opt["seeds"],
                                 grid=check_grid(spec.algo, opt["grid"]) if opt["sampler"] == "grid" else {})
    create_study(settings, spec.seed)
    workers = min(cfg["training_params"]["workers"], settings.trials)
    base = dataclasses.replace(spec, resume=False)
    logger.info("%s: Optuna study %s in %s, %d trials, %s sampler, %d worker(s)", spec.label, settings.study_name,
                settings.storage_redacted, settings.trials, settings.sampler, workers)
    started = time.monotonic()
    if workers <= 1:
        optimize(base, settings, settings.trials, 0, stop)
    else:
        shares = [settings.trials // workers + (1 if i < settings.trials % workers else 0) for i in range(workers)]
        _run_optimize_workers(base, settings, shares, stop, log_file, quiet)
    if stop.requested:
        return JobResult.of(spec, "stopped",
                            "optimization stopped by a signal; run again to add trials to the same study")
    summary = summarize(settings)
    logger.info("%s: best trial #%d, validation Sharpe %.3f, params %s (%d trials)", spec.label, summary.best_trial,
                summary.best_value, summary.best_params, summary.n_trials)
    study_info = {"study": settings.study_name, "storage": settings.storage_redacted, "sampler": settings.sampler,
                  "seeds": settings.seeds, "seconds": round(time.monotonic() - started, 3), **summary.to_dict()}
    session.data["optimize"] = (session.data["optimize"] or []) + [dict(study_info, symbol=spec.symbol,
                                                                        model_type=spec.model_type)]
    session.save()
    final = dataclasses.replace(spec, hyperparams=summary.best_params, hpo_trials=max(1, summary.n_trials),
                                trial_sharpes=summary.trial_sharpes, extra_metadata={"optuna": study_info})
    return run_jobs([final], 1, stop, str(log_file), quiet)[0]


def _run_optimize_workers(base: JobSpec, settings: Any, shares: list[int], stop: StopFlag, log_file: Path,
                          quiet: bool) -> None:
    calls = [(optimize, (base, settings, n, i)) for i, n in enumerate(shares)]
    for outcome in run_in_workers(calls, len(shares), stop, str(log_file), quiet):
        if outcome.status in ("error", "died") and not stop.requested:
            raise UserError(f"an Optuna worker failed: {outcome.error}")
