"""The locked entry points: ``--run-once``, ``--status`` and the daemon loop.

Locks: ``results/automation_daemon.lock`` (one daemon per workspace) and ``results/automation.lock`` (one job
at a time, daemon or cron). Every write of the state happens under the job lock, so no update of another
process is lost. The daemon catches up the jobs it missed while no daemon ran, then runs each at its time,
waking at least every WAKE_SECONDS (it survives suspend and clock jumps) and recording a heartbeat every
HEARTBEAT_SECONDS.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import schedule

from automation.alerts import Notifier
from automation.chain import Chain, JobPlan
from automation.monitor import AlertLog, Monitor
from automation.runner import Runner, SubprocessRunner, UnitResult
from automation.schedule import Clock, Timetable, iso, parse_time
from automation.state import HEARTBEAT_FILE, STATE_FILE, StateStore
from automation.status import collect_status
from automation.trade import PaperTrading
from automation.web import StatusServer
from botcore import paths
from botcore.atomic import atomic_write_json
from botcore.errors import UserError
from botcore.lock import DAEMON_LOCK, JOB_LOCK, WorkspaceLock, describe_holder
from botcore.signals import StopFlag, stop_on_signals

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_LOCK_BUSY = 3
EXIT_INTERRUPTED = 130
WAKE_SECONDS = 60.0  # the daemon re-checks the clock at least this often (survives suspend and clock jumps)
HEARTBEAT_SECONDS = 300.0
HEARTBEAT_FILE_SECONDS = 30.0  # the heartbeat file is rewritten this often, also while a long unit runs
STOP_MESSAGE = "ending the current unit cleanly, saving state, exiting"


class Automation:
    """The automation of one workspace (the current directory): its timetable, state, alerts, monitoring and
    chain, behind the three entry points :meth:`run_once`, :meth:`run_daemon` and :meth:`status`.

    :param cfg: the resolved config (``load_config``).
    :param config_file: passed to the child scripts as ``--config`` when given.
    :param runner: launches one unit of work (default: :class:`~automation.runner.SubprocessRunner`).
    :param clock: the time source (default: the wall clock).
    :param notifier: alert delivery (default: from ``cfg["alerts"]``).
    :param trader: runs one trade unit in-process (default: :class:`~automation.trade.PaperTrading`).
    """

    def __init__(self, cfg: dict[str, Any], config_file: Path | None = None, runner: Runner | None = None,
                 clock: Clock | None = None, notifier: Notifier | None = None,
                 trader: Callable[[str], UnitResult] | None = None) -> None:
        sched = cfg["training_schedule"]
        self.timetable = Timetable(sched)
        plan = JobPlan(cfg, config_file)
        notifier = notifier or Notifier(cfg["alerts"])
        alpaca = cfg["trading"].get("alpaca") or {}
        broker_secrets = [alpaca[k] for k in ("key_env", "secret_env") if alpaca.get(k)]
        # The child scripts never need the alert or broker credentials: they do not get them.
        runner = runner or SubprocessRunner(hidden_env=[*notifier.secret_env_names(), *broker_secrets])
        self.clock = clock or Clock()
        self.stop = StopFlag()
        self.store = StateStore(paths.results_dir() / STATE_FILE)
        self.job_lock = WorkspaceLock(JOB_LOCK, role="job")
        self.alerts = AlertLog(notifier, self.store, self.clock)
        self.monitor = Monitor(cfg["monitoring"], plan.interval, self.alerts, self.store, self.clock)
        self.paper = PaperTrading(cfg, self.monitor, self.clock)
        self.chain = Chain(plan, runner, float(sched["job_timeout_minutes"]) * 60.0, store=self.store,
                           alerts=self.alerts, monitor=self.monitor, job_lock=self.job_lock, clock=self.clock,
                           stop=self.stop, trader=trader or self.paper)
        self.http_port = cfg.get("automation", {}).get("http_port")
        self.status_server: StatusServer | None = None
        self.lock_wait_seconds = float(sched["lock_wait_seconds"])
        self.wake_seconds = WAKE_SECONDS
        self.heartbeat_seconds = HEARTBEAT_SECONDS
        self._last_heartbeat = datetime.min.replace(tzinfo=UTC)

    def status(self) -> dict[str, Any]:
        """Everything ``--status`` shows (see :func:`~automation.status.collect_status`)."""
        return collect_status(self.store, self.timetable, self.job_lock, paper=self.paper.status())

    def run_once(self, jobs: Sequence[str], force: bool = False) -> int:
        """``--run-once``: wait up to ``lock_wait_seconds`` for the job lock, run the jobs in chain order (each
        with its follow-ups: the trade job after a data update and after a training that changed a champion).

        :return: 0, EXIT_FAILED (a job did not end ``ok``), EXIT_LOCK_BUSY or EXIT_INTERRUPTED.
        """
        wait = self.lock_wait_seconds
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
            self.store.reload()  # another process may have written it while we waited
            self.store.recover_interrupted()
            outcomes = []
            for job in jobs:
                if self.stop.requested:
                    break
                outcomes += self.chain.run_with_followups(job, trigger="run-once", force=force)
        finally:
            self.store.save()
            self.job_lock.release()
        if self.stop.requested:
            return EXIT_INTERRUPTED
        return 0 if all(o == "ok" for o in outcomes) else EXIT_FAILED

    def run_daemon(self) -> int:
        """The daemon: catch up missed jobs once, then run each step at its time until SIGTERM/SIGINT."""
        daemon_lock = WorkspaceLock(DAEMON_LOCK, role="daemon")
        if not daemon_lock.acquire(detail=f"automate_training.py daemon in {paths.workspace()}"):
            holder = daemon_lock.holder()
            pid = holder.get("pid") if holder else "<pid>"
            raise UserError(f"another automate_training.py daemon already runs in {paths.workspace()}: "
                            f"{describe_holder(holder)}; stop it first (kill -TERM {pid}) or check it with --status")
        self.job_lock.role = "daemon"
        beat = _HeartbeatThread(self.clock)
        try:
            with stop_on_signals(self.stop, STOP_MESSAGE):
                beat.start()
                self._start_status_page()
                return self._serve()
        finally:
            beat.stop()
            if self.status_server is not None:
                self.status_server.close()
            self._record_stopped()
            daemon_lock.release()

    def _start_status_page(self) -> None:
        """Serve the read-only status page when ``automation.http_port`` is set (a busy port is one alert, not a
        dead daemon)."""
        if self.http_port is None:
            return
        try:
            self.status_server = StatusServer(self.status, int(self.http_port)).start()
        except OSError as exc:
            self.alerts.alert("status_page", "automation.http_port", f"cannot serve the status page on "
                              f"127.0.0.1:{self.http_port}: {exc}; the daemon runs without it")
            self.store.save()

    def _serve(self) -> int:
        """The daemon's life under its lock: start, catch up, then the loop until a stop is requested."""
        # Every write of the state happens under the job lock (a cron --run-once may be writing it).
        if not self.job_lock.acquire(wait_seconds=math.inf, detail="starting", stop=self.stop):
            return 0
        try:
            self.store.reload()
            self.store.recover_interrupted()
            last_seen = parse_time(self.store.data["daemon"].get("last_seen"))
            now = self.clock.now()
            self.store.data["daemon"] = {"pid": os.getpid(), "started": iso(now), "last_seen": iso(now),
                                         "stopped": None}
            scheduler = self.timetable.build_scheduler(lambda job: self._run_locked(job, "schedule"))
            self.store.data["next_runs"] = self.timetable.next_runs(scheduler)
            self.store.save()
        finally:
            self.job_lock.release()
        self._last_heartbeat = now
        logger.info("daemon started (pid %d); next runs (%s): %s", os.getpid(), self.timetable.tz.zone,
                    ", ".join(f"{j} {v}" for j, v in self.store.data["next_runs"].items()))
        for job in self.timetable.missed_jobs(last_seen, now, self.store.data["jobs"]):
            logger.info("catching up %s, missed while no daemon ran (last seen %s)", job,
                        iso(last_seen) if last_seen else "never")
            self._run_locked(job, "catch-up")
        while not self.stop.requested:
            scheduler.run_pending()
            self._heartbeat(scheduler)
            if self.stop.requested:
                break
            idle = scheduler.idle_seconds
            self.clock.sleep(min(self.wake_seconds, max(0.0, idle if idle is not None else self.wake_seconds)),
                             self.stop)
        logger.info("daemon stopping on request")
        return 0

    def _record_stopped(self) -> None:
        """Mark the daemon stopped in the state (skipped when the job lock stays busy for 10 s)."""
        if not self.job_lock.acquire(wait_seconds=10.0, detail="stopping"):
            return
        try:
            self.store.reload()
            self.store.data["daemon"].update({"pid": None, "stopped": iso(self.clock.now()),
                                              "last_seen": iso(self.clock.now())})
            self.store.save()
            logger.info("state saved in %s", self.store.path)
        finally:
            self.job_lock.release()

    def _run_locked(self, job: str, trigger: str) -> None:
        """Run one job under the job lock, waiting for a cron job that holds it. Never raises."""
        if self.stop.requested:
            return
        try:
            self.job_lock.role = "daemon"
            acquired = self.job_lock.acquire(
                wait_seconds=math.inf, detail=f"{trigger} {job}", stop=self.stop,
                on_wait=lambda h: logger.info("job %s waits for the job lock held by %s", job, describe_holder(h)))
            if not acquired:
                return
            try:
                self.store.reload()
                self.store.recover_interrupted()
                self.chain.run_with_followups(job, trigger=trigger)
            finally:
                self.job_lock.release()
        except Exception as exc:  # never die of one bad day
            logger.exception("job %s crashed inside the daemon", job)
            self.alerts.alert("internal_error", job, f"automate_training.py failed while running {job}: "
                              f"{type(exc).__name__}: {exc} (traceback in logs/)", severity="critical")
            self.store.save()

    def _heartbeat(self, scheduler: schedule.Scheduler) -> None:
        """Record that the daemon is alive and its next runs (skipped while a cron job holds the job lock:
        the state is only ever written under that lock, so no update of another process is lost)."""
        now = self.clock.now()
        if (now - self._last_heartbeat).total_seconds() < self.heartbeat_seconds:
            return
        self.job_lock.role = "daemon"
        if not self.job_lock.acquire(detail="heartbeat"):
            return
        try:
            self._last_heartbeat = now
            self.store.reload()
            self.store.data["daemon"].update({"pid": os.getpid(), "last_seen": iso(now)})
            self.store.data["next_runs"] = self.timetable.next_runs(scheduler)
            self.store.save()
        finally:
            self.job_lock.release()


class _HeartbeatThread:
    """Rewrites ``results/automation_heartbeat.json`` (pid and time) every HEARTBEAT_FILE_SECONDS, so that
    ``--status`` says the daemon was seen a moment ago even while a training unit holds the job lock for hours
    (the state file is only written under that lock)."""

    def __init__(self, clock: Clock, every: float = HEARTBEAT_FILE_SECONDS) -> None:
        self.clock = clock
        self.every = every
        self.path = paths.results_dir() / HEARTBEAT_FILE
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                atomic_write_json(self.path, {"pid": os.getpid(), "time": iso(self.clock.now())})
            except OSError as exc:  # a full disk must not kill the daemon; the state file still says it lives
                logger.warning("could not write %s: %s", self.path, exc)
            self._done.wait(self.every)
