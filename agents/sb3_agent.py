"""stable-baselines3 PPO / A2C / DQN as a toolkit agent, on TradingVecEnv (fast) or BacktraderEnv.

Model files. A model or checkpoint is ONE zip written here, never SB3's own ``save``: SB3's zip stores its
hyperparameters and spaces as serialised Python objects, and loading them runs whatever code a crafted file
holds. Ours holds only data:

- ``model.json``: ``format``, ``format_version``, ``kind`` (``model`` or ``checkpoint``), ``algo``, the
  constructor's ``hyperparameters`` (numbers and ``net_arch``), ``n_envs``, the ``observation_space`` and
  ``action_space`` (type, shape, dtype, bounds or ``n``), the training ``counters`` and library ``versions``;
- ``policy.pt``: the policy's state dict (for DQN it holds the target network too);
- ``optimizer.pt`` (checkpoints only): the optimizer's state dict.

Loading rebuilds the algorithm from the JSON (same spaces, hyperparameters and ``net_arch``), then puts the
state dicts in place; the tensors are read with ``torch.load(..., weights_only=True)``. A DQN checkpoint's
replay buffer is a separate ``.npz`` of plain arrays, read with ``allow_pickle=False``. A file in SB3's own
format (format version 1, from before) is refused with a :class:`~botcore.errors.ModelFileError` that says to
retrain.
"""
from __future__ import annotations

import functools
import inspect
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Agent, AgentSpec, TrainingHooks
from botcore.atomic import atomic_path
from botcore.errors import ModelFileError

SB3_ALGOS = ("ppo", "a2c", "dqn")

FORMAT_NAME = "toolkit-sb3"
FORMAT_VERSION = 2  # 1: SB3's own zip, whose serialised objects run code when loaded; refused
MODEL_JSON = "model.json"
POLICY_FILE = "policy.pt"
OPTIMIZER_FILE = "optimizer.pt"
MODEL_MEMBERS = frozenset({MODEL_JSON, POLICY_FILE})
CHECKPOINT_MEMBERS = MODEL_MEMBERS | {OPTIMIZER_FILE}
REPLAY_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
_MAX_JSON_BYTES = 1 << 20
_BOX_DTYPES = ("float32", "float64", "int8", "int16", "int32", "int64", "uint8")
# constructor arguments a model file may not set: the toolkit chooses these, or they would name code or paths
_NOT_FROM_FILE = frozenset({"self", "policy", "env", "policy_kwargs", "tensorboard_log", "verbose", "seed", "device",
                            "_init_setup_model", "replay_buffer_class", "replay_buffer_kwargs",
                            "rollout_buffer_class", "rollout_buffer_kwargs", "action_noise"})


def algo_class(algo: str) -> Any:
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[algo]


def sb3_hyperparameters(spec: AgentSpec) -> dict[str, Any]:
    """The keyword arguments of the SB3 algorithm: the config's ``sb3`` section with the trial's overrides."""
    s = dict(spec.cfg["sb3"])
    hp = dict(spec.hyperparams)
    if "hidden_size" in hp:  # Optuna / grid name for a two-layer net
        hp["net_arch"] = [int(hp["hidden_size"])] * 2
        del hp["hidden_size"]
    s.update({k: v for k, v in hp.items() if k in s})
    extra = {k: v for k, v in hp.items() if k not in s}
    total_steps = spec.total_steps
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


