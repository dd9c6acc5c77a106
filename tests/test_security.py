"""No code path of the toolkit unpickles anything.

A poisoned file is put at every place a model or checkpoint is read: the registry's model.zip (evaluate_bot.py,
load_registered, the champion), a checkpoint's model file and DQN replay buffer (train_bot.py --resume), the
best round's model (the adapters' load_model, as Job._finish and walk-forward use them) and the import command.
Each poison runs ``open(marker, "w")`` when unpickled (``test_the_poisons_are_live`` shows it does, through the
loaders the toolkit used to call), so an absent marker means the payload never ran. Also: save -> load gives
identical predictions for PPO, A2C and DQN, a checkpoint restores every state exactly, SB3's progress.csv keeps
its rows across a resume, and no toolkit source calls an unpickling loader.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tiny import copy_prepared, prepare_root, tiny_config

import train_bot
from agents import load_model, load_registered
from agents.base import AgentSpec, TrainingHooks
from agents.config import load_config
from agents.registry import Registry
from agents.sb3_agent import SB3Agent, save_sb3
from botcore.atomic import sha256_file
from botcore.errors import ModelFileError
from evaluation.markets import random_walk_data
from rl_env import EnvConfig, TradingEnv
from training import job as training

REPO = Path(__file__).resolve().parent.parent
CONFIG = tiny_config(["SYN"], {"steps": 256, "checkpoint_every": 64})
DQN_ARGS = ["--model-type", "backtrader", "--algo", "dqn", "--engine", "fast", "--symbol", "SYN", "--steps", "300",
            "--seed", "3", "--quiet"]
PPO_ARGS = ["--model-type", "backtrader", "--algo", "ppo", "--engine", "fast", "--symbol", "SYN", "--steps", "256",
            "--quiet"]
DEEPSCALPER_ARGS = ["--model-type", "deepscalper", "--symbol", "SYN", "--steps", "300", "--quiet"]


# --- the poisons ----------------------------------------------------------------------------------------

class _Payload:
    """Pickles to a call of ``open(marker, "w")``: whoever unpickles it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def sb3_style_poison(path: Path, marker: Path) -> None:
    """SB3's own zip layout: its ``data`` JSON holds base64 serialised objects, the payload among them."""
    payload = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    buf = io.BytesIO()
    torch.save({}, buf)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", json.dumps({"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": payload}}))
        zf.writestr("policy.pth", buf.getvalue())
        zf.writestr("pytorch_variables.pth", buf.getvalue())
        zf.writestr("_stable_baselines3_version", "2.9.2")


def tensors_poison(path: Path, marker: Path) -> None:
    """A genuine model zip (ours or DeepScalper's) whose every tensor file is a pickled payload instead."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, buf.getvalue() if name.endswith((".pt", ".pth")) else data)


def npz_poison(path: Path, marker: Path) -> None:
    """A genuine replay-buffer .npz whose observations are an object array holding the payload."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["observations"] = np.array([_Payload(marker)], dtype=object)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def pickle_file_poison(path: Path, marker: Path) -> None:
    """A bare pickle, as SB3's save_replay_buffer writes (the .pkl the toolkit used to write)."""
    path.write_bytes(pickle.dumps(_Payload(marker)))


# --- genuine files ----------------------------------------------------------------------------------------

def cartpole_ppo_file(path: Path) -> Path:
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=32, batch_size=32, policy_kwargs={"net_arch": [8]},
                seed=0, device="cpu")
    save_sb3(model, "ppo", {"n_steps": 32, "batch_size": 32, "net_arch": [8]}, path)
    return path


def deepscalper_file(path: Path) -> Path:
    from deepscalper import DeepScalper, DeepScalperConfig

    env = TradingEnv(random_walk_data(200, seed=1), EnvConfig(window=5, action_mode="multidiscrete"))
    DeepScalper(env, DeepScalperConfig(hidden_size=16, buffer_size=1000), seed=0).save(path)
    return path


