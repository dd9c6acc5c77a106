"""train_bot.py end to end on a small synthetic dataset: every model type, both, iterations, resume after a
crash, SIGTERM, kill -9, the registry, Optuna (one process and two sharing a storage), continuous mode, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny import copy_prepared, prepare_root, tiny_config

import datafeed
import train_bot
from agents import load_registered
from agents.registry import Registry
from botcore.errors import ModelFileError
from evaluation.backtest import validation_score
from training import job as training

REPO = Path(__file__).resolve().parent.parent

# Seed 1: the data hold no edge, and with the default seed this 16-unit DeepScalper rationally stays flat after
# 256 steps (its health status says collapsed_flat), which would leave the validation checks below vacuous.
TINY_CONFIG = tiny_config(["SYN"], {"steps": 256, "checkpoint_every": 64, "seed": 1},
                          optimize={"storage": "sqlite:///results/optuna.db", "grid": {"learning_rate": [1e-4, 1e-3]}})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """data/ of one synthetic symbol, made once by data_pipeline.py's own main."""
    return prepare_root(tmp_path_factory.mktemp("prepared"), TINY_CONFIG, bars=700)


@pytest.fixture()
def ws(workspace, prepared):
    return copy_prepared(prepared, workspace)


def _meta(ws, model_type=None):
    records = Registry(ws / "models").runs(model_type=model_type)
    return records


def _val_sharpe_of_loaded(record):
    """Load the registered model through the registry (sha256 checked) and backtest it on val again."""
    from botcore.markets import periods_per_year
    from rl_env.config import EnvConfig
    from rl_env.data import MarketData

    policy = load_registered(Registry(), record)
    frame = datafeed.load_split(record.symbol, record.interval, "val")
    data = MarketData.from_frame(frame, record.symbol, record.interval)
    score, _ = validation_score(policy, data, EnvConfig.from_dict(record.metadata["env_config"]),
                                        periods_per_year(record.interval, record.metadata["market"]))
    return score


@pytest.mark.parametrize("flags", [
    ["--model-type", "deepscalper"],
    ["--model-type", "backtrader", "--algo", "ppo"],  # on the backtrader-backed env (the default engine)
    ["--model-type", "backtrader", "--algo", "a2c", "--engine", "fast"],
    ["--model-type", "backtrader", "--algo", "dqn", "--engine", "fast"],
], ids=["deepscalper", "ppo-backtrader", "a2c-fast", "dqn-fast"])
def test_each_model_type_trains_and_is_registered(ws, flags, capsys):
    assert train_bot.main([*flags, "--symbol", "SYN", "--quiet"]) == 0
    (record,) = _meta(ws)
    meta = record.metadata
    algo = flags[flags.index("--algo") + 1] if "--algo" in flags else "deepscalper"
    assert (record.model_type, record.algo, record.symbol, record.interval) == (flags[1], algo, "SYN", "1d")
    assert meta["action_mode"] == ("multidiscrete" if algo == "deepscalper" else "discrete")
    assert meta["training"]["steps"] >= 256 and meta["hpo_trials"] == 1 and meta["trial_sharpes"] == []
    manifest = json.loads((ws / "data" / "SYN_1d_manifest.json").read_text())
    assert meta["dataset"]["manifest_hash"] == manifest["manifest_hash"]
    assert set(meta["dataset"]["ranges"]) == {"train", "val", "test"}
    for key in ("config", "hyperparameters", "seed", "library_versions", "env_config", "sha256", "validation"):
        assert key in meta
    assert meta["env_config"]["episode_length"] is None and meta["env_config"]["hindsight_weight"] == 0
    if algo == "deepscalper":  # the training env pays the hindsight bonus, the validation env never does
        assert meta["train_env_config"]["hindsight_weight"] == 0.1
    # the recorded validation Sharpe is reproduced by the registered file, loaded through the registry; a model
    # that never traded would make that vacuous (a NaN Sharpe both times), so it must have traded
    recorded, trades = meta["validation"]["sharpe_ratio"], meta["validation"]["num_trades"]
    assert trades > 0 and np.isfinite(recorded), (trades, recorded)
    reloaded = _val_sharpe_of_loaded(record)
    assert np.isfinite(reloaded) and np.isclose(reloaded, recorded)
    assert not (ws / "models" / "checkpoints" / record.path.name).exists()  # finished runs leave no checkpoint
    session = json.loads(next((ws / "results").glob("training_session_*.json")).read_text())
    assert session["exit_code"] == 0 and session["jobs"][0]["run_id"] == record.run_id
    assert list((ws / "logs").glob("training_*.log"))
    curves = (ws / "results" / "training_curves" / record.path.name / "curves.csv").read_text().splitlines()
    assert curves[0] == "step,tag,value" and any(",eval/val_sharpe," in line for line in curves)
    assert record.run_id in capsys.readouterr().out