class SB3Agent(Agent):
    """A stable-baselines3 PPO / A2C / DQN on TradingVecEnv (fast) or BacktraderEnv (in a DummyVecEnv)."""

    def __init__(self, spec: AgentSpec, train_data: Any, env_config: Any):
        self.spec = spec
        self.train_data, self.env_config = train_data, env_config
        self.hyperparameters = sb3_hyperparameters(spec)
        self.n_envs = int(self.hyperparameters.pop("n_envs"))
        self.env = self._make_env(spec.seed)
        self.model = self._new_model()
        self._progress_log = (_progress_logger(spec.log_dir, spec.tensorboard_dir) if spec.log_dir is not None
                              else None)
        self._attach_logger()

    def _attach_logger(self) -> None:
        if self._progress_log is not None:
            self.model.set_logger(self._progress_log)

    def _make_env(self, seed: int) -> Any:
        if self.spec.engine == "fast":
            from rl_env.vec_env import TradingVecEnv

            return TradingVecEnv(self.train_data, self.env_config, self.n_envs, seed=seed)
        from stable_baselines3.common.vec_env import DummyVecEnv

        from rl_env.backtrader_env import BacktraderEnv

        venv = DummyVecEnv([lambda: BacktraderEnv(self.train_data, self.env_config)] * self.n_envs)
        venv.seed(seed)
        return venv

    def _new_model(self) -> Any:
        kwargs = dict(self.hyperparameters)
        net_arch = kwargs.pop("net_arch")
        return algo_class(self.spec.algo)("MlpPolicy", self.env, policy_kwargs={"net_arch": net_arch},
                                          seed=self.spec.seed, device=self.spec.device, verbose=0, **kwargs)

    def learn(self, n_steps: int, hooks: TrainingHooks) -> None:
        self.model.learn(n_steps, callback=_callback_class()(hooks), reset_num_timesteps=False)

    def save_model(self, path: Path) -> None:
        save_sb3(self.model, self.spec.algo, self.hyperparameters, path)

    def save_checkpoint(self, folder: Path, generation: int) -> list[str]:
        files = [f"model_{generation}.zip"]
        save_sb3(self.model, self.spec.algo, self.hyperparameters, folder / files[0], checkpoint=True)
        if self.spec.algo == "dqn":
            files.append(f"buffer_{generation}.npz")
            save_replay_npz(self.model.replay_buffer, folder / files[1])
        return files

    def rng_state(self) -> dict[str, Any]:
        return {"action_space": self.model.action_space.np_random.bit_generator.state}

    def load_checkpoint(self, folder: Path, files: list[str], extra_rng: dict[str, Any], resumed_at: int) -> None:
        self.env.close()
        # a new env with its own seed: a resumed run must not replay its first episodes
        self.env = self._make_env(self.spec.seed + 1 + resumed_at)
        try:
            expected = 2 if self.spec.algo == "dqn" else 1
            if len(files) != expected or any(Path(name).name != name for name in files):
                raise ModelFileError(f"its state.json names the files {files}, expected {expected} file name(s) "
                                     f"for a {self.spec.algo.upper()} checkpoint")
            self.model = load_sb3(self.spec.algo, folder / files[0], env=self.env, checkpoint=True,
                                  device=self.spec.device)
            if self.spec.algo == "dqn":
                load_replay_npz(self.model.replay_buffer, folder / files[1])
        except ModelFileError as exc:
            raise ModelFileError(f"checkpoint in {folder} cannot be resumed: {exc}; start a new run without "
                                 "--resume") from exc
        self._attach_logger()
        if "action_space" in extra_rng:
            self.model.action_space.np_random.bit_generator.state = extra_rng["action_space"]

    def load_model(self, path: Path) -> None:
        self.model = load_sb3(self.spec.algo, path, env=self.env, device=self.spec.device)

    def close(self) -> None:
        self.env.close()
        if self._progress_log is not None:
            self._progress_log.close()


# --- model files ------------------------------------------------------------------------------------------

