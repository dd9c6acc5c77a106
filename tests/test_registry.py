"""agents.registry: run folders, checksums, champion promotion, backups, concurrent writers."""
from __future__ import annotations

import json
import math
import multiprocessing as mp

import gymnasium as gym
import numpy as np
import pytest

from agents import load_registered
from agents.registry import Registry
from botcore.errors import ModelFileError, UserError


def _meta(sharpe, symbol="AAPL", model_type="backtrader", algo="ppo", interval="1d"):
    return {"model_type": model_type, "algo": algo, "symbol": symbol, "interval": interval,
            "validation": {"sharpe_ratio": sharpe}, "seed": 1}


def _file(tmp_path, content=b"model bytes", name="m.zip"):
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_register_writes_folder_metadata_and_checksum(workspace):
    reg = Registry()
    src = _file(workspace, b"abc")
    record, decision = reg.register(src, _meta(1.0, symbol="brk-b"))
    assert record.path.parent == workspace / "models"
    assert record.path.name == f"BRK-B_1d_backtrader_{record.run_id}"
    assert record.model_path.read_bytes() == b"abc"
    meta = json.loads((record.path / "metadata.json").read_text())
    # sha256 of b"abc", hand-checked against hashlib
    assert meta["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert meta["symbol"] == "BRK-B" and meta["promotion"]["promoted"] is True
    assert decision.promoted and record.is_champion
    reg.verify(record)
    assert reg.get(record.run_id).run_id == record.run_id
    assert reg.get(record.path).run_id == record.run_id
    assert reg.get(record.model_path).run_id == record.run_id


def test_the_registry_records_the_rules_decision_keeps_a_history_and_rolls_back(workspace, capsys):
    reg = Registry()
    first, d1 = reg.register(_file(workspace), _meta(1.0), promote=True, reason="first model that beats the baseline")
    kept, d2 = reg.register(_file(workspace), _meta(3.0), promote=False, reason="not significantly better")
    assert d1.promoted and not d2.promoted and d2.reason == "not significantly better"
    assert kept.metadata["promotion"]["reason"] == "not significantly better"
    assert reg.champion("AAPL", "1d", "backtrader").run_id == first.run_id
    better, d3 = reg.register(_file(workspace), _meta(1.2), promote=True, reason="significantly better")
    assert d3.promoted and d3.previous_champion == first.run_id and d3.champion_score == 1.0
    assert reg.champion("aapl", "1d", "backtrader").run_id == better.run_id
    history = reg.champion_history("AAPL/1d/backtrader")
    assert [(e["run_id"], e["previous"], e["reason"]) for e in history] == [
        (first.run_id, None, "first model that beats the baseline"),
        (better.run_id, first.run_id, "significantly better")]
    # other keys are independent
    reg.register(_file(workspace), _meta(float("nan"), model_type="deepscalper", algo="deepscalper"), promote=False)
    assert reg.champion("AAPL", "1d", "deepscalper") is None
    flags = {r.run_id: r.is_champion for r in reg.runs(symbol="AAPL", model_type="backtrader")}
    assert sum(flags.values()) == 1 and flags[better.run_id]
    # rollback restores the previous champion with its files and metadata, and is itself recorded
    restored = reg.rollback("AAPL", "1d", "backtrader")
    assert restored.run_id == first.run_id and reg.champion("AAPL", "1d", "backtrader").run_id == first.run_id
    assert reg.champion_history("AAPL/1d/backtrader")[-1]["reason"] == f"rollback from {better.run_id}"
    with pytest.raises(UserError, match="no earlier champion"):
        reg.rollback("AAPL", "1d", "backtrader")
    with pytest.raises(UserError, match="no champion"):
        reg.rollback("AAPL", "1d", "deepscalper")


def test_runs_newest_first_and_filters(workspace):
    reg = Registry()
    ids = [reg.register(_file(workspace), _meta(0.1 * i, symbol=s), run_id=f"20240101T00000{i}_aaaaa{i}")[0].run_id
           for i, s in enumerate(["AAPL", "MSFT", "AAPL"])]
    assert [r.run_id for r in reg.runs()] == ids[::-1]
    assert [r.run_id for r in reg.runs(symbol="aapl")] == [ids[2], ids[0]]
    assert reg.runs(interval="1h") == []
    (workspace / "models" / "checkpoints" / "x").mkdir(parents=True)
    broken = workspace / "models" / "AAPL_1d_backtrader_broken"
    broken.mkdir()
    (broken / "metadata.json").write_text("{not json")
    assert len(reg.runs()) == 3
    with pytest.raises(ModelFileError, match="unreadable"):
        reg.get(broken)


def test_unknown_run_lists_known_ids(workspace):
    reg = Registry()
    record, _ = reg.register(_file(workspace), _meta(1.0), run_id="20240101T000000_abcdef")
    with pytest.raises(UserError, match="known runs: 20240101T000000_abcdef") as info:
        reg.get("20240101T000000_abcdeg")
    assert "did you mean '20240101T000000_abcdef'" in str(info.value)


def test_tampered_truncated_and_missing_files_are_refused(workspace):
    reg = Registry()
    record, _ = reg.register(_file(workspace, b"x" * 1000), _meta(1.0))
    record.model_path.write_bytes(b"x" * 999 + b"y")
    with pytest.raises(ModelFileError, match=f"{record.model_path}.*sha256"):
        reg.verify(record)
    with pytest.raises(ModelFileError, match="sha256"):
        load_registered(reg, record)
    record.model_path.write_bytes(b"x" * 500)
    with pytest.raises(ModelFileError, match="modified or truncated"):
        load_registered(reg, record)
    record.model_path.unlink()
    with pytest.raises(ModelFileError, match="missing"):
        reg.verify(record)


def test_sb3_round_trip_and_corrupt_zip(workspace):
    from stable_baselines3 import PPO

    from agents.sb3_agent import save_sb3

    env = gym.make("CartPole-v1")  # per-element observation bounds, up to float32 max: a list in model.json
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0)
    model.learn(32)
    save_sb3(model, "ppo", {"n_steps": 32, "batch_size": 32, "n_epochs": 1, "net_arch": [8]}, workspace / "ppo.zip")
    reg = Registry()
    record, _ = reg.register(workspace / "ppo.zip", _meta(0.3))
    policy = load_registered(reg, record)
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    assert np.array_equal(policy.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    # a garbage file whose checksum was (maliciously or carelessly) updated: the load error names the file
    record.model_path.write_bytes(b"not a zip at all")
    meta = dict(record.metadata, sha256=__import__("hashlib").sha256(b"not a zip at all").hexdigest())
    (record.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=f"{record.model_path}.*PPO"):
        load_registered(reg, reg.get(record.run_id))


def test_backups_before_replacing_champions_and_pruning(workspace):
    reg = Registry(keep_backups=2)
    runs = [reg.register(_file(workspace), _meta(float(i)))[0] for i in range(5)]
    backups = reg.backups()
    assert len(backups) == 2  # four replacements of champions.json, pruned to 2
    newest = json.loads((backups[-1] / "champions.json").read_text())
    assert newest == {"AAPL/1d/backtrader": runs[3].run_id}  # the version that was replaced
    assert json.loads((workspace / "models" / "champions.json").read_text()) == {"AAPL/1d/backtrader": runs[4].run_id}
    folder = reg.backup([runs[0].model_path])
    assert (folder / runs[0].path.name / "model.zip").read_bytes() == b"model bytes"
    assert len(reg.backups()) == 2 and folder in reg.backups()


def test_set_champion_rolls_back(workspace):
    reg = Registry()
    a, _ = reg.register(_file(workspace), _meta(1.0))
    b, _ = reg.register(_file(workspace), _meta(2.0))
    assert reg.champion("AAPL", "1d", "backtrader").run_id == b.run_id
    reg.set_champion(a)
    assert reg.champion("AAPL", "1d", "backtrader").run_id == a.run_id
    a.model_path.write_bytes(b"tampered")
    with pytest.raises(ModelFileError):
        reg.set_champion(a)


def _register_many(root, symbol, n):
    reg = Registry(root)
    src = root.parent / f"{symbol}.zip"
    src.write_bytes(symbol.encode())
    for i in range(n):
        reg.register(src, _meta(float(i), symbol=symbol))


def test_concurrent_writers_keep_every_champion(tmp_path):
    root = tmp_path / "models"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(root, s, 4)) for s in ("AAA", "BBB")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    champions = json.loads((root / "champions.json").read_text())
    assert set(champions) == {"AAA/1d/backtrader", "BBB/1d/backtrader"}
    reg = Registry(root)
    assert all(math.isclose(reg.get(rid).score, 3.0) for rid in champions.values())


def test_train_bot_rollback_restores_the_previous_champion(workspace, capsys):
    import train_bot

    reg = Registry()
    first, _ = reg.register(_file(workspace), _meta(1.0), promote=True, reason="first")
    second, _ = reg.register(_file(workspace), _meta(2.0), promote=True, reason="better")
    assert train_bot.main(["--rollback", "AAPL", "--model-type", "backtrader", "--quiet"]) == 0
    assert f"champion is again {first.run_id}" in capsys.readouterr().out
    assert reg.champion("AAPL", "1d", "backtrader").run_id == first.run_id
    assert train_bot.main(["--rollback", "AAPL", "--quiet"]) == 1  # nothing earlier than the first champion
    assert "no earlier champion" in capsys.readouterr().err
    assert train_bot.main(["--rollback", "MSFT", "--quiet"]) == 1
