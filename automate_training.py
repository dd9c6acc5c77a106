"""automate_training.py: keep models fresh on a schedule, and say when they degrade.

Commands::

    python automate_training.py --create-config [--force]     # training_config.json with the defaults
    python automate_training.py --status [--json]             # daemon, last/next runs, champions, alerts
    python automate_training.py --run-once data|training|evaluation|all [--force]
    python automate_training.py                               # the daemon

The chain: ``data_pipeline.py --update-data`` per symbol, then ``train_bot.py`` per symbol and model type,
then ``evaluate_bot.py`` per symbol, each at its time of day from ``training_schedule`` in its time zone
(once a week when ``weekday`` is set). Every unit of work runs as a child process with a timeout
(``job_timeout_minutes``): a crash, a hang or a memory leak in training cannot take the daemon down, and
SIGTERM can end a unit cleanly. A unit whose upstream step failed in its latest run is skipped (training
after a failed data update, evaluation when no training of the symbol succeeded) and raises an alert.

Exit codes: 0 success (and the daemon after SIGTERM/SIGINT); 1 a unit failed, timed out or was skipped, a
daemon is already running, or another user error; 2 a bad config; 3 ``--run-once`` found the job lock
busy for ``lock_wait_seconds``; 130 ``--run-once`` interrupted (its unit was ended, state saved).

State and history: ``results/automation_state.json`` (atomic writes, survives ``kill -9``). Locks:
``results/automation_daemon.lock`` (one daemon per workspace) and ``results/automation.lock`` (one job at a
time, daemon or cron).
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytz
import schedule

from botcore import paths
from botcore.alerts import Alert, Notifier
from botcore.atomic import atomic_write_json
from botcore.cli import run_guarded
from botcore.config import load_config, write_default_config
from botcore.errors import ConfigError, UserError
from botcore.lock import DAEMON_LOCK, JOB_LOCK, WorkspaceLock, describe_holder, pid_alive
from botcore.logsetup import setup_logging
from botcore.symbols import safe_name, validate_symbol

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent
JOBS = ("data", "training", "evaluation")
SCRIPTS = {"data": "data_pipeline.py", "training": "train_bot.py", "evaluation": "evaluate_bot.py"}
AT_KEYS = {"data": "data_update_at", "training": "daily_at", "evaluation": "evaluation_at"}
STATE_FILE = "automation_state.json"
EXIT_FAILED = 1
EXIT_LOCK_BUSY = 3
EXIT_INTERRUPTED = 130
HISTORY_LIMIT = 500  # unit runs kept in the state file
ALERTS_LIMIT = 200
METRICS_LIMIT = 200  # evaluations kept per champion key
WAKE_SECONDS = 60.0  # the daemon re-checks the clock at least this often (survives suspend and clock jumps)
HEARTBEAT_SECONDS = 300.0
STALE_ALERT_REPEAT_HOURS = 12.0  # the same stale-data alert is not repeated within this time
BAD_OUTCOMES = ("failed", "timeout", "skipped", "aborted", "interrupted")


# --- time -----------------------------------------------------------------------------------------

class Clock:
    """The wall clock. Tests pass a controllable one (same two methods)."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        stop.wait(seconds)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def resolve_timezone(name: str) -> pytz.BaseTzInfo:
    """The pytz zone for ``training_schedule.timezone``, or ConfigError with a suggestion."""
    try:
        return pytz.timezone(name)
    except pytz.UnknownTimeZoneError:
        hint = difflib.get_close_matches(name, pytz.all_timezones, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else " (e.g. UTC, Europe/Berlin, America/New_York)"
        raise ConfigError(f"training_schedule.timezone = {name!r} is not a known time zone{extra}") from None


# --- running one unit of work -----------------------------------------------------------------------

@dataclass
class JobResult:
    """How one unit of work ended.

    :param outcome: ``ok``, ``failed``, ``timeout`` or ``aborted`` (stopped by SIGTERM/SIGINT).
    :param error: one line saying why when not ok.
    :param returncode: the child's exit code (None when it was ended by us).
    """

    outcome: str
    error: str = ""
    returncode: int | None = None


# runner(script, args, timeout_seconds, stop) -> JobResult; tests inject their own.
Runner = Callable[[str, list[str], float, threading.Event], JobResult]


class SubprocessRunner:
    """Run ``python <scripts_dir>/<script> args...`` in the workspace as a child process.

    The child gets its own session (a terminal's Ctrl-C reaches only the daemon, which then ends the child
    in order) and, on Linux, a SIGTERM from the kernel if the daemon is killed outright; it inherits the environment minus the alert secrets, and writes stdout/stderr to
    ``logs/automate_<script>_<time>_<pid>.out`` (removed when it succeeds, kept and named when it fails).
    On timeout or stop: SIGTERM to the child's process group, ``grace_seconds`` to finish, then SIGKILL.
    """

    def __init__(self, scripts_dir: Path = REPO, python: str = sys.executable, grace_seconds: float = 30.0,
                 hidden_env: Sequence[str] = (), poll_seconds: float = 0.5) -> None:
        self.scripts_dir = Path(scripts_dir)
        self.python = python
        self.grace_seconds = grace_seconds
        self.hidden_env = set(hidden_env)
        self.poll_seconds = poll_seconds

    def __call__(self, script: str, args: list[str], timeout_seconds: float, stop: threading.Event) -> JobResult:
        path = self.scripts_dir / script
        if not path.exists():
            return JobResult("failed", f"{path} does not exist")
        env = {k: v for k, v in os.environ.items() if k not in self.hidden_env}
        env["PYTHONUNBUFFERED"] = "1"
        paths.logs_dir().mkdir(parents=True, exist_ok=True)
        out_path = paths.logs_dir() / f"automate_{path.stem}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.out"
        deadline = time.monotonic() + timeout_seconds
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([self.python, str(path), *args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd(), start_new_session=True,
                                    preexec_fn=_die_with_parent if _LIBC is not None else None)
            logger.debug("started pid %d: %s %s", proc.pid, script, " ".join(args))
            while True:
                try:
                    returncode = proc.wait(timeout=self.poll_seconds)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if stop.is_set():
                    self._end(proc)
                    return JobResult("aborted", f"stopped by a signal; {script} (pid {proc.pid}) was ended; "
                                                f"output in {out_path}")
                if time.monotonic() > deadline:
                    self._end(proc)
                    return JobResult("timeout", f"{script} ran longer than {timeout_seconds / 60:g} minutes and "
                                                f"was ended; output in {out_path}")
        if returncode == 0:
            out_path.unlink(missing_ok=True)
            return JobResult("ok", "", 0)
        return JobResult("failed", f"exit code {returncode}: {_last_line(out_path)} (output in {out_path})",
                         returncode)

    def _end(self, proc: subprocess.Popen) -> None:
        for sig, wait in ((signal.SIGTERM, self.grace_seconds), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                logger.warning("pid %d did not end within %.0f s of %s", proc.pid, wait, sig.name)


def _die_with_parent() -> None:
    """Runs in the child before exec (Linux): ask the kernel to SIGTERM it when the daemon dies, even by
    ``kill -9``, so that no orphaned training keeps running beside the next daemon's."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None)  # loaded once in the parent: nothing to import between fork and exec
    except OSError:
        return None


_LIBC = _load_libc()


def _last_line(path: Path, limit: int = 300) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    errors = [ln for ln in lines if ln.lower().startswith(("error", "critical"))]
    line = (errors or lines or ["no output"])[-1]
    return line[:limit]


# --- state ------------------------------------------------------------------------------------------

def empty_state() -> dict[str, Any]:
    return {"version": 1, "daemon": {}, "jobs": {}, "units": {}, "history": [], "alerts": [],
            "metrics_history": {}, "next_runs": {}}


def load_state(path: Path) -> dict[str, Any]:
    """The saved state, or an empty one. An unreadable file (edited by hand) is set aside, not lost."""
    if not path.exists():
        return empty_state()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d_%H%M%S')}")
        shutil.move(str(path), aside)
        logger.error("%s is unreadable (%s); moved it to %s and started a new state", path, exc, aside)
        return empty_state()
    state = empty_state()
    state.update(data)
    return state


def _model_entries(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-model entries of an evaluate_bot.py model_comparison file (``models``: run id -> entry)."""
    models = report.get("models")
    if not isinstance(models, dict):
        return []
    return [{"run_id": key, **entry} for key, entry in models.items() if isinstance(entry, dict)]


def _metric(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --- the automation ---------------------------------------------------------------------------------

@dataclass
class Unit:
    name: str  # e.g. training/GOOGL/deepscalper
    job: str
    symbol: str
    script: str
    args: list[str]


class Automation:
    """Jobs, chain, monitoring, state and the daemon loop for one workspace (the current directory).

    :param cfg: the resolved config (``load_config``).
    :param config_file: passed to the child scripts as ``--config`` when given.
    :param runner: launches one unit of work (default: :class:`SubprocessRunner`).
    :param clock: the time source (default: the wall clock).
    :param notifier: alert delivery (default: from ``cfg["alerts"]``).
    """

    def __init__(self, cfg: dict[str, Any], config_file: Path | None = None, runner: Runner | None = None,
                 clock: Clock | None = None, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.sched = cfg["training_schedule"]
        self.monitoring = cfg["monitoring"]
        self.tz = resolve_timezone(self.sched["timezone"])
        self.interval = cfg["data"]["interval"]
        self.symbols = [validate_symbol(s) for s in cfg["symbols"]]
        self.model_types = list(cfg["model_types"])
        self.config_file = Path(config_file).resolve() if config_file else None
        self.notifier = notifier or Notifier(cfg["alerts"])
        self.runner: Runner = runner or SubprocessRunner(hidden_env=self.notifier.secret_env_names())
        self.clock = clock or Clock()
        self.stop = threading.Event()
        self.state_path = paths.results_dir() / STATE_FILE
        self.state = load_state(self.state_path)
        self.job_lock = WorkspaceLock(JOB_LOCK, role="job")
        self._last_heartbeat = datetime.min.replace(tzinfo=timezone.utc)
        self.wake_seconds = WAKE_SECONDS
        self.heartbeat_seconds = HEARTBEAT_SECONDS

    # --- state helpers -----------------------------------------------------------------------------

    def save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def _now_iso(self) -> str:
        return _iso(self.clock.now())

    def _recover_interrupted(self) -> None:
        """Entries left ``running`` by a process that died (kill -9, power loss) become ``interrupted``."""
        for entry in [*self.state["jobs"].values(), *self.state["units"].values()]:
            if entry.get("outcome") == "running" and not (entry.get("pid") and pid_alive(int(entry["pid"]))
                                                          and entry.get("pid") != os.getpid()):
                entry["outcome"] = "interrupted"
                entry["error"] = f"process {entry.get('pid')} ended while this ran (killed or crashed)"

    def alert(self, kind: str, subject: str, message: str, severity: str = "warning",
              details: dict[str, Any] | None = None) -> None:
        """Log and deliver an alert and keep it (with its delivery result) in the state's recent alerts."""
        item = Alert(kind=kind, subject=subject, message=message, severity=severity, time=self._now_iso(),
                     details=details or {})
        delivered = self.notifier.send(item)
        record = json.loads(self.notifier.redact(json.dumps(item.to_dict(), default=str)))
        record["delivered"] = delivered
        self.state["alerts"] = [*self.state["alerts"], record][-ALERTS_LIMIT:]

    def _recent_alert(self, kind: str, subject: str, hours: float) -> bool:
        cutoff = self.clock.now() - timedelta(hours=hours)
        return any(a.get("kind") == kind and a.get("subject") == subject
                   and (_parse_time(a.get("time")) or cutoff) > cutoff for a in self.state["alerts"])

    # --- units and the chain -----------------------------------------------------------------------

    def units(self, job: str) -> list[Unit]:
        common = ["--interval", self.interval, "--quiet"]
        if self.config_file:
            common += ["--config", str(self.config_file)]
        if job == "data":
            return [Unit(f"data/{s}", job, s, SCRIPTS[job], ["--symbols", s, "--update-data", *common])
                    for s in self.symbols]
        if job == "training":
            return [Unit(f"training/{s}/{m}", job, s, SCRIPTS[job], ["--model-type", m, "--symbol", s, *common])
                    for s in self.symbols for m in self.model_types]
        if job == "evaluation":
            return [Unit(f"evaluation/{s}", job, s, SCRIPTS[job], ["--symbol", s, *common]) for s in self.symbols]
        raise UserError(f"unknown job {job!r}; use one of {', '.join(JOBS)} or all")

    def blocked_by(self, unit: Unit) -> str | None:
        """Why ``unit`` must not run: its upstream step's latest run did not succeed (None when it may run)."""
        units = self.state["units"]
        if unit.job in ("training", "evaluation"):
            data = units.get(f"data/{unit.symbol}")
            if data and data.get("outcome") != "ok":
                return f"the latest data update of {unit.symbol} ({data.get('start')}) {data.get('outcome')}"
        if unit.job == "evaluation":
            runs = [units[k] for k in (f"training/{unit.symbol}/{m}" for m in self.model_types) if k in units]
            if runs and all(r.get("outcome") != "ok" for r in runs):
                return f"no training of {unit.symbol} succeeded in its latest run"
        return None

    def run_job(self, job: str, trigger: str, force: bool = False) -> str:
        """Run every unit of ``job`` (the caller holds the job lock). One unit failing does not stop the others.

        :param trigger: ``schedule``, ``catch-up`` or ``run-once`` (recorded in the state).
        :param force: ignore the chain (run even when the upstream step failed).
        :return: the job's outcome: ``ok``, ``partial``, ``failed``, ``skipped`` or ``aborted``.
        """
        timeout = float(self.sched["job_timeout_minutes"]) * 60.0
        self.state["jobs"][job] = {"start": self._now_iso(), "end": None, "outcome": "running", "error": "",
                                   "trigger": trigger, "pid": os.getpid()}
        self.save()
        logger.info("job %s started (%s)", job, trigger)
        outcomes: dict[str, JobResult] = {}
        for unit in self.units(job):
            if self.stop.is_set():
                break
            reason = None if force else self.blocked_by(unit)
            start = self._now_iso()
            if reason:
                result = JobResult("skipped", reason)
                logger.warning("%s skipped: %s", unit.name, reason)
            else:
                self.job_lock.update_detail(f"{trigger} {unit.name}")
                self.state["units"][unit.name] = {"start": start, "end": None, "outcome": "running", "error": "",
                                                  "trigger": trigger, "pid": os.getpid()}
                self.save()
                before = self._comparison_files(unit.symbol) if job == "evaluation" else {}
                logger.info("%s: %s %s", unit.name, unit.script, " ".join(unit.args))
                try:
                    result = self.runner(unit.script, list(unit.args), timeout, self.stop)
                except Exception as exc:  # a broken runner is one failed unit, not a dead daemon
                    logger.exception("%s: the runner failed", unit.name)
                    result = JobResult("failed", f"could not run {unit.script}: {type(exc).__name__}: {exc}")
                log = logger.info if result.outcome == "ok" else logger.error
                log("%s: %s%s", unit.name, result.outcome, f" ({result.error})" if result.error else "")
            result.error = self.notifier.redact(result.error)
            record = {"start": start, "end": self._now_iso(), "outcome": result.outcome, "error": result.error,
                      "trigger": trigger, "returncode": result.returncode}
            self.state["units"][unit.name] = record
            self.state["history"] = [*self.state["history"], {"unit": unit.name, **record}][-HISTORY_LIMIT:]
            outcomes[unit.name] = result
            if job == "evaluation" and result.outcome == "ok":
                self.monitor_evaluation(unit.symbol, before)
            if job in ("data", "evaluation") and result.outcome in ("ok", "failed", "timeout"):
                self.check_data_age(unit.symbol)
            self.save()
        outcome = self._job_outcome(outcomes)
        failed = {k: r for k, r in outcomes.items() if r.outcome in ("failed", "timeout")}
        skipped = {k: r for k, r in outcomes.items() if r.outcome == "skipped"}
        summary = "; ".join(f"{k}: {r.outcome}: {r.error}" for k, r in outcomes.items() if r.outcome != "ok")
        self.state["jobs"][job] = {**self.state["jobs"][job], "end": self._now_iso(), "outcome": outcome,
                                   "error": summary}
        if failed:
            self.alert("job_failed", job, f"{len(failed)} of {len(outcomes)} {job} units failed: "
                       + "; ".join(f"{k}: {r.error}" for k, r in failed.items()), severity="critical",
                       details={k: r.outcome for k, r in failed.items()})
        if skipped:
            self.alert("job_skipped", job, f"{len(skipped)} {job} units skipped because an earlier step failed: "
                       + "; ".join(f"{k}: {r.error}" for k, r in skipped.items()),
                       details={k: r.error for k, r in skipped.items()})
        self.save()
        logger.info("job %s finished: %s", job, outcome)
        return outcome

    def _job_outcome(self, outcomes: dict[str, JobResult]) -> str:
        kinds = {r.outcome for r in outcomes.values()}
        if self.stop.is_set() or "aborted" in kinds:
            return "aborted"
        if not kinds or kinds == {"ok"}:
            return "ok"
        if kinds == {"skipped"}:
            return "skipped"
        return "partial" if "ok" in kinds else "failed"

    # --- monitoring --------------------------------------------------------------------------------

    def _comparison_files(self, symbol: str) -> dict[Path, float]:
        folder = paths.results_dir()
        return {p: p.stat().st_mtime for p in folder.glob(f"model_comparison_{safe_name(symbol)}_*.json")}

    def monitor_evaluation(self, symbol: str, before: dict[Path, float]) -> None:
        """Check the champions in the comparison file the evaluation just wrote; alert on what is wrong."""
        fresh = [p for p, m in self._comparison_files(symbol).items() if before.get(p) != m]
        if not fresh:
            self.alert("evaluation_output", f"evaluation/{symbol}",
                       f"evaluate_bot.py succeeded but wrote no results/model_comparison_{safe_name(symbol)}_*.json; "
                       "nothing could be monitored")
            return
        path = max(fresh, key=lambda p: (p.stat().st_mtime, p.name))
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.alert("evaluation_output", f"evaluation/{symbol}", f"{path} is unreadable: {exc}")
            return
        interval = report.get("interval") or self.interval
        champions = [e for e in _model_entries(report) if e.get("is_champion")]
        if not champions:
            logger.warning("%s holds no champion of %s: nothing to monitor", path.name, symbol)
        mon = self.monitoring
        for entry in champions:
            key = f"{symbol}/{interval}/{entry.get('model_type')}"
            run_id = entry.get("run_id")
            status = entry.get("status", "ok")
            if status not in ("ok", None):
                self.alert("champion_unusable", key, f"champion {run_id} could not be evaluated ({status}: "
                           f"{entry.get('error', 'no detail')}) in {path.name}", severity="critical")
                continue
            sharpe = _metric(entry, "sharpe_ratio")
            drawdown = _metric(entry, "max_drawdown_pct")
            history = self.state["metrics_history"].setdefault(key, [])
            earlier = [h["sharpe_ratio"] for h in history
                       if h.get("run_id") == run_id and h.get("sharpe_ratio") is not None]
            window = int(mon["degradation_window"])
            history.append({"time": self._now_iso(), "run_id": run_id, "sharpe_ratio": sharpe,
                            "max_drawdown_pct": drawdown, "total_return_pct": _metric(entry, "total_return_pct"),
                            "file": path.name})
            del history[:-METRICS_LIMIT]
            numbers = {"run_id": run_id, "sharpe_ratio": sharpe, "max_drawdown_pct": drawdown, "file": path.name}
            if sharpe is None or sharpe < mon["min_sharpe_ratio"]:
                shown = "undefined (no return variance, e.g. no trades)" if sharpe is None else f"{sharpe:.3f}"
                self.alert("low_sharpe", key, f"champion {run_id}: test Sharpe ratio {shown} is below "
                           f"monitoring.min_sharpe_ratio {mon['min_sharpe_ratio']:g}", details=numbers)
            if drawdown is not None and drawdown < mon["max_drawdown_threshold"]:
                self.alert("drawdown", key, f"champion {run_id}: max drawdown {drawdown:.2f}% is worse than "
                           f"monitoring.max_drawdown_threshold {mon['max_drawdown_threshold']:g}%",
                           severity="critical", details=numbers)
            if sharpe is not None and len(earlier) >= window:
                baseline = sum(earlier[-window:]) / window
                if baseline - sharpe > mon["degradation_drop"]:
                    self.alert("degradation", key, f"champion {run_id}: test Sharpe ratio {sharpe:.3f} is "
                               f"{baseline - sharpe:.3f} below the mean {baseline:.3f} of its previous {window} "
                               f"evaluations (monitoring.degradation_drop {mon['degradation_drop']:g})",
                               details={**numbers, "baseline": baseline})

    def check_data_age(self, symbol: str) -> None:
        """Alert when the prepared data of ``symbol`` ends more than ``max_data_age_days`` ago (or is missing)."""
        manifest = paths.manifest_path(symbol, self.interval)
        subject = f"data/{symbol}/{self.interval}"
        limit = float(self.monitoring["max_data_age_days"])
        try:
            ranges = json.loads(manifest.read_text(encoding="utf-8")).get("ranges", {})
            ends = [_parse_time(r.get("end", "").replace(" ", "T")) for r in ranges.values()]
            last = max(e for e in ends if e is not None)
        except FileNotFoundError:
            message = f"{manifest} does not exist: no prepared data for {symbol} {self.interval}"
            last = None
        except (OSError, ValueError, AttributeError) as exc:
            message = f"{manifest} is unreadable or holds no date ranges: {exc}"
            last = None
        else:
            age_days = (self.clock.now() - last).total_seconds() / 86400.0
            if age_days <= limit:
                return
            message = (f"the newest bar of {symbol} {self.interval} is from {last.date()} ({age_days:.1f} days old), "
                       f"older than monitoring.max_data_age_days {limit:g}")
        if not self._recent_alert("stale_data", subject, STALE_ALERT_REPEAT_HOURS):
            self.alert("stale_data", subject, message, details={"last_bar": _iso(last) if last else None})

    # --- locked entry points -----------------------------------------------------------------------

    def run_once(self, jobs: Sequence[str], force: bool = False) -> int:
        """``--run-once``: wait up to ``lock_wait_seconds`` for the job lock, run the jobs in chain order."""
        wait = float(self.sched["lock_wait_seconds"])
        self.job_lock.role = "run-once"

        def busy(holder: dict[str, Any] | None) -> None:
            logger.info("the job lock is held by %s; waiting up to %g s", describe_holder(holder), wait)

        if not self.job_lock.acquire(wait_seconds=wait, detail="run-once " + ",".join(jobs), stop=self.stop,
                                     on_wait=busy):
            holder = self.job_lock.holder()
            logger.error("another job is running in this workspace (%s); not starting alongside it "
                         "(waited %g s, training_schedule.lock_wait_seconds); exit code %d",
                         describe_holder(holder), wait, EXIT_LOCK_BUSY)
            return EXIT_LOCK_BUSY
        try:
            self.state = load_state(self.state_path)  # another process may have written it while we waited
            self._recover_interrupted()
            outcomes = []
            for job in jobs:
                if self.stop.is_set():
                    break
                outcomes.append(self.run_job(job, trigger="run-once", force=force))
        finally:
            self.save()
            self.job_lock.release()
        if self.stop.is_set():
            return EXIT_INTERRUPTED
        return 0 if all(o == "ok" for o in outcomes) else EXIT_FAILED

    def _run_locked(self, job: str, trigger: str) -> None:
        """Run one job under the job lock, waiting for a cron job that holds it. Never raises."""
        if self.stop.is_set():
            return
        try:
            self.job_lock.role = "daemon"
            acquired = self.job_lock.acquire(
                wait_seconds=math.inf, detail=f"{trigger} {job}", stop=self.stop,
                on_wait=lambda h: logger.info("job %s waits for the job lock held by %s", job, describe_holder(h)))
            if not acquired:
                return
            try:
                self.state = load_state(self.state_path)
                self._recover_interrupted()
                self.run_job(job, trigger=trigger)
            finally:
                self.job_lock.release()
        except Exception as exc:  # never die of one bad day
            logger.exception("job %s crashed inside the daemon", job)
            self.alert("internal_error", job, f"automate_training.py failed while running {job}: "
                       f"{type(exc).__name__}: {exc} (traceback in logs/)", severity="critical")
            self.save()

    # --- schedule ----------------------------------------------------------------------------------

    def build_scheduler(self, action: Callable[[str], None]) -> schedule.Scheduler:
        """One ``schedule`` job per step at its time of day in ``training_schedule.timezone``."""
        scheduler = schedule.Scheduler()
        weekday = self.sched.get("weekday")
        for job in JOBS:
            every = scheduler.every()
            period = getattr(every, weekday) if weekday else every.day
            period.at(self.sched[AT_KEYS[job]], self.tz).do(action, job).tag(job)
        return scheduler

    def next_runs(self, scheduler: schedule.Scheduler) -> dict[str, str]:
        """Next run of each job, ISO 8601 in the configured time zone (schedule keeps naive local times)."""
        out = {}
        for item in scheduler.get_jobs():
            job = next(iter(item.tags))
            if item.next_run is not None:
                out[job] = item.next_run.astimezone(self.tz).isoformat(timespec="minutes")
        return out

    def previous_slot(self, job: str, now: datetime) -> datetime:
        """The latest scheduled time of ``job`` at or before ``now``."""
        hour, minute = map(int, self.sched[AT_KEYS[job]].split(":"))
        weekday = self.sched.get("weekday")
        wanted = None if weekday is None else ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                                               "sunday"].index(weekday)
        today: date = now.astimezone(self.tz).date()
        for back in range(0, 9):
            day = today - timedelta(days=back)
            if wanted is not None and day.weekday() != wanted:
                continue
            slot = self.tz.normalize(self.tz.localize(datetime(day.year, day.month, day.day, hour, minute)))
            if slot <= now:
                return slot
        raise AssertionError("unreachable: a slot exists within 8 days")

    def missed_jobs(self, last_seen: datetime | None, now: datetime) -> list[str]:
        """Jobs whose latest slot fell while no daemon was running and that have not run since."""
        if not self.sched["catch_up_missed"] or last_seen is None:
            return []
        missed = []
        for job in JOBS:
            slot = self.previous_slot(job, now)
            last_start = _parse_time(self.state["jobs"].get(job, {}).get("start"))
            if last_seen < slot and (last_start is None or last_start < slot):
                missed.append(job)
        return missed

    def _heartbeat(self, scheduler: schedule.Scheduler, force: bool = False) -> None:
        """Record that the daemon is alive and its next runs (skipped while a cron job holds the job lock:
        the state is only ever written under that lock, so no update of another process is lost)."""
        now = self.clock.now()
        if not force and (now - self._last_heartbeat).total_seconds() < self.heartbeat_seconds:
            return
        self.job_lock.role = "daemon"
        if not self.job_lock.acquire(detail="heartbeat"):
            return
        try:
            self._last_heartbeat = now
            self.state = load_state(self.state_path)
            self.state["daemon"].update({"pid": os.getpid(), "last_seen": _iso(now)})
            self.state["next_runs"] = self.next_runs(scheduler)
            self.save()
        finally:
            self.job_lock.release()

    def run_daemon(self) -> int:
        """The daemon: catch up missed jobs once, then run each step at its time until SIGTERM/SIGINT."""
        daemon_lock = WorkspaceLock(DAEMON_LOCK, role="daemon")
        if not daemon_lock.acquire(detail=f"automate_training.py daemon in {paths.workspace()}"):
            holder = daemon_lock.holder()
            raise UserError(f"another automate_training.py daemon already runs in {paths.workspace()}: "
                            f"{describe_holder(holder)}; stop it first (kill -TERM {holder.get('pid') if holder else '<pid>'}) "
                            "or check it with --status")
        restore = self._install_signal_handlers()
        self.job_lock.role = "daemon"
        try:
            # Every write of the state happens under the job lock (a cron --run-once may be writing it).
            if not self.job_lock.acquire(wait_seconds=math.inf, detail="starting", stop=self.stop):
                return 0
            try:
                self.state = load_state(self.state_path)
                self._recover_interrupted()
                last_seen = _parse_time(self.state["daemon"].get("last_seen"))
                now = self.clock.now()
                self.state["daemon"] = {"pid": os.getpid(), "started": _iso(now), "last_seen": _iso(now),
                                        "stopped": None}
                scheduler = self.build_scheduler(lambda job: self._run_locked(job, "schedule"))
                self.state["next_runs"] = self.next_runs(scheduler)
                self.save()
            finally:
                self.job_lock.release()
            self._last_heartbeat = now
            logger.info("daemon started (pid %d); next runs (%s): %s", os.getpid(), self.tz.zone,
                        ", ".join(f"{j} {v}" for j, v in self.state["next_runs"].items()))
            for job in self.missed_jobs(last_seen, now):
                logger.info("catching up %s, missed while no daemon ran (last seen %s)", job,
                            _iso(last_seen) if last_seen else "never")
                self._run_locked(job, "catch-up")
            while not self.stop.is_set():
                scheduler.run_pending()
                self._heartbeat(scheduler)
                if self.stop.is_set():
                    break
                idle = scheduler.idle_seconds
                self.clock.sleep(min(self.wake_seconds, max(0.0, idle if idle is not None else self.wake_seconds)),
                                 self.stop)
            logger.info("daemon stopping on request")
            return 0
        finally:
            restore()
            if self.job_lock.acquire(wait_seconds=10.0, detail="stopping"):
                try:
                    self.state = load_state(self.state_path)
                    self.state["daemon"].update({"pid": None, "stopped": self._now_iso(),
                                                 "last_seen": self._now_iso()})
                    self.save()
                    logger.info("state saved in %s", self.state_path)
                finally:
                    self.job_lock.release()
            daemon_lock.release()

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, _frame: Any) -> None:
            logger.warning("received %s: ending the current unit cleanly, saving state, exiting",
                           signal.Signals(signum).name)
            self.stop.set()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    # --- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything ``--status`` shows, as a JSON-able dict (no secrets: alerts are stored redacted)."""
        self.state = load_state(self.state_path)
        self._recover_interrupted()
        daemon_lock = WorkspaceLock(DAEMON_LOCK, role="daemon")
        holder = daemon_lock.holder()
        job_holder = self.job_lock.holder()
        daemon = dict(self.state["daemon"])
        daemon["running"] = holder is not None
        if holder:
            daemon["pid"] = holder.get("pid")
        stale = daemon_lock.stale_holder()
        daemon["stale_lock"] = stale
        if holder is not None and self.state.get("next_runs"):
            next_runs, source = self.state["next_runs"], "daemon"
        else:
            next_runs, source = self.next_runs(self.build_scheduler(lambda job: None)), "config"
        return {
            "workspace": str(paths.workspace()),
            "timezone": self.tz.zone,
            "daemon": daemon,
            "job_lock": {"held": job_holder is not None, "holder": job_holder},
            "jobs": {job: self.state["jobs"].get(job) for job in JOBS},
            "units": self.state["units"],
            "next_runs": next_runs,
            "next_runs_source": source,
            "champions": self._champions(),
            "recent_alerts": self.state["alerts"][-10:],
        }

    def _champions(self) -> list[dict[str, Any]] | dict[str, str]:
        try:
            from botcore.registry import Registry

            records = Registry().champions()
        except UserError as exc:
            return {"error": str(exc)}
        out = []
        for rec in records:
            history = self.state["metrics_history"].get(rec.key, [])
            latest = next((h for h in reversed(history) if h.get("run_id") == rec.run_id), None)
            out.append({"key": rec.key, "run_id": rec.run_id, "algo": rec.algo, "created": rec.created,
                        "validation_sharpe": None if math.isnan(rec.score) else rec.score,
                        "latest_test": latest})
        return out


# --- output -----------------------------------------------------------------------------------------

def format_status(st: dict[str, Any]) -> str:
    """The human-readable ``--status`` report."""
    tz = pytz.timezone(st["timezone"])

    def when(text: Any) -> str:
        moment = _parse_time(text)
        return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") if moment else "-"

    d = st["daemon"]
    lines = [f"workspace: {st['workspace']}"]
    if d["running"]:
        lines.append(f"daemon: running (pid {d.get('pid')}, started {when(d.get('started'))}, "
                     f"last seen {when(d.get('last_seen'))})")
    else:
        seen = f" (last seen {when(d.get('last_seen'))})" if d.get("last_seen") else " (never started here)"
        lines.append(f"daemon: not running{seen}")
    if d.get("stale_lock"):
        lines.append(f"  stale lock left by pid {d['stale_lock'].get('pid')} (no longer running); "
                     "the next daemon takes it over")
    lock = st["job_lock"]
    lines.append(f"job lock: {'held by ' + describe_holder(lock['holder']) if lock['held'] else 'free'}")
    lines.append("last runs:")
    for job in JOBS:
        j = st["jobs"].get(job)
        if not j:
            lines.append(f"  {job:<11} never run")
            continue
        lines.append(f"  {job:<11} {j.get('outcome'):<11} {when(j.get('start'))} -> {when(j.get('end'))} "
                     f"({j.get('trigger')})")
        for name, unit in sorted(st["units"].items()):
            if name.startswith(job + "/"):
                err = f": {unit['error']}" if unit.get("error") else ""
                lines.append(f"    {name:<34} {unit.get('outcome')}{err}")
    label = "daemon" if st["next_runs_source"] == "daemon" else "if the daemon ran now"
    lines.append(f"next runs ({label}, {st['timezone']}):")
    for job in JOBS:
        lines.append(f"  {job:<11} {st['next_runs'].get(job, '-')}")
    champs = st["champions"]
    lines.append("champions:")
    if isinstance(champs, dict):
        lines.append(f"  unreadable: {champs['error']}")
    elif not champs:
        lines.append("  none registered yet (train_bot.py registers them)")
    for c in champs if isinstance(champs, list) else []:
        val = "n/a" if c["validation_sharpe"] is None else f"{c['validation_sharpe']:.3f}"
        test = c.get("latest_test")
        if test:
            sh = "n/a" if test.get("sharpe_ratio") is None else f"{test['sharpe_ratio']:.3f}"
            dd = "n/a" if test.get("max_drawdown_pct") is None else f"{test['max_drawdown_pct']:.2f}%"
            latest = f"latest test Sharpe {sh}, max drawdown {dd} ({when(test.get('time'))})"
        else:
            latest = "not evaluated by the automation yet"
        lines.append(f"  {c['key']:<28} {c['run_id']} ({c['algo']}) validation Sharpe {val}; {latest}")
    lines.append("recent alerts:" if st["recent_alerts"] else "recent alerts: none")
    for a in st["recent_alerts"]:
        lines.append(f"  {when(a.get('time'))} [{a.get('severity')}] {a.get('kind')} {a.get('subject')}: "
                     f"{a.get('message')}")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="automate_training.py",
        description="Run data update -> training -> evaluation on a schedule, monitor the champions, alert.",
        epilog="Exit codes: 0 ok; 1 a unit failed/was skipped, a daemon already runs, or a user error; "
               "2 bad config; 3 --run-once found the job lock busy; 130 --run-once interrupted.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--create-config", action="store_true",
                        help="write training_config.json (or --config) with the defaults")
    action.add_argument("--status", action="store_true", help="daemon, last and next runs, champions, alerts")
    action.add_argument("--run-once", choices=[*JOBS, "all"], metavar="JOB",
                        help="run one job now: data, training, evaluation or all (the chain), then exit")
    parser.add_argument("--config", type=Path, help="config file (default ./training_config.json)")
    parser.add_argument("--force", action="store_true",
                        help="--create-config: overwrite; --run-once: run even when the upstream step failed")
    parser.add_argument("--json", action="store_true", help="--status as JSON")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only on the terminal")
    parser.add_argument("--verbose", action="store_true", help="debug output on the terminal")
    return parser


def create_config(target: Path, force: bool) -> int:
    if target.exists() and not force:
        raise UserError(f"{target} already exists; not overwriting it (use --create-config --force to replace it "
                        "with the defaults; the old file is kept as .bak)")
    if target.exists():
        shutil.copy2(target, target.with_name(target.name + ".bak"))
    write_default_config(target)
    load_config(target)  # what we wrote must load
    print(f"wrote {target} with the default settings; edit it, then check it with "
          f"`python automate_training.py --status`")
    return 0


def main(argv: Sequence[str] | None = None, runner: Runner | None = None, clock: Clock | None = None) -> int:
    """Entry point. ``runner`` and ``clock`` replace the child-process launcher and the wall clock (tests).

    :param argv: command-line arguments (default ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.create_config:
            return create_config(args.config or paths.config_path(), args.force)
        cfg = load_config(args.config)
        if args.status:
            st = Automation(cfg, args.config, runner=runner, clock=clock).status()
            print(json.dumps(st, indent=2, default=str) if args.json else format_status(st))
            return 0
        # The daemon runs for months: its log rotates at 10 MB, keeping 5 old files.
        log_file = setup_logging("automate_training", quiet=args.quiet, verbose=args.verbose,
                                 max_bytes=10 * 1024 * 1024, backups=5)
        logger.info("log file: %s", log_file)
        automation = Automation(cfg, args.config, runner=runner, clock=clock)
        if args.run_once:
            jobs = list(JOBS) if args.run_once == "all" else [args.run_once]
            restore = automation._install_signal_handlers()
            try:
                return automation.run_once(jobs, force=args.force)
            finally:
                restore()
        return automation.run_daemon()

    return run_guarded(body)


if __name__ == "__main__":
    raise SystemExit(main())
