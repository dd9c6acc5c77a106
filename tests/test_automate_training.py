"""automate_training.py: config, status, run-once, the chain, the daemon on a simulated clock, locks, signals.

Jobs run through an injected runner (no real training). The daemon's clock is simulated by replacing the
wall clock both in the automation and inside the ``schedule`` library, so several days pass in a second.
"""
from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import pytz
import schedule

import automate_training as at
from agents.config import DEFAULTS, load_config
from automation import daemon as automation_daemon
from automation.daemon import EXIT_LOCK_BUSY, Automation
from automation.runner import SubprocessRunner, UnitResult
from automation.schedule import JOBS, Timetable
from automation.state import STATE_FILE, empty_state
from botcore.lock import DAEMON_LOCK, JOB_LOCK, WorkspaceLock
from botcore.signals import StopFlag

REPO = Path(__file__).resolve().parent.parent
BERLIN = pytz.timezone("Europe/Berlin")
HOOK_TOKEN = "T111/B222/sEcReTtOkEn987"
SMTP_PASSWORD = "pa55-w0rd-never-logged"


# --- helpers ----------------------------------------------------------------------------------------

def write_config(folder: Path, **sections) -> Path:
    cfg = {"symbols": ["SYN"], "model_types": ["deepscalper", "backtrader"],
           "training_schedule": {"timezone": "Europe/Berlin", "data_update_at": "01:00", "daily_at": "02:00",
                                 "evaluation_at": "04:00", "lock_wait_seconds": 0},
           "monitoring": {"min_sharpe_ratio": 0.5, "max_drawdown_threshold": -25.0, "degradation_window": 2,
                          "degradation_drop": 0.5, "max_data_age_days": 5},
           # The script chain alone: these tests fake the scripts (no real datasets or models to paper-trade);
           # the trade job and paper trading are tested in tests/test_trading.py.
           "trading": {"enabled": False}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "training_config.json"
    path.write_text(json.dumps(cfg))
    return path


def read_state(folder: Path) -> dict:
    return json.loads((folder / "results" / STATE_FILE).read_text())


class FakeRunner:
    """Stands in for the child scripts: records calls, fails on demand, writes what the real ones write.

    :param fail: ``fail(script, args, now) -> bool``.
    :param metrics: ``metrics(now) -> {run_id: (sharpe, drawdown_pct)}`` for the champions' evaluation.
    """

    def __init__(self, clock=None, fail=None, metrics=None):
        self.clock = clock
        self.fail = fail or (lambda script, args, now: False)
        self.metrics = metrics or (lambda now: {"ds1": (1.2, -8.0), "bt1": (1.0, -12.0)})
        self.calls: list[tuple[str, list[str], datetime]] = []

    def __call__(self, script, args, timeout, stop):
        now = self.clock.now() if self.clock else datetime.now(dt.UTC)
        self.calls.append((script, list(args), now))
        assert timeout == DEFAULTS["training_schedule"]["job_timeout_minutes"] * 60.0
        if self.fail(script, args, now):
            return UnitResult("failed", f"exit code 1: error: {script} was told to fail", 1)
        if script == "data_pipeline.py":
            symbol = args[args.index("--symbols") + 1]
            end = (now - timedelta(days=1)).strftime("%Y-%m-%d")
            manifest = {"symbol": symbol, "interval": "1d",
                        "ranges": {"train": {"start": "2020-01-01", "end": "2022-01-01", "rows": 500},
                                   "test": {"start": "2023-01-01", "end": end, "rows": 100}}}
            Path("data").mkdir(exist_ok=True)
            Path(f"data/{symbol}_1d_manifest.json").write_text(json.dumps(manifest))
        if script == "evaluate_bot.py":
            symbol = args[args.index("--symbol") + 1]
            # The layout of evaluate_bot.py: models keyed by run id, metrics beside the identity fields.
            models = {run_id: {"name": run_id, "kind": "model", "run_id": run_id, "is_champion": True,
                               "model_type": "deepscalper" if run_id.startswith("ds") else "backtrader",
                               "status": "ok", "error": None, "sharpe_ratio": sharpe, "max_drawdown_pct": dd,
                               "total_return_pct": 3.0}
                      for run_id, (sharpe, dd) in self.metrics(now).items()}
            models["ds0"] = {"run_id": "ds0", "model_type": "deepscalper", "is_champion": False, "status": "ok",
                             "sharpe_ratio": -3.0, "max_drawdown_pct": -90.0}
            models["ds9"] = {"run_id": "ds9", "model_type": "deepscalper", "is_champion": False,
                             "status": "load_failed", "error": "corrupt"}
            Path("results").mkdir(exist_ok=True)
            stamp = f"{now:%Y%m%d_%H%M%S}_{len(self.calls)}"
            Path(f"results/model_comparison_{symbol}_{stamp}.json").write_text(
                json.dumps({"symbol": symbol, "interval": "1d", "models": models}))
        return UnitResult("ok", "", 0)

    def scripts(self) -> list[str]:
        return [c[0] for c in self.calls]


class FakeClock:
    """A controllable clock: ``sleep`` jumps ahead; the daemon is asked to stop once ``end`` is reached."""

    def __init__(self, start: datetime, end: datetime) -> None:
        self.t = start.astimezone(dt.UTC)
        self.end = end.astimezone(dt.UTC)

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float, stop: StopFlag) -> None:
        self.t += timedelta(seconds=max(seconds, 1.0))
        if self.t >= self.end:
            stop.request()


