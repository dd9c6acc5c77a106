"""Command-line extras: --set KEY=VALUE on every script, --device, train_bot.py --list / --show / --prune, and
the one log line per finished Optuna trial."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import automate_training
import data_pipeline
import evaluate_bot
import train_bot
from agents.config import load_config, resolve_device
from agents.registry import CHAMPIONS_FILE, PRUNING_SUFFIX, Registry
from automation.chain import JobPlan
from botcore.errors import ConfigError
from botcore.lock import WorkspaceLock
from datafeed.dataset import Dataset
from training.checkpoints import RUN_LOCK, STATE_FILE, checkpoints_root, stale_checkpoints
from training.job import JobSpec


@pytest.fixture(autouse=True)
def _fresh_process_logging():
    """Each test runs a script as a new process would: without the console handler an earlier script installed
    (it writes to a capture stream pytest has closed since)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_botcore_console", False)]:
        root.removeHandler(handler)
    yield


SCRIPTS = {"train_bot": (train_bot.main, ["--list"]), "evaluate_bot": (evaluate_bot.main, ["--symbol", "SYN"]),
           "data_pipeline": (data_pipeline.main, ["--symbols", "SYN", "--source", "synthetic"]),
           "automate_training": (automate_training.main, ["--status"])}


# --- --set ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("item, expected", [
    ("deepscalper.learning_rat=3e-4", "unknown key 'deepscalper.learning_rat'; did you mean 'learning_rate'?"),
    ("env.window=abc", "env.window = 'abc' must be a whole number, not a string"),
    ("env.window=-4", "env.window = -4 must be greater than 0"),
    ("evaluation.split=tset", "did you mean 'test'?"),
])
def test_a_bad_set_is_one_line_and_exit_code_2_in_every_script(workspace, capsys, script, item, expected):
    main, args = SCRIPTS[script]
    assert main([*args, "--set", item]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_set_without_a_key_is_refused_by_argparse(workspace, capsys, script):
    main, args = SCRIPTS[script]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--set", "window16"])
    assert exit_info.value.code == 2
    assert "'window16' is not KEY=VALUE" in capsys.readouterr().err


def test_set_values_are_json_or_text_later_items_win_and_flags_win_over_set(workspace):
    parser = train_bot.build_parser()
    args = parser.parse_args(["--steps", "5", "--set", "training_params.steps=7", "--set", "env.window=16",
                              "--set", "deepscalper.learning_rate=3e-4", "--set", "sb3.net_arch=[8, 8]",
                              "--set", "data.start=2020-01-02", "--set", "env.allow_short=false",
                              "--set", "env.window=12", "--set", "data.end=null"])
    cfg = train_bot.resolve(args)
    assert cfg["training_params"]["steps"] == 5  # the dedicated flag is the most specific
    assert cfg["env"]["window"] == 12 and cfg["env"]["allow_short"] is False
    assert cfg["deepscalper"]["learning_rate"] == 3e-4 and cfg["sb3"]["net_arch"] == [8, 8]
    assert cfg["data"]["start"] == "2020-01-02" and cfg["data"]["end"] is None
    Path("training_config.json").write_text(json.dumps({"env": {"window": 8}, "data": {"end": "2021-01-01"}}))
    cfg = load_config(assignments=["data.end=null"])
    assert cfg["env"]["window"] == 8 and cfg["data"]["end"] is None  # --set over the file, null is a value


def test_evaluate_bot_uses_the_set_values(workspace):
    assert data_pipeline.main(["--symbols", "SYN", "--source", "synthetic", "--seed", "2", "--bars", "400",
                               "--set", "data.train_fraction=0.5", "--quiet"]) == 0
    assert Dataset.open("SYN", "1d").manifest["settings"]["data"]["train_fraction"] == 0.5
    assert evaluate_bot.main(["--symbol", "SYN", "--engine", "fast", "--quiet", "--set", "evaluation.split=val"]) == 0
    outcome = json.loads(next((workspace / "results").glob("model_comparison_SYN_*.json")).read_text())
    assert outcome["split"] == "val"


def test_automate_training_passes_its_set_items_to_every_child(workspace):
    plan = JobPlan(load_config())
    plan.assignments = ["env.window=16", "deepscalper.learning_rate=3e-4"]
    for job in ("data", "training", "evaluation"):
        for unit in plan.units(job):
            assert unit.args[-2:] == ["--set=env.window=16", "--set=deepscalper.learning_rate=3e-4"]
            # the child's parser reads them back as the same items
            assert {"data": data_pipeline, "training": train_bot, "evaluation": evaluate_bot}[job].build_parser(
            ).parse_args(unit.args).assignments == plan.assignments


def test_the_daemon_hands_its_set_items_to_the_scripts_it_runs(workspace):
    from automation.runner import UnitResult

    calls: list[tuple[str, list[str]]] = []

    def runner(script, args, timeout, stop):
        calls.append((script, list(args)))
        return UnitResult("ok", "", 0)

    automate_training.main(["--run-once", "data", "--quiet", "--set", "symbols=[\"SYN\"]", "--set", "env.window=16"],
                           runner=runner)
    assert calls and calls[0][0] == "data_pipeline.py"
    assert calls[0][1][-2:] == ['--set=symbols=["SYN"]', "--set=env.window=16"]


# --- --device ------------------------------------------------------------------------------------------------

def test_device_auto_takes_a_gpu_only_when_torch_sees_one(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="sees no CUDA GPU on this machine; use --device cpu or --device auto"):
        resolve_device("cuda")
    spec = JobSpec(symbol="SYN", interval="1d", model_type="deepscalper", algo="deepscalper", cfg=load_config(),
                   steps=10, device="auto")
    assert spec.agent_spec(10, None).device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    assert spec.agent_spec(10, None).device == "cuda"
    assert resolve_device("cpu") == "cpu"


def test_train_bot_device_cuda_without_a_gpu_is_one_line_exit_2(workspace, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "SYN", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda:" in err and "sees no CUDA GPU" in err and "\n" not in err
    assert not (workspace / "models").exists()  # nothing started
    with pytest.raises(SystemExit) as exit_info:
        train_bot.main(["--device", "gpu"])
    assert exit_info.value.code == 2
    assert train_bot.main(["--symbol", "SYN", "--set", "training_params.device=cuda"]) == 2  # the config key too
    assert "sees no CUDA GPU" in capsys.readouterr().err
    assert evaluate_bot.main(["--symbol", "SYN", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sees no CUDA GPU" in err and "\n" not in err


def test_the_device_reaches_both_agent_families(workspace):
    from agents import build_agent
    from agents.base import AgentSpec
    from evaluation.markets import random_walk_data
    from rl_env.config import EnvConfig

    data = random_walk_data(200, seed=1)
    cfg = load_config(assignments=["deepscalper.hidden_size=8", "sb3.net_arch=[8]"])
    for algo, mode in (("deepscalper", "multidiscrete"), ("ppo", "discrete")):
        agent = build_agent(AgentSpec(algo=algo, cfg=cfg, seed=0, device="cpu"), data,
                            EnvConfig.from_config(cfg, mode, window=8))
        try:
            assert str(agent.model.device) == "cpu"
        finally:
            agent.close()


# --- --list, --show, --prune ---------------------------------------------------------------------------------

def _register(registry: Registry, n: int, promote: bool, symbol: str = "SYN", model_type: str = "deepscalper",
              size: int = 1000) -> str:
    model = Path(f"model_{symbol}_{n}.zip")
    model.write_bytes(bytes([n % 256]) * size)
    meta = {"model_type": model_type, "algo": "deepscalper" if model_type == "deepscalper" else "ppo",
            "symbol": symbol, "interval": "1d", "validation": {"sharpe_ratio": 0.1 * n}, "status": "ok",
            "training": {"steps": 1000 * n, "best_step": 500 * n}}
    record, _ = registry.register(model, meta, promote=promote, reason="test")
    return record.run_id


@pytest.fixture()
def registry_runs(workspace):
    registry = Registry()
    ids = {"first": _register(registry, 1, True), "second": _register(registry, 2, True)}
    for n in (3, 4, 5):
        ids[f"challenger{n}"] = _register(registry, n, False)
    ids["other"] = _register(registry, 6, False, symbol="OTHER")
    return registry, ids


def test_list_shows_every_run_with_champion_rollback_target_test_sharpe_and_size(registry_runs, capsys):
    _registry, ids = registry_runs
    results = Path("results")
    results.mkdir()
    (results / "model_comparison_SYN_20250101_000000.json").write_text(json.dumps(
        {"split": "test", "models": {ids["second"]: {"status": "ok", "sharpe_ratio": 0.75}}}))
    (results / "model_comparison_SYN_20240101_000000.json").write_text(json.dumps(
        {"split": "test", "models": {ids["second"]: {"status": "ok", "sharpe_ratio": -9.0}}}))
    assert train_bot.main(["--list", "--symbol", "SYN"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line[:8].isdigit()}
    assert set(lines) == {ids[k] for k in ("first", "second", "challenger3", "challenger4", "challenger5")}
    second = lines[ids["second"]].split()
    assert second[5:10] == ["1,000", "0.200", "0.750", "yes", "ok"]  # the newest test evaluation, not the old one
    assert "previous" in lines[ids["first"]].split()
    assert "KB" in lines[ids["challenger5"]]
    assert "5 run(s)" in out
    assert train_bot.main(["--list"]) == 0
    assert ids["other"] in capsys.readouterr().out


def test_show_prints_the_metadata_and_refuses_an_unknown_run(registry_runs, capsys):
    _registry, ids = registry_runs
    assert train_bot.main(["--show", ids["second"]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["champion"] is True and shown["metadata"]["run_id"] == ids["second"]
    assert shown["metadata"]["training"]["best_step"] == 1000
    assert train_bot.main(["--show", ids["second"][:-1] + "x"]) == 1
    err = capsys.readouterr().err
    assert "no registered run" in err and "did you mean" in err and "\n" not in err.strip()


def _checkpoint(name: str, updated: str, status: str = "running", symbol: str = "SYN") -> Path:
    folder = checkpoints_root() / name
    folder.mkdir(parents=True)
    (folder / "model_1.zip").write_bytes(b"x" * 5000)
    (folder / STATE_FILE).write_text(json.dumps({
        "status": status, "updated": updated, "run_id": name,
        "spec": {"symbol": symbol, "interval": "1d", "model_type": "deepscalper", "algo": "deepscalper"}}))
    return folder


def test_prune_keeps_the_newest_the_champion_and_the_rollback_target(registry_runs, capsys):
    registry, ids = registry_runs
    champions_before = (registry.root / CHAMPIONS_FILE).read_text()
    old = _checkpoint("SYN_1d_deepscalper_old", "1")
    busy = _checkpoint("SYN_1d_deepscalper_busy", "2")
    newest = _checkpoint("SYN_1d_deepscalper_newest", "3")
    held = WorkspaceLock(busy / RUN_LOCK, role="training")
    assert held.acquire()
    no_shadows = ["--set", "trading.shadow_challengers=0"]
    try:
        assert stale_checkpoints() == [busy, old]
        assert train_bot.main(["--prune", "--keep", "1", "--dry-run", *no_shadows]) == 0
        dry = capsys.readouterr().out
        assert f"would remove run SYN_1d_deepscalper_{ids['challenger4']}" in dry and "would prune 2 run(s)" in dry
        assert len(registry.runs()) == 6 and old.exists()  # nothing removed
        assert train_bot.main(["--prune", "--keep", "1", *no_shadows]) == 0
    finally:
        held.release()
    out = capsys.readouterr().out
    left = {r.run_id for r in registry.runs()}
    assert left == {ids["first"], ids["second"], ids["challenger5"], ids["other"]}
    assert f"removed run SYN_1d_deepscalper_{ids['challenger3']}" in out and "removed checkpoint " in out
    assert "pruned 2 run(s) and 1 stale checkpoint(s), freed" in out
    assert not old.exists() and busy.exists() and newest.exists()  # a process trains `busy`; `newest` resumes
    assert (registry.root / CHAMPIONS_FILE).read_text() == champions_before
    assert registry.rollback("SYN", "1d", "deepscalper").run_id == ids["first"]  # the rollback still works
    assert not list(registry.root.glob(f".*{PRUNING_SUFFIX}"))


def test_prune_keeps_the_challengers_trading_in_shadow(registry_runs, capsys):
    """The newest trading.shadow_challengers challengers (2 by default) trade on paper beside the champion and
    can be promoted on that evidence: --prune keeps them whatever --keep says, and --list marks them."""
    registry, ids = registry_runs
    assert train_bot.main(["--list", "--symbol", "SYN"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line[:8].isdigit()}
    assert [k for k in ("challenger3", "challenger4", "challenger5") if "shadow" in lines[ids[k]]] == \
        ["challenger4", "challenger5"]
    assert train_bot.main(["--prune", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert {r.run_id for r in registry.runs()} == {ids[k] for k in ("first", "second", "challenger4",
                                                                      "challenger5", "other")}
    assert "pruned 1 run(s)" in out and "shadow challengers" in out
    # the paper accounts choose their shadows by the same rule
    records = registry.runs(symbol="SYN")
    assert [r.run_id for r in Registry.shadow_runs(records, 2)] == [ids["challenger5"], ids["challenger4"]]


def test_prune_needs_keep_and_trains_nothing(workspace, capsys):
    for argv in (["--prune"], ["--keep", "2"], ["--prune", "--keep", "0"], ["--list", "--steps", "5"],
                 ["--list", "--show", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            train_bot.main(argv)
        assert exit_info.value.code == 2, argv
    assert "--prune needs --keep N" in capsys.readouterr().err


def test_an_interrupted_prune_is_finished_by_recover(registry_runs):
    registry, ids = registry_runs
    record = registry.get(ids["challenger3"])
    doomed = record.path.with_name(f".{record.path.name}{PRUNING_SUFFIX}")
    record.path.rename(doomed)  # what a kill -9 between the rename and the delete leaves
    assert ids["challenger3"] not in {r.run_id for r in registry.runs()}
    assert doomed in registry.recover() and not doomed.exists()


# --- Optuna: one line per finished trial -----------------------------------------------------------------------

def test_one_log_line_per_finished_trial_with_the_best_so_far(caplog):
    import optuna

    from training.hpo import trial_line

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    values = iter([0.5, 0.9, float("nan"), None, 0.7])

    def objective(trial):
        trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
        trial.suggest_categorical("hidden_size", [32, 64])
        value = next(values)
        if value is None:
            trial.report(-1.5, 40)
            raise optuna.TrialPruned()
        return value

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    lines: list[str] = []
    study.optimize(objective, n_trials=5, callbacks=[lambda s, t: lines.append(trial_line(s, t))])
    assert len(lines) == 5
    assert lines[0].startswith("trial 0 finished: validation Sharpe 0.500, params {learning_rate: ")
    assert "hidden_size: " in lines[0] and lines[0].endswith("best so far: trial 0, 0.500")
    assert lines[1].endswith("best so far: trial 1, 0.900")
    assert lines[2].startswith("trial 2 fail") and lines[2].endswith("best so far: trial 1, 0.900")
    assert lines[3].startswith("trial 3 pruned at step 40 (validation Sharpe -1.500)")
    assert lines[4].startswith("trial 4 finished: validation Sharpe 0.700") and lines[4].endswith("trial 1, 0.900")
    first = optuna.create_study(direction="maximize")
    first.optimize(lambda t: float("nan"), n_trials=1, callbacks=[lambda s, t: lines.append(trial_line(s, t))])
    assert lines[-1].endswith("no completed trial yet")
    logging.getLogger(__name__).info("%s", lines[0])
