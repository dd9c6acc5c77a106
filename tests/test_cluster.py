"""Jobs on a Ray cluster: a real two-node cluster on this machine (two `ray start` processes, one CPU each)
trains the same models as the local worker pool with the same seeds, registers them on the driver, replays a
walk-forward with the same results, and finishes a job whose worker is killed mid-job, from its checkpoint.

The cluster's processes are started in their own process groups and only those groups are ended at teardown
(never `ray stop`, which would end every Ray process of the machine); Ray's session files go to a temporary
folder.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from ray_local import local_ray_cluster

import data_pipeline
import evaluate_bot
import train_bot
from agents.config import load_config
from agents.registry import Registry
from botcore.errors import UserError
from botcore.signals import StopFlag
from training.job import JobSpec

TINY = {
    "symbols": ["AAA"],
    "data": {"source": "synthetic"},
    "env": {"window": 8, "episode_length": 64},
    "sb3": {"net_arch": [16], "n_steps": 64, "batch_size": 32},
    "deepscalper": {"hidden_size": 16, "batch_size": 16, "learning_starts": 50, "buffer_size": 5000,
                    "target_update_interval": 50},
    "training_params": {"steps": 192, "checkpoint_every": 64, "eval_every": 64, "engine": "fast", "algo": "a2c"},
    "evaluation": {"bootstrap_samples": 50},
}


def test_a_bad_cluster_address_is_one_line_and_exit_2(workspace, capsys):
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "AAA", "--cluster", "nohost"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cluster.address" in err[0] and "ray://HOST:PORT" in err[0]


def test_the_cluster_without_ray_installed_is_one_clear_line(monkeypatch):
    from training import cluster

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees
    with pytest.raises(UserError, match="pip install -r requirements-ray.txt"):
        cluster.RayRunner("auto")


def test_config_without_a_cluster_runs_on_this_machine():
    from training.cluster import LocalRunner, make_runner

    runner = make_runner(load_config(), 2)
    assert isinstance(runner, LocalRunner) and runner.workers == 2 and not runner.remote


def test_a_shipped_dataset_is_read_back_hash_checked_and_a_changed_byte_is_refused(workspace, monkeypatch):
    from botcore.errors import DataError
    from datafeed.dataset import Dataset
    from training.cluster import ShippedDataset

    assert data_pipeline.main(["--symbols", "AAA", "--source", "synthetic", "--bars", "300", "--quiet"]) == 0
    shipped = ShippedDataset.read("AAA", "1d")
    original = Dataset.open("AAA", "1d").split("val")
    worker = workspace / "worker"
    shipped.write(worker)
    monkeypatch.chdir(worker)
    assert Dataset.open("AAA", "1d").split("val").equals(original)
    name = next(n for n in shipped.files if n.endswith("_val_data.parquet"))
    content = bytearray(shipped.files[name])
    content[-3] = ord("7") if content[-3] != ord("7") else ord("8")
    (worker / name).write_bytes(bytes(content))
    with pytest.raises(DataError, match="does not match its manifest"):
        Dataset.open("AAA", "1d").split("val")


def test_shipped_files_cannot_leave_the_workspace(tmp_path):
    from training.cluster import unpack

    for name in ("../escape.txt", "/etc/escape.txt", "data/../../escape.txt"):
        with pytest.raises(UserError, match="outside the workspace"):
            unpack(tmp_path / "ws", {name: b"x"})
    assert not (tmp_path / "escape.txt").exists()


@pytest.fixture(scope="module")
def ray_cluster():
    """A head (one CPU) and a second node (one CPU) on this machine; yields the head's address."""
    with local_ray_cluster(2, timeout=120) as address:
        yield address


def _prepared(root: Path, symbols: list[str]) -> Path:
    root.mkdir(parents=True)
    old = os.getcwd()
    os.chdir(root)
    try:
        (root / "training_config.json").write_text(json.dumps(TINY))
        for i, symbol in enumerate(symbols):
            assert data_pipeline.main(["--symbols", symbol, "--source", "synthetic", "--seed", str(i + 3),
                                       "--bars", "500", "--quiet"]) == 0
    finally:
        os.chdir(old)
    return root


def _session(root: Path) -> dict:
    return json.loads(max((root / "results").glob("training_session_*.json")).read_text())


def _same(job: dict) -> tuple:
    return (job["symbol"], job["model_type"], job["status"], job["steps"], job["val_sharpe"], job["train_sharpe"],
            job["best_step"], job["promoted"], job["model_status"])


@pytest.mark.slow
def test_four_jobs_on_two_nodes_match_the_local_pool(ray_cluster, tmp_path, monkeypatch):
    local = _prepared(tmp_path / "local", ["AAA", "BBB"])
    remote = tmp_path / "remote"
    shutil.copytree(local, remote)
    argv = ["--model-type", "both", "--symbol", "AAA", "BBB", "--workers", "2", "--quiet"]
    monkeypatch.chdir(local)
    assert train_bot.main(argv) == 0
    monkeypatch.chdir(remote)
    assert train_bot.main([*argv, "--cluster", ray_cluster]) == 0
    a, b = _session(local)["jobs"], _session(remote)["jobs"]
    assert len(a) == 4 and [_same(j) for j in a] == [_same(j) for j in b]
    runs = Registry(remote / "models").runs()
    assert len(runs) == 4 and all(r.metadata["trained_on"]["backend"] == "ray" for r in runs)
    for run in runs:  # registered on the driver, with curves written under its results/
        assert Path(run.metadata["training"]["curves"]).parent == remote / "results" / "training_curves"
        assert (Path(run.metadata["training"]["curves"]) / "curves.csv").is_file()
    assert not list((remote / "models" / "checkpoints").glob("*")) if (remote / "models" / "checkpoints").is_dir() \
        else True