@pytest.fixture()
def simulated_time(monkeypatch):
    """Make the ``schedule`` library read the fake clock (it calls ``datetime.datetime.now`` itself)."""
    holder: dict[str, FakeClock] = {}

    class FakeDatetime(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            t = holder["clock"].t
            return t.astimezone(tz) if tz is not None else t.astimezone().replace(tzinfo=None)

    fake_module = types.SimpleNamespace(datetime=FakeDatetime, timedelta=dt.timedelta, time=dt.time, date=dt.date)
    monkeypatch.setattr(schedule, "datetime", fake_module)
    monkeypatch.setattr(automation_daemon, "HEARTBEAT_SECONDS", 3600.0)
    monkeypatch.setattr(automation_daemon, "WAKE_SECONDS", 3600.0)

    def make(start: datetime, end: datetime) -> FakeClock:
        holder["clock"] = FakeClock(start, end)
        return holder["clock"]

    return make


def berlin(y, mo, d, h, mi=0) -> datetime:
    return BERLIN.localize(datetime(y, mo, d, h, mi))


@pytest.fixture()
def hook_server():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.received = received  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def write_champions(folder: Path) -> None:
    runs = (("ds1", "deepscalper", "deepscalper", 0.9), ("bt1", "backtrader", "ppo", 0.7))
    for run_id, model_type, algo, val in runs:
        run = folder / "models" / f"SYN_1d_{model_type}_{run_id}"
        run.mkdir(parents=True)
        (run / "metadata.json").write_text(json.dumps({
            "run_id": run_id, "model_type": model_type, "algo": algo, "symbol": "SYN", "interval": "1d",
            "created": "2024-03-01T00:00:00+00:00", "validation": {"sharpe_ratio": val}}))
    (folder / "models" / "champions.json").write_text(json.dumps({"SYN/1d/deepscalper": "ds1",
                                                                   "SYN/1d/backtrader": "bt1"}))


# --- create-config ----------------------------------------------------------------------------------

def said(capsys, caplog) -> str:
    """What a command told the user: run_guarded prints when logging is not set up, else logs."""
    return capsys.readouterr().err + caplog.text


def test_create_config_round_trip_refusal_and_force(workspace, capsys, caplog):
    assert at.main(["--create-config"]) == 0
    written = json.loads((workspace / "training_config.json").read_text())
    assert written == json.loads(json.dumps(DEFAULTS))
    assert load_config() == load_config(workspace / "training_config.json")

    (workspace / "training_config.json").write_text(json.dumps({"symbols": ["AAPL"]}))
    assert at.main(["--create-config"]) == 1
    assert "already exists" in said(capsys, caplog)
    assert json.loads((workspace / "training_config.json").read_text()) == {"symbols": ["AAPL"]}

    assert at.main(["--create-config", "--force"]) == 0
    assert json.loads((workspace / "training_config.json.bak").read_text()) == {"symbols": ["AAPL"]}
    assert json.loads((workspace / "training_config.json").read_text())["symbols"] == DEFAULTS["symbols"]

    other = workspace / "conf" / "alt.json"
    assert at.main(["--create-config", "--config", str(other)]) == 0 and other.exists()


def test_bad_config_exits_2(workspace, capsys, caplog):
    write_config(workspace, training_schedule={"timezone": "Europe/Berlinn"})
    assert at.main(["--status"]) == 2
    assert "did you mean 'Europe/Berlin'" in said(capsys, caplog)
    write_config(workspace, training_schedule={"daily_at": "25:00"})
    assert at.main(["--run-once", "data"]) == 2


# --- run-once and the chain -------------------------------------------------------------------------

def test_run_once_each_job_then_the_chain(workspace, capsys):
    write_config(workspace)
    runner = FakeRunner()
    assert at.main(["--run-once", "data", "--quiet"], runner=runner) == 0
    assert runner.calls[0][:2] == ("data_pipeline.py", ["--symbols", "SYN", "--update-data", "--interval", "1d",
                                                        "--quiet"])
    assert at.main(["--run-once", "training", "--quiet"], runner=runner) == 0
    assert [(c[0], c[1][:4]) for c in runner.calls[1:]] == [
        ("train_bot.py", ["--model-type", "deepscalper", "--symbol", "SYN"]),
        ("train_bot.py", ["--model-type", "backtrader", "--symbol", "SYN"])]
    assert at.main(["--run-once", "evaluation", "--quiet"], runner=runner) == 0
    assert runner.calls[-1][:2] == ("evaluate_bot.py",
                                    ["--symbol", "SYN", "--create-plots", "--interval", "1d", "--quiet"])
    state = read_state(workspace)
    assert {k: v["outcome"] for k, v in state["jobs"].items()} == {"data": "ok", "training": "ok",
                                                                    "evaluation": "ok"}
    assert [h["unit"] for h in state["history"]] == ["data/SYN", "training/SYN/deepscalper",
                                                     "training/SYN/backtrader", "evaluation/SYN"]
    assert state["alerts"] == []  # Sharpe 1.2 and 1.0, drawdowns -8 % and -12 %, fresh data: all healthy
    assert [h["sharpe_ratio"] for h in state["metrics_history"]["SYN/1d/deepscalper"]] == [1.2]
    assert "SYN/1d/deepscalper" in state["metrics_history"] and len(state["metrics_history"]) == 2

    # The chain: a failed data update skips training (exit 1) unless --force; --config reaches the children.
    failing = FakeRunner(fail=lambda script, args, now: script == "data_pipeline.py")
    cfg_path = str(workspace / "training_config.json")
    assert at.main(["--run-once", "all", "--config", cfg_path, "--quiet"], runner=failing) == 1
    assert failing.scripts() == ["data_pipeline.py"]
    assert failing.calls[0][1][-2:] == ["--config", cfg_path]
    state = read_state(workspace)
    assert state["units"]["training/SYN/deepscalper"]["outcome"] == "skipped"
    assert state["units"]["evaluation/SYN"]["outcome"] == "skipped"
    assert "latest data update of SYN" in state["units"]["evaluation/SYN"]["error"]
    assert [a["kind"] for a in state["alerts"]] == ["job_failed", "job_skipped", "job_skipped"]
    assert at.main(["--run-once", "training", "--quiet"], runner=failing) == 1
    assert failing.scripts() == ["data_pipeline.py"]
    assert at.main(["--run-once", "training", "--force", "--quiet"], runner=failing) == 0
    assert failing.scripts()[1:] == ["train_bot.py", "train_bot.py"]


def test_status_without_daemon_text_and_json(workspace, capsys):
    write_config(workspace)
    write_champions(workspace)
    assert at.main(["--run-once", "all", "--quiet"], runner=FakeRunner()) == 0
    capsys.readouterr()
    assert at.main(["--status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["daemon"]["running"] is False and st["job_lock"]["held"] is False
    assert {j: st["jobs"][j]["outcome"] for j in JOBS} == {"data": "ok", "training": "ok", "evaluation": "ok"}
    assert st["next_runs_source"] == "config"
    assert st["next_runs"]["data"].endswith(("01:00+01:00", "01:00+02:00"))  # Berlin, winter or summer
    by_key = {c["key"]: c for c in st["champions"]}
    assert by_key["SYN/1d/deepscalper"]["validation_sharpe"] == 0.9
    assert by_key["SYN/1d/deepscalper"]["latest_test"]["sharpe_ratio"] == 1.2
    assert by_key["SYN/1d/backtrader"]["latest_test"]["max_drawdown_pct"] == -12.0
    assert at.main(["--status"]) == 0
    text = capsys.readouterr().out
    assert "daemon: not running" in text and "job lock: free" in text
    assert "SYN/1d/deepscalper" in text and "latest test Sharpe 1.200, max drawdown -8.00%" in text
    assert "recent alerts: none" in text


def test_stale_and_missing_data_raise_one_alert(workspace):
    write_config(workspace)
    automation = Automation(load_config())
    automation.monitor.check_data_age("SYN")
    assert automation.store.data["alerts"][-1]["kind"] == "stale_data"
    assert "does not exist" in automation.store.data["alerts"][-1]["message"]
    (workspace / "data").mkdir()
    old = (datetime.now(dt.UTC) - timedelta(days=9)).strftime("%Y-%m-%d %H:%M:%S")
    (workspace / "data" / "SYN_1d_manifest.json").write_text(json.dumps({"ranges": {"test": {"end": old}}}))
    automation.store.data["alerts"].clear()
    automation.monitor.check_data_age("SYN")
    automation.monitor.check_data_age("SYN")  # not repeated within 12 hours
    alerts = automation.store.data["alerts"]
    assert len(alerts) == 1 and "9.0 days old" in alerts[0]["message"]


def test_monitoring_flags_unusable_champions_undefined_sharpe_and_missing_output(workspace):
    write_config(workspace)
    (workspace / "results").mkdir()
    automation = Automation(load_config(), runner=FakeRunner())
    report = {"symbol": "SYN", "interval": "1d", "models": {
        "ds1": {"model_type": "deepscalper", "is_champion": True, "status": "checksum_failed",
                "error": "sha256 mismatch for models/SYN_1d_deepscalper_ds1/model.zip"},
        "bt1": {"model_type": "backtrader", "is_champion": True, "status": "ok", "sharpe_ratio": None,
                "max_drawdown_pct": 0.0}}}
    (workspace / "results" / "model_comparison_SYN_20240301_000000.json").write_text(json.dumps(report))
    automation.monitor.check_evaluation("SYN", before={})
    kinds = [(a["kind"], a["subject"], a["severity"]) for a in automation.store.data["alerts"]]
    assert kinds == [("champion_unusable", "SYN/1d/deepscalper", "critical"), ("low_sharpe", "SYN/1d/backtrader",
                                                                               "warning")]
    assert "sha256 mismatch" in automation.store.data["alerts"][0]["message"]
    assert "undefined" in automation.store.data["alerts"][1]["message"]
    # An evaluation that wrote no new file is itself an alert: nothing could be monitored.
    automation.monitor.check_evaluation("SYN", before=automation.monitor.comparison_files("SYN"))
    assert automation.store.data["alerts"][-1]["kind"] == "evaluation_output"


# --- the daemon on a simulated clock ----------------------------------------------------------------

def test_daemon_runs_several_days_skips_alerts_and_recovers(workspace, simulated_time, hook_server, monkeypatch):
    hook_url = f"http://127.0.0.1:{hook_server.server_address[1]}/services/{HOOK_TOKEN}"
    monkeypatch.setenv("TRADING_BOT_WEBHOOK_URL", hook_url)
    monkeypatch.setenv("TRADING_BOT_SMTP_PASSWORD", SMTP_PASSWORD)
    write_config(workspace, alerts={"webhook": {"enabled": True, "format": "json", "timeout_seconds": 5}})
    clock = simulated_time(berlin(2024, 3, 4, 0, 30), berlin(2024, 3, 8, 0, 30))  # Monday to Friday
    day = lambda now: now.astimezone(BERLIN).day  # noqa: E731

    def fail(script, args, now):
        if day(now) == 5 and script == "data_pipeline.py":
            return True  # day 2: the data update fails
        return day(now) == 6 and script == "train_bot.py" and "deepscalper" in args  # day 3

    def metrics(now):
        if day(now) == 7:  # day 4: both champions collapse
            return {"ds1": (0.2, -10.0), "bt1": (0.1, -30.0)}
        return {"ds1": (1.2, -8.0), "bt1": (1.0, -12.0)}

    runner = FakeRunner(clock=clock, fail=fail, metrics=metrics)
    assert at.main(["--quiet"], runner=runner, clock=clock) == 0

    schedule_seen = [(day(now), now.astimezone(BERLIN).strftime("%H:%M"), script) for script, _, now in runner.calls]
    expected = []
    for d in (4, 5, 6, 7):
        expected.append((d, "01:00", "data_pipeline.py"))
        if d != 5:
            expected += [(d, "02:00", "train_bot.py")] * 2 + [(d, "04:00", "evaluate_bot.py")]
    assert schedule_seen == expected

    state = read_state(workspace)
    outcomes = [(h["unit"], h["outcome"], datetime.fromisoformat(h["start"]).astimezone(BERLIN).day)
                for h in state["history"]]
    assert ("training/SYN/deepscalper", "skipped", 5) in outcomes
    assert ("evaluation/SYN", "skipped", 5) in outcomes
    assert ("training/SYN/deepscalper", "failed", 6) in outcomes
    assert ("training/SYN/backtrader", "ok", 6) in outcomes
    assert ("evaluation/SYN", "ok", 6) in outcomes  # one model type trained: evaluation still runs
    assert all(o == "ok" for u, o, d in outcomes if d == 7)  # recovered
    alerts = [(a["kind"], a["subject"], datetime.fromisoformat(a["time"]).astimezone(BERLIN).day)
              for a in state["alerts"]]
    assert alerts == [("job_failed", "data", 5), ("job_skipped", "training", 5), ("job_skipped", "evaluation", 5),
                      ("job_failed", "training", 6),
                      ("low_sharpe", "SYN/1d/deepscalper", 7), ("degradation", "SYN/1d/deepscalper", 7),
                      ("low_sharpe", "SYN/1d/backtrader", 7), ("drawdown", "SYN/1d/backtrader", 7),
                      ("degradation", "SYN/1d/backtrader", 7)]
    degradation = state["alerts"][5]
    assert "0.200 is 1.000 below the mean 1.200 of its previous 2 evaluations" in degradation["message"]
    assert all(a["delivered"] == {"log": "sent", "webhook": "sent"} for a in state["alerts"])
    assert [p["kind"] for p in hook_server.received] == [a[0] for a in alerts]
    stopped = datetime.fromisoformat(state["daemon"]["stopped"])
    assert state["daemon"]["pid"] is None and berlin(2024, 3, 8, 0, 30) <= stopped <= berlin(2024, 3, 8, 1, 0)
    assert state["next_runs"]["data"] == "2024-03-08T01:00+01:00"

    # Secrets never reach logs, state or the status output.
    logs = "".join(p.read_text() for p in (workspace / "logs").glob("*.log"))
    assert "ALERT [trading-bot CRITICAL] job_failed: data" in logs
    for text in (logs, (workspace / "results" / STATE_FILE).read_text()):
        assert HOOK_TOKEN not in text and SMTP_PASSWORD not in text and "/services/" not in text


def test_missed_runs_are_caught_up_once_at_start_up(workspace, simulated_time):
    write_config(workspace)
    (workspace / "results").mkdir()
    stopped = berlin(2024, 3, 4, 1, 30)  # the daemon last ran after the data update, before training
    state = empty_state()
    state["daemon"] = {"last_seen": stopped.astimezone(dt.UTC).isoformat()}
    state["jobs"]["data"] = {"start": berlin(2024, 3, 4, 1, 0).astimezone(dt.UTC).isoformat(),
                             "outcome": "ok"}
    (workspace / "results" / STATE_FILE).write_text(json.dumps(state))
    clock = simulated_time(berlin(2024, 3, 4, 5, 0), berlin(2024, 3, 4, 5, 10))  # back at 05:00
    runner = FakeRunner(clock=clock)
    assert at.main(["--quiet"], runner=runner, clock=clock) == 0
    # training (02:00) and evaluation (04:00) were missed; data (01:00) had run. Each caught up once.
    assert runner.scripts() == ["train_bot.py", "train_bot.py", "evaluate_bot.py"]
    assert {read_state(workspace)["jobs"][j]["trigger"] for j in ("training", "evaluation")} == {"catch-up"}

    # Restarted at once: nothing is missed any more; catch_up_missed=false never catches up.
    clock2 = simulated_time(berlin(2024, 3, 4, 5, 20), berlin(2024, 3, 4, 5, 30))
    runner2 = FakeRunner(clock=clock2)
    assert at.main(["--quiet"], runner=runner2, clock=clock2) == 0 and runner2.calls == []
    timetable = Timetable(load_config()["training_schedule"])
    no_runs = empty_state()["jobs"]
    assert timetable.missed_jobs(None, berlin(2024, 3, 4, 5, 0), no_runs) == []  # first start ever: nothing missed
    assert timetable.missed_jobs(stopped, berlin(2024, 3, 4, 3, 0), no_runs) == ["training"]
    assert timetable.missed_jobs(berlin(2024, 3, 1, 0, 0), berlin(2024, 3, 4, 3, 0), no_runs) == list(JOBS)
    timetable.cfg["catch_up_missed"] = False
    assert timetable.missed_jobs(stopped, berlin(2024, 3, 4, 5, 0), no_runs) == []


def test_weekly_schedule_and_previous_slot(workspace):
    write_config(workspace, training_schedule={"weekday": "wednesday", "timezone": "America/New_York"})
    timetable = Timetable(load_config()["training_schedule"])
    ny = pytz.timezone("America/New_York")
    slot = timetable.previous_slot("training", ny.localize(datetime(2024, 3, 11, 9, 0)))  # a Monday
    assert slot == ny.localize(datetime(2024, 3, 6, 2, 0)) and slot.utcoffset() == timedelta(hours=-5)
    jobs = timetable.build_scheduler(lambda job: None).get_jobs()
    assert {j.start_day for j in jobs} == {"wednesday"} and {str(j.at_time_zone) for j in jobs} == {"America/New_York"}


# --- real child processes: runner, locks, SIGTERM ---------------------------------------------------

FAKE_SCRIPTS = {
    "data_pipeline.py": """
        import os, signal, sys, time
        from pathlib import Path
        def on_term(signum, frame):
            Path("child_terminated").write_text(str(os.getpid()))
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        Path("child_started").write_text(str(os.getpid()))
        print("secret seen:", os.environ.get("TRADING_BOT_SMTP_PASSWORD"), flush=True)
        time.sleep(float(os.environ.get("FAKE_SLEEP", "60")))
    """,
    "train_bot.py": """
        import sys
        print("INFO: loading", flush=True)
        print("error: no prepared data for SYN 1d; run data_pipeline.py --symbols SYN", file=sys.stderr)
        sys.exit(1)
    """,
}


@pytest.fixture()
def fake_scripts(tmp_path):
    folder = tmp_path / "fake_scripts"
    folder.mkdir()
    for name, body in FAKE_SCRIPTS.items():
        (folder / name).write_text(textwrap.dedent(body))
    return folder


def test_subprocess_runner_reports_failure_timeout_and_hides_secrets(workspace, fake_scripts, monkeypatch):
    monkeypatch.setenv("TRADING_BOT_SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("FAKE_SLEEP", "30")
    runner = SubprocessRunner(scripts_dir=fake_scripts, grace_seconds=5, poll_seconds=0.05,
                              hidden_env=["TRADING_BOT_SMTP_PASSWORD"])
    stop = StopFlag()
    failed = runner("train_bot.py", ["--symbol", "SYN"], 60, stop)
    assert failed.outcome == "failed" and failed.returncode == 1
    assert failed.error.startswith("exit code 1: error: no prepared data for SYN 1d")
    started = time.monotonic()
    timed_out = runner("data_pipeline.py", [], 1.0, stop)
    assert timed_out.outcome == "timeout" and time.monotonic() - started < 10
    assert (workspace / "child_terminated").exists()  # ended with SIGTERM first, so it could clean up
    out_files = list((workspace / "logs").glob("automate_data_pipeline_*.out"))
    assert out_files and "secret seen: None" in out_files[0].read_text()
    assert runner("missing.py", [], 5, stop).outcome == "failed"


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _start_daemon_after_downtime(workspace, fake_scripts, runner_args: str, stderr) -> subprocess.Popen:
    """A real daemon process over the fake scripts, in a workspace whose daemon was last seen two days ago
    (so it starts by catching up the missed data update)."""
    (workspace / "results").mkdir()
    state = empty_state()
    state["daemon"] = {"last_seen": (datetime.now(dt.UTC) - timedelta(days=2)).isoformat()}
    (workspace / "results" / STATE_FILE).write_text(json.dumps(state))
    driver = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import automate_training as at; "
              f"from pathlib import Path; from automation.runner import SubprocessRunner; "
              f"raise SystemExit(at.main(['--quiet'], runner=SubprocessRunner(scripts_dir=Path("
              f"{str(fake_scripts)!r}), {runner_args}poll_seconds=0.05)))")
    return subprocess.Popen([sys.executable, "-c", driver], cwd=workspace, stderr=stderr, text=True)


def test_daemon_lock_cron_status_and_sigterm(workspace, fake_scripts, capsys, caplog):
    """A real daemon process catches up a (slow) data update; meanwhile a second daemon is refused, a cron
    --run-once gives up after lock_wait_seconds with exit 3, --status reports it; SIGTERM ends it cleanly."""
    write_config(workspace, training_schedule={"timezone": "UTC", "lock_wait_seconds": 1})
    daemon = _start_daemon_after_downtime(workspace, fake_scripts, "grace_seconds=5, ", stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: (workspace / "child_started").exists()), daemon.stderr.read() if daemon.poll() else ""
        assert at.main(["--quiet"]) == 1
        assert at.main(["--run-once", "data", "--quiet"], runner=FakeRunner()) == EXIT_LOCK_BUSY
        err = said(capsys, caplog)
        assert f"another automate_training.py daemon already runs in {workspace}: pid {daemon.pid}" in err
        assert "another job is running in this workspace" in err and "catch-up data/SYN" in err
        assert at.main(["--status", "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["daemon"]["running"] is True and st["daemon"]["pid"] == daemon.pid
        assert st["job_lock"]["holder"]["detail"] == "catch-up data/SYN"
        assert st["units"]["data/SYN"]["outcome"] == "running" and st["next_runs_source"] == "daemon"

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert (workspace / "child_terminated").exists()
    state = read_state(workspace)
    assert state["units"]["data/SYN"]["outcome"] == "aborted"
    assert state["jobs"]["data"]["outcome"] == "aborted"
    assert "training" not in state["jobs"]  # nothing else started after the signal
    assert state["daemon"]["pid"] is None and state["daemon"]["stopped"]
    assert at.main(["--status"]) == 0
    assert "daemon: not running" in capsys.readouterr().out
    for name in (DAEMON_LOCK, JOB_LOCK):
        assert WorkspaceLock(name).holder() is None


def test_kill_9_leaves_valid_state_no_orphan_and_a_stale_lock(workspace, fake_scripts, capsys):
    write_config(workspace, training_schedule={"timezone": "UTC"})
    daemon = _start_daemon_after_downtime(workspace, fake_scripts, "", stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: (workspace / "child_started").exists())
    finally:
        daemon.kill()
        daemon.wait()
    # The kernel ends the orphaned child (it may not keep training beside the next daemon).
    assert _wait_for(lambda: (workspace / "child_terminated").exists(), timeout=10)
    state = read_state(workspace)  # valid JSON: every write was atomic
    assert state["units"]["data/SYN"]["outcome"] == "running"
    assert at.main(["--status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["daemon"]["running"] is False and st["daemon"]["stale_lock"]["pid"] == daemon.pid
    assert st["units"]["data/SYN"]["outcome"] == "interrupted"
    assert f"process {daemon.pid} ended while this ran" in st["units"]["data/SYN"]["error"]


def test_stale_lock_from_a_killed_process_is_taken_over(workspace, caplog, capsys):
    code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from botcore.lock import WorkspaceLock; "
            f"lock = WorkspaceLock({DAEMON_LOCK!r}, role='daemon'); assert lock.acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=workspace, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    lock = WorkspaceLock(DAEMON_LOCK, role="daemon")
    assert lock.acquire() is False and lock.holder()["pid"] == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    write_config(workspace)
    assert at.main(["--status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["daemon"]["running"] is False and st["daemon"]["stale_lock"]["pid"] == holder.pid
    assert lock.acquire() is True
    assert lock.took_over["pid"] == holder.pid
    assert "taking over stale lock" in caplog.text and str(holder.pid) in caplog.text
    assert WorkspaceLock(DAEMON_LOCK).acquire() is False  # now held by us
    lock.release()
    assert WorkspaceLock(DAEMON_LOCK).holder() is None


def test_run_once_waits_for_the_lock_then_runs(workspace):
    write_config(workspace, training_schedule={"lock_wait_seconds": 5})
    lock = WorkspaceLock(JOB_LOCK, role="daemon")
    assert lock.acquire(detail="scheduled training")
    threading.Timer(0.5, lock.release).start()
    runner = FakeRunner()
    started = time.monotonic()
    assert at.main(["--run-once", "data", "--quiet"], runner=runner) == 0
    assert 0.4 < time.monotonic() - started < 5 and runner.scripts() == ["data_pipeline.py"]


def test_run_once_data_with_the_real_data_pipeline(workspace):
    """End to end with the real data_pipeline.py on the bundled sample data (offline)."""
    if not (REPO / "data_pipeline.py").exists():
        pytest.skip("data_pipeline.py is not in the repository yet")
    write_config(workspace, symbols=["GOOGL"], data={"source": "sample"})
    assert at.main(["--run-once", "data", "--quiet"]) == 0
    state = read_state(workspace)
    assert state["units"]["data/GOOGL"]["outcome"] == "ok"
    assert (workspace / "data" / "GOOGL_1d_test_data.parquet").exists()
    # The bundled sample ends in 2018: the stale-data monitor says so.
    assert [a["kind"] for a in state["alerts"]] == ["stale_data"]
    assert "GOOGL 1d is from 2018" in state["alerts"][0]["message"]
