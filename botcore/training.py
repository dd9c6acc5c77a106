"""One training job: train a model on the train split, validate it on the val split, checkpoint, register.

A job is one (symbol, interval, model type) with its resolved config. ``run_job(spec)`` does, in order:

1. load the train and val splits (never test) and the dataset manifest;
2. build the agent (DeepScalper on the fast env in multidiscrete mode, or a stable-baselines3 PPO / A2C / DQN
   on the backtrader-backed env or the fast env in discrete mode), or restore it from the job's last checkpoint
   (``spec.resume``);
3. for each of ``spec.iterations`` rounds: train ``spec.steps`` more steps (fewer when ``spec.episodes`` ends
   the round first), then validate; the best round by validation score is kept;
4. register the best round's model in the :class:`~botcore.registry.Registry` with its metadata, which promotes
   it to champion only when it beats the champion by the configured margin.

Validation score: the annualised Sharpe ratio, net of costs, of the model acting deterministically on the
whole validation split with the fast engine (``rl_env.run_backtest`` + ``rl_env.metrics.sharpe_ratio``).

Checkpoints (``models/checkpoints/{SYM}_{INTERVAL}_{model_type}_{run_id}/``) hold ``state.json`` (counters,
round history, RNG states, the job spec) and the generation files it names (model, replay buffer), all
written atomically; ``state.json`` is replaced last, so a ``kill -9`` at any moment leaves a consistent
checkpoint. They are taken at safe points only: at the start of a rollout for stable-baselines3 (after the
previous policy update, when the step counter is a multiple of the rollout length), after a whole agent step
for DeepScalper, so a resumed run reaches exactly the step count an uninterrupted run reaches. The env itself
is not checkpointed: a resumed run starts a new training episode, so its trajectory (not its step count)
differs from an uninterrupted run's.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import logging
import math
import platform
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from botcore import paths
from botcore.atomic import atomic_path, atomic_write_json, atomic_write_text
from botcore.errors import DataError, ModelFileError, UserError
from botcore.markets import infer_market, periods_per_year
from botcore.registry import Registry, new_run_id
from botcore.symbols import safe_name, validate_symbol

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
BEST_FILE = "best.zip"


# --- the job ------------------------------------------------------------------------------------------

@dataclass
class JobSpec:
    """Everything one training job needs (picklable, so jobs can run in worker processes).

    :param symbol: a prepared dataset's symbol.
    :param interval: its bar interval.
    :param model_type: ``deepscalper`` or ``backtrader``.
    :param algo: ``deepscalper``, or the stable-baselines3 algorithm ``ppo``, ``a2c`` or ``dqn``.
    :param engine: env the SB3 agent trains on: ``backtrader`` or ``fast`` (DeepScalper always uses fast).
    :param cfg: the resolved config (``botcore.config.load_config``).
    :param steps: env steps per round.
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
        return dataclasses.asdict(self)


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StopFlag:
    """Set by SIGINT/SIGTERM; the training loop polls it at safe points, checkpoints and stops."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGINT and SIGTERM to ``flag`` while the block runs (main thread only; elsewhere a no-op).
    A second SIGINT while stopping raises KeyboardInterrupt as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: Any) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logger.warning("%s received: stopping at the next safe point (a checkpoint is saved)",
                       signal.Signals(signum).name)
        flag.request(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- data -------------------------------------------------------------------------------------------

def data_command(symbol: str, interval: str) -> str:
    return f"python data_pipeline.py --symbols {symbol} --interval {interval}"


def recent_bars(data: Any, lookback_days: int, min_bars: int) -> Any:
    """The bars of the last ``lookback_days`` calendar days of ``data`` (``training_params.lookback_days``:
    train on recent history only), but never fewer than ``min_bars`` bars; 0 keeps everything."""
    if lookback_days <= 0 or data.n_bars <= min_bars:
        return data
    cutoff = data.timestamps[-1] - np.timedelta64(lookback_days, "D")
    start = min(int(np.searchsorted(data.timestamps, cutoff, side="left")), data.n_bars - min_bars)
    if start > 0:
        logger.info("%s %s: training on the last %d days of the train split (%s .. %s, %d of %d bars; "
                    "training_params.lookback_days)", data.symbol, data.interval, lookback_days,
                    str(data.timestamps[start])[:19], str(data.timestamps[-1])[:19], data.n_bars - start, data.n_bars)
    return data.slice(start, data.n_bars) if start > 0 else data


def check_dataset(symbol: str, interval: str) -> None:
    """Raise DataError naming the data_pipeline.py command when a split or the manifest is missing."""
    needed = [paths.split_path(symbol, interval, s) for s in ("train", "val")] + [paths.manifest_path(symbol, interval)]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise DataError(f"no prepared dataset for {symbol} {interval} ({missing[0]} is missing); "
                        f"make it with: {data_command(symbol, interval)}")


def read_manifest(symbol: str, interval: str) -> dict[str, Any]:
    path = paths.manifest_path(symbol, interval)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); recreate it with: {data_command(symbol, interval)}")
    if not isinstance(manifest, dict):
        raise DataError(f"{path} must hold a JSON object; recreate it with: {data_command(symbol, interval)}")
    return manifest


# --- seeding and RNG state -----------------------------------------------------------------------------

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


# --- agents -------------------------------------------------------------------------------------------

class _Hooks:
    """What the agents call while they learn: ``safe_point(steps) -> continue?`` where a checkpoint may be taken
    and a stop request honoured, and ``step(steps, pnl, done, n_done) -> continue?`` after every env step
    (pnl and done of the first env, n_done = episodes that ended in this step over all envs)."""

    def __init__(self, safe_point: Callable[[int], bool], step: Callable[[int, float, bool, int], bool]):
        self.safe_point = safe_point
        self.step = step


class _Agent:
    """What a training job needs of an agent: ``model`` (the trained policy, with ``predict``) and its step count;
    the subclasses add learn, save/load of models and checkpoints, and close."""

    model: Any

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    @property
    def policy(self) -> Any:
        return self.model


class _SB3Agent(_Agent):
    """A stable-baselines3 PPO / A2C / DQN on TradingVecEnv (fast) or BacktraderEnv (in a DummyVecEnv)."""

    def __init__(self, spec: JobSpec, train_data: Any, env_config: Any, total_steps: int, log_dir: Path | None):
        self.spec = spec
        self.train_data, self.env_config = train_data, env_config
        self.log_dir = log_dir
        self.hyperparameters = self._hyperparameters(spec, total_steps)
        self.n_envs = int(self.hyperparameters.pop("n_envs"))
        self.env = self._make_env(spec.seed)
        self.model = self._new_model()
        self._attach_logger()

    def _attach_logger(self) -> None:
        """SB3's own progress.csv (losses, entropy, ...) beside the curves file."""
        if self.log_dir is not None:
            from stable_baselines3.common.logger import configure

            self.model.set_logger(configure(str(self.log_dir), ["csv"]))

    @staticmethod
    def _hyperparameters(spec: JobSpec, total_steps: int) -> dict[str, Any]:
        s = dict(spec.cfg["sb3"])
        hp = dict(spec.hyperparams)
        if "hidden_size" in hp:  # Optuna / grid name for a two-layer net
            hp["net_arch"] = [int(hp["hidden_size"])] * 2
            del hp["hidden_size"]
        s.update({k: v for k, v in hp.items() if k in s})
        extra = {k: v for k, v in hp.items() if k not in s}
        out: dict[str, Any] = {"learning_rate": float(s["learning_rate"]), "gamma": float(s["gamma"]),
                               "net_arch": list(s["net_arch"]), "n_envs": int(s["n_envs"])}
        if spec.algo == "ppo":
            out.update(n_steps=int(s["n_steps"]), batch_size=int(s["batch_size"]))
        elif spec.algo == "a2c":
            out.update(n_steps=int(s["n_steps"]))
        else:  # dqn: SB3's defaults (1M buffer, 10k target interval) do not fit runs of a few thousand steps
            out.update(batch_size=int(s["batch_size"]), buffer_size=int(min(100_000, max(total_steps, 1000))),
                       learning_starts=int(min(1000, total_steps // 10)),
                       target_update_interval=int(max(1, min(1000, total_steps // 20))),
                       exploration_fraction=0.2, train_freq=4)
        out.update(extra)
        return out

    def _make_env(self, seed: int) -> Any:
        if self.spec.engine == "fast":
            from rl_env import TradingVecEnv

            return TradingVecEnv(self.train_data, self.env_config, self.n_envs, seed=seed)
        from stable_baselines3.common.vec_env import DummyVecEnv

        from rl_env import BacktraderEnv

        venv = DummyVecEnv([lambda: BacktraderEnv(self.train_data, self.env_config)] * self.n_envs)
        venv.seed(seed)
        return venv

    def _algo_class(self) -> Any:
        import stable_baselines3 as sb3

        return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[self.spec.algo]

    def _new_model(self) -> Any:
        kwargs = dict(self.hyperparameters)
        net_arch = kwargs.pop("net_arch")
        return self._algo_class()("MlpPolicy", self.env, policy_kwargs={"net_arch": net_arch}, seed=self.spec.seed,
                                  device="cpu", verbose=0, **kwargs)

    def learn(self, n_steps: int, hooks: _Hooks) -> None:
        self.model.learn(n_steps, callback=_sb3_callback_class()(hooks), reset_num_timesteps=False)

    def save_model(self, path: Path) -> None:
        with atomic_path(path) as tmp:  # the temp name ends in .tmp, so SB3 adds no .zip of its own
            self.model.save(tmp)

    def save_checkpoint(self, folder: Path, generation: int) -> list[str]:
        files = [f"model_{generation}.zip"]
        self.save_model(folder / files[0])
        if self.spec.algo == "dqn":
            files.append(f"buffer_{generation}.pkl")
            with atomic_path(folder / files[1]) as tmp:
                self.model.save_replay_buffer(tmp)
        return files

    def rng_state(self) -> dict[str, Any]:
        return {"action_space": self.model.action_space.np_random.bit_generator.state}

    def load_checkpoint(self, folder: Path, files: list[str], extra_rng: dict[str, Any], resumed_at: int) -> None:
        self.env.close()
        self.env = self._make_env(self.spec.seed + 1 + resumed_at)
        try:
            self.model = self._algo_class().load(folder / files[0], env=self.env, device="cpu")
            if len(files) > 1:
                self.model.load_replay_buffer(folder / files[1])
        except Exception as exc:
            raise ModelFileError(f"checkpoint {folder / files[0]} cannot be loaded: {type(exc).__name__}: {exc}; "
                                 "start a new run without --resume") from exc
        # SB3's load reseeds the env with the run's seed; a resumed run must not replay its first episodes
        self.env.seed(self.spec.seed + 1 + resumed_at)
        self._attach_logger()
        self.model._last_obs = None  # the env is new: learn() must reset it instead of reusing a stale obs
        if "action_space" in extra_rng:
            self.model.action_space.np_random.bit_generator.state = extra_rng["action_space"]

    def load_model(self, path: Path) -> None:
        self.model = self._algo_class().load(path, env=self.env, device="cpu")

    def close(self) -> None:
        self.env.close()


@functools.cache
def _sb3_callback_class() -> type:
    """Built on first use, so that importing this module does not import torch and stable-baselines3."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SB3Callback(BaseCallback):
        """Checkpoints and stop requests at rollout starts (safe points); progress on every step."""

        def __init__(self, hooks: _Hooks):
            super().__init__(verbose=0)
            self.hooks = hooks
            self.halt = False

        def _on_rollout_start(self) -> None:
            if not self.hooks.safe_point(self.model.num_timesteps):
                self.halt = True

        def _on_step(self) -> bool:
            if self.halt:
                return False
            infos, dones = self.locals.get("infos") or [{}], self.locals.get("dones")
            done = bool(dones[0]) if dones is not None else False
            n_done = int(np.sum(dones)) if dones is not None else 0
            pnl = infos[0].get("pnl")
            if pnl is None:  # TradingVecEnv keeps its per-env values on the object, not in the infos
                last = getattr(self.training_env, "last_pnl", None)
                pnl = float(last[0]) if last is not None else 0.0
            return self.hooks.step(self.model.num_timesteps, float(pnl), done, n_done)

    return SB3Callback


class _DeepScalperAgent(_Agent):
    """DeepScalper on a TradingEnv in multidiscrete mode with the hindsight bonus and the volatility target."""

    def __init__(self, spec: JobSpec, train_data: Any, env_config: Any, total_steps: int, log_dir: Path | None):
        from deepscalper import DeepScalper, DeepScalperConfig

        from rl_env import TradingEnv

        self.spec = spec
        self.env = TradingEnv(train_data, env_config)
        self.env.reset(seed=spec.seed)
        values = dict(spec.cfg["deepscalper"])
        values.update(spec.hyperparams)
        values["seed"] = spec.seed
        if log_dir is not None:
            values["log_dir"] = str(log_dir)
        self.config = DeepScalperConfig.from_dict(values)
        self.hyperparameters = dataclasses.asdict(self.config)
        self.model = DeepScalper(self.env, self.config, seed=spec.seed)
        self._cls = DeepScalper

    def learn(self, n_steps: int, hooks: _Hooks) -> None:
        def callback(local: dict[str, Any]) -> bool:
            done = bool(local.get("terminated") or local.get("truncated"))
            steps = self.model.num_timesteps
            if not hooks.step(steps, float((local.get("info") or {}).get("pnl", 0.0)), done, int(done)):
                return False
            # between episodes the checkpoint holds the env's RNG too: the resumed run continues exactly
            return hooks.safe_point(steps) if self.model.at_episode_boundary else True

        self.model.learn(n_steps, callback=callback, reset_num_timesteps=False)

    def save_model(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.model.save(tmp, include_buffer=False)

    def save_checkpoint(self, folder: Path, generation: int) -> list[str]:
        name = f"model_{generation}.zip"
        with atomic_path(folder / name) as tmp:
            self.model.save(tmp, include_buffer=True)
        return [name]

    def rng_state(self) -> dict[str, Any]:
        return {}

    def load_checkpoint(self, folder: Path, files: list[str], extra_rng: dict[str, Any], resumed_at: int) -> None:
        self.model = self._cls.load(folder / files[0], env=self.env)

    def load_model(self, path: Path) -> None:
        self.model = self._cls.load(path, env=self.env)

    def close(self) -> None:
        self.env.close()


# --- validation ----------------------------------------------------------------------------------------

def validate_policy(policy: Any, val_data: Any, eval_config: Any, ppy: float) -> tuple[float, Any]:
    """(annualised Sharpe net of costs, BacktestResult) of ``policy`` on the val split with the fast engine."""
    from rl_env.backtest import run_backtest
    from rl_env.metrics import sharpe_ratio

    result = run_backtest(policy, val_data, eval_config, engine="fast", deterministic=True)
    return float(sharpe_ratio(result.returns, ppy)), result


def _best_round(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round with the highest finite validation score (the earliest on ties); None when none is finite."""
    best = None
    for r in rounds:
        score = r.get("val_sharpe")
        if score is not None and math.isfinite(score) and (best is None or score > best["val_sharpe"]):
            best = r
    return best


# --- checkpoints ----------------------------------------------------------------------------------------

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


class _Curves:
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


# --- the job runner ---------------------------------------------------------------------------------------

class _Job:
    def __init__(self, spec: JobSpec, stop: StopFlag, on_validation: Callable[[int, float], None] | None):
        self.spec = spec
        self.stop = stop
        self.on_validation = on_validation
        self.started = time.monotonic()
        self.prior_seconds = 0.0

    # --- set-up ---

    def prepare(self) -> None:
        from rl_env.config import EnvConfig
        from rl_env.data import MarketData

        spec = self.spec
        check_dataset(spec.symbol, spec.interval)
        self.manifest = read_manifest(spec.symbol, spec.interval)
        self.train_data = MarketData.from_split(spec.symbol, spec.interval, "train")
        self.val_data = MarketData.from_split(spec.symbol, spec.interval, "val")
        self.market = self.manifest.get("market") or infer_market(spec.symbol)
        self.ppy = periods_per_year(spec.interval, self.market)
        cfg = spec.cfg
        if spec.algo == "deepscalper":  # trial values of hindsight/vol settings shape the training env
            ds = dict(cfg["deepscalper"])
            ds.update({k: v for k, v in spec.hyperparams.items() if k in ds})
            cfg = dict(cfg, deepscalper=ds)
        self.train_config = EnvConfig.from_config(cfg, spec.action_mode, training=True,
                                                  hindsight=spec.algo == "deepscalper")
        self.eval_config = EnvConfig.from_config(cfg, spec.action_mode, training=False)
        min_bars = self.train_config.window + 2
        self.train_data = recent_bars(self.train_data, int(cfg["training_params"]["lookback_days"]), min_bars)
        for name, data in (("train", self.train_data), ("val", self.val_data)):
            if data.n_bars < min_bars:
                raise DataError(f"the {name} split of {spec.symbol} {spec.interval} has {data.n_bars} bars; "
                                f"the env needs at least {min_bars} (window {self.train_config.window}); "
                                "prepare a longer history or lower env.window")

    def _find_or_start(self) -> dict[str, Any] | None:
        """Set ``run_id`` and ``folder``; return the checkpoint state when resuming."""
        spec = self.spec
        if spec.resume:
            folder = find_unfinished(spec.symbol, spec.interval, spec.model_type, spec.algo)
            if folder is not None:
                state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
                self.run_id, self.folder = state["run_id"], folder
                logger.info("%s: resuming %s at step %d", spec.label, folder.name, state["num_timesteps"])
                return state
            logger.warning("%s: no unfinished run to resume; starting a new one", spec.label)
        self.run_id = new_run_id()
        name = run_name(spec.symbol, spec.interval, spec.model_type, self.run_id)
        if spec.checkpoints:
            self.folder = checkpoints_root() / name
        else:  # Optuna trials: nothing to resume, only the best round's model to keep until the end
            self.folder = Path(tempfile.mkdtemp(prefix=f"trial_{name}_"))
        return None

    # --- the run ---

    def run(self) -> JobResult:
        spec = self.spec
        self.prepare()
        state = self._find_or_start()
        try:
            return self._run(state)
        finally:
            if not spec.checkpoints:
                shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, state: dict[str, Any] | None) -> JobResult:
        spec = self.spec
        resumed = state is not None
        if resumed:  # the job's shape comes from the checkpoint; flags may only add iterations
            saved = state["spec"]
            for key in ("steps", "episodes", "seed", "engine", "hyperparams", "checkpoint_every", "eval_every"):
                setattr(spec, key, saved[key])
            spec.iterations = max(spec.iterations, int(saved["iterations"]))
            spec.cfg = state["cfg"]
            state["spec"]["iterations"] = spec.iterations
        total = spec.steps * spec.iterations
        seed_everything(spec.seed)
        curves_dir = paths.results_dir() / "training_curves" / self.folder.name if spec.register else None
        agent_cls = _DeepScalperAgent if spec.algo == "deepscalper" else _SB3Agent
        self.agent = agent_cls(spec, self.train_data, self.train_config, total, curves_dir)
        try:
            self.state = state or {
                "status": "running", "run_id": self.run_id, "spec": self._spec_for_state(), "cfg": spec.cfg,
                "num_timesteps": 0, "round": 1, "round_start": 0, "round_episodes": 0, "episodes": 0,
                "rounds": [], "files": [], "train_seconds": 0.0, "manifest_hash": self.manifest.get("manifest_hash"),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            if resumed:
                if state.get("manifest_hash") != self.manifest.get("manifest_hash"):
                    logger.warning("%s: the dataset changed since this run started (manifest hash %s, now %s); "
                                   "the run continues on the new data", spec.label, state.get("manifest_hash"),
                                   self.manifest.get("manifest_hash"))
                self.agent.load_checkpoint(self.folder, state["files"], state.get("agent_rng", {}),
                                           state["num_timesteps"])
                restore_rng(state["rng"])
            self.prior_seconds = float(self.state["train_seconds"])
            self.started = time.monotonic()
            self.last_checkpoint = self.state["num_timesteps"]
            self.next_eval = self._next_multiple(self.state["num_timesteps"], spec.eval_every)
            self.curves = _Curves(curves_dir / "curves.csv", self.state["num_timesteps"] if resumed else None) \
                if curves_dir else None
            self.episode_pnl, self.latest_val, self.round_done = 0.0, math.nan, False
            self.bar = self._progress(total)
            try:
                stopped = self._train_rounds()
            finally:
                self.bar.close()
                if self.curves:
                    self.curves.close()
            result = JobResult(spec.symbol, spec.interval, spec.model_type, spec.algo,
                               "stopped" if stopped else "finished", run_id=self.run_id,
                               steps=self.agent.num_timesteps, rounds=list(self.state["rounds"]), resumed=resumed,
                               seconds=self._train_seconds())
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
        hooks = _Hooks(self._safe_point, self._step)
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
            score = self._validate()
            st["rounds"].append({"iteration": st["round"], "steps": self.agent.num_timesteps,
                                 "episodes": st["round_episodes"], "val_sharpe": score})
            best = _best_round(st["rounds"])
            if spec.iterations > 1 and best is not None and best["iteration"] == st["round"]:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.agent.save_model(self.folder / BEST_FILE)
            logger.info("%s: iteration %d/%d done at step %d, validation Sharpe %.3f", spec.label, st["round"],
                        spec.iterations, self.agent.num_timesteps, score)
            st.update(round=st["round"] + 1, round_start=self.agent.num_timesteps, round_episodes=0)
            self.checkpoint()
        return False

    def _finish(self, result: JobResult) -> JobResult:
        spec, st = self.spec, self.state
        best = _best_round(st["rounds"]) or st["rounds"][-1]
        result.best_iteration = best["iteration"]
        if best["iteration"] != st["rounds"][-1]["iteration"]:
            self.agent.load_model(self.folder / BEST_FILE)
        score, backtest = validate_policy(self.agent.policy, self.val_data, self.eval_config, self.ppy)
        if not (math.isnan(score) and math.isnan(best["val_sharpe"])) and not math.isclose(
                score, best["val_sharpe"], rel_tol=1e-9, abs_tol=1e-12):
            raise RuntimeError(f"the kept model scores {score} on validation but its round scored "
                               f"{best['val_sharpe']}: the validation backtest is not deterministic")
        result.val_sharpe = score
        if not spec.register:
            return result
        from rl_env.metrics import compute_metrics

        metrics = compute_metrics(backtest, self.ppy, n_trials=spec.hpo_trials, trial_sharpes=spec.trial_sharpes,
                                  bootstrap_samples=int(spec.cfg["evaluation"]["bootstrap_samples"]),
                                  seed=int(spec.cfg["evaluation"]["random_seed"]))
        self.folder.mkdir(parents=True, exist_ok=True)
        model_file = self.folder / "final.zip"
        self.agent.save_model(model_file)
        registry = Registry.from_config(spec.cfg)
        record, decision = registry.register(model_file, self._metadata(result, metrics, backtest),
                                             run_id=self.run_id)
        result.promoted, result.promotion_reason = decision.promoted, decision.reason
        result.model_path = str(record.model_path)
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
        return True

    def _safe_point(self, num_timesteps: int) -> bool:
        due = self.spec.checkpoint_every and num_timesteps - self.last_checkpoint >= self.spec.checkpoint_every
        if (due or self.stop.requested) and num_timesteps != self.last_checkpoint:
            self.checkpoint()
        if self.stop.requested:
            self.halted = True
            return False
        return True

    def _validate(self) -> float:
        score, _ = validate_policy(self.agent.policy, self.val_data, self.eval_config, self.ppy)
        steps = self.agent.num_timesteps
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
        return d

    def _metadata(self, result: JobResult, metrics: dict[str, Any], backtest: Any) -> dict[str, Any]:
        spec, m = self.spec, self.manifest
        return {
            "model_type": spec.model_type, "algo": spec.algo, "symbol": spec.symbol, "interval": spec.interval,
            "engine": spec.engine, "action_mode": spec.action_mode, "market": self.market,
            "periods_per_year": self.ppy,
            "dataset": {"manifest_hash": m.get("manifest_hash"), "ranges": m.get("ranges"), "source": m.get("source"),
                        "hashes": m.get("hashes"),
                        "feature_columns": m.get("feature_columns", list(self.train_data.feature_names)),
                        "train_used": {"start": str(self.train_data.timestamps[0]),
                                       "end": str(self.train_data.timestamps[-1]), "rows": self.train_data.n_bars,
                                       "lookback_days": spec.cfg["training_params"]["lookback_days"]}},
            "config": spec.cfg, "hyperparameters": self.agent.hyperparameters, "seed": spec.seed,
            "library_versions": library_versions(),
            "training": {"seconds": round(result.seconds, 3), "steps": result.steps,
                         "episodes": self.state["episodes"], "iterations": spec.iterations,
                         "steps_per_iteration": spec.steps, "episodes_per_iteration": spec.episodes,
                         "best_iteration": result.best_iteration, "rounds": result.rounds,
                         "resumed": result.resumed, "checkpoint_every": spec.checkpoint_every,
                         "curves": str(paths.results_dir() / "training_curves" / self.folder.name)},
            "validation": dict(metrics, split="val", engine="fast"),
            "hpo_trials": int(spec.hpo_trials), "trial_sharpes": list(spec.trial_sharpes),
            "env_config": self.eval_config.to_dict(), "train_env_config": self.train_config.to_dict(),
            **spec.extra_metadata,
        }


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
    return _Job(spec, stop or StopFlag(), on_validation).run()


# --- parallel jobs --------------------------------------------------------------------------------------

def init_worker_process(log_file: str | None, quiet: bool) -> None:
    """Worker-process set-up: one torch thread, the session's log file, warnings only on the console."""
    import torch

    torch.set_num_threads(1)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s [pid %(process)d] %(name)s: %(message)s"))
        root.addHandler(handler)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    for noisy in ("matplotlib", "PIL", "optuna", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def guarded_job(spec: JobSpec, stop: StopFlag | None = None) -> JobResult:
    """``run_job`` that turns a failure into a ``failed`` result (one job's failure does not end the others)."""
    try:
        return run_job(spec, stop)
    except UserError as exc:
        logger.error("%s: %s", spec.label, exc)
        return _failed(spec, str(exc))
    except Exception as exc:  # noqa: BLE001 - the traceback goes to the log, the session goes on
        logger.exception("%s: training failed", spec.label)
        return _failed(spec, f"unexpected {type(exc).__name__}: {exc} (traceback in logs/)")


def _failed(spec: JobSpec, error: str) -> JobResult:
    return JobResult(spec.symbol, spec.interval, spec.model_type, spec.algo, "failed", error=error)


def _worker_job(spec: JobSpec) -> JobResult:
    stop = StopFlag()
    with stop_on_signals(stop):
        return guarded_job(spec, stop)


def wait_for_workers(futures: Any, stop: StopFlag) -> None:
    """Wait for a process pool's futures; on the first stop request, cancel what has not started and pass
    SIGTERM on to the worker processes (each stops at its next safe point with a checkpoint)."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import os

    forwarded = False
    pending = set(futures)
    while pending:
        _, pending = cf.wait(pending, timeout=0.5)
        if stop.requested and not forwarded:
            forwarded = True
            for fut in pending:
                fut.cancel()
            for child in mp.active_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)


def run_jobs(specs: list[JobSpec], processes: int, stop: StopFlag, log_file: str | None = None,
             quiet: bool = False) -> list[JobResult]:
    """Run jobs, in this process (``processes <= 1``) or in that many spawned worker processes.

    A stop request (SIGINT/SIGTERM) is forwarded to the workers, which checkpoint and stop; jobs not yet
    started are reported as ``skipped``.
    """
    if processes <= 1 or len(specs) <= 1:
        results = []
        for spec in specs:
            if stop.requested:
                results.append(JobResult(spec.symbol, spec.interval, spec.model_type, spec.algo, "skipped"))
                continue
            results.append(guarded_job(spec, stop))
        return results
    import concurrent.futures as cf
    import multiprocessing as mp

    for position, spec in enumerate(specs):
        spec.position = position
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=min(processes, len(specs)), mp_context=ctx,
                                initializer=init_worker_process, initargs=(log_file, quiet)) as pool:
        futures = {pool.submit(_worker_job, spec): spec for spec in specs}
        wait_for_workers(futures, stop)
        results = []
        for fut, spec in futures.items():
            if fut.cancelled():
                results.append(JobResult(spec.symbol, spec.interval, spec.model_type, spec.algo, "skipped"))
            elif fut.exception() is not None:
                exc = fut.exception()
                results.append(_failed(spec, f"worker process failed: {type(exc).__name__}: {exc}"))
            else:
                results.append(fut.result())
        return results


__all__ = ["JobSpec", "JobResult", "StopFlag", "stop_on_signals", "run_job", "run_jobs", "wait_for_workers",
           "guarded_job",
           "validate_policy", "find_unfinished", "check_dataset", "data_command", "seed_everything",
           "library_versions"]
