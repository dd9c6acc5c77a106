"""Optuna studies and the paper ledger on a real PostgreSQL server (started by tests/pg_server.py).

What is checked against the real server, not a mock: an optimisation stored on PostgreSQL completes and the best
trial is trained and registered; processes opening an empty database together all get the storage; two
train_bot.py processes (separate workspaces, like two machines) fill one study without losing or duplicating a
trial; a worker killed with SIGKILL in the middle of a trial leaves it RUNNING until the heartbeat's grace period
passes, then the next process marks it FAILED and runs its parameters again; ``--resume`` continues the study to
its trial budget (after a kill or a SIGTERM) and resumes only the best trial's own training; bad URLs are one
line; the password (it holds "/", as base64-made ones do) appears in no file and no output; the paper ledger's
crash, restart and no-double-fill path.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from pg_server import pg_server  # noqa: F401 (a session fixture)
from test_train_bot import TINY_CONFIG, prepared  # noqa: F401 (a module fixture)

import train_bot
from agents.registry import Registry
from botcore.dburl import CONNECT_TIMEOUT_SECONDS, connect_args, sqlalchemy_url
from botcore.redact import redact
from training.hpo import SEARCH_SPACES, StudySettings, trial_seed

REPO = Path(__file__).resolve().parent.parent
STUDY = "SYN_1d_backtrader_a2c"
OPTIMIZE = ["--model-type", "backtrader", "--algo", "a2c", "--engine", "fast", "--symbol", "SYN", "--optimize",
            "--sampler", "random", "--quiet"]


def _workspace(root: Path, prepared_dir: Path, optimize: dict | None = None) -> Path:
    """A workspace with the prepared synthetic dataset and the tiny config (plus ``optimize`` keys)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(prepared_dir / "data", root / "data")
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["optimize"].update(optimize or {})
    (root / "training_config.json").write_text(json.dumps(cfg))
    return root


def _study(url: str):
    import optuna

    return optuna.load_study(study_name=STUDY, storage=sqlalchemy_url(url))


def _files_holding(root: Path, secret: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``secret`` (the dataset folder included)."""
    needle = secret.encode()
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _train_bot(workspace: Path, *args: str, env: dict[str, str] | None = None,
               start_new_session: bool = False) -> subprocess.Popen:
    """train_bot.py as a real process in ``workspace`` (the way a second machine would run it)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(REPO / "train_bot.py"), *args], cwd=workspace, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=start_new_session)


def _finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


# --- URLs, redaction, configuration ------------------------------------------------------------------

