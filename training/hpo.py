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
worker loads it and runs its share of the trials. A bare ``postgresql://`` URL goes through psycopg 3
(:mod:`botcore.dburl`).

Dead workers: every running trial records a heartbeat in the storage every ``optimize.heartbeat_seconds``; a
trial whose heartbeat is older than ``optimize.heartbeat_grace_seconds`` (its process was killed, its machine
lost) is marked failed by the next process that starts a trial on the study, and its parameters are queued
once more so that the configuration is still tried (:class:`_StaleTrialCallback`).

Samplers draw each trial's random numbers from (seed, trial number): processes started with the same seed on
different machines suggest different configurations, and a study replays the same way whichever process runs
which trial.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from botcore.dburl import connect_args, sqlalchemy_url
from botcore.errors import ConfigError, UserError
from botcore.redact import redact
from botcore.signals import StopFlag
from botcore.symbols import safe_name
from training.checkpoints import STATE_FILE, find_unfinished
from training.cluster import make_runner, shared_storage
from training.job import JobResult, JobSpec, run_job
from training.session import Session
from training.workers import run_jobs

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
    heartbeat_seconds: int = 60  # 0 = no heartbeat: a killed worker's trial stays RUNNING
    heartbeat_grace_seconds: int = 180  # a RUNNING trial without a heartbeat for this long is failed

    @property
    def storage_redacted(self) -> str:
        return redact(self.storage)

    def open_storage(self) -> Any:
        """The study's storage, with the heartbeat of running trials when it is on."""
        return _storage(self.storage, self.heartbeat_seconds, self.heartbeat_grace_seconds)


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


def _storage(url: str, heartbeat_seconds: int = 0, grace_seconds: int | None = None) -> Any:
    """Optuna's RDB storage for ``url`` (UserError, one line with the password masked, when it cannot open).

    :param heartbeat_seconds: record a heartbeat of each running trial this often (0: no heartbeat).
    :param grace_seconds: a running trial without a heartbeat for this long is stale (failed and retried).
    """
    import optuna

    if url.startswith("sqlite:///"):
        db = url[len("sqlite:///"):].split("?", 1)[0]
        if db and db != ":memory:":
            _check_sqlite_file(Path(db), url)
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        options = {"connect_args": {"timeout": 120}}  # concurrent writers wait for the lock, not fail at once
    else:
        options = {"connect_args": connect_args(url), "pool_pre_ping": True}  # a server restart drops connections
    heartbeat: dict[str, Any] = {}
    if heartbeat_seconds > 0:
        heartbeat = {"heartbeat_interval": heartbeat_seconds, "grace_period": grace_seconds,
                     "heartbeat_stale_trial_callback": _StaleTrialCallback(grace_seconds or 2 * heartbeat_seconds)}
    try:
        with warnings.catch_warnings(), _schema_lock(url):  # the heartbeat arguments are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(sqlalchemy_url(url), engine_kwargs=options, **heartbeat)
    except ImportError as exc:  # a driver the URL names is not installed (Optuna wraps SQLAlchemy's error)
        missing = exc.name or getattr(exc.__cause__ or exc.__context__, "name", None) or "it names"
        raise UserError(f"cannot open Optuna storage {redact(url)}: the database driver {missing} is not "
                        "installed; for PostgreSQL use postgresql+psycopg:// (psycopg 3 is installed)") from exc
    except Exception as exc:  # bad URL, unknown database kind, unreachable server, wrong password, damaged file
        hint = "" if url.startswith("sqlite:") else ("; check --storage (or optimize.storage), e.g. "
                                                     "postgresql://USER@HOST:5432/DATABASE with the password in "
                                                     "PGPASSWORD, and that the server is up and lets USER in")
        raise UserError(f"cannot open Optuna storage {redact(url)}: {type(exc).__name__}: "
                        f"{_one_line(exc, url)}{hint}") from exc


_SCHEMA_LOCK_KEY = 0x6F7074756E61  # any fixed 64-bit number: PostgreSQL's advisory lock of Optuna's table set-up


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, one process at a time opens the storage: processes started together on an empty database
    would all create Optuna's tables at once, and all but one fail on a duplicate key (seen with two
    ``train_bot.py --optimize`` started together). An advisory lock, held by a connection of its own for the
    moment the storage checks and creates its tables; other databases open as they are."""
    import sqlalchemy as sa

    try:
        postgres = sa.make_url(sqlalchemy_url(url)).get_backend_name() == "postgresql"
    except (sa.exc.ArgumentError, ValueError):  # not a URL: the storage says so
        postgres = False
    if not postgres:
        yield
        return
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool, connect_args=connect_args(url))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def _one_line(exc: BaseException, url: str) -> str:
    """The driver's message (SQLAlchemy wraps it with its SQL and a link) on one line, secrets masked."""
    text = str(getattr(exc, "orig", None) or exc)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("(Background")]
    return redact(" ".join(lines), known=[url])


