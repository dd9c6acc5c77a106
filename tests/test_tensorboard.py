"""TensorBoard: both model families write scalars under results/tensorboard/<run folder> (named like the registry's
run), read back here with TensorBoard's own EventAccumulator; the CSV curves stay, and the switch turns it off."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import data_pipeline
import train_bot
from agents.registry import Registry

SMALL = ["--set", "deepscalper.learning_starts=200", "--set", "deepscalper.buffer_size=4000",
         "--set", "deepscalper.hidden_size=16", "--set", "sb3.n_steps=128", "--set", "sb3.net_arch=[16]",
         "--eval-every", "600", "--quiet"]


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_both_families_write_scalars_under_their_run_folder(workspace):
    assert data_pipeline.main(["--symbols", "SYN", "--source", "synthetic", "--seed", "5", "--bars", "900",
                               "--quiet"]) == 0
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "SYN", "--steps", "1200", *SMALL]) == 0
    assert train_bot.main(["--model-type", "backtrader", "--engine", "fast", "--algo", "ppo", "--symbol", "SYN",
                           "--steps", "600", *SMALL]) == 0
    records = {r.algo: r for r in Registry().runs("SYN")}
    assert set(records) == {"deepscalper", "ppo"}
    assert sorted(p.name for p in (workspace / "results" / "tensorboard").iterdir()) == sorted(
        r.path.name for r in records.values())

    for record in records.values():
        scalars = _scalars(workspace / "results" / "tensorboard" / record.path.name)
        curves = _csv_rows(workspace / "results" / "training_curves" / record.path.name / "curves.csv")
        # the job's curves (both families): the same numbers as the CSV, which is kept
        for tag in ("eval/val_sharpe", "charts/episode_pnl"):
            expected = [(int(r["step"]), float(r["value"])) for r in curves if r["tag"] == tag]
            assert expected and [(s, pytest.approx(v, rel=1e-6)) for s, v in expected] == scalars[tag], tag

    ds = _scalars(workspace / "results" / "tensorboard" / records["deepscalper"].path.name)
    progress = _csv_rows(workspace / "results" / "training_curves" / records["deepscalper"].path.name /
                         "progress.csv")
    for tag in ("losses/td", "losses/aux", "charts/q_mean", "rollout/exploration_rate"):
        expected = [(int(r["time/total_timesteps"]), float(r[tag])) for r in progress if r[tag]]
        assert expected, f"progress.csv has no {tag}"
        assert [(s, pytest.approx(v, rel=1e-5)) for s, v in expected] == ds[tag], tag

    ppo = _scalars(workspace / "results" / "tensorboard" / records["ppo"].path.name)
    assert {"train/loss", "train/value_loss", "train/entropy_loss"} <= set(ppo)


@pytest.mark.slow
def test_the_switch_turns_tensorboard_off_and_keeps_the_csv(workspace):
    assert data_pipeline.main(["--symbols", "SYN", "--source", "synthetic", "--seed", "5", "--bars", "900",
                               "--quiet"]) == 0
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "SYN", "--steps", "600", *SMALL,
                           "--set", "training_params.tensorboard=false"]) == 0
    (record,) = Registry().runs("SYN")
    assert not (workspace / "results" / "tensorboard").exists()
    assert (workspace / "results" / "training_curves" / record.path.name / "curves.csv").is_file()


def test_curves_write_each_scalar_to_the_csv_and_to_tensorboard(tmp_path):
    from training.checkpoints import Curves

    curves = Curves(tmp_path / "curves" / "curves.csv", None, tmp_path / "tb")
    for step, value in ((10, 1.5), (20, -0.25)):
        curves.add(step, "eval/val_sharpe", value)
    curves.add(15, "charts/episode_pnl", 123.0)
    curves.close()
    assert _scalars(tmp_path / "tb") == {"eval/val_sharpe": [(10, 1.5), (20, -0.25)],
                                         "charts/episode_pnl": [(15, 123.0)]}
    assert [r["tag"] for r in _csv_rows(tmp_path / "curves" / "curves.csv")] == [
        "eval/val_sharpe", "eval/val_sharpe", "charts/episode_pnl"]
    plain = Curves(tmp_path / "plain" / "curves.csv", None)  # no folder: CSV only
    plain.add(1, "eval/val_sharpe", 0.5)
    plain.close()
    assert not (tmp_path / "plain" / "tb").exists()


def test_deepscalper_rows_are_mirrored_once_whole_lines_only(tmp_path):
    from agents.deepscalper_agent import _ProgressMirror

    progress = tmp_path / "progress.csv"
    progress.write_text("time/total_timesteps,losses/td,charts/episode_pnl,rollout/exploration_rate\n"
                        "1000,,5.0,0.5\n")
    mirror = _ProgressMirror(progress, tmp_path / "tb")  # rows already there: a resumed run's, copied before
    with open(progress, "a") as fh:
        fh.write("2000,0.25,7.0,0.1\n3000,0.125,")  # the last row is still being written
    mirror.sync()
    with open(progress, "a") as fh:
        fh.write("1.0,0.05\n")
    mirror.sync()
    mirror.sync()  # nothing new: nothing written twice
    mirror.close()
    assert _scalars(tmp_path / "tb") == {"losses/td": [(2000, 0.25), (3000, 0.125)],
                                         "rollout/exploration_rate": [(2000, pytest.approx(0.1)),
                                                                      (3000, pytest.approx(0.05))]}