def test_bare_postgres_urls_go_through_psycopg_and_passwords_are_masked():
    assert sqlalchemy_url("postgresql://bot:pw@db:5432/optuna") == "postgresql+psycopg://bot:pw@db:5432/optuna"
    assert sqlalchemy_url("postgres://bot@db/optuna") == "postgresql+psycopg://bot@db/optuna"
    for kept in ("postgresql+psycopg2://bot@db/x", "sqlite:///results/optuna.db", "mysql+pymysql://u@h/d"):
        assert sqlalchemy_url(kept) == kept
    assert connect_args("postgresql://bot@db/x") == {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    assert connect_args("postgresql+psycopg://bot@db/x?connect_timeout=5") == {}
    assert connect_args("sqlite:///x.db") == {}
    settings = StudySettings(storage="postgresql+psycopg://bot:s3cr:et@db.example:5432/optuna", study_name="s",
                             sampler="tpe", trials=1, seeds=1, grid={})
    assert settings.storage_redacted == "postgresql+psycopg://bot:***@db.example:5432/optuna"
    assert redact("postgres://bot:pw@db/x") == "postgres://bot:***@db/x"
    # base64-made passwords hold "/", which SQLAlchemy and libpq take unescaped; a port and a path are no password
    assert redact("postgresql://bot:Zm9v/YmFy+x=@db:5432/optuna") == "postgresql://bot:***@db:5432/optuna"
    assert redact("see http://host:8080/path?x=a@b") == "see http://host:8080/path?x=a@b"


def test_heartbeat_settings_are_checked_on_load():
    from agents.config import load_config
    from botcore.errors import ConfigError

    cfg = load_config(overrides={"optimize": {"heartbeat_seconds": 5, "heartbeat_grace_seconds": 15}})
    assert (cfg["optimize"]["heartbeat_seconds"], cfg["optimize"]["heartbeat_grace_seconds"]) == (5, 15)
    for bad, message in (({"heartbeat_seconds": 200}, "heartbeat_grace_seconds must be longer than"),
                         ({"heartbeat_seconds": -1}, "must be between 0 and 86,400"),
                         ({"heartbeat_grace_seconds": 0}, "must be between 1 and"),
                         ({"heartbeat_seconds": 1.5}, "must be a whole number")):
        with pytest.raises(ConfigError, match=message):
            load_config(overrides={"optimize": bad})
    assert load_config(overrides={"optimize": {"heartbeat_seconds": 0}})["optimize"]["heartbeat_seconds"] == 0


def test_trial_seeds_differ_by_trial_and_repeat_by_seed():
    seeds = {trial_seed(42, n) for n in range(200)}
    assert len(seeds) == 200 and trial_seed(42, 7) == trial_seed(42, 7) != trial_seed(43, 7)


# --- the real server ----------------------------------------------------------------------------------

def test_bad_storage_urls_are_one_line_without_the_password(pg_server, prepared, tmp_path, monkeypatch,  # noqa: F811
                                                            capsys):
    ws = _workspace(tmp_path / "ws", prepared)
    monkeypatch.chdir(ws)
    pg_server.create_database("bad_urls")
    wrong_password = pg_server.url("bad_urls", scheme="postgresql").replace(pg_server.password, "wrong/pw-41")
    closed = f"postgresql://{pg_server.user}:{pg_server.password}@127.0.0.1:1/bad_urls"  # nothing listens there
    cases = [
        (wrong_password, "password authentication failed"),
        (closed, "Connection refused"),
        (pg_server.url("no_such_db"), 'database "no_such_db" does not exist'),
        (pg_server.url("bad_urls", scheme="postgresql+psycopg2"), "the database driver psycopg2 is not installed"),
        ("postgresql+psycopg://bot:pw@127.0.0.1:notaport/x", "invalid literal for int()"),
        ("notadb://bot:pw@host/x", "NoSuchModuleError"),
    ]
    for url, message in cases:
        assert train_bot.main([*OPTIMIZE, "--steps", "64", "--trials", "1", "--storage", url]) == 1
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot open Optuna storage" in lines[0] and message in lines[0], err
        assert "Traceback" not in err and pg_server.secret not in err and "pw-41" not in err
    assert not (ws / "models").exists()
    assert _files_holding(ws, pg_server.secret) == [] and _files_holding(ws, "pw-41") == []


def _open_together(url: str, n: int) -> list[str]:
    """Open the storage from ``n`` threads at the same moment; the errors they got."""
    from training import hpo

    barrier, errors = threading.Barrier(n), []

    def open_storage() -> None:
        barrier.wait()
        try:
            hpo._storage(url, 1, 3)
        except Exception as exc:  # noqa: BLE001 (collected for the assertion)
            errors.append(str(exc))

    threads = [threading.Thread(target=open_storage) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_processes_starting_together_on_an_empty_database_all_open_the_storage(pg_server):  # noqa: F811
    """Without the advisory lock, all but one fail creating Optuna's tables (duplicate key in pg_type)."""
    for attempt in range(3):
        url = pg_server.create_database(f"together_{attempt}")
        assert _open_together(url, 6) == []


def test_optimization_on_postgres_trains_the_best_trial_and_never_writes_the_password(
        pg_server, prepared, tmp_path, monkeypatch):  # noqa: F811
    import optuna

    ws = _workspace(tmp_path / "ws", prepared)
    monkeypatch.chdir(ws)
    url = pg_server.create_database("one_process").replace("postgresql+psycopg://", "postgresql://")  # bare
    assert train_bot.main([*OPTIMIZE, "--steps", "64", "--trials", "1", "--storage", url]) == 0

    study = _study(url)
    assert [t.number for t in study.trials] == [0]
    assert all(t.state.is_finished() for t in study.trials)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete, "no trial completed"
    (record,) = Registry(ws / "models").runs()
    meta = record.metadata
    assert meta["optuna"]["best_params"] == study.best_trial.params and meta["hpo_trials"] == 1
    assert meta["hyperparameters"]["learning_rate"] == study.best_trial.params["learning_rate"]
    assert meta["optuna"]["storage"] == redact(url) and "***" in meta["optuna"]["storage"]
    leaks = [p.relative_to(ws) for p in _files_holding(ws, pg_server.secret)]
    assert leaks == [], f"the storage password was written to {leaks}"
    assert list((ws / "logs").glob("*.log")) and list((ws / "results").glob("training_session_*.json"))


@pytest.mark.slow
def test_two_processes_fill_one_study_without_losing_or_duplicating_a_trial(pg_server, prepared,  # noqa: F811
                                                                           tmp_path):
    """Two train_bot.py processes in two workspaces (two machines: nothing shared but the database), started
    together with the same seed; one has the password in its URL, the other in PGPASSWORD."""
    import optuna

    url = pg_server.create_database("two_processes")
    first = _workspace(tmp_path / "machine_a", prepared)
    second = _workspace(tmp_path / "machine_b", prepared)
    args = [*OPTIMIZE, "--steps", "128", "--trials", "4"]
    procs = [_train_bot(first, *args, "--storage", url),
             _train_bot(second, *args, "--storage", pg_server.url("two_processes", password=False),
                        env={"PGPASSWORD": pg_server.password})]
    outcomes = [_finish(p) for p in procs]
    for code, output in outcomes:
        assert code == 0, output
        assert pg_server.secret not in output and "Traceback" not in output

    trials = _study(url).trials
    assert sorted(t.number for t in trials) == list(range(8))  # none lost, none twice
    assert len({t._trial_id for t in trials}) == 8
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                           optuna.trial.TrialState.FAIL) for t in trials)
    params = {json.dumps(t.params, sort_keys=True) for t in trials}
    assert len(params) == 8  # same seed in both processes, yet no configuration suggested twice
    for ws in (first, second):
        (record,) = Registry(ws / "models").runs()
        assert record.metadata["optuna"]["n_trials"] >= 4  # the study as that process saw it at its end
        assert _files_holding(ws, pg_server.secret) == []