def save_sb3(model: Any, algo: str, hyperparameters: dict[str, Any], path: Path, checkpoint: bool = False) -> None:
    """Write ``model`` to ``path`` atomically as one zip: ``model.json`` + ``policy.pt`` (+ ``optimizer.pt``
    when ``checkpoint``). See the module docstring.

    :param hyperparameters: the keyword arguments the algorithm was built with (``net_arch`` for the policy's
        layers); loading builds it again from them, so they must be the ones actually used.
    """
    import stable_baselines3
    import torch

    _checked_hyperparameters(algo, hyperparameters)  # never write a file that cannot be read back
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": "checkpoint" if checkpoint else "model",
        "algo": algo, "hyperparameters": hyperparameters, "n_envs": int(model.n_envs),
        "observation_space": _space_to_json(model.observation_space),
        "action_space": _space_to_json(model.action_space), "counters": _counters(model, algo),
        "versions": {"stable-baselines3": stable_baselines3.__version__, "torch": torch.__version__},
    }
    states = {POLICY_FILE: model.policy.state_dict()}
    if checkpoint:
        states[OPTIMIZER_FILE] = model.policy.optimizer.state_dict()
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(MODEL_JSON, json.dumps(meta, indent=1))
        for name, state in states.items():
            buf = io.BytesIO()
            torch.save(state, buf)
            zf.writestr(name, buf.getvalue())


def load_sb3(algo: str, path: Path, env: Any = None, checkpoint: bool = False, device: str = "cpu") -> Any:
    """A model (or, with ``checkpoint``, a checkpoint to train on) from a file written by :func:`save_sb3`.

    No checksum here: the caller verifies (:func:`agents.load_registered`).

    :param env: the env to attach (its spaces must be the model's); None for a model that only predicts.
    :param device: torch device of the rebuilt model (the file's tensors are read onto the CPU first, so a
        model trained on a GPU loads on a machine without one).
    :raises ModelFileError: naming the file, when it is missing, not ours (SB3's own format included),
        corrupt, or does not fit the algorithm or the env.
    """
    path = Path(path)
    meta, states = _read_model_file(algo, path, checkpoint)
    try:
        model = _rebuild(algo, meta, env, path, device)
        model.policy.load_state_dict(states[POLICY_FILE])
        if checkpoint:
            model.policy.optimizer.load_state_dict(states[OPTIMIZER_FILE])
        _restore_counters(model, algo, meta["counters"])
    except ModelFileError:
        raise
    except Exception as exc:  # shape, key and value errors all mean the file does not fit
        raise ModelFileError(f"model file {path} cannot be loaded as a {algo.upper()} model: "
                             f"{type(exc).__name__}: {exc}") from exc
    return model