@pytest.mark.slow
def test_both_trains_two_models_in_two_processes(ws):
    assert train_bot.main(["--model-type", "both", "--engine", "fast", "--symbol", "SYN", "--steps", "128",
                           "--quiet"]) == 0
    runs = _meta(ws)
    assert sorted(r.algo for r in runs) == ["deepscalper", "ppo"]
    logs = "".join(p.read_text() for p in (ws / "logs").glob("training_*.log"))
    assert len({line.split("[pid ")[1].split("]")[0] for line in logs.splitlines() if "[pid " in line}) == 2


def test_iterations_keep_the_best_round(ws):
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "SYN", "--steps", "128", "--iterations", "3",
                           "--quiet"]) == 0
    (record,) = _meta(ws)
    rounds = record.metadata["training"]["rounds"]
    assert [r["iteration"] for r in rounds] == [1, 2, 3] and [r["steps"] for r in rounds] == [128, 256, 384]
    finite = [r for r in rounds if r["val_sharpe"] is not None]
    best = max(finite, key=lambda r: r["val_sharpe"])
    assert record.metadata["training"]["best_iteration"] == best["iteration"]
    assert record.metadata["validation"]["sharpe_ratio"] == pytest.approx(best["val_sharpe"], rel=1e-12)
    assert _val_sharpe_of_loaded(record) == pytest.approx(best["val_sharpe"], rel=1e-12)


class _Crash(BaseException):
    """Stands for a kill right after a checkpoint hit the disk (what a kill -9 leaves behind)."""


@pytest.mark.parametrize("flags", [["--model-type", "deepscalper"],
                                   ["--model-type", "backtrader", "--algo", "dqn", "--engine", "fast"]],
                         ids=["deepscalper", "dqn"])
def test_resume_after_a_crash_reaches_the_same_step_count(ws, flags, monkeypatch):
    args = [*flags, "--symbol", "SYN", "--steps", "300", "--quiet", "--seed", "3"]
    assert train_bot.main(args) == 0
    (uninterrupted,) = _meta(ws)
    real_checkpoint, calls = training.Job.checkpoint, []

    def crash_after_second(job):
        real_checkpoint(job)
        calls.append(job.agent.num_timesteps)
        if len(calls) == 2:
            raise _Crash

    monkeypatch.setattr(training.Job, "checkpoint", crash_after_second)
    with pytest.raises(_Crash):
        train_bot.main(args)
    monkeypatch.setattr(training.Job, "checkpoint", real_checkpoint)
    (folder,) = (ws / "models" / "checkpoints").iterdir()
    state = json.loads((folder / "state.json").read_text())
    assert state["status"] == "running" and 0 < state["num_timesteps"] == calls[1] < 300
    assert train_bot.main(args + ["--resume"]) == 0
    resumed = next(r for r in _meta(ws) if r.run_id != uninterrupted.run_id)
    assert resumed.run_id == state["run_id"] and resumed.metadata["training"]["resumed"]
    assert resumed.metadata["training"]["steps"] == uninterrupted.metadata["training"]["steps"]
    if flags[1] == "deepscalper":  # checkpoints between episodes hold the env's RNG: the very same model
        assert resumed.metadata["validation"]["sharpe_ratio"] == uninterrupted.metadata["validation"]["sharpe_ratio"]
    assert not folder.exists()


