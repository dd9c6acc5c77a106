"""One training job: train a model on the train split, validate it on the val split, checkpoint, register.

A job is one (symbol, interval, model type) with its resolved config. ``run_job(spec)`` does, in order:

1. read the train and val splits (never test) through the one dataset reader (hash-checked);
2. build the agent (DeepScalper on the fast env in multidiscrete mode, or a stable-baselines3 PPO / A2C / DQN
   on the backtrader-backed env or the fast env in discrete mode), or restore it from the job's last checkpoint
   (``spec.resume``);
3. for each of ``spec.iterations`` rounds: train ``spec.steps`` more steps (fewer when ``spec.episodes`` ends
   the round first), validating every ``spec.eval_every`` steps and at the round's end; the checkpoint with the
   best validation score is kept (not the last one), and training stops early when ``training_params.patience``
   validations in a row bring no improvement;
4. score the kept model on the training split too (a training Sharpe far above the validation Sharpe is
   reported as memorisation), judge its health (:func:`model_health`: no gradient update, or a validation policy
   that never trades or never changes side, is a collapse), draw the learning curve
   (``results/training_curves/<run>/learning_curve.png`` beside ``curves.csv``);
5. register it in the :class:`~agents.registry.Registry` with its metadata (``status``, the training-split
   Sharpe, and every validated checkpoint counted as a trial of the deflated Sharpe ratio), which promotes it
   to champion only when it is healthy and beats the champion by the configured margin.

Validation score: :func:`evaluation.backtest.validation_score`, the annualised Sharpe ratio, net of costs, of
the model acting deterministically on the whole validation split with the fast engine.

Checkpoints (:mod:`training.checkpoints`) are taken at safe points only: at the start of a rollout for
stable-baselines3 (after the previous policy update, when the step counter is a multiple of the rollout
length), after a whole agent step for DeepScalper, so a resumed run reaches exactly the step count an
uninterrupted run reaches. The env itself is not checkpointed: a resumed run starts a new training episode, so
its trajectory (not its step count) differs from an uninterrupted run's.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents import AgentSpec, Registry, TrainingHooks, build_agent, load_registered
from agents.config import resolve_device
from agents.registry import new_run_id
from botcore import paths
from botcore.atomic import atomic_write_json
from botcore.config import BASE_DEFAULTS
from botcore.errors import DataError, ModelFileError, UserError
from botcore.lock import WorkspaceLock
from botcore.markets import periods_per_year, resolve_costs
from botcore.signals import StopFlag
from botcore.symbols import validate_symbol
from datafeed.dataset import Dataset
from deepscalper.config import DeepScalperConfig, training_env_overrides
from evaluation.backtest import evaluation_env_config, validation_score
from evaluation.metrics import compute_metrics
from evaluation.promotion import judge_challenger
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from training.checkpoints import (
    BEST_FILE,
    STATE_FILE,
    Curves,
    capture_rng,
    restore_rng,
    run_name,
    seed_everything,
    start_run,
    tensorboard_root,
    trial_folder,
)

logger = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """Everything one training job needs (picklable, so jobs can run in worker processes).

    :param symbol: a prepared dataset's symbol.
    :param interval: its bar interval.
    :param model_type: ``deepscalper`` or ``backtrader``.
    :param algo: ``deepscalper``, or the stable-baselines3 algorithm ``ppo``, ``a2c`` or ``dqn``.
    :param engine: env the SB3 agent trains on: ``backtrader`` or ``fast`` (DeepScalper always uses fast).
    :param cfg: the resolved config (``agents.config.load_config``).
    :param steps: env steps per round (the default 10,000 is raised to ``training_params.min_passes`` passes over
        the training split when that is more: :func:`default_steps`).
    :param iterations: rounds of train -> validate continuing the same model; the best round is kept.
    :param episodes: 0, or the most training episodes per round (the round ends at whichever comes first).
    :param seed: seeds python, numpy, torch, the agent and the env.
    :param checkpoint_every: env steps between checkpoints (0 = only at round ends and on stop).
    :param eval_every: env steps between intermediate validations (0 = only at round ends).
    :param hyperparams: overrides of the agent's hyperparameters (Optuna trials).
    :param resume: continue the latest unfinished run of this symbol, interval and model type.
    :param register: register the result (False for Optuna trials).
    :param checkpoints: write checkpoints (False for Optuna trials).
    :param hpo_trials: hyperparameter trials behind this model (deflated Sharpe ratio in evaluate_bot.py).
    :param trial_sharpes: those trials' validation Sharpes.
    :param quiet: no progress bar.
    :param position: progress bar line (parallel jobs).
    :param extra_metadata: merged into the registry metadata (e.g. the Optuna study).
    :param inputs: the job's data, already prepared (walk-forward folds); None = read the symbol's dataset.
    :param save_model_to: also save the kept model to this file (walk-forward folds, which do not register).
    :param device: ``auto``, ``cpu`` or ``cuda`` (train_bot.py --device), resolved where the job runs
        (:func:`agents.config.resolve_device`).
    """

    symbol: str
    interval: str
    model_type: str
    algo: str
    cfg: dict[str, Any]
    steps: int
    engine: str = "fast"
    iterations: int = 1
    episodes: int = 0
    seed: int = 42
    checkpoint_every: int = 0
    eval_every: int = 0
    hyperparams: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    register: bool = True
    checkpoints: bool = True
    hpo_trials: int = 1
    trial_sharpes: list[float] = field(default_factory=list)
    quiet: bool = False
    position: int = 0
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    inputs: JobInputs | None = None
    save_model_to: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.symbol = validate_symbol(self.symbol)
        if self.model_type not in ("deepscalper", "backtrader"):
            raise UserError(f"unknown model type {self.model_type!r}; use deepscalper or backtrader")
        if self.model_type == "deepscalper":
            self.algo, self.engine = "deepscalper", "fast"
        elif self.algo not in ("ppo", "a2c", "dqn"):
            raise UserError(f"unknown algorithm {self.algo!r}; use ppo, a2c or dqn")
        if self.engine not in ("fast", "backtrader"):
            raise UserError(f"unknown engine {self.engine!r}; use fast or backtrader")
        if self.steps < 1 or self.iterations < 1 or self.episodes < 0:
            raise UserError("steps and iterations must be 1 or more, episodes 0 or more")

    @property
    def label(self) -> str:
        name = self.model_type if self.algo == "deepscalper" else f"{self.model_type}/{self.algo}"
        return f"{self.symbol} {self.interval} {name}"

    @property
    def action_mode(self) -> str:
        return "multidiscrete" if self.algo == "deepscalper" else "discrete"

    def to_dict(self) -> dict[str, Any]:
        """The spec without its data (a JSON-able record)."""
        return dataclasses.asdict(dataclasses.replace(self, inputs=None))

    def agent_spec(self, total_steps: int, log_dir: Path | None, tensorboard_dir: Path | None = None) -> AgentSpec:
        return AgentSpec(algo=self.algo, cfg=self.cfg, seed=self.seed, hyperparams=dict(self.hyperparams),
                         engine=self.engine, total_steps=total_steps, log_dir=log_dir,
                         device=resolve_device(self.device), tensorboard_dir=tensorboard_dir)


@dataclass
class JobResult:
    """What a job did (picklable; one row of the session file)."""

    symbol: str
    interval: str
    model_type: str
    algo: str
    status: str  # finished | stopped | failed
    run_id: str = ""
    steps: int = 0
    val_sharpe: float = math.nan
    best_iteration: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    promoted: bool = False
    promotion_reason: str = ""
    model_path: str = ""
    seconds: float = 0.0
    resumed: bool = False
    error: str = ""
    train_sharpe: float = math.nan
    """The kept model's Sharpe on the training split (fast engine, net of costs), beside ``val_sharpe``."""
    best_step: int = 0
    """Env steps of the kept checkpoint (the best validation)."""
    model_status: str = ""
    """``ok``, or why the model must not trade: ``no_updates``, ``collapsed_flat``, ``collapsed_one_side``."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, spec: JobSpec, status: str, error: str = "") -> JobResult:
        """The result of a job that did not train (``skipped`` or ``failed``)."""
        return cls(spec.symbol, spec.interval, spec.model_type, spec.algo, status, error=error)

def recent_bars(data: Any, lookback_days: int, min_bars: int, level: int = logging.DEBUG) -> Any:
    """The bars of the last ``lookback_days`` calendar days of ``data`` (``training_params.lookback_days``:
    train on recent history only), but never fewer than ``min_bars`` bars; 0 keeps everything.

    :param level: of the line saying which bars are kept (train_bot.py says it at INFO once per symbol, before
        its jobs start; each job logs it at DEBUG).
    """
    if lookback_days <= 0 or data.n_bars <= min_bars:
        return data
    cutoff = data.timestamps[-1] - np.timedelta64(lookback_days, "D")
    start = min(int(np.searchsorted(data.timestamps, cutoff, side="left")), data.n_bars - min_bars)
    if start > 0:
        logger.log(level, "%s %s: training on the last %d days of the train split (%s .. %s, %d of %d bars; "
                   "training_params.lookback_days)", data.symbol, data.interval, lookback_days,
                   str(data.timestamps[start])[:19], str(data.timestamps[-1])[:19], data.n_bars - start, data.n_bars)
    return data.slice(start, data.n_bars) if start > 0 else data


def default_steps(steps: int, train_bars: int, min_passes: float, eval_every: int = 0) -> int:
    """Env steps per round when ``training_params.steps`` is left at its default (10,000): at least
    ``min_passes`` passes over the training split's bars (``training_params.min_passes``, default 1), rounded up
    to a whole number of validations (``eval_every``). Any other step count is used as given.

    Why: 10,000 steps are 5 passes over a daily train split of 2,000 bars but 0.7 of a pass over an hourly one of
    14,600 (3,000 sessions). On the planted intraday market (ML_TRADING_BOT_GUIDE.md, the learnability suite)
    DeepScalper met the goal in 2 of 5 seeds with 10,000 steps and in 4 of 5 with 15,000; daily splits of up to
    10,000 bars train as before.
    """
    if steps != int(BASE_DEFAULTS["training_params"]["steps"]) or min_passes <= 0:
        return steps
    least = math.ceil(min_passes * train_bars)
    if eval_every > 0:
        least = -(-least // eval_every) * eval_every
    return max(steps, least)


MEMORISATION_GAP = 1.0
"""Warn when the training-split Sharpe exceeds the validation Sharpe by more than this and by more than the
validation Sharpe itself (the model fits its training window far better than unseen bars)."""


def model_health(updates: int | None, val_backtest: Any) -> tuple[str, str]:
    """(status, reason) of a trained model from its gradient-update count and its validation backtest.

    ``no_updates``: it never made a gradient update (the network is its random initialisation);
    ``collapsed_flat``: its validation policy never holds a position; ``collapsed_one_side``: after its first
    fill it holds the same side (long, short or flat) on every validation bar, whatever the market does. Such a
    model is registered but never promoted. ``ok`` otherwise.
    """
    if updates == 0:
        return "no_updates", "it made no gradient update (train longer than the agent's learning_starts)"
    side = np.sign(np.asarray(val_backtest.positions, dtype=np.float64))
    held = np.flatnonzero(side)
    if held.size == 0:
        return "collapsed_flat", "its validation policy never trades"
    if np.all(side[held[0]:] == side[held[0]]):
        which = "long" if side[held[0]] > 0 else "short"
        return "collapsed_one_side", f"its validation policy stays {which} on every bar after its first trade"
    return "ok", ""


def memorisation_warning(train_sharpe: float, val_sharpe: float) -> str:
    """A warning when the model fits the training split far better than validation (see MEMORISATION_GAP)."""
    val = val_sharpe if math.isfinite(val_sharpe) else 0.0
    if math.isfinite(train_sharpe) and train_sharpe > MEMORISATION_GAP and train_sharpe - val > max(
            MEMORISATION_GAP, abs(val)):
        return (f"memorisation: training-split Sharpe {train_sharpe:.2f} against validation {val:.2f}; the model "
                "fits its training window far better than unseen bars")
    return ""


def _gradient_updates(model: Any) -> int | None:
    """Gradient updates the model made (DeepScalper's ``n_updates``, stable-baselines3's ``_n_updates``)."""
    for name in ("n_updates", "_n_updates"):
        value = getattr(model, name, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    return None


def plot_learning_curve(csv_path: Path, png_path: Path, best_step: int | None = None) -> Path | None:
    """Training episode P&L and validation Sharpe against env steps, from the curves CSV (None when empty)."""
    import csv

    series: dict[str, tuple[list[int], list[float]]] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            steps, values = series.setdefault(row["tag"], ([], []))
            steps.append(int(row["step"]))
            values.append(float(row["value"]))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    steps, pnl = series.get("charts/episode_pnl", ([], []))
    top.plot(steps, pnl, lw=0.6, alpha=0.5, label="episode P&L")
    if len(pnl) >= 10:
        k = max(2, len(pnl) // 20)
        top.plot(steps[k - 1:], np.convolve(pnl, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
    top.set_ylabel("training episode P&L")
    top.axhline(0.0, color="grey", lw=0.8)
    top.legend(fontsize=8)
    steps, sharpe = series.get("eval/val_sharpe", ([], []))
    bottom.plot(steps, sharpe, "o-", ms=3, label="validation Sharpe")
    if best_step:
        bottom.axvline(best_step, color="green", ls="--", lw=1, label="kept checkpoint")
    bottom.set_xlabel("env steps")
    bottom.set_ylabel("validation Sharpe (net)")
    bottom.axhline(0.0, color="grey", lw=0.8)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path



@dataclass
class JobInputs:
    """What a job reads before it trains: the checked dataset, the train and val bars and the env configs."""

    dataset: Dataset
    train_data: MarketData
    val_data: MarketData
    train_config: EnvConfig
    eval_config: EnvConfig
    ppy: float

    @classmethod
    def load(cls, spec: JobSpec) -> JobInputs:
        dataset = Dataset.open(spec.symbol, spec.interval)
        train_data = MarketData.from_frame(dataset.split("train"), spec.symbol, spec.interval)
        val_data = MarketData.from_frame(dataset.split("val"), spec.symbol, spec.interval)
        cfg = spec.cfg
        shaping: dict[str, Any] = {}
        if spec.algo == "deepscalper":  # its hindsight bonus and volatility target shape the training env
            ds = dict(cfg["deepscalper"])
            ds.update({k: v for k, v in spec.hyperparams.items() if k in ds})
            shaping = training_env_overrides(DeepScalperConfig.from_dict(ds))
        # costs: the config's, or (its nulls) the defaults of the dataset's market
        train_config = EnvConfig.from_config(cfg, spec.action_mode, training=True, market=dataset.market, **shaping)
        eval_config = evaluation_env_config(cfg, spec.action_mode, market=dataset.market)
        min_bars = train_config.window + 2
        train_data = recent_bars(train_data, int(cfg["training_params"]["lookback_days"]), min_bars)
        for name, data in (("train", train_data), ("val", val_data)):
            if data.n_bars < min_bars:
                raise DataError(f"the {name} split of {spec.symbol} {spec.interval} has {data.n_bars} bars; "
                                f"the env needs at least {min_bars} (window {train_config.window}); "
                                "prepare a longer history or lower env.window")
        return cls(dataset, train_data, val_data, train_config, eval_config,
                   periods_per_year(spec.interval, dataset.market))


class Job:
    """Runs one :class:`JobSpec`: the rounds of training and validation, checkpoints, then registration."""

    def __init__(self, spec: JobSpec, stop: StopFlag, on_validation: Callable[[int, float], None] | None,
                 defer_registration: bool = False):
        self.spec = spec
        self.stop = stop
        self.on_validation = on_validation
        self.defer_registration = defer_registration
        self.pending: PendingRegistration | None = None
        self.run_lock: WorkspaceLock | None = None
        self.inputs = spec.inputs if spec.inputs is not None else JobInputs.load(spec)
        self.run_id, self.folder, saved = self._find_or_start()
        self.resumed = saved is not None
        if saved is not None:
            self._adopt_saved_spec(saved)
        else:  # a new run (a resumed one keeps the steps it started with, from its checkpoint)
            steps = default_steps(spec.steps, self.inputs.train_data.n_bars,
                                  float(spec.cfg["training_params"].get("min_passes", 0) or 0), spec.eval_every)
            if steps != spec.steps:
                logger.info("%s: %d env steps per round (training_params.min_passes %g over %d training bars; "
                            "the default steps %d are less)", spec.label, steps,
                            spec.cfg["training_params"]["min_passes"], self.inputs.train_data.n_bars, spec.steps)
                spec.steps = steps
        self.total_steps = spec.steps * spec.iterations
        self.curves_dir = paths.results_dir() / "training_curves" / self.folder.name if spec.register else None
        # TensorBoard: one folder per run, named like the registry's run folder (training_params.tensorboard)
        self.tensorboard_dir = (tensorboard_root() / self.folder.name if self.curves_dir
                                and spec.cfg["training_params"].get("tensorboard", True) else None)
        self.state: dict[str, Any] = saved or self._new_state()
        self.prior_seconds = float(self.state["train_seconds"])
        self.started = time.monotonic()
        self.last_checkpoint = int(self.state["num_timesteps"])
        self.next_eval = self._next_multiple(self.last_checkpoint, spec.eval_every)
        self.episode_pnl, self.latest_val = 0.0, math.nan
        self.round_done = self.halted = False
        self.agent: Any = None
        self.curves: Curves | None = None
        self.bar: Any = None

    # --- set-up ---

    def _find_or_start(self) -> tuple[str, Path, dict[str, Any] | None]:
        """(run id, checkpoint folder, the checkpoint state when resuming); the run stays locked by this process
        until :meth:`run` ends, so a second process cannot train it too."""
        spec = self.spec
        if spec.checkpoints:
            run_id, folder, state, self.run_lock = start_run(spec.symbol, spec.interval, spec.model_type, spec.algo,
                                                             spec.resume, spec.label)
            return run_id, folder, state
        # Optuna trials and walk-forward folds: nothing to resume, only the best round's model to keep until the end
        run_id = new_run_id()
        return run_id, trial_folder(run_name(spec.symbol, spec.interval, spec.model_type, run_id)), None

    def _adopt_saved_spec(self, state: dict[str, Any]) -> None:
        """A resumed job's shape comes from its checkpoint; flags may only add iterations."""
        spec, saved = self.spec, state["spec"]
        for key in ("steps", "episodes", "seed", "engine", "hyperparams", "checkpoint_every", "eval_every"):
            setattr(spec, key, saved[key])
        spec.iterations = max(spec.iterations, int(saved["iterations"]))
        spec.cfg = state["cfg"]
        state["spec"]["iterations"] = spec.iterations
        if state.get("manifest_hash") != self.inputs.dataset.hash:
            logger.warning("%s: the dataset changed since this run started (manifest hash %s, now %s); "
                           "the run continues on the new data", spec.label, state.get("manifest_hash"),
                           self.inputs.dataset.hash)

    def _new_state(self) -> dict[str, Any]:
        return {
            "status": "running", "run_id": self.run_id, "spec": self._spec_for_state(), "cfg": self.spec.cfg,
            "num_timesteps": 0, "round": 1, "round_start": 0, "round_episodes": 0, "episodes": 0,
            "rounds": [], "files": [], "train_seconds": 0.0, "manifest_hash": self.inputs.dataset.hash,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    # --- the run ---

    def run(self) -> JobResult:
        try:
            return self._run()
        finally:
            if not self.spec.checkpoints:
                shutil.rmtree(self.folder, ignore_errors=True)
            if self.run_lock is not None:
                self.run_lock.release()

    def _run(self) -> JobResult:
        spec = self.spec
        seed_everything(spec.seed)
        self.agent = build_agent(spec.agent_spec(self.total_steps, self.curves_dir, self.tensorboard_dir),
                                 self.inputs.train_data, self.inputs.train_config)
        try:
            if self.resumed:
                self.agent.load_checkpoint(self.folder, self.state["files"], self.state.get("agent_rng", {}),
                                           self.state["num_timesteps"])
                restore_rng(self.state["rng"])
            self.started = time.monotonic()
            if self.curves_dir:
                self.curves = Curves(self.curves_dir / "curves.csv",
                                     self.state["num_timesteps"] if self.resumed else None, self.tensorboard_dir)
            self.bar = self._progress(self.total_steps)
            try:
                stopped = self._train_rounds()
            finally:
                self.bar.close()
                if self.curves:
                    self.curves.close()
            result = JobResult(spec.symbol, spec.interval, spec.model_type, spec.algo,
                               "stopped" if stopped else "finished", run_id=self.run_id,
                               steps=self.agent.num_timesteps, rounds=list(self.state["rounds"]),
                               resumed=self.resumed, seconds=self._train_seconds())
            if stopped:
                logger.warning("%s: stopped at step %d; checkpoint in %s (continue with --resume)", spec.label,
                               self.last_checkpoint, self.folder)
                return result
            return self._finish(result)
        finally:
            self.agent.close()

    def _train_rounds(self) -> bool:
        """Train the remaining rounds; True when stopped by a signal (a checkpoint is saved)."""
        spec, st = self.spec, self.state
        hooks = TrainingHooks(self._safe_point, self._step)
        while st["round"] <= spec.iterations:
            target = st["round_start"] + spec.steps
            self.round_done = self.halted = False
            while self.agent.num_timesteps < target and not self.round_done:
                self.agent.learn(target - self.agent.num_timesteps, hooks)
                if self.halted or self.stop.requested:
                    break
            if self.halted:  # stopped at a safe point, which saved the checkpoint
                return True
            if self.stop.requested:  # learn() returned at its own end: a safe point as well
                self.checkpoint()
                return True
            if getattr(self, "last_validated", None) == self._model_version():
                score = st["validations"][-1][1]  # an eval_every validation of this very model ended the round
            else:
                score = self._validate()
            st["rounds"].append({"iteration": st["round"], "steps": self.agent.num_timesteps,
                                 "episodes": st["round_episodes"], "val_sharpe": score})
            logger.info("%s: iteration %d/%d done at step %d, validation Sharpe %.3f", spec.label, st["round"],
                        spec.iterations, self.agent.num_timesteps, score)
            st.update(round=st["round"] + 1, round_start=self.agent.num_timesteps, round_episodes=0)
            if st.get("early_stop_step") is not None:
                logger.info("%s: early stop at step %d: validation has not improved in %d validations (best %.3f at "
                            "step %d; training_params.patience)", spec.label, st["early_stop_step"],
                            self._patience(), st["best"]["val_sharpe"], st["best"]["steps"])
                st["round"] = spec.iterations + 1
            self.checkpoint()
        return False

    def _finish(self, result: JobResult) -> JobResult:
        """Keep the best validated checkpoint (not the last), score it on validation and on the training split,
        judge its health, save it and (``spec.register``) register it; an unhealthy model is never promoted."""
        spec, st, inputs = self.spec, self.state, self.inputs
        updates = _gradient_updates(self.agent.model)
        last = st["rounds"][-1]
        best = st.get("best") or {"steps": last["steps"], "val_sharpe": last["val_sharpe"],
                                  "iteration": last["iteration"]}
        result.best_iteration, result.best_step = best["iteration"], best["steps"]
        if st.get("best") is not None:  # the validated weights themselves (SB3 may update after a validation)
            self.agent.load_model(self.folder / BEST_FILE)
        score, backtest = validation_score(self.agent.policy, inputs.val_data, inputs.eval_config, inputs.ppy)
        if not (math.isnan(score) and math.isnan(best["val_sharpe"])) and not math.isclose(
                score, best["val_sharpe"], rel_tol=1e-9, abs_tol=1e-12):
            raise RuntimeError(f"the kept model scores {score} on validation but its checkpoint scored "
                               f"{best['val_sharpe']}: the validation backtest is not deterministic")
        result.val_sharpe = score
        result.train_sharpe, _ = validation_score(self.agent.policy, inputs.train_data, inputs.eval_config,
                                                  inputs.ppy)
        result.model_status, reason = model_health(updates, backtest)
        warning = memorisation_warning(result.train_sharpe, score)
        result.warnings = [w for w in (warning, reason) if w]
        for w in result.warnings:
            logger.warning("%s: %s", spec.label, w)
        if self.curves_dir and (self.curves_dir / "curves.csv").is_file():
            plot_learning_curve(self.curves_dir / "curves.csv", self.curves_dir / "learning_curve.png",
                                best["steps"])
        if spec.save_model_to:
            self.agent.save_model(Path(spec.save_model_to))
        if not spec.register:
            return result
        selections = self._selection_trials()
        metrics = compute_metrics(backtest, inputs.ppy, n_trials=selections[0], trial_sharpes=selections[1],
                                  bootstrap_samples=int(spec.cfg["evaluation"]["bootstrap_samples"]),
                                  seed=int(spec.cfg["evaluation"]["random_seed"]))
        self.folder.mkdir(parents=True, exist_ok=True)
        model_file = self.folder / "final.zip"
        self.agent.save_model(model_file)
        metadata = self._metadata(result, metrics, updates)
        if self.defer_registration:  # a cluster worker: the driver registers it (training.cluster)
            self.pending = PendingRegistration(model_file, metadata, reason, self.run_id)
            return result
        register_trained(spec, inputs, self.agent.policy, PendingRegistration(model_file, metadata, reason,
                                                                              self.run_id), result)
        st["status"] = "finished"
        atomic_write_json(self.folder / STATE_FILE, st)
        shutil.rmtree(self.folder, ignore_errors=True)  # the registry holds the model now
        return result


    # --- hooks called from inside learn() ---

    def _step(self, num_timesteps: int, pnl: float, done: bool, n_done: int) -> bool:
        self.episode_pnl += pnl
        self.bar.update(max(0, num_timesteps - self.bar.n))
        if done:
            if self.curves:
                self.curves.add(num_timesteps, "charts/episode_pnl", self.episode_pnl)
            self.bar.set_postfix(ep_pnl=f"{self.episode_pnl:,.0f}", val=f"{self.latest_val:.2f}", refresh=False)
            self.episode_pnl = 0.0
        if n_done:
            self.state["episodes"] += n_done
            self.state["round_episodes"] += n_done
            if self.spec.episodes and self.state["round_episodes"] >= self.spec.episodes:
                self.round_done = True
                return False
        if self.spec.eval_every and num_timesteps >= self.next_eval:
            self.next_eval = self._next_multiple(num_timesteps, self.spec.eval_every)
            self._validate()
            if self.state.get("early_stop_step") is not None:
                self.round_done = True
                return False
        return True

    def _safe_point(self, num_timesteps: int) -> bool:
        due = self.spec.checkpoint_every and num_timesteps - self.last_checkpoint >= self.spec.checkpoint_every
        if (due or self.stop.requested) and num_timesteps != self.last_checkpoint:
            self.checkpoint()
        if self.stop.requested:
            self.halted = True
            return False
        return True

    def _model_version(self) -> tuple[int, int | None]:
        """(env steps, gradient updates): a model that changed since a validation differs in one of them."""
        return self.agent.num_timesteps, _gradient_updates(self.agent.model)

    def _patience(self) -> int:
        return int(self.spec.cfg["training_params"].get("patience") or 0)

    def _validate(self) -> float:
        """Score the current policy on validation; keep it (``BEST_FILE``) when it is the best so far; count
        validations without improvement for early stopping (``training_params.patience``, counted from the
        first finite score)."""
        score, _ = validation_score(self.agent.policy, self.inputs.val_data, self.inputs.eval_config, self.inputs.ppy)
        steps = self.agent.num_timesteps
        self.last_validated = self._model_version()
        st = self.state
        st.setdefault("validations", []).append([steps, score])
        best = st.get("best")
        if math.isfinite(score) and (best is None or score > best["val_sharpe"]):
            st["best"] = {"steps": steps, "val_sharpe": score, "iteration": st["round"]}
            st["since_best"] = 0
            self.folder.mkdir(parents=True, exist_ok=True)
            self.agent.save_model(self.folder / BEST_FILE)
        elif best is not None:
            st["since_best"] = st.get("since_best", 0) + 1
            if self._patience() and st["since_best"] >= self._patience():
                st["early_stop_step"] = steps
        self.latest_val = score
        self.bar.set_postfix(ep_pnl=f"{self.episode_pnl:,.0f}", val=f"{score:.2f}")
        if self.curves:
            self.curves.add(steps, "eval/val_sharpe", score)
        if self.on_validation is not None:
            self.on_validation(steps, score)
        return score

    def checkpoint(self) -> None:
        """Save the agent, then ``state.json`` naming its files (atomic, in that order), then drop old files."""
        if not self.spec.checkpoints:
            return
        steps = self.agent.num_timesteps
        self.folder.mkdir(parents=True, exist_ok=True)
        old_files = list(self.state["files"])
        files = self.agent.save_checkpoint(self.folder, steps)
        self.state.update(num_timesteps=steps, files=files, rng=capture_rng(), agent_rng=self.agent.rng_state(),
                          train_seconds=self._train_seconds(), updated=f"{time.time_ns():020d}")
        atomic_write_json(self.folder / STATE_FILE, self.state)
        for name in set(old_files) - set(files):
            (self.folder / name).unlink(missing_ok=True)
        self.last_checkpoint = steps
        logger.debug("%s: checkpoint at step %d in %s", self.spec.label, steps, self.folder)

    # --- helpers ---

    def _train_seconds(self) -> float:
        return self.prior_seconds + time.monotonic() - self.started

    @staticmethod
    def _next_multiple(n: int, every: int) -> int:
        return (n // every + 1) * every if every else 1 << 62

    def _progress(self, total: int) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, initial=self.state["num_timesteps"], desc=self.spec.label, unit="step",
                    disable=True if self.spec.quiet else None, position=self.spec.position, leave=True,
                    dynamic_ncols=True)

    def _spec_for_state(self) -> dict[str, Any]:
        d = self.spec.to_dict()
        d.pop("cfg")
        d.pop("inputs")
        return d

    def _selection_trials(self) -> tuple[int, list[float]]:
        """(trials, their Sharpes) behind the kept model for the DSR: every validated checkpoint it was chosen
        from counts as a trial, times the hyperparameter trials that chose its settings."""
        validations = self.state.get("validations", [])
        if len(validations) < 2:  # one candidate: no selection beyond the hyperparameter trials
            return int(self.spec.hpo_trials), list(self.spec.trial_sharpes)
        sharpes = [float(v) for _, v in validations if math.isfinite(v)]
        return int(self.spec.hpo_trials) * len(validations), list(self.spec.trial_sharpes) + sharpes

    def _metadata(self, result: JobResult, metrics: dict[str, Any], updates: int | None = None) -> dict[str, Any]:
        spec, inputs, m = self.spec, self.inputs, self.inputs.dataset.manifest
        trials, trial_sharpes = self._selection_trials()
        return {
            "status": result.model_status, "warnings": list(result.warnings),
            "train_sharpe": result.train_sharpe if math.isfinite(result.train_sharpe) else None,
            "model_type": spec.model_type, "algo": spec.algo, "symbol": spec.symbol, "interval": spec.interval,
            "engine": spec.engine, "action_mode": spec.action_mode, "market": inputs.dataset.market,
            "costs": resolve_costs(spec.cfg["data"]["costs"], inputs.dataset.market).to_dict(),
            "periods_per_year": inputs.ppy,
            "dataset": {"manifest_hash": m.get("manifest_hash"), "ranges": m.get("ranges"), "source": m.get("source"),
                        "hashes": m.get("hashes"),
                        "feature_columns": m.get("feature_columns", list(inputs.train_data.feature_names)),
                        "train_used": {"start": str(inputs.train_data.timestamps[0]),
                                       "end": str(inputs.train_data.timestamps[-1]), "rows": inputs.train_data.n_bars,
                                       "lookback_days": spec.cfg["training_params"]["lookback_days"]}},
            "config": spec.cfg, "hyperparameters": self.agent.hyperparameters, "seed": spec.seed,
            "library_versions": library_versions(),
            "training": {"seconds": round(result.seconds, 3), "steps": result.steps,
                         "episodes": self.state["episodes"], "iterations": spec.iterations,
                         "steps_per_iteration": spec.steps, "episodes_per_iteration": spec.episodes,
                         "best_iteration": result.best_iteration, "best_step": result.best_step,
                         "gradient_updates": updates, "validations": self.state.get("validations", []),
                         "early_stop_step": self.state.get("early_stop_step"), "rounds": result.rounds,
                         "resumed": result.resumed, "checkpoint_every": spec.checkpoint_every,
                         "curves": str(paths.results_dir() / "training_curves" / self.folder.name)},
            "validation": dict(metrics, split="val", engine="fast"),
            "hpo_trials": trials, "trial_sharpes": trial_sharpes,
            "env_config": inputs.eval_config.to_dict(), "train_env_config": inputs.train_config.to_dict(),
            **spec.extra_metadata,
        }


@dataclass
class PendingRegistration:
    """A trained model not registered yet: its file, its registry metadata, why it is unhealthy (when it is),
    its run id. A cluster worker returns it to the driver, which registers it (:func:`register_trained`)."""

    model_file: Path
    metadata: dict[str, Any]
    health_reason: str
    run_id: str


def register_trained(spec: JobSpec, inputs: JobInputs, policy: Any, pending: PendingRegistration,
                     result: JobResult) -> JobResult:
    """Register a trained model: the one promotion rule (on the validation bars, against the champion and the
    baselines) decides whether it becomes champion; an unhealthy model is never promoted. Fills in the result's
    promotion and model path."""
    registry = Registry.from_config(spec.cfg)
    if result.model_status == "ok":
        judged = judge_challenger(policy, inputs.val_data, inputs.eval_config, spec.cfg, inputs.ppy,
                                  _current_champion(registry, spec),
                                  lambda champion: load_registered(registry, champion))
        promote, why = judged.promoted, judged.reason
    else:
        promote, why = False, f"not promoted ({result.model_status}): {pending.health_reason}"
    record, decision = registry.register(pending.model_file, pending.metadata, promote=promote,
                                         run_id=pending.run_id, reason=why)
    result.promoted, result.promotion_reason = decision.promoted, decision.reason
    result.model_path = str(record.model_path)
    return result


def _current_champion(registry: Registry, spec: JobSpec) -> Any:
    try:
        return registry.champion(spec.symbol, spec.interval, spec.model_type)
    except ModelFileError as exc:  # unreadable champions.json: the registry registers a challenger
        logger.warning("%s: %s", spec.label, exc)
        return None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "pandas", "torch", "stable-baselines3", "gymnasium", "backtrader", "optuna"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def run_job(spec: JobSpec, stop: StopFlag | None = None,
            on_validation: Callable[[int, float], None] | None = None) -> JobResult:
    """Train, validate and (``spec.register``) register one model; see the module docstring.

    :param stop: polled at safe points; when set, a checkpoint is saved and the result's status is ``stopped``.
    :param on_validation: called with (steps, validation Sharpe) after every validation; it may raise to
        abandon the job (Optuna pruning).
    :raises DataError: the dataset is missing (the message names the data_pipeline.py command).
    """
    return Job(spec, stop or StopFlag(), on_validation).run()


def guarded_job(spec: JobSpec, stop: StopFlag | None = None) -> JobResult:
    """``run_job`` that turns a failure into a ``failed`` result (one job's failure does not end the others)."""
    try:
        return run_job(spec, stop)
    except UserError as exc:
        logger.error("%s: %s", spec.label, exc)
        return JobResult.of(spec, "failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - the traceback goes to the log, the session goes on
        logger.exception("%s: training failed", spec.label)
        return JobResult.of(spec, "failed", f"unexpected {type(exc).__name__}: {exc} (traceback in logs/)")