class _StaleTrialCallback:
    """Run for each trial the heartbeat found stale (already marked failed): say so in the log, and queue its
    parameters to run once more. A retried trial that goes stale again is not retried a second time: its
    configuration may be what kills the worker (out of memory)."""

    def __init__(self, grace_seconds: int) -> None:
        import optuna

        self.grace_seconds = grace_seconds
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)

    def __call__(self, study: Any, trial: Any) -> None:
        retried_before = bool(trial.system_attrs.get("retry_history"))
        self._retry(study, trial)
        logger.warning("study %s: trial #%d had no heartbeat for over %d s (its worker was killed or lost its "
                       "connection); marked failed%s", study.study_name, trial.number, self.grace_seconds,
                       ", not retried again (it was a retry already)" if retried_before
                       else "; its parameters are queued to run again")


def _sampler(settings: StudySettings, seed: int, worker_index: int = 0) -> Any:
    import optuna

    if settings.sampler == "grid":  # picks among the grid points no finished or running trial holds
        return optuna.samplers.GridSampler(settings.grid, seed=seed + 1000 * worker_index)
    if settings.sampler == "random":
        return _trial_seeded(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    return _trial_seeded(lambda s: optuna.samplers.TPESampler(seed=s), seed)


def trial_seed(seed: int, trial_number: int) -> int:
    """The sampler seed of one trial: a hash of the study seed and the trial number (unique in the study)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


def _trial_seeded(make: Callable[[int], Any], seed: int) -> Any:
    """A sampler that makes a fresh ``make(trial_seed(seed, number))`` for every trial.

    Optuna's samplers hold one random stream per process, so two processes started with the same seed (two
    machines running the same command) would suggest the same configurations; TPE and random sampling keep no
    other state between trials (they read the study's history), so a fresh sampler per trial changes nothing
    else.
    """
    import optuna

    class TrialSeededSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner = make(seed)

        def before_trial(self, study: Any, trial: Any) -> None:
            self.inner = make(trial_seed(seed, trial.number))
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

    return TrialSeededSampler()


def _route_optuna_logging() -> None:
    """Optuna's warnings (a failed trial, with its traceback) go through the toolkit's handlers: one line on the
    terminal, the traceback in the log file. Its own handler would print the traceback on stderr."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def create_study(settings: StudySettings, seed: int) -> Any:
    """Create the study (or load it when it exists), once, before workers start."""
    import optuna

    _route_optuna_logging()
    return optuna.create_study(study_name=settings.study_name, storage=settings.open_storage(),
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


STOPPED = "stopped by a signal before it finished"  # the "failure" of a trial a stop request ended


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
                trial.set_user_attr("failure", STOPPED)  # not a configuration tried: --resume runs it again
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

    _route_optuna_logging()
    stop = stop or StopFlag()
    study = optuna.load_study(study_name=settings.study_name, storage=settings.open_storage(),
                              sampler=_sampler(settings, base.seed, worker_index),
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    before = len(study.trials)

    def stop_callback(study: Any, _trial: Any) -> None:
        if stop.requested:
            study.stop()

    def log_trial(study: Any, trial: Any) -> None:
        logger.info("%s: %s", base.label, trial_line(study, trial))

    try:
        study.optimize(_objective(base, settings, stop), n_trials=trials, callbacks=[stop_callback, log_trial],
                       catch=(UserError,), gc_after_trial=True)
    except _Stopped:
        logger.warning("optimization stopped by a signal")
    return len(study.trials) - before


def trial_line(study: Any, trial: Any) -> str:
    """One line per finished trial: its number, state, value (validation Sharpe), parameters and the study's best
    so far (all workers' trials), e.g. ``trial 4 finished: validation Sharpe 0.812, params {learning_rate: 0.0003,
    hidden_size: 64}; best so far: trial 2, 0.904``."""
    import optuna

    params = ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in trial.params.items())
    state = trial.state
    if state == optuna.trial.TrialState.COMPLETE:
        outcome = f"finished: validation Sharpe {trial.value:.3f}"
    elif state == optuna.trial.TrialState.PRUNED:
        step = trial.last_step
        outcome = "pruned" + (f" at step {step} (validation Sharpe {trial.intermediate_values[step]:.3f})"
                              if step is not None else "")
    else:
        why = trial.user_attrs.get("failure")
        outcome = f"{state.name.lower()}" + (f" ({why})" if why else "")
    try:
        best = study.best_trial
        best_text = f"best so far: trial {best.number}, {best.value:.3f}"
    except ValueError:  # no trial has completed yet
        best_text = "no completed trial yet"
    return f"trial {trial.number} {outcome}, params {{{params}}}; {best_text}"


def trials_done(settings: StudySettings) -> tuple[int, int]:
    """(finished, running) trials of the study, after failing those whose heartbeat is stale. Not counted: a
    stale trial that was queued again (its retry stands for it; waiting, it is among those still to run) and a
    trial a stop request ended (Ctrl-C: it was never judged)."""
    import optuna

    study = optuna.load_study(study_name=settings.study_name, storage=settings.open_storage())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    finished = sum(1 for t in trials if t.state.is_finished() and t.number not in retried
                   and t.user_attrs.get("failure") != STOPPED)
    running = sum(1 for t in trials if t.state == optuna.trial.TrialState.RUNNING)
    return finished, running


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

    study = optuna.load_study(study_name=settings.study_name, storage=settings.open_storage())
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
    hyperparameters with the session's seed and register it with the study's trial count.

    ``optimize.trials`` more trials are added to the study; with ``--resume`` (``spec.resume``), only those
    that bring it to ``optimize.trials`` in all (an interrupted search finishes its budget)."""
    opt = cfg["optimize"]
    settings = StudySettings(storage=opt["storage"], study_name=study_name or default_study_name(spec),
                                 sampler=opt["sampler"], trials=opt["trials"], seeds=opt["seeds"],
                                 grid=check_grid(spec.algo, opt["grid"]) if opt["sampler"] == "grid" else {},
                                 heartbeat_seconds=opt["heartbeat_seconds"],
                                 heartbeat_grace_seconds=opt["heartbeat_grace_seconds"])
    create_study(settings, spec.seed)
    to_run = settings.trials
    if spec.resume:
        done, running = trials_done(settings)
        to_run = max(0, settings.trials - done - running)
        logger.info("%s: resuming study %s: %d trial(s) done, %d running elsewhere, %d to run for %d in all",
                    spec.label, settings.study_name, done, running, to_run, settings.trials)
    workers = max(1, min(cfg["training_params"]["workers"], to_run))
    base = dataclasses.replace(spec, resume=False)
    logger.info("%s: Optuna study %s in %s, %d trials, %s sampler, %d worker(s)", spec.label, settings.study_name,
                settings.storage_redacted, to_run, settings.sampler, workers)
    started = time.monotonic()
    if workers <= 1:
        if to_run:
            optimize(base, settings, to_run, 0, stop)
    else:
        shares = [to_run // workers + (1 if i < to_run % workers else 0) for i in range(workers)]
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
                                trial_sharpes=summary.trial_sharpes, extra_metadata={"optuna": study_info},
                                resume=_final_run_unfinished(spec, summary.best_params))
    return run_jobs([final], 1, stop, str(log_file), quiet)[0]


def _final_run_unfinished(spec: JobSpec, best_params: dict[str, Any]) -> bool:
    """With ``--resume``: whether the newest unfinished run of this symbol and model type is the training of
    these best hyperparameters (interrupted), to continue it. Any other unfinished run (a plain training with
    the defaults) is left alone: resuming it would register its hyperparameters as the study's best."""
    if not spec.resume:
        return False
    folder = find_unfinished(spec.symbol, spec.interval, spec.model_type, spec.algo)
    if folder is None:
        return False
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("spec", {}).get("hyperparams") == best_params


def _run_optimize_workers(base: JobSpec, settings: Any, shares: list[int], stop: StopFlag, log_file: Path,
                          quiet: bool) -> None:
    runner = make_runner(base.cfg, len(shares))  # this machine's worker pool, or the Ray cluster (--cluster)
    try:
        settings = dataclasses.replace(settings, storage=shared_storage(settings.storage, runner))
        calls = [(optimize, (base, settings, n, i)) for i, n in enumerate(shares)]
        datasets = [(base.symbol, base.interval)] if runner.remote else []
        for outcome in runner.run_calls(calls, stop, str(log_file), quiet, datasets):
            if outcome.status in ("error", "died") and not stop.requested:
                raise UserError(f"an Optuna worker failed: {outcome.error}")
    finally:
        runner.close()