@pytest.mark.parametrize("flags", [["--model-type", "deepscalper"],
                                   ["--model-type", "backtrader", "--algo", "dqn", "--engine", "fast"]],
                         ids=["deepscalper", "dqn"])
def test_episodes_bound_each_iteration(ws, flags):
    assert train_bot.main([*flags, "--symbol", "SYN", "--steps", "10000", "--episodes", "2", "--iterations", "2",
                           "--quiet"]) == 0
    (record,) = _meta(ws)
    rounds = record.metadata["training"]["rounds"]
    assert [(r["steps"], r["episodes"]) for r in rounds] == [(128, 2), (256, 2)]  # episode_length 64


def test_sigterm_stops_with_a_checkpoint_and_resume_finishes(ws, monkeypatch):
    real_step = training.Job._step

    def step_then_signal(job, steps, *rest):
        if steps == 100:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(job, steps, *rest)

    monkeypatch.setattr(training.Job, "_step", step_then_signal)
    args = ["--model-type", "backtrader", "--algo", "ppo", "--engine", "fast", "--symbol", "SYN", "--steps", "256",
            "--checkpoint-every", "0", "--quiet"]
    assert train_bot.main(args) == 128 + signal.SIGTERM
    (folder,) = (ws / "models" / "checkpoints").iterdir()
    state = json.loads((folder / "state.json").read_text())
    assert state["num_timesteps"] == 128  # the next rollout start (n_steps 64) after the signal
    assert _meta(ws) == []
    monkeypatch.setattr(training.Job, "_step", real_step)
    assert train_bot.main(args + ["--resume"]) == 0
    (record,) = _meta(ws)
    assert record.metadata["training"]["steps"] == 256


