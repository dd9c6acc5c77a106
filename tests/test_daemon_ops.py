"""The daemon as its operator sees it: interrupted training resumed, unit results in --status, next runs in the
future, what runs now, a heartbeat that does not lag a whole job, the nightly report, and the read-only status
page (served on loopback, checked over HTTP and in a real headless Chromium)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from browser import CHROMIUM_MISSING, find_chromium, layout_metrics, render_dom
from test_automate_training import FakeRunner, read_state, write_config

import automate_training as at
from agents.config import load_config
from agents.registry import Registry
from automation.daemon import Automation
from automation.schedule import iso
from automation.state import HEARTBEAT_FILE, STATE_FILE, empty_state
from automation.web import StatusServer, render_page
from botcore.errors import ConfigError
from botcore.lock import DAEMON_LOCK, WorkspaceLock


def _seed_state(folder, **units):
    state = empty_state()
    state["units"] = units
    (folder / "results").mkdir(exist_ok=True)
    (folder / "results" / STATE_FILE).write_text(json.dumps(state))


class RegisteringRunner(FakeRunner):
    """FakeRunner whose train_bot.py registers a run (as the real one does), promoted or kept."""

    def __init__(self, promote=True, sharpe=0.83):
        super().__init__()
        self.promote, self.sharpe = promote, sharpe

    def __call__(self, script, args, timeout, stop):
        result = super().__call__(script, args, timeout, stop)
        if script == "train_bot.py":
            model_type = args[args.index("--model-type") + 1]
            src = os.path.abspath("model.bin")
            with open(src, "wb") as fh:
                fh.write(b"weights")
            meta = {"model_type": model_type, "algo": "ppo" if model_type == "backtrader" else "deepscalper",
                    "symbol": args[args.index("--symbol") + 1], "interval": "1d", "seed": 1,
                    "validation": {"sharpe_ratio": self.sharpe}, "resumed": "--resume" in args}
            Registry().register(src, meta, promote=self.promote,
                                reason="beat the champion significantly" if self.promote else "not significant")
        return result


# --- resuming an interrupted training run -----------------------------------------------------------------

@pytest.mark.parametrize("outcome", ["interrupted", "timeout", "aborted"])
def test_a_cut_short_training_unit_is_resumed_by_the_next_training_job(workspace, outcome):
    write_config(workspace)
    _seed_state(workspace, **{"training/SYN/deepscalper": {"outcome": outcome, "start": "2026-01-01T02:00:00+00:00"},
                              "training/SYN/backtrader": {"outcome": "ok", "start": "2026-01-01T02:00:00+00:00"}})
    runner = RegisteringRunner()
    assert at.main(["--run-once", "training", "--quiet"], runner=runner) == 0
    calls = {c[1][c[1].index("--model-type") + 1]: c[1] for c in runner.calls}
    assert "--resume" in calls["deepscalper"] and "--resume" not in calls["backtrader"]
    units = read_state(workspace)["units"]
    assert "(resumed)" in units["training/SYN/deepscalper"]["result"]
    # the next training job after a clean run starts new runs again
    runner2 = RegisteringRunner()
    assert at.main(["--run-once", "training", "--quiet"], runner=runner2) == 0
    assert not any("--resume" in c[1] for c in runner2.calls)


def test_failed_training_is_not_resumed(workspace):
    """A unit that failed (bad data, a bug) is started over: only runs cut short by a kill or a stop resume."""
    write_config(workspace)
    _seed_state(workspace, **{"training/SYN/deepscalper": {"outcome": "failed", "start": "x"}})
    runner = RegisteringRunner()
    assert at.main(["--run-once", "training", "--quiet"], runner=runner) == 0
    assert not any("--resume" in c[1] for c in runner.calls)


# --- unit results in --status ---------------------------------------------------------------------------

@pytest.mark.parametrize("promote", [True, False])
def test_status_gives_each_units_result_not_just_ok(workspace, capsys, promote):
    write_config(workspace)
    runner = RegisteringRunner(promote=promote, sharpe=0.83)
    assert at.main(["--run-once", "all", "--quiet"], runner=runner) == 0
    units = read_state(workspace)["units"]
    end = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    assert units["data/SYN"]["result"] == f"data to {end}, 600 bars"
    verdict = "promoted to champion (beat the champion significantly)" if promote else \
        "kept the champion (not significant)"
    for model_type in ("deepscalper", "backtrader"):
        result = units[f"training/SYN/{model_type}"]["result"]
        assert result.startswith("run ") and f"validation Sharpe 0.83; {verdict}" in result
    assert units["evaluation/SYN"]["result"] == ("deepscalper champion ds1 test Sharpe 1.20; "
                                                 "backtrader champion bt1 test Sharpe 1.00")
    capsys.readouterr()
    assert at.main(["--status"]) == 0
    out = capsys.readouterr().out
    assert f"validation Sharpe 0.83; {verdict}" in out and "ds1 test Sharpe 1.20" in out
    assert "running now: nothing" in out


def test_the_nightly_evaluation_writes_plots_and_the_html_report(workspace):
    write_config(workspace)
    runner = FakeRunner()
    assert at.main(["--run-once", "evaluation", "--quiet", "--force"], runner=runner) == 0
    assert "--create-plots" in runner.calls[-1][1]


# --- next runs, running now, last seen ----------------------------------------------------------------------

def test_next_runs_are_never_in_the_past_even_from_a_stale_daemon_record(workspace):
    write_config(workspace)
    state = empty_state()
    long_ago = "2020-01-01T02:00+01:00"
    state["next_runs"] = {"data": long_ago, "training": long_ago, "evaluation": "2999-01-01T04:00+01:00"}
    (workspace / "results").mkdir(exist_ok=True)
    (workspace / "results" / STATE_FILE).write_text(json.dumps(state))
    lock = WorkspaceLock(DAEMON_LOCK, role="daemon")  # a daemon "runs" (this process holds its lock)
    assert lock.acquire(detail="test daemon")
    try:
        st = Automation(load_config(str(workspace / "training_config.json"))).status()
    finally:
        lock.release()
    assert st["next_runs_source"] == "daemon"
    now = datetime.now(UTC)
    for job, when in st["next_runs"].items():
        assert datetime.fromisoformat(when) > now, (job, when)
    assert st["next_runs"]["evaluation"] == "2999-01-01T04:00+01:00"  # the daemon's own, still ahead


def test_running_now_and_a_last_seen_from_the_heartbeat(workspace, capsys):
    write_config(workspace)
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process that "runs" a unit
    try:
        old = iso(datetime.now(UTC) - timedelta(hours=3))
        state = empty_state()
        state["daemon"] = {"pid": os.getpid(), "started": old, "last_seen": old}
        state["units"] = {"training/SYN/deepscalper": {"outcome": "running", "start": old, "trigger": "schedule",
                                                       "pid": sleeper.pid}}
        (workspace / "results").mkdir(exist_ok=True)
        (workspace / "results" / STATE_FILE).write_text(json.dumps(state))
        fresh = iso(datetime.now(UTC))
        (workspace / "results" / HEARTBEAT_FILE).write_text(json.dumps({"pid": os.getpid(), "time": fresh}))
        lock = WorkspaceLock(DAEMON_LOCK, role="daemon")
        assert lock.acquire(detail="test daemon")
        try:
            st = Automation(load_config(str(workspace / "training_config.json"))).status()
            text = at.format_status(st) if hasattr(at, "format_status") else None
        finally:
            lock.release()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert st["daemon"]["last_seen"] == fresh  # not three hours behind while the unit runs
    assert st["running_now"] == [{"unit": "training/SYN/deepscalper", "since": old, "trigger": "schedule",
                                  "pid": sleeper.pid}]
    if text is not None:
        assert "running now:\n  training/SYN/deepscalper" in text


def test_the_daemon_writes_its_heartbeat_file_while_it_runs(workspace, monkeypatch):
    from automation import daemon as automation_daemon
    monkeypatch.setattr(automation_daemon, "HEARTBEAT_FILE_SECONDS", 0.05)
    beat = automation_daemon._HeartbeatThread(automation_daemon.Clock(), every=0.05)
    beat.start()
    try:
        path = workspace / "results" / HEARTBEAT_FILE
        deadline = time.monotonic() + 10
        seen = set()
        while time.monotonic() < deadline and len(seen) < 2:
            if path.exists():
                seen.add(json.loads(path.read_text())["time"])
            time.sleep(0.02)
    finally:
        beat.stop()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert len(seen) >= 1


# --- the status page -------------------------------------------------------------------------------------

def _get(url, method="GET"):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read().decode("utf-8")


@pytest.fixture()
def page_workspace(workspace):
    write_config(workspace)
    runner = RegisteringRunner()
    assert at.main(["--run-once", "all", "--quiet"], runner=runner) == 0
    state = read_state(workspace)
    state["alerts"].append({"time": iso(datetime.now(UTC)), "severity": "warning", "kind": "low_sharpe",
                            "subject": "SYN/1d/deepscalper", "message": "<script>document.title='pwned'</script>"})
    (workspace / "results" / STATE_FILE).write_text(json.dumps(state))
    return workspace


def test_status_page_serves_the_status_read_only_and_escaped(page_workspace):
    auto = Automation(load_config(str(page_workspace / "training_config.json")))
    server = StatusServer(auto.status, 0).start()
    try:
        code, ctype, body = _get(server.url)
        assert code == 200 and ctype.startswith("text/html")
        assert "SYN/1d/deepscalper" in body and "validation Sharpe" in body and "Recent alerts" in body
        assert "<script>document.title" not in body and "&lt;script&gt;document.title" in body
        assert "no report yet" in body
        code, ctype, body = _get(server.url + "status.json")
        assert code == 200 and json.loads(body)["units"]["evaluation/SYN"]["result"].startswith("deepscalper champ")
        assert _get(server.url + "report")[0] == 404
        (page_workspace / "results" / "report_SYN_20260101_000000.html").write_text("<html>the report</html>")
        code, _, body = _get(server.url + "report")
        assert code == 200 and body == "<html>the report</html>"
        assert _get(server.url)[2].count('href="/report"') == 1
        for path in ("../training_config.json", "results/automation_state.json", "%2e%2e/training_config.json"):
            assert _get(server.url + path)[0] == 404
        assert _get(server.url, method="POST")[0] == 405
        assert _get(server.url, method="DELETE")[0] == 405
    finally:
        server.close()
    assert server.httpd.socket.fileno() == -1


def test_status_page_only_listens_on_loopback(page_workspace):
    auto = Automation(load_config(str(page_workspace / "training_config.json")))
    server = StatusServer(auto.status, 0).start()
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
    finally:
        server.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_daemon_serves_the_page_on_the_configured_port_and_stops_it(workspace):
    port = _free_port()
    write_config(workspace, automation={"http_port": port},
                 training_schedule={"catch_up_missed": False})
    auto = Automation(load_config(str(workspace / "training_config.json")), runner=FakeRunner())
    auto.wake_seconds = 0.05
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("code", auto.run_daemon()))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        code = None
        while time.monotonic() < deadline:
            try:
                code, _, body = _get(f"http://127.0.0.1:{port}/")
                break
            except urllib.error.URLError:
                time.sleep(0.05)
        assert code == 200 and "daemon: <b class=\"ok\">running</b>" in body
    finally:
        auto.stop.request()
        thread.join(timeout=30)
    assert done.get("code") == 0
    with pytest.raises(urllib.error.URLError):
        _get(f"http://127.0.0.1:{port}/")


def test_a_busy_port_is_an_alert_not_a_dead_daemon(workspace):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        write_config(workspace, automation={"http_port": port}, training_schedule={"catch_up_missed": False})
        auto = Automation(load_config(str(workspace / "training_config.json")), runner=FakeRunner())
        auto.wake_seconds = 0.05
        thread = threading.Thread(target=auto.run_daemon)
        thread.start()
        time.sleep(1.0)
        auto.stop.request()
        thread.join(timeout=30)
    alerts = read_state(workspace)["alerts"]
    assert any(a["kind"] == "status_page" and str(port) in a["message"] for a in alerts)


@pytest.mark.parametrize("value", ['"8080"', "70000", "true", "1.5"])
def test_http_port_is_validated(workspace, value):
    (workspace / "training_config.json").write_text(f'{{"automation": {{"http_port": {value}}}}}')
    with pytest.raises(ConfigError, match="automation.http_port"):
        load_config(str(workspace / "training_config.json"))


def test_render_page_without_any_runs(workspace):
    write_config(workspace)
    html = render_page(Automation(load_config(str(workspace / "training_config.json"))).status())
    assert "no champion registered yet" in html and "nothing is running" in html and "no unit has run yet" in html


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason=CHROMIUM_MISSING)
def test_status_page_in_a_real_headless_browser(page_workspace):
    (page_workspace / "results" / "report_SYN_20260101_000000.html").write_text("<html>r</html>")
    auto = Automation(load_config(str(page_workspace / "training_config.json")))
    server = StatusServer(auto.status, 0).start()
    try:
        dom = render_dom(server.url, width=1400)
        metrics = layout_metrics(server.url, width=1400)
    finally:
        server.close()
    assert "Champions" in dom and "SYN/1d/backtrader" in dom and 'href="/report"' in dom
    assert "<title>trading bot status</title>" in dom  # the injected script in the alert did not run
    assert metrics["scroll_width"] <= metrics["inner_width"], metrics["widest_element"]
    assert all(t["right"] <= metrics["inner_width"] for t in metrics["tables"])


def test_child_scripts_never_get_the_broker_or_alert_credentials(workspace, monkeypatch):
    write_config(workspace, trading={"alpaca": {"key_env": "MY_ALPACA_KEY", "secret_env": "MY_ALPACA_SECRET"}})
    monkeypatch.setenv("MY_ALPACA_KEY", "PKTESTKEY")
    monkeypatch.setenv("MY_ALPACA_SECRET", "sEcReT")
    auto = Automation(load_config(str(workspace / "training_config.json")))
    hidden = auto.chain.runner.hidden_env
    assert {"MY_ALPACA_KEY", "MY_ALPACA_SECRET"} <= hidden
    assert {"TRADING_BOT_SMTP_PASSWORD", "TRADING_BOT_WEBHOOK_URL"} <= hidden