def test_the_poisons_are_live(tmp_path):
    """Through the loaders the toolkit used to call, every poison runs its payload: the tests below that find
    no marker are not vacuous."""
    from stable_baselines3 import PPO

    marker = tmp_path / "sb3.marker"
    sb3_style_poison(tmp_path / "sb3.zip", marker)
    with contextlib.suppress(Exception):
        PPO.load(tmp_path / "sb3.zip")
    assert marker.exists()

    for name, make in (("toolkit", cartpole_ppo_file), ("deepscalper", deepscalper_file)):
        marker = tmp_path / f"{name}.marker"
        tensors_poison(make(tmp_path / f"{name}.zip"), marker)
        with zipfile.ZipFile(tmp_path / f"{name}.zip") as zf:
            tensor = next(n for n in zf.namelist() if n.endswith((".pt", ".pth")))
            torch.load(io.BytesIO(zf.read(tensor)), weights_only=False)
        assert marker.exists(), name

    marker = tmp_path / "npz.marker"
    np.savez(tmp_path / "buffer.npz", observations=np.zeros(3), pos=np.int64(0))
    npz_poison(tmp_path / "buffer.npz", marker)
    with np.load(tmp_path / "buffer.npz", allow_pickle=True) as npz:
        npz["observations"]
    assert marker.exists()

    marker = tmp_path / "pkl.marker"
    pickle_file_poison(tmp_path / "buffer.pkl", marker)
    pickle.loads((tmp_path / "buffer.pkl").read_bytes())
    assert marker.exists()


# --- the registry's model file: evaluate_bot.py, load_registered, the champion -----------------------------

def _prepare_data() -> None:
    import data_pipeline

    assert data_pipeline.main(["--symbols", "SYN", "--source", "synthetic", "--seed", "3", "--bars", "1500",
                               "--quiet"]) == 0


def test_poisoned_registry_models_never_run_their_payload(workspace):
    _prepare_data()
    reg = Registry()
    cases = {  # name: (algo the metadata claims, the poisoned file)
        "ppo_sb3_zip": ("ppo", lambda p, m: sb3_style_poison(p, m)),
        "ppo_pickled_tensors": ("ppo", lambda p, m: tensors_poison(cartpole_ppo_file(p), m)),
        "dqn_deepscalper_zip": ("dqn", lambda p, m: tensors_poison(deepscalper_file(p), m)),
        "deepscalper_pickled_tensors": ("deepscalper", lambda p, m: tensors_poison(deepscalper_file(p), m)),
        "deepscalper_sb3_zip": ("deepscalper", lambda p, m: sb3_style_poison(p, m)),
    }
    records, markers = {}, {}
    for i, (name, (algo, poison)) in enumerate(cases.items()):
        markers[name] = workspace / f"{name}.marker"
        poison(workspace / f"{name}.zip", markers[name])
        model_type = "deepscalper" if algo == "deepscalper" else "backtrader"
        meta = {"model_type": model_type, "algo": algo, "symbol": "SYN", "interval": "1d",
                "validation": {"sharpe_ratio": 1.0 + i}, "env_config": EnvConfig().to_dict(), "hpo_trials": 1,
                "action_mode": "multidiscrete" if algo == "deepscalper" else "discrete"}
        records[name], _ = reg.register(workspace / f"{name}.zip", meta)  # a consistent sha256, as an attacker's

    assert evaluate_bot_main(["--symbol", "SYN", "--engine", "fast", "--all", "--quiet"]) == 0
    out = json.loads(sorted((workspace / "results").glob("model_comparison_SYN_*.json"))[-1].read_text())
    for name, record in records.items():
        entry = out["models"][record.run_id]
        assert entry["status"] == "load_failed", (name, entry)
        assert str(record.model_path) in entry["error"], (name, entry["error"])
    assert "retrain" in out["models"][records["ppo_sb3_zip"].run_id]["error"]
    assert "UnpicklingError" in out["models"][records["ppo_pickled_tensors"].run_id]["error"]
    assert "UnpicklingError" in out["models"][records["deepscalper_pickled_tensors"].run_id]["error"]

    for record in records.values():
        with pytest.raises(ModelFileError, match=re.escape(str(record.model_path))):
            load_registered(reg, record)
    champions = reg.champions()
    assert {c.run_id for c in champions} == {records["dqn_deepscalper_zip"].run_id,
                                             records["deepscalper_sb3_zip"].run_id}
    for champion in champions:
        with pytest.raises(ModelFileError):
            load_registered(reg, champion)
    assert not [name for name, marker in markers.items() if marker.exists()]