def _read_model_file(algo: str, path: Path, checkpoint: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``model.json``, {member: state dict}) of a model file, checked: a zip of exactly the expected members,
    our format and version, the expected algorithm and kind; tensors read with ``weights_only=True``."""
    import torch

    if not path.is_file():
        raise ModelFileError(f"model file {path} is missing")
    kind = "checkpoint" if checkpoint else "model"
    expected = CHECKPOINT_MEMBERS if checkpoint else MODEL_MEMBERS
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if MODEL_JSON not in names:
                if "data" in names:
                    raise ModelFileError(
                        f"model file {path} is in stable-baselines3's own format (format version 1), which this "
                        "toolkit no longer loads because loading it can run code hidden in the file; retrain the "
                        "model with train_bot.py")
                raise ModelFileError(f"model file {path} is not a {algo.upper()} model of this toolkit "
                                     f"(no {MODEL_JSON})")
            if sorted(names) != sorted(expected):
                raise ModelFileError(f"model file {path} holds {sorted(names)}; a {algo.upper()} {kind} file holds "
                                     f"exactly {sorted(expected)}")
            if zf.getinfo(MODEL_JSON).file_size > _MAX_JSON_BYTES:
                raise ModelFileError(f"model file {path}: {MODEL_JSON} is larger than {_MAX_JSON_BYTES} bytes")
            meta = json.loads(zf.read(MODEL_JSON).decode("utf-8"))
            _check_meta(meta, algo, kind, path)
            states = {name: torch.load(io.BytesIO(zf.read(name)), map_location="cpu", weights_only=True)
                      for name in sorted(expected - {MODEL_JSON})}
    except ModelFileError:
        raise
    except Exception as exc:  # zip, CRC, JSON and refused-tensor errors all mean the same here
        raise ModelFileError(f"model file {path} cannot be loaded as a {algo.upper()} model: "
                             f"{type(exc).__name__}: {exc}") from exc
    return meta, states


def _check_meta(meta: Any, algo: str, kind: str, path: Path) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"model file {path}: {MODEL_JSON} is not of format {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"model file {path}: format version {meta.get('format_version')!r} is not supported "
                             f"(this code reads version {FORMAT_VERSION}); retrain the model with train_bot.py")
    if meta.get("algo") != algo:
        raise ModelFileError(f"model file {path} holds a {meta.get('algo')!r} model, not {algo}")
    if meta.get("kind") != kind:
        raise ModelFileError(f"model file {path} is a {meta.get('kind')!r} file, not a {kind} file")
    for key in ("hyperparameters", "observation_space", "action_space", "counters"):
        if not isinstance(meta.get(key), dict):
            raise ModelFileError(f"model file {path}: {MODEL_JSON} lacks the object {key!r}")


def _checked_hyperparameters(algo: str, hyperparameters: Any) -> dict[str, Any]:
    """The algorithm's keyword arguments from a model file, checked: only arguments of its constructor that
    hold numbers (or None), and ``net_arch``, a list of layer sizes. Nothing that names code or a path."""
    if not isinstance(hyperparameters, dict):
        raise ValueError("hyperparameters must be an object")
    allowed = set(inspect.signature(algo_class(algo).__init__).parameters) - _NOT_FROM_FILE
    out: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        if key == "net_arch":
            if not (isinstance(value, list) and value and all(_is_int(v) and 0 < v <= 1 << 16 for v in value)):
                raise ValueError(f"net_arch must be a list of layer sizes, got {value!r}")
        elif key not in allowed:
            raise ValueError(f"{key!r} is not a hyperparameter a {algo.upper()} model file may set")
        elif not (value is None or isinstance(value, (bool, int, float))):
            raise ValueError(f"hyperparameter {key!r} must be a number, got {value!r}")
        out[key] = value
    if "net_arch" not in out:
        raise ValueError("hyperparameters lack net_arch")
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rebuild(algo: str, meta: dict[str, Any], env: Any, path: Path, device: str = "cpu") -> Any:
    """A new, untrained algorithm object of the file's hyperparameters and spaces (with ``env`` when given)."""
    kwargs = _checked_hyperparameters(algo, meta["hyperparameters"])
    net_arch = kwargs.pop("net_arch")
    observation_space = _space_from_json(meta["observation_space"])
    action_space = _space_from_json(meta["action_space"])
    n_envs = meta.get("n_envs")
    if not (_is_int(n_envs) and 1 <= n_envs <= 4096):
        raise ValueError(f"n_envs must be a whole number from 1 to 4096, got {n_envs!r}")
    common = {"policy_kwargs": {"net_arch": net_arch}, "device": device, "verbose": 0, **kwargs}
    cls = algo_class(algo)
    if env is not None:
        if env.observation_space != observation_space or env.action_space != action_space:
            raise ModelFileError(f"model file {path} was trained on observation space {observation_space} and "
                                 f"action space {action_space}; this env has {env.observation_space} and "
                                 f"{env.action_space}")
        return cls("MlpPolicy", env, **common)
    # no env (a model that only predicts): built as SB3's own load builds it, spaces first, then the networks
    model = cls("MlpPolicy", None, _init_setup_model=False, **common)
    model.observation_space, model.action_space, model.n_envs = observation_space, action_space, n_envs
    model._setup_model()
    return model


def _counters(model: Any, algo: str) -> dict[str, Any]:
    """What an exact resume needs beyond the state dicts: the step and update counters, the schedules'
    progress, and DQN's target-update clock and exploration rate (used before the first step recomputes it)."""
    out = {"num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
           "episode_num": int(model._episode_num),
           "progress_remaining": float(model._current_progress_remaining)}
    if algo == "dqn":
        out.update(n_calls=int(model._n_calls), exploration_rate=float(model.exploration_rate))
    return out