@pytest.mark.slow
def test_a_killed_worker_trial_is_failed_by_the_heartbeat_and_resume_finishes_the_study(pg_server, prepared,  # noqa: F811
                                                                                       tmp_path):
    import optuna

    url = pg_server.create_database("killed_worker")
    beat = {"heartbeat_seconds": 1, "heartbeat_grace_seconds": 3}
    ws = _workspace(tmp_path / "ws", prepared, beat)
    engine = sa.create_engine(sqlalchemy_url(url))

    # A worker with long trials, killed with SIGKILL in its first trial's training: the trial has sent a
    # heartbeat and holds all its hyperparameters.
    victim = _train_bot(ws, *OPTIMIZE, "--steps", "50000", "--trials", "2", "--storage", url,
                        start_new_session=True)
    training_started = (
        "SELECT count(*) FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "JOIN trial_params p ON p.trial_id = t.trial_id WHERE t.state = 'RUNNING'")
    deadline, training = time.monotonic() + 180, 0
    try:
        while time.monotonic() < deadline and victim.poll() is None:
            with engine.connect() as conn:
                if sa.inspect(conn).has_table("trial_heartbeats"):
                    training = conn.execute(sa.text(training_started)).scalar()
            if training == len(SEARCH_SPACES["a2c"]):
                break
            time.sleep(0.2)
        assert victim.poll() is None, f"the worker ended before its trial ran: {_finish(victim)[1]}"
        assert training == len(SEARCH_SPACES["a2c"]), "no trial training with a heartbeat within 180 s"
        time.sleep(1.0)  # inside the training loop
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
        victim.communicate()
    engine.dispose()
    assert [t.state for t in _study(url).trials] == [optuna.trial.TrialState.RUNNING]  # nobody marks it yet
    time.sleep(beat["heartbeat_grace_seconds"] + 1.5)

    # The next process resumes the study to 3 trials: it fails the stale trial, runs its parameters again, and
    # two more; the budget counts the retry in place of the killed trial.
    code, output = _finish(_train_bot(ws, *OPTIMIZE, "--steps", "128", "--trials", "3", "--resume",
                                      "--storage", url))
    assert code == 0, output
    assert pg_server.secret not in output and "Traceback" not in output
    trials = _study(url).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    killed, retry = trials[0], trials[1]
    assert killed.state == optuna.trial.TrialState.FAIL
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == killed.params
    assert all(t.state.is_finished() for t in trials)
    log = "\n".join(p.read_text() for p in (ws / "logs").glob("training_*.log"))
    assert "trial #0 had no heartbeat for over 3 s" in log and "queued to run again" in log
    assert "3 to run for 3 in all" in log

    # Resuming a finished study runs no trial and trains its best.
    code, output = _finish(_train_bot(ws, *OPTIMIZE, "--steps", "128", "--trials", "3", "--resume",
                                      "--storage", url))
    assert code == 0, output
    assert len(_study(url).trials) == 4
    runs = Registry(ws / "models").runs()
    assert len(runs) == 2 and all(r.metadata["optuna"]["n_trials"] == 4 for r in runs)
    assert _files_holding(ws, pg_server.secret) == []


@pytest.mark.slow
def test_resume_continues_only_the_final_training_of_the_best_trial(pg_server, prepared, tmp_path,  # noqa: F811
                                                                    monkeypatch):
    """``--optimize --resume`` never resumes an unrelated unfinished run (a plain training with the defaults,
    which would be registered as the study's best), and does resume an interrupted training of the best trial."""
    from test_train_bot import _Crash

    from training import job as training

    ws = _workspace(tmp_path / "ws", prepared)
    monkeypatch.chdir(ws)
    url = pg_server.create_database("resume_final")
    real_checkpoint = training.Job.checkpoint

    def crash_at_first_checkpoint(job):
        real_checkpoint(job)
        if job.spec.checkpoints and job.agent.num_timesteps > 0:
            raise _Crash

    monkeypatch.setattr(training.Job, "checkpoint", crash_at_first_checkpoint)
    plain = ["--model-type", "backtrader", "--algo", "a2c", "--engine", "fast", "--symbol", "SYN", "--steps", "256",
             "--quiet"]
    with pytest.raises(_Crash):
        train_bot.main(plain)
    (unrelated,) = (ws / "models" / "checkpoints").iterdir()
    monkeypatch.setattr(training.Job, "checkpoint", real_checkpoint)

    search = [*OPTIMIZE, "--steps", "256", "--trials", "2", "--storage", url, "--resume"]
    assert train_bot.main(search) == 0
    (record,) = Registry(ws / "models").runs()
    best = _study(url).best_trial.params
    assert record.metadata["hyperparameters"]["learning_rate"] == best["learning_rate"]
    assert not record.metadata["training"]["resumed"] and unrelated.is_dir()  # left for a plain --resume

    monkeypatch.setattr(training.Job, "checkpoint", crash_at_first_checkpoint)
    with pytest.raises(_Crash):  # the study is complete: no trial runs, the best trial's training crashes
        train_bot.main(search)
    monkeypatch.setattr(training.Job, "checkpoint", real_checkpoint)
    interrupted = max((ws / "models" / "checkpoints").iterdir(), key=lambda f: f.stat().st_mtime)
    state = json.loads((interrupted / "state.json").read_text())
    assert interrupted != unrelated and state["spec"]["hyperparams"] == best
    assert train_bot.main(search) == 0
    resumed = Registry(ws / "models").runs()[0]
    assert resumed.run_id == state["run_id"] and resumed.metadata["training"]["resumed"]
    assert len(_study(url).trials) == 2 and unrelated.is_dir()


@pytest.mark.slow
def test_a_search_stopped_by_a_signal_resumes_to_its_budget(pg_server, prepared, tmp_path,  # noqa: F811
                                                            monkeypatch):
    """SIGTERM in the middle of the second trial: that trial is failed as stopped, not counted as tried, and
    ``--resume`` runs the rest of the budget."""
    import optuna

    from training import hpo
    from training import job as training

    ws = _workspace(tmp_path / "ws", prepared)
    monkeypatch.chdir(ws)
    url = pg_server.create_database("stopped_search")
    real_step, jobs = training.Job._step, []

    def signal_in_the_second_trial(job, *args):
        if not any(j is job for j in jobs):
            jobs.append(job)
            if len(jobs) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
        return real_step(job, *args)

    monkeypatch.setattr(training.Job, "_step", signal_in_the_second_trial)
    search = [*OPTIMIZE, "--steps", "64", "--trials", "3", "--storage", url]
    assert train_bot.main(search) == 128 + signal.SIGTERM
    monkeypatch.setattr(training.Job, "_step", real_step)
    trials = _study(url).trials
    assert [t.state for t in trials][1:] == [optuna.trial.TrialState.FAIL]
    assert trials[1].user_attrs["failure"] == hpo.STOPPED and Registry(ws / "models").runs() == []

    assert train_bot.main([*search, "--resume"]) == 0
    trials = _study(url).trials
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)  # 3 judged + the stopped one
    log = "\n".join(p.read_text() for p in (ws / "logs").glob("training_*.log"))
    assert "1 trial(s) done, 0 running elsewhere, 2 to run for 3 in all" in log