def evaluate_bot_main(argv: list[str]) -> int:
    import evaluate_bot

    return evaluate_bot.main(argv)


def test_an_old_format_sb3_zip_is_refused_with_one_line(workspace):
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=32, batch_size=32, policy_kwargs={"net_arch": [8]})
    model.save(workspace / "old.zip")  # SB3's own format, as every SB3 model before this version
    reg = Registry()
    record, _ = reg.register(workspace / "old.zip", {"model_type": "backtrader", "algo": "ppo", "symbol": "SYN",
                                                     "interval": "1d", "validation": {"sharpe_ratio": 1.0}})
    with pytest.raises(ModelFileError) as info:
        load_registered(reg, record)
    message = str(info.value)
    assert "\n" not in message and str(record.model_path) in message
    assert "stable-baselines3's own format" in message and "retrain" in message


# --- the adapters' load_model (Job._finish's best round, walk-forward folds) --------------------------------

def _sb3_agent(algo: str, log_dir: Path | None = None, seed: int = 0) -> SB3Agent:
    cfg = load_config(overrides={"sb3": {"net_arch": [16], "n_steps": 64, "batch_size": 32}})
    spec = AgentSpec(algo=algo, cfg=cfg, seed=seed, total_steps=512, log_dir=log_dir)
    return SB3Agent(spec, random_walk_data(400, seed=1), EnvConfig(window=5, action_mode="discrete",
                                                                   episode_length=64))


def test_the_adapters_never_run_a_payload(workspace):
    from agents.deepscalper_agent import DeepScalperAgent

    poisons = {"sb3_zip": lambda p, m: sb3_style_poison(p, m),
               "pickled_tensors": lambda p, m: tensors_poison(cartpole_ppo_file(p), m),
               "deepscalper_tensors": lambda p, m: tensors_poison(deepscalper_file(p), m)}
    ds_cfg = load_config(overrides={"deepscalper": {"hidden_size": 16, "buffer_size": 1000}})
    ds_spec = AgentSpec(algo="deepscalper", cfg=ds_cfg, seed=0)
    adapters = {"ppo": _sb3_agent("ppo"), "a2c": _sb3_agent("a2c"), "dqn": _sb3_agent("dqn"),
                "deepscalper": DeepScalperAgent(ds_spec, random_walk_data(200, seed=1),
                                                EnvConfig(window=5, action_mode="multidiscrete"))}
    for poison_name, poison in poisons.items():
        for algo, adapter in adapters.items():
            marker = workspace / f"{poison_name}_{algo}.marker"
            path = workspace / f"{poison_name}_{algo}.zip"
            poison(path, marker)
            with pytest.raises(ModelFileError, match=re.escape(str(path))):
                adapter.load_model(path)
            with pytest.raises(ModelFileError, match=re.escape(str(path))):
                load_model(algo, path)
            assert not marker.exists(), (poison_name, algo)
    for adapter in adapters.values():
        adapter.close()