def _restore_counters(model: Any, algo: str, counters: dict[str, Any]) -> None:
    def whole(key: str) -> int:
        value = counters.get(key)
        if not (_is_int(value) and value >= 0):
            raise ValueError(f"counter {key!r} must be a whole number >= 0, got {value!r}")
        return int(value)

    def fraction(key: str) -> float:
        value = counters.get(key)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise ValueError(f"counter {key!r} must be a finite number, got {value!r}")
        return float(value)

    model.num_timesteps = whole("num_timesteps")
    model._n_updates = whole("n_updates")
    model._episode_num = whole("episode_num")
    model._current_progress_remaining = fraction("progress_remaining")
    if algo == "dqn":
        model._n_calls = whole("n_calls")
        model.exploration_rate = fraction("exploration_rate")


def _space_to_json(space: Any) -> dict[str, Any]:
    """A Box or Discrete space as JSON (a Box's bounds as one number when uniform, else the flat list)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        def bound(values: np.ndarray) -> Any:
            flat = values.astype(np.float64).ravel()
            return float(flat[0]) if flat.size and bool((flat == flat[0]).all()) else flat.tolist()

        return {"type": "Box", "shape": [int(n) for n in space.shape], "dtype": space.dtype.name,
                "low": bound(space.low), "high": bound(space.high)}
    raise ValueError(f"space {space} cannot be saved: only Box and Discrete spaces are supported")


def _space_from_json(data: Any) -> Any:
    """The space :func:`_space_to_json` wrote, checked (whole sizes, a numeric dtype, bounds of the shape)."""
    from gymnasium import spaces

    if not isinstance(data, dict):
        raise ValueError(f"a space must be an object, got {data!r}")
    if data.get("type") == "Discrete":
        n, start = data.get("n"), data.get("start", 0)
        if not (_is_int(n) and n >= 1 and _is_int(start)):
            raise ValueError(f"a Discrete space needs whole n >= 1 and start, got {data!r}")
        return spaces.Discrete(n, start=start)
    if data.get("type") == "Box":
        shape, dtype = data.get("shape"), data.get("dtype")
        if not (isinstance(shape, list) and shape and all(_is_int(d) and d >= 1 for d in shape)
                and math.prod(shape) <= 1 << 24):
            raise ValueError(f"a Box space needs a shape of whole sizes, got {shape!r}")
        if dtype not in _BOX_DTYPES:
            raise ValueError(f"a Box space's dtype must be one of {', '.join(_BOX_DTYPES)}, got {dtype!r}")
        low, high = (_bound_array(data.get(k), shape, np.dtype(dtype)) for k in ("low", "high"))
        return spaces.Box(low, high, tuple(shape), np.dtype(dtype))
    raise ValueError(f"unsupported space type {data.get('type')!r} (Box and Discrete are)")


def _bound_array(value: Any, shape: list[int], dtype: np.dtype) -> np.ndarray:
    numbers = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        raise ValueError("a Box space's bounds must be numbers")
    array = np.asarray(numbers, dtype=np.float64)
    if dtype.kind != "f" and not np.isfinite(array).all():
        raise ValueError(f"a {dtype} Box space's bounds must be finite")
    if isinstance(value, list):
        if array.size != math.prod(shape):
            raise ValueError(f"a Box space's bounds hold {array.size} values for shape {shape}")
        return array.reshape(shape).astype(dtype)
    return np.full(shape, array[0], dtype=dtype)


# --- the DQN replay buffer ------------------------------------------------------------------------------

def save_replay_npz(buffer: Any, path: Path) -> None:
    """The filled part of SB3's replay buffer, with its write position, as an ``.npz`` of plain arrays."""
    n = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {name: getattr(buffer, name)[:n] for name in REPLAY_ARRAYS}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez adds no .npz to the name
        np.savez(fh, pos=np.int64(buffer.pos), full=np.bool_(buffer.full), **arrays)