@pytest.mark.slow
def test_kill_9_then_resume(ws):
    """A real SIGKILL of a training process after its first checkpoint; --resume completes the run."""
    args = ["--model-type", "backtrader", "--algo", "ppo", "--engine", "fast", "--symbol", "SYN", "--steps",
            "3000", "--quiet"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train_bot.py"), *args], cwd=ws,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list((ws / "models" / "checkpoints").glob("*/state.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "training ended before its first checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    (state_file,) = (ws / "models" / "checkpoints").glob("*/state.json")
    state = json.loads(state_file.read_text())
    assert 0 < state["num_timesteps"] < 3000 and state["num_timesteps"] % 64 == 0
    assert train_bot.main([*args, "--steps", "5", "--resume"]) == 0  # the checkpoint's shape wins over flags
    (record,) = _meta(ws)
    assert record.metadata["training"]["steps"] == 3008  # 3000 rounded up to whole rollouts of 64
    assert record.run_id == state["run_id"]


def test_registry_refuses_a_tampered_model_and_keeps_a_worse_challenger(ws):
    cfg = json.loads((ws / "training_config.json").read_text())
    cfg["registry"] = {"promotion_margin": 1000.0}
    (ws / "training_config.json").write_text(json.dumps(cfg))
    args = ["--model-type", "backtrader", "--algo", "a2c", "--engine", "fast", "--symbol", "SYN", "--steps", "128",
            "--quiet"]
    assert train_bot.main([*args, "--seed", "1"]) == 0
    assert train_bot.main([*args, "--seed", "2"]) == 0
    newest, first = _meta(ws)
    reg = Registry()
    champion = reg.champion("SYN", "1d", "backtrader")
    # The promotion rule decided (and said why): a champion must beat the best baseline on the validation bars,
    # and with a margin of 1000 a later run can never replace an existing champion.
    for record in (first, newest):
        assert record.metadata["promotion"]["reason"]
        if not record.is_champion:
            assert any(w in record.metadata["promotion"]["reason"] for w in ("baseline", "margin", "undefined"))
    if first.is_champion:
        assert champion.run_id == first.run_id and "margin" in newest.metadata["promotion"]["reason"]
    assert not (first.is_champion and newest.is_champion)
    with open(first.model_path, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01")
    with pytest.raises(ModelFileError, match=f"{first.model_path}.*sha256"):
        load_registered(reg, first)


@pytest.mark.slow
def test_optuna_study_one_then_two_workers_sharing_the_storage(ws):
    base = ["--model-type", "backtrader", "--algo", "a2c", "--engine", "fast", "--symbol", "SYN", "--steps", "128",
            "--optimize", "--quiet"]
    assert train_bot.main([*base, "--trials", "2"]) == 0
    assert train_bot.main([*base, "--trials", "2", "--workers", "2"]) == 0
    import optuna

    study = optuna.load_study(study_name="SYN_1d_backtrader_a2c", storage="sqlite:///results/optuna.db")
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    records = _meta(ws)
    assert [r.metadata["hpo_trials"] for r in records] == [4, 2]
    latest = records[0].metadata
    complete = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(latest["trial_sharpes"]) == sorted(complete)
    assert latest["optuna"]["best_params"] == study.best_trial.params
    assert latest["hyperparameters"]["learning_rate"] == study.best_trial.params["learning_rate"]
    session = json.loads(sorted((ws / "results").glob("training_session_*.json"))[-1].read_text())
    assert session["mode"] == "optimize" and session["optimize"][0]["n_trials"] == 4


def test_grid_sampler_uses_the_config_grid(ws):
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "SYN", "--steps", "64", "--optimize",
                           "--sampler", "grid", "--trials", "5", "--storage", "sqlite:///grid.db", "--quiet"]) == 0
    import optuna

    study = optuna.load_study(study_name="SYN_1d_deepscalper_deepscalper", storage="sqlite:///grid.db")
    assert sorted(t.params["learning_rate"] for t in study.trials) == [1e-4, 1e-3]  # the grid, then it stops


def test_continuous_mode_survives_a_failed_cycle(ws, monkeypatch):
    from botcore.signals import StopFlag
    from training import continuous

    calls = []
    real_refresh = continuous.refresh_data

    def flaky_refresh(symbols, cfg, quiet=False):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated outage")
        real_refresh(symbols, cfg, quiet)

    monkeypatch.setattr(continuous, "refresh_data", flaky_refresh)
    monkeypatch.setattr(StopFlag, "wait", lambda self, timeout=None: self.requested)  # no day-long sleep
    assert train_bot.main(["--continuous", "--model-type", "backtrader", "--algo", "a2c", "--engine", "fast",
                           "--steps", "64", "--max-cycles", "2", "--quiet"]) == 0
    session = json.loads(next((ws / "results").glob("training_session_*.json")).read_text())
    assert [c["status"] for c in session["cycles"]] == ["failed", "ok"]
    assert "simulated outage" in session["cycles"][0]["error"]
    assert len(_meta(ws)) == 1


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "must be 1 or more"),
    (["--model-type", "deepscalpr"], "invalid choice"),
    (["--max-cycles", "2"], "--max-cycles needs --continuous"),
    (["--trials", "3"], "need --optimize"),
    (["--model-type", "deepscalper", "--algo", "ppo"], "--algo applies to"),
])
def test_bad_flags_exit_2(ws, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train_bot.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_missing_dataset_names_the_command(workspace, capsys):
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "MSFT", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "python data_pipeline.py --symbols MSFT --interval 1d" in err and len(err.strip().splitlines()) == 1


def test_bad_config_value_exit_2(ws, capsys):
    (ws / "training_config.json").write_text(json.dumps({"training_params": {"algo": "sac"}}))
    assert train_bot.main(["--model-type", "backtrader", "--quiet"]) == 2
    assert "training_params.algo" in capsys.readouterr().err