# --- round trips ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn"])
def test_save_load_gives_identical_predictions_and_checkpoints_restore_every_state(workspace, algo):
    hooks = TrainingHooks(lambda steps: True, lambda *args: True)
    agent = _sb3_agent(algo)
    agent.learn(192, hooks)
    agent.save_model(workspace / "model.zip")
    obs = np.random.default_rng(0).normal(size=(64, *agent.model.observation_space.shape)).astype(np.float32)
    expected = agent.model.predict(obs, deterministic=True)[0]
    loaded = load_model(algo, workspace / "model.zip")  # no env: the spaces come from model.json
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    other = _sb3_agent(algo, seed=5)
    other.load_model(workspace / "model.zip")  # with the adapter's env
    assert np.array_equal(other.model.predict(obs, deterministic=True)[0], expected)
    assert other.num_timesteps == agent.num_timesteps == 192
    with zipfile.ZipFile(workspace / "model.zip") as zf:
        assert sorted(zf.namelist()) == ["model.json", "policy.pt"]

    files = agent.save_checkpoint(workspace / "ckpt", 192)
    assert files == (["model_192.zip", "buffer_192.npz"] if algo == "dqn" else ["model_192.zip"])
    resumed = _sb3_agent(algo, seed=5)
    resumed.load_checkpoint(workspace / "ckpt", files, agent.rng_state(), 192)
    a, b = agent.model, resumed.model
    for x, y in zip(a.policy.state_dict().values(), b.policy.state_dict().values()):
        assert torch.equal(x, y)
    sa, sb = a.policy.optimizer.state_dict(), b.policy.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for key, state in sa["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][key][name])), (key, name)
    for attr in ("num_timesteps", "_n_updates", "_episode_num", "_current_progress_remaining"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert a._n_updates > 0
    assert b.action_space.np_random.bit_generator.state == a.action_space.np_random.bit_generator.state
    if algo == "dqn":
        assert (a._n_calls, a.exploration_rate) == (b._n_calls, b.exploration_rate)
        ra, rb = a.replay_buffer, b.replay_buffer
        assert (ra.pos, ra.full) == (rb.pos, rb.full) and ra.pos == 192
        for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            assert np.array_equal(getattr(ra, name), getattr(rb, name)), name
    resumed.learn(64, hooks)  # trains on from there
    assert resumed.num_timesteps == 256
    for adapter in (agent, other, resumed):
        adapter.close()


# --- train_bot.py --resume and progress.csv --------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_root(tmp_path_factory.mktemp("prepared"), CONFIG, bars=700)


@pytest.fixture()
def ws(workspace, prepared):
    return copy_prepared(prepared, workspace)


class _Crash(BaseException):
    """Stands for a kill right after a checkpoint hit the disk."""


def _crash_after_checkpoints(monkeypatch, args: list[str], n: int) -> Path:
    """Run train_bot.py until its n-th checkpoint is on disk, then 'kill' it; the checkpoint folder."""
    real_checkpoint, calls = training.Job.checkpoint, []

    def crash(job):
        real_checkpoint(job)
        calls.append(job.agent.num_timesteps)
        if len(calls) == n:
            raise _Crash

    monkeypatch.setattr(training.Job, "checkpoint", crash)
    with pytest.raises(_Crash):
        train_bot.main(args)
    monkeypatch.setattr(training.Job, "checkpoint", real_checkpoint)
    (folder,) = (Path("models") / "checkpoints").iterdir()
    return folder.resolve()


def test_resume_never_runs_a_payload_in_a_checkpoint(ws, monkeypatch, capsys):
    folder = _crash_after_checkpoints(monkeypatch, DQN_ARGS, 2)
    state = json.loads((folder / "state.json").read_text())
    model_name, buffer_name = state["files"]
    assert buffer_name.endswith(".npz")
    pristine = ws / "pristine"
    shutil.copytree(folder, pristine)
    cases = {"sb3_zip": (model_name, sb3_style_poison), "pickled_tensors": (model_name, tensors_poison),
             "npz_object_array": (buffer_name, npz_poison), "pickle_buffer": (buffer_name, pickle_file_poison)}
    capsys.readouterr()
    for name, (target, poison) in cases.items():
        marker = ws / f"{name}.marker"
        poison(folder / target, marker)
        assert train_bot.main([*DQN_ARGS, "--resume"]) == 1, name
        assert not marker.exists(), name
        printed = " ".join(capsys.readouterr())
        assert str(folder / target) in printed and "start a new run without --resume" in printed, (name, printed)
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
    assert train_bot.main([*DQN_ARGS, "--resume"]) == 0  # the untouched checkpoint still resumes
    (record,) = Registry().runs()
    assert record.run_id == state["run_id"] and record.metadata["training"]["steps"] == 300


def test_deepscalper_resume_never_runs_a_payload(ws, monkeypatch, capsys):
    folder = _crash_after_checkpoints(monkeypatch, DEEPSCALPER_ARGS, 1)
    (model_name,) = json.loads((folder / "state.json").read_text())["files"]
    marker = ws / "deepscalper.marker"
    tensors_poison(folder / model_name, marker)
    capsys.readouterr()
    assert train_bot.main([*DEEPSCALPER_ARGS, "--resume"]) == 1
    assert not marker.exists()
    assert str(folder / model_name) in " ".join(capsys.readouterr())


def _progress_rows(ws: Path) -> list[dict[str, str]]:
    (path,) = (ws / "results" / "training_curves").glob("*/progress.csv")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_progress_csv_keeps_its_rows_across_a_failed_and_a_good_resume(ws, monkeypatch):
    folder = _crash_after_checkpoints(monkeypatch, [*PPO_ARGS, "--checkpoint-every", "64"], 2)
    before = _progress_rows(ws)
    steps_before = [int(r["time/total_timesteps"]) for r in before]
    assert steps_before == [64, 128]  # one row per rollout of 64 steps
    (model_name,) = json.loads((folder / "state.json").read_text())["files"]
    good = (folder / model_name).read_bytes()
    (folder / model_name).write_bytes(b"broken")
    assert train_bot.main([*PPO_ARGS, "--resume"]) == 1
    assert _progress_rows(ws) == before  # a failed resume leaves the file alone
    (folder / model_name).write_bytes(good)
    assert train_bot.main([*PPO_ARGS, "--resume"]) == 0
    after = _progress_rows(ws)
    assert after[:2] == before
    assert [int(r["time/total_timesteps"]) for r in after] == [64, 128, 192, 256]
    assert after[-1]["train/n_updates"]  # the resumed rows carry the same columns


# --- the import command ------------------------------------------------------------------------------------

def _run_folder(root: Path, name: str, model: Path, algo: str = "ppo", **meta) -> Path:
    """A run folder in the toolkit's format, as models/ holds them (sha256 of the model file included)."""
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(model, folder / "model.zip")
    metadata = {"run_id": "20240101T000000_abcdef", "model_type": "deepscalper" if algo == "deepscalper" else
                "backtrader", "algo": algo, "symbol": "SYN", "interval": "1d", "created": "2024-01-01T00:00:00",
                "validation": {"sharpe_ratio": 99.0}, "env_config": EnvConfig().to_dict(),
                "sha256": sha256_file(folder / "model.zip"), "model_file": "model.zip", **meta}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_import_registers_a_checked_copy_as_a_challenger(workspace, capsys):
    reg = Registry()
    champion, _ = reg.register(cartpole_ppo_file(workspace / "champ.zip"), {
        "model_type": "backtrader", "algo": "ppo", "symbol": "SYN", "interval": "1d",
        "validation": {"sharpe_ratio": 0.1}})
    outside = workspace.parent / f"{workspace.name}_outside"
    source = _run_folder(outside, "SYN_1d_backtrader_x", cartpole_ppo_file(workspace / "ppo.zip"))
    assert train_bot.main(["--import-model", str(source), "--quiet"]) == 0
    (record,) = [r for r in reg.runs() if r.run_id != champion.run_id]
    assert record.run_id != "20240101T000000_abcdef" and record.path.parent == workspace / "models"
    assert not record.is_champion and reg.champion("SYN", "1d", "backtrader").run_id == champion.run_id
    assert record.metadata["promotion"]["promoted"] is False  # its claimed Sharpe of 99 was not computed here
    assert record.metadata["imported"]["run_id"] == "20240101T000000_abcdef"
    assert record.metadata["sha256"] == sha256_file(source / "model.zip")
    assert f"--models {record.run_id}" in capsys.readouterr().out
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert np.array_equal(load_registered(reg, record).predict(obs, deterministic=True)[0],
                          load_model("ppo", source / "model.zip").predict(obs, deterministic=True)[0])
    assert train_bot.main(["--import-model", str(source), "--symbol", "GOOGL", "--quiet"]) == 0
    assert [r.symbol for r in reg.runs(symbol="GOOGL")] == ["GOOGL"]


def test_import_refuses_poisons_and_bad_folders_with_one_line(workspace, capsys):
    outside = workspace.parent / f"{workspace.name}_outside"
    markers = []

    def poisoned(name, algo, poison, make=None):
        path = workspace / f"{name}.zip"
        if make is not None:
            make(path)
        markers.append(workspace / f"{name}.marker")
        poison(path, markers[-1])
        return _run_folder(outside, name, path, algo=algo)

    extra = outside / "extra.zip"
    outside.mkdir()
    shutil.copy(cartpole_ppo_file(workspace / "good.zip"), extra)
    with zipfile.ZipFile(extra, "a") as zf:
        zf.writestr("notes.txt", "hello")
    tampered = _run_folder(outside, "tampered", workspace / "good.zip")
    (tampered / "model.zip").write_bytes((tampered / "model.zip").read_bytes() + b"x")
    cases = {
        "sb3_zip": (poisoned("sb3_zip", "ppo", sb3_style_poison), "stable-baselines3's own format"),
        "pickled_tensors": (poisoned("pickled_tensors", "ppo", tensors_poison, cartpole_ppo_file), "UnpicklingError"),
        "deepscalper": (poisoned("deepscalper", "deepscalper", tensors_poison, deepscalper_file), "UnpicklingError"),
        "tampered": (tampered, "sha256"),
        "extra_member": (_run_folder(outside, "extra", extra), "notes.txt"),
        "wrong_algo": (_run_folder(outside, "wrong_algo", workspace / "good.zip", algo="dqn"), "'ppo' model"),
        "interval": (_run_folder(outside, "interval", workspace / "good.zip", interval="../../x"), "interval"),
        "not_a_folder": (workspace / "good.zip", "is not a folder"),
    }
    capsys.readouterr()
    for name, (source, message) in cases.items():
        assert train_bot.main(["--import-model", str(source), "--quiet"]) == 1, name
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (name, err)
    assert Registry().runs() == []
    assert not [m for m in markers if m.exists()]


# --- the source ----------------------------------------------------------------------------------------------

def _call_text(text: str, start: int) -> str:
    """The call starting at ``start`` (``name(`` ...), up to its closing parenthesis."""
    depth = 0
    for i in range(text.index("(", start), len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i + 1]
    return text[start:]


def test_no_toolkit_code_calls_an_unpickling_loader():
    forbidden = re.compile(r"\bimport pickle\b|\bcloudpickle\b|\bpickle\.loads?\(|allow_pickle=True|\bjoblib\b"
                           r"|\.load_replay_buffer\(|\.save_replay_buffer\(|load_from_pkl"
                           r"|\b(PPO|A2C|DQN)\.load\(|algo_class\([^)]*\)\.load\(")
    sources = [p for p in REPO.rglob("*.py") if not {".venv", "tests"} & set(p.relative_to(REPO).parts)]
    assert len(sources) > 30
    found = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for match in forbidden.finditer(text):
            found.append(f"{path.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}: {match.group(0)}")
        for match in re.finditer(r"\b(torch\.load|np\.load)\(", text):
            call = _call_text(text, match.start())
            if match.group(1) == "torch.load" and "weights_only=True" not in call:
                found.append(f"{path.relative_to(REPO)}: {call}")
    assert found == []