def load_replay_npz(buffer: Any, path: Path) -> None:
    """Fill SB3's (new, empty) replay buffer from :func:`save_replay_npz`'s file; shapes and dtypes must be
    the buffer's. Read with ``allow_pickle=False``: object arrays are refused."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ModelFileError(f"replay buffer {path} is not an .npz archive")
        with loaded as npz:
            if sorted(npz.files) != sorted(["pos", "full", *REPLAY_ARRAYS]):
                raise ModelFileError(f"replay buffer {path} holds {sorted(npz.files)}, expected pos, full and "
                                     f"{', '.join(REPLAY_ARRAYS)}")
            pos, full = npz["pos"], npz["full"]
            if pos.shape != () or full.shape != () or pos.dtype.kind != "i" or full.dtype != np.bool_ \
                    or not 0 <= int(pos) < buffer.buffer_size:
                raise ModelFileError(f"replay buffer {path}: pos {pos!r} / full {full!r} do not fit a buffer of "
                                     f"{buffer.buffer_size}")
            n = buffer.buffer_size if bool(full) else int(pos)
            for name in REPLAY_ARRAYS:
                array, target = npz[name], getattr(buffer, name)
                if array.shape != (n, *target.shape[1:]) or array.dtype != target.dtype:
                    raise ModelFileError(f"replay buffer {path}: {name} is {array.dtype}{list(array.shape)}, "
                                         f"expected {target.dtype}{[n, *target.shape[1:]]}")
                target[:n] = array
            buffer.pos, buffer.full = int(pos), bool(full)
    except ModelFileError:
        raise
    except Exception as exc:  # not a zip, truncated, object arrays refused, ...
        raise ModelFileError(f"replay buffer {path} cannot be loaded: {type(exc).__name__}: {exc}") from exc


# --- SB3 plumbing, built on first use so that importing this module does not import torch and SB3 ---------

def _progress_logger(folder: Path, tensorboard_dir: Path | None = None) -> Any:
    """SB3's logger writing ``progress.csv`` (losses, entropy, ...) beside the curves file and, with
    ``tensorboard_dir``, the same values as TensorBoard events through SB3's own writer (what its
    ``tensorboard_log`` sets up; a logger given to ``set_logger`` replaces that one, so it is added here).
    The CSV appends: a resumed run keeps its earlier rows (SB3's ``configure`` would truncate the file, even on
    a failed resume)."""
    from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat

    folder.mkdir(parents=True, exist_ok=True)
    formats: list[Any] = [_appending_csv_class()(folder / "progress.csv")]
    if tensorboard_dir is not None:
        tensorboard_dir.mkdir(parents=True, exist_ok=True)
        formats.append(TensorBoardOutputFormat(str(tensorboard_dir)))
    return Logger(str(folder), formats)


@functools.cache
def _appending_csv_class() -> type:
    from stable_baselines3.common.logger import CSVOutputFormat

    class AppendingCSVOutputFormat(CSVOutputFormat):
        """SB3's CSV writer on an existing file: the header's columns carry on and rows are added at the end
        (SB3 rewrites the whole file, earlier rows included, when a new column appears)."""

        def __init__(self, filename: Path):  # not the parent's, which truncates the file
            self.file = open(filename, "r+" if filename.exists() else "w+")  # closed by Logger.close
            text = self.file.read()
            header = text.split("\n", 1)[0]
            self.keys = header.split(",") if header else []
            if text and not text.endswith("\n"):  # a row cut short by a kill -9: later rows start a new line
                self.file.write("\n")
            self.separator = ","
            self.quotechar = '"'

    return AppendingCSVOutputFormat


@functools.cache
def _callback_class() -> type:
    """Built on first use, so that importing this module does not import torch and stable-baselines3."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SB3Callback(BaseCallback):
        """Checkpoints and stop requests at rollout starts (safe points); progress on every step."""

        def __init__(self, hooks: TrainingHooks):
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
