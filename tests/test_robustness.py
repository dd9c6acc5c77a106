"""No run lost, no run stuck: Ctrl-C with worker processes, all-or-nothing registration, one process per run,
datasets replaced as a whole, and the clean-up of what crashes leave behind."""
from __future__ import annotations

import concurrent.futures as cf
import errno
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from tiny import copy_prepared, prepare_root, tiny_config

import data_pipeline
import train_bot
from agents.registry import Registry
from botcore import paths
from botcore.atomic import atomic_write_json, remove_stale_temp_files
from botcore.errors import DataError, ModelFileError, UserError
from botcore.lock import WorkspaceLock
from botcore.signals import StopFlag
from datafeed.dataset import Dataset, load_manifest, load_split
from datafeed.splits import SPLITS, switch_pending
from training import checkpoints
from training import job as training
from training.workers import run_in_workers

REPO = Path(__file__).resolve().parent.parent

TINY_CONFIG = tiny_config(["SYN"], {"steps": 128, "checkpoint_every": 64})
A2C = ["--model-type", "backtrader", "--algo", "a2c", "--engine", "fast", "--symbol", "SYN", "--quiet"]


def _pipeline(seed: int) -> list[str]:
    return ["--symbols", "SYN", "--source", "synthetic", "--seed", str(seed), "--bars", "500", "--quiet"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """data/ of one synthetic symbol (seed 7), made once by data_pipeline.py's own main."""
    return prepare_root(tmp_path_factory.mktemp("prepared"), TINY_CONFIG, bars=500)


@pytest.fixture()
def ws(workspace, prepared):
    return copy_prepared(prepared, workspace)


# --- 1. Ctrl-C with worker processes -----------------------------------------------------------------------

def _load_bench():
    spec = importlib.util.spec_from_file_location("ctrl_c_both", REPO / "bench" / "ctrl_c_both.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ctrl_c_during_both_ends_every_process_quickly_and_resume_continues(tmp_path, monkeypatch):
    """SIGINT to train_bot.py's whole process group (a terminal's Ctrl-C) at seeded random moments: while it
    starts, while its two workers start, after their first checkpoints. bench/ctrl_c_both.py runs 20 tries
    (and resumes each stopped run in a subprocess); here 5, and one resume of each model type in-process."""
    bench = _load_bench()
    results = bench.run_tries(5, parallel=2, seed=0, limit=10.0, root=tmp_path)
    for r in results:
        print(r.line())
    assert [r.problems for r in results] == [[]] * 5
    assert all(r.exit_code in (130, -signal.SIGINT) and r.stop_seconds < 10 for r in results)
    (stopped,) = [r for r in results if r.moment == "checkpoint"]
    assert len(stopped.checkpoints) == 2
    monkeypatch.chdir(tmp_path / f"try_{stopped.index:02d}")
    real_step = training.Job._step
    for model_type, folder in [(name.split("_")[2], name) for name in stopped.checkpoints]:
        at = stopped.checkpoints[folder]

        def step_then_signal(job, steps, *rest, at=at):
            if steps == at + 70:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_step(job, steps, *rest)

        monkeypatch.setattr(training.Job, "_step", step_then_signal)
        assert train_bot.main([*bench.TRAIN, "--model-type", model_type, "--resume"]) == 128 + signal.SIGTERM
        state = json.loads((Path("models/checkpoints") / folder / "state.json").read_text())
        assert state["num_timesteps"] > at + 64, (model_type, at, state["num_timesteps"])


def _started(marker: Path) -> None:
    marker.write_text(str(os.getpid()))


def _returns_at_stop(marker: str, stop: StopFlag) -> str:
    os.kill(os.getpid(), signal.SIGINT)  # a terminal's Ctrl-C reaches the workers too: they must ignore it
    _started(Path(marker))
    while not stop.requested:
        time.sleep(0.02)
    return "stopped cleanly"


def _ignores_stop(marker: str, stop: StopFlag) -> str:
    stop.requested  # noqa: B018 - polled once: it has reached a safe point, so it is not abandoned
    _started(Path(marker))
    time.sleep(600)
    return "never"


def _sleeps_before_polling(marker: str, stop: StopFlag) -> str:
    _started(Path(marker))
    time.sleep(600)  # set-up that never polls the flag: a stop ends it at once
    return "never"


def _dies_at_stop(marker: str, stop: StopFlag) -> str:
    _started(Path(marker))
    while not stop.requested:
        time.sleep(0.02)
    os._exit(3)


@pytest.mark.slow
def test_run_in_workers_stop_policy(tmp_path):
    """One SIGTERM per worker on a stop: a worker that polls returns its result (it ignored SIGINT), one still
    setting up ends at once, one that ignores the stop is killed after the grace period, one that dies is
    reported, and a call not started yet is skipped."""
    calls = [(_returns_at_stop, (str(tmp_path / "a"),)), (_ignores_stop, (str(tmp_path / "b"),)),
             (_sleeps_before_polling, (str(tmp_path / "c"),)), (_dies_at_stop, (str(tmp_path / "d"),)),
             (_returns_at_stop, (str(tmp_path / "never"),))]
    stop = StopFlag()

    def stop_when_started() -> None:
        deadline = time.monotonic() + 120
        while not all((tmp_path / m).exists() for m in "abcd") and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.request()

    threading.Thread(target=stop_when_started, daemon=True).start()
    outcomes = run_in_workers(calls, processes=4, stop=stop, grace_seconds=1.5, abandon_until_polled=True)
    assert [o.status for o in outcomes] == ["done", "died", "skipped", "died", "skipped"], outcomes
    assert outcomes[0].value == "stopped cleanly"
    assert "SIGKILL" in outcomes[1].error and "exit code 3" in outcomes[3].error
    assert not (tmp_path / "never").exists()
    assert not any(_alive(int((tmp_path / m).read_text())) for m in "abcd")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _InterruptedStop(StopFlag):
    """A stop flag whose polling raises KeyboardInterrupt once the worker has started (a second Ctrl-C)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker

    @property
    def requested(self) -> bool:
        if self.marker.exists():
            raise KeyboardInterrupt
        return False


def test_a_second_ctrl_c_kills_the_workers_at_once(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_in_workers([(_ignores_stop, (str(tmp_path / "a"),))], 1, _InterruptedStop(tmp_path / "a"))
    assert not _alive(int((tmp_path / "a").read_text()))


# --- 2. registration is all or nothing; one process per run -----------------------------------------------

def _meta(sharpe=1.0):
    return {"model_type": "backtrader", "algo": "ppo", "symbol": "AAPL", "interval": "1d",
            "validation": {"sharpe_ratio": sharpe}}


def _model(folder: Path, content: bytes = b"model bytes" * 1000) -> Path:
    path = folder / "m.zip"
    path.write_bytes(content)
    return path


def _disk_full_after(limit: int):
    """A shutil.copyfile that writes ``limit`` bytes, then fails as a full disk does."""

    def copyfile(src, dst, *args, **kwargs):
        with open(src, "rb") as fh, open(dst, "wb") as out:
            out.write(fh.read(limit))
        raise OSError(errno.ENOSPC, "No space left on device")

    return copyfile


def _models_listing(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()} - {".registry.lock"} if root.is_dir() else set()


def test_disk_full_during_registration_leaves_nothing_half_registered(workspace, monkeypatch):
    reg = Registry()
    first, _ = reg.register(_model(workspace), _meta(1.0))
    champions = (workspace / "models" / "champions.json").read_bytes()
    before = _models_listing(workspace / "models")
    with monkeypatch.context() as m:
        m.setattr("agents.registry.shutil.copyfile", _disk_full_after(100))
        with pytest.raises(ModelFileError, match="nothing was registered.*--resume"):
            reg.register(_model(workspace), _meta(5.0))

    def metadata_fails(path, obj, *a, **k):  # metadata.json is the other write
        if Path(path).name == "metadata.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return atomic_write_json(path, obj, *a, **k)

    with monkeypatch.context() as m:
        m.setattr("agents.registry.atomic_write_json", metadata_fails)
        with pytest.raises(ModelFileError, match="nothing was registered"):
            reg.register(_model(workspace), _meta(5.0))
    assert _models_listing(workspace / "models") == before  # no run folder, no staging folder
    assert (workspace / "models" / "champions.json").read_bytes() == champions
    assert [r.run_id for r in reg.runs()] == [first.run_id]
    second, decision = reg.register(_model(workspace), _meta(5.0))  # the next registration works
    assert decision.promoted and reg.champion("AAPL", "1d", "backtrader").run_id == second.run_id


def test_disk_full_writing_champions_keeps_the_run_as_a_challenger(workspace, monkeypatch):
    reg = Registry()
    first, _ = reg.register(_model(workspace), _meta(1.0))

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Registry, "_write_champion", full)
    record, decision = reg.register(_model(workspace), _meta(5.0))
    assert not decision.promoted and "could not be written" in decision.reason
    assert record.path.is_dir() and reg.champion("AAPL", "1d", "backtrader").run_id == first.run_id


def test_kill_9_mid_registration_is_cleaned_by_the_next_one(workspace, caplog):
    """A real SIGKILL just before the staged run folder is renamed into place."""
    source = _model(workspace)
    script = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from agents.registry import Registry\n"
        "os.rename = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"Registry().register({str(source)!r}, {_meta(1.0)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=workspace, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    (staging,) = [p for p in (workspace / "models").iterdir() if p.name.endswith(".staging")]
    assert (staging / "metadata.json").exists()
    assert Registry().runs() == []
    # an older version's leftover (a run folder without metadata) and a folder of the user's own
    (workspace / "models" / "AAPL_1d_backtrader_20240101T000000_abcdef").mkdir()
    (workspace / "models" / "my_notes").mkdir()
    with caplog.at_level(logging.WARNING, logger="agents.registry"):
        record, _ = Registry().register(source, _meta(1.0))
    assert sum("interrupted registration" in r.getMessage() for r in caplog.records) == 2
    assert _models_listing(workspace / "models") == {record.path.name, "champions.json", "champion_history.json",
                                                     "my_notes"}


def test_unreadable_champions_file_registers_a_challenger(workspace, caplog):
    reg = Registry()
    reg.register(_model(workspace), _meta(1.0))
    champions = workspace / "models" / "champions.json"
    champions.write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="agents.registry"):
        record, decision = reg.register(_model(workspace), _meta(9.0))
    assert not decision.promoted and "unreadable" in decision.reason
    assert record.metadata["promotion"]["promoted"] is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "champions.json" in warnings[0] and "challenger" in warnings[0]
    assert champions.read_text() == "{ not json"  # left for the user to restore from backup_*/


def test_registering_a_registered_run_again_returns_that_registration(workspace, caplog):
    reg = Registry()
    first, d1 = reg.register(_model(workspace), _meta(1.0), run_id="20240101T000000_abcdef")
    with caplog.at_level(logging.WARNING, logger="agents.registry"):
        again, d2 = reg.register(_model(workspace, b"other bytes"), _meta(2.0), run_id="20240101T000000_abcdef")
    assert again.path == first.path and again.metadata["sha256"] == first.metadata["sha256"]
    assert d2.promoted == d1.promoted and "already registered" in caplog.text
    assert len(reg.runs()) == 1


def test_disk_full_at_the_end_of_training_keeps_the_checkpoint_and_resume_registers(ws, monkeypatch, capsys):
    real_copyfile = shutil.copyfile
    monkeypatch.setattr("agents.registry.shutil.copyfile", _disk_full_after(10))
    assert train_bot.main(A2C) == 1
    assert "nothing was registered" in capsys.readouterr().err
    (folder,) = (ws / "models" / "checkpoints").iterdir()
    state = json.loads((folder / "state.json").read_text())
    assert state["status"] == "running" and state["num_timesteps"] == 128
    assert Registry().runs() == [] and not [p for p in (ws / "models").iterdir() if p.name.endswith(".staging")]
    monkeypatch.setattr("agents.registry.shutil.copyfile", real_copyfile)
    assert train_bot.main([*A2C, "--resume"]) == 0
    (record,) = Registry().runs()
    assert record.run_id == state["run_id"] and record.metadata["training"]["steps"] == 128
    assert not folder.exists()


def test_a_run_is_trained_by_one_process_at_a_time(ws, monkeypatch, capsys):
    real_step = training.Job._step

    def step_then_signal(job, steps, *rest):
        if steps == 100:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(job, steps, *rest)

    monkeypatch.setattr(training.Job, "_step", step_then_signal)
    args = [*A2C, "--steps", "256", "--checkpoint-every", "0"]
    assert train_bot.main(args) == 128 + signal.SIGTERM
    monkeypatch.setattr(training.Job, "_step", real_step)
    (folder,) = (ws / "models" / "checkpoints").iterdir()
    other = WorkspaceLock(folder / checkpoints.RUN_LOCK, role="training")  # another process training this run
    assert other.acquire(detail="SYN 1d backtrader/a2c")
    capsys.readouterr()
    try:
        assert train_bot.main([*args, "--resume"]) == 1
    finally:
        other.release()
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert any(f"run {folder.name} is being trained by another process, pid {os.getpid()}" in line for line in err)
    assert json.loads((folder / "state.json").read_text())["num_timesteps"] == 128  # untouched
    assert train_bot.main([*args, "--resume"]) == 0
    assert Registry().runs()[0].metadata["training"]["steps"] == 256


def test_claim_run_refuses_a_second_holder(workspace):
    folder = workspace / "models" / "checkpoints" / "SYN_1d_deepscalper_x"
    lock = checkpoints.claim_run(folder, "SYN 1d deepscalper")
    try:
        with pytest.raises(UserError, match="being trained by another process"):
            checkpoints.claim_run(folder, "SYN 1d deepscalper")
    finally:
        lock.release()
    checkpoints.claim_run(folder, "SYN 1d deepscalper").release()


# --- 3. a dataset is replaced as a whole --------------------------------------------------------------------

def _read_set(symbol="SYN", interval="1d") -> str:
    """Read the manifest and every split through the one reader; return the manifest's split hashes as the
    identity of the set (the reader has checked every split against them)."""
    manifest = load_manifest(symbol, interval)
    for name in SPLITS:
        load_split(symbol, interval, name)
    return json.dumps(manifest["hashes"], sort_keys=True)


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """The split hashes of the datasets seed 1 and seed 2 make (written in workspaces of their own)."""
    sets = {}
    old = os.getcwd()
    for seed in (1, 2):
        root = tmp_path_factory.mktemp(f"set{seed}")
        os.chdir(root)
        try:
            assert data_pipeline.main(_pipeline(seed)) == 0
            sets[seed] = _read_set()
        finally:
            os.chdir(old)
    assert sets[1] != sets[2]
    return sets


class _Crash(BaseException):
    """A process dying at this point (a BaseException: nothing in the code under test handles it)."""


def _crash_at_call(n: int, real):
    calls = 0

    def replace(*a, **k):
        nonlocal calls
        calls += 1
        if calls == n:
            raise _Crash
        return real(*a, **k)

    return replace


def test_a_crash_at_any_rename_leaves_the_old_set_or_the_new_one(workspace, two_sets, monkeypatch, caplog):
    assert data_pipeline.main(_pipeline(1)) == 0
    real_replace = os.replace
    n_replaces = 0

    def counting(*a, **k):
        nonlocal n_replaces
        n_replaces += 1
        return real_replace(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", counting)
        assert data_pipeline.main(_pipeline(2)) == 0  # one whole write, to count its renames
    assert _read_set() == two_sets[2]
    seen = set()
    for crash_at in range(1, n_replaces + 1):
        assert data_pipeline.main(_pipeline(1)) == 0
        with monkeypatch.context() as m, pytest.raises(_Crash):
            m.setattr(os, "replace", _crash_at_call(crash_at, real_replace))
            data_pipeline.main(_pipeline(2))
        pending = switch_pending("SYN", "1d")
        with caplog.at_level(logging.WARNING):
            got = _read_set()
        assert got in (two_sets[1], two_sets[2]), f"mixed set after a crash at rename {crash_at}"
        assert not pending or got == two_sets[2]  # a recorded replacement is completed by the next reader
        assert not switch_pending("SYN", "1d")
        seen.add("old" if got == two_sets[1] else "new")
    assert seen == {"old", "new"} and "completed the replacement" in caplog.text


def test_readers_never_see_a_mix_while_writers_replace_the_set(workspace, two_sets):
    assert data_pipeline.main(_pipeline(1)) == 0
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for seed in (2, 1, 2, 1, 2):
                assert data_pipeline.main(_pipeline(seed)) == 0
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads, replaced = 0, 0
    while not done.is_set():
        assert _read_set() in (two_sets[1], two_sets[2])
        dataset = Dataset.open("SYN", "1d")  # manifest now, splits later: may see a replacement in between
        try:
            for name in SPLITS:
                dataset.split(name)
        except DataError as exc:
            assert "was replaced" in str(exc) and "run the command again" in str(exc)
            replaced += 1
        reads += 1
    writer.join()
    assert not errors and reads > 0
    assert _read_set() == two_sets[2]


def _run_pipeline(ws: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "data_pipeline.py"), *_pipeline(seed)], cwd=ws,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _check_reader(ws: Path, sets: dict[int, str]) -> str:
    old = os.getcwd()
    os.chdir(ws)
    try:
        try:
            got = _read_set()
        except DataError as exc:
            assert "python data_pipeline.py --symbols SYN --interval 1d" in str(exc), str(exc)
            return "error"
        assert got in (sets[1], sets[2]), "a reader saw a mixed set"
        return "old" if got == sets[1] else "new"
    finally:
        os.chdir(old)


def _kill_9(ws: Path, at_write: bool, delay: float) -> None:
    proc = _run_pipeline(ws, 2)
    try:
        if at_write:  # just after the new set's first temporary file appears
            while proc.poll() is None and not list((ws / "data").glob(".SYN_1d_*.tmp")):
                time.sleep(0.001)
        time.sleep(delay)
        proc.kill()
    finally:
        proc.wait()


@pytest.mark.slow
def test_kill_9_of_data_pipeline_at_random_moments(tmp_path, two_sets):
    """A real SIGKILL of data_pipeline.py replacing a dataset, at random times or within 50 ms of the first
    temporary file of the new set (the write phase lasts milliseconds, so random times alone rarely reach it):
    a reader sees the old set or the new one, and the next run works."""
    rng = random.Random(3)
    tries = []
    old = os.getcwd()
    for i in range(4):
        ws = tmp_path / f"ws{i}"
        ws.mkdir()
        os.chdir(ws)
        try:
            assert data_pipeline.main(_pipeline(1)) == 0
        finally:
            os.chdir(old)
        at_write = i % 2 == 0
        tries.append((ws, at_write, rng.uniform(0.0, 0.05) if at_write else rng.uniform(0.5, 3.5)))
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda t: _kill_9(*t), tries))
    outcomes = [_check_reader(ws, two_sets) for ws, *_ in tries]  # one at a time: the reader uses the cwd
    assert set(outcomes) <= {"old", "new"}, outcomes
    for ws, *_ in tries:
        os.chdir(ws)
        try:
            assert data_pipeline.main(_pipeline(2)) == 0  # the next run always works, whatever the kill left
            assert _read_set() == two_sets[2]
        finally:
            os.chdir(old)


@pytest.mark.slow
def test_two_concurrent_data_pipeline_runs_leave_a_consistent_set(workspace, two_sets):
    assert data_pipeline.main(_pipeline(1)) == 0
    procs = [_run_pipeline(workspace, 1), _run_pipeline(workspace, 2)]
    assert [p.wait(120) for p in procs] == [0, 0], [p.stderr.read().decode() for p in procs]
    assert _read_set() in (two_sets[1], two_sets[2])
    assert not switch_pending("SYN", "1d")
    assert not list((workspace / "data").glob(".*.tmp"))


# --- 4. what crashes leave behind is cleaned up by the next run ---------------------------------------------

def _age(path: Path, seconds: float) -> Path:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))
    return path


def test_stale_temp_files_are_removed_and_fresh_ones_kept(tmp_path):
    old = tmp_path / ".state.json.abc123.tmp"
    old.write_text("x")
    _age(old, 3600)
    fresh = tmp_path / ".state.json.def456.tmp"
    fresh.write_text("x")
    mine = tmp_path / "notes.tmp"  # not a temporary file of an atomic write
    mine.write_text("x")
    _age(mine, 3600)
    assert remove_stale_temp_files(tmp_path) == [old]
    assert fresh.exists() and mine.exists()


def test_training_sweeps_what_crashed_runs_left(workspace, caplog):
    models = workspace / "models"
    root = models / "checkpoints"
    dead = root / "SYN_1d_deepscalper_20240101T000000_aaaaaa"  # killed before its first checkpoint
    live = root / "SYN_1d_deepscalper_20240101T000000_bbbbbb"  # another process, still setting up
    fresh = root / "SYN_1d_deepscalper_20240101T000000_cccccc"  # created a moment ago
    for folder in (dead, live, fresh):
        folder.mkdir(parents=True)
        (folder / ".lock").write_text("")
    stopped = root / "SYN_1d_backtrader_20240101T000000_dddddd"  # a stopped run: kept for --resume
    stopped.mkdir()
    (stopped / "state.json").write_text('{"status": "running"}')
    registered = root / "SYN_1d_backtrader_20240101T000000_eeeeee"  # killed between registering and removing
    registered.mkdir()
    (registered / "state.json").write_text('{"status": "finished"}')
    tmp_in_run = (stopped / ".state.json.zzz.tmp")
    tmp_in_run.write_text("half")
    tmp_in_models = models / ".champions.json.yyy.tmp"
    tmp_in_models.write_text("half")
    for path in (dead, live, stopped, tmp_in_run, tmp_in_models):
        _age(path, 3600)
    holder = WorkspaceLock(live / ".lock", role="training")
    assert holder.acquire()
    gone_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    dead_trial = Path(tempfile.mkdtemp(prefix=f"trial_{gone_pid}_SYN_1d_deepscalper_x_"))
    live_trial = checkpoints.trial_folder("SYN_1d_deepscalper_y")
    try:
        with caplog.at_level(logging.WARNING):
            checkpoints.sweep_leftovers()
        assert not dead.exists() and live.exists() and fresh.exists() and stopped.exists()
        assert not registered.exists()
        assert not tmp_in_run.exists() and not tmp_in_models.exists()
        assert not dead_trial.exists() and live_trial.exists()
        assert "before its first checkpoint" in caplog.text and "Optuna trial" in caplog.text
    finally:
        holder.release()
        shutil.rmtree(live_trial, ignore_errors=True)
        shutil.rmtree(dead_trial, ignore_errors=True)


def test_data_pipeline_removes_stale_temp_files_of_its_dataset(workspace):
    data = workspace / "data"
    (data / "raw").mkdir(parents=True)
    stale = data / ".SYN_1d_train_data.csv.123-abcd.tmp"
    stale_store = data / "raw" / ".SYN_1d.csv.k2j3h4.tmp"  # the Yahoo store's
    other = data / ".OTHER_1d_train_data.csv.123-abcd.tmp"  # another dataset's: its own run cleans it
    for path in (stale, stale_store, other):
        path.write_text("half")
        _age(path, 3600)
    assert data_pipeline.main(_pipeline(1)) == 0
    assert not stale.exists() and not stale_store.exists() and other.exists()
    assert paths.manifest_path("SYN", "1d").exists()