@pytest.mark.slow
def test_a_walk_forward_on_the_cluster_matches_the_local_pool(ray_cluster, tmp_path, monkeypatch):
    local = _prepared(tmp_path / "local", ["WF"])
    remote = tmp_path / "remote"
    shutil.copytree(local, remote)
    argv = ["--symbol", "WF", "--walk-forward", "--model-type", "deepscalper", "--train-bars", "200", "--test-bars",
            "30", "--folds", "2", "--steps", "96", "--workers", "2", "--quiet"]
    reports = []
    for root, extra in ((local, []), (remote, ["--cluster", ray_cluster])):
        monkeypatch.chdir(root)
        assert evaluate_bot.main([*argv, *extra]) == 0
        reports.append(json.loads(next((root / "results").glob("walkforward_WF_*.json")).read_text()))
    assert reports[0]["loops"] == reports[1]["loops"]  # validation Sharpes, promotions, test Sharpes, trades
    assert reports[0]["stitched"] == reports[1]["stitched"]


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_retried_and_resumes_from_its_checkpoint(ray_cluster, tmp_path, monkeypatch):
    from training.cluster import RayRunner

    root = _prepared(tmp_path / "ws", ["AAA"])
    monkeypatch.chdir(root)
    cfg = load_config()
    spec = JobSpec(symbol="AAA", interval="1d", model_type="backtrader", algo="a2c", engine="fast", cfg=cfg,
                   steps=12800, seed=7, checkpoint_every=64, eval_every=0, quiet=True)
    runner = RayRunner(ray_cluster)
    results: list = []
    try:
        worker = threading.Thread(target=lambda: results.extend(runner.run_jobs([spec], StopFlag())), daemon=True)
        worker.start()
        deadline = time.monotonic() + 180
        pid = None
        while time.monotonic() < deadline and pid is None:
            time.sleep(0.2)
            has = runner.ray.get(runner.store.has_checkpoint.remote("job0"))
            pid = runner.ray.get(runner.store.running_jobs.remote()).get("job0") if has else None
        assert pid is not None, "the job never shipped a checkpoint"
        os.kill(pid, signal.SIGKILL)
        worker.join(300)
    finally:
        runner.close()
    assert len(results) == 1
    result = results[0]
    assert result.status == "finished" and result.resumed, result
    assert result.steps == 12800  # a multiple of the rollout: as an uninterrupted run
    assert Registry(root / "models").runs()[0].run_id == result.run_id


@pytest.mark.slow
def test_a_stop_on_the_cluster_checkpoints_on_the_driver_and_resume_continues_there(ray_cluster, tmp_path,
                                                                                     monkeypatch):
    from training.cluster import RayRunner

    root = _prepared(tmp_path / "ws", ["AAA"])
    monkeypatch.chdir(root)
    cfg = load_config()
    spec = JobSpec(symbol="AAA", interval="1d", model_type="backtrader", algo="a2c", engine="fast", cfg=cfg,
                   steps=12800, seed=7, checkpoint_every=64, eval_every=0, quiet=True)
    runner = RayRunner(ray_cluster)
    stop = StopFlag()
    results: list = []
    try:
        worker = threading.Thread(target=lambda: results.extend(runner.run_jobs([spec], stop)), daemon=True)
        worker.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not runner.ray.get(runner.store.has_checkpoint.remote("job0")):
            time.sleep(0.2)
        stop.request()
        worker.join(120)
    finally:
        runner.close()
    assert results and results[0].status == "stopped", results
    states = list((root / "models" / "checkpoints").glob("*/state.json"))
    assert len(states) == 1  # the job's checkpoint, shipped back to the driver's workspace
    stopped_at = json.loads(states[0].read_text())["num_timesteps"]
    assert 0 < stopped_at < 12800
    runner = RayRunner(ray_cluster)
    try:
        again = runner.run_jobs([JobSpec(**{**spec.to_dict(), "cfg": cfg, "resume": True})], StopFlag())
    finally:
        runner.close()
    assert again[0].status == "finished" and again[0].resumed and again[0].run_id == results[0].run_id
    assert again[0].steps == 12800 and not list((root / "models" / "checkpoints").glob("*/state.json"))


@pytest.mark.slow
def test_optuna_workers_on_the_cluster_fill_one_study(ray_cluster, tmp_path, monkeypatch):
    import optuna

    root = _prepared(tmp_path / "ws", ["AAA"])
    monkeypatch.chdir(root)
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "AAA", "--optimize", "--trials", "2",
                           "--workers", "2", "--steps", "96", "--cluster", ray_cluster, "--quiet"]) == 0
    study = optuna.load_study(study_name="AAA_1d_deepscalper_deepscalper",
                              storage=f"sqlite:///{root / 'results' / 'optuna.db'}")
    assert len(study.trials) == 2 and all(t.state.is_finished() for t in study.trials)
    (job,) = _session(root)["jobs"]
    assert job["status"] == "finished"  # the best trial's model, trained and registered on the driver