# --- the paper ledger on PostgreSQL ----------------------------------------------------------------------

def test_paper_ledger_on_postgres_restarts_after_a_crash_and_never_fills_twice(pg_server, workspace,  # noqa: F811
                                                                               monkeypatch):
    from test_trading import ObsPolicy, env_config, open_scripted_account, scripted_frame

    from agents.config import load_config
    from trading import ledger as db
    from trading.ledger import Ledger
    from trading.paper import PaperAccount, sync_bars

    frame = scripted_frame()
    config = env_config("multidiscrete")
    clean = Ledger(f"sqlite:///{workspace / 'clean.db'}")
    sync_bars(clean, "SYN", "1d", frame)
    PaperAccount(clean, open_scripted_account(clean, config, 40), ObsPolicy("multidiscrete")).advance()

    # the URL from the environment variable, bare postgresql:// without the password (libpq's PGPASSWORD)
    pg_server.create_database("ledger")
    monkeypatch.setenv("TRADING_BOT_LEDGER_URL", pg_server.url("ledger", scheme="postgresql", password=False))
    monkeypatch.setenv("PGPASSWORD", pg_server.password)
    ledger = Ledger.from_config(load_config())
    assert ledger.engine.dialect.name == "postgresql"
    sync_bars(ledger, "SYN", "1d", frame)
    account = open_scripted_account(ledger, config, 40)
    with pytest.raises(RuntimeError, match="simulated crash"):
        PaperAccount(ledger, account, ObsPolicy("multidiscrete", crash_at=30)).advance()
    assert len(ledger.series_of(account.id, db.equity, "equity")) == 29  # bar 30 rolled back whole
    ledger.close()

    restarted = Ledger.from_config(load_config())  # a new process would open it like this
    account = restarted.account(account.id)
    assert PaperAccount(restarted, account, ObsPolicy("multidiscrete")).advance() == len(frame) - 40 - 29
    assert PaperAccount(restarted, account, ObsPolicy("multidiscrete")).advance() == 0
    for table, column in ((db.equity, "equity"), (db.cash, "cash"), (db.positions, "units")):
        assert restarted.series_of(account.id, table, column) == clean.series_of(1, table, column)  # bit for bit
    assert [tuple(f)[1:] for f in restarted.fills_of(account.id)] == [tuple(f)[1:] for f in clean.fills_of(1)]
    with pytest.raises(sa.exc.IntegrityError):  # one fill per account and bar, enforced by PostgreSQL
        with restarted.transaction() as conn:
            f = restarted.fills_of(account.id)[0]
            conn.execute(sa.insert(db.fills).values(account_id=account.id, bar=f.bar, order_id=f.order_id, units=1.0,
                                                    price=1.0, commission=0.0, slippage_cost=0.0))
    assert len(restarted.fills_of(account.id)) == len(clean.fills_of(1))
    restarted.close()
    clean.close()
