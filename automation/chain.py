"""The chain: ``data_pipeline.py --update-data`` per symbol, then ``train_bot.py`` per symbol and model type,
then ``evaluate_bot.py`` per symbol. With ``trading.enabled``, the trade job (paper trading per symbol, in the
automation's own process: :mod:`automation.trade`) follows every data update, and every training job that
changed a champion.

A unit whose upstream step failed in its latest run is skipped (training after a failed data update,
evaluation when no training of the symbol succeeded) and raises an alert. One unit failing does not stop the
others of its job.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents import Registry
from automation.monitor import AlertLog, Monitor
from automation.runner import Runner, UnitResult
from automation.schedule import RUN_ONCE_JOBS, TRADE_JOB, Clock, iso
from automation.state import StateStore
from botcore import paths
from botcore.errors import UserError
from botcore.lock import WorkspaceLock
from botcore.signals import StopFlag
from botcore.symbols import validate_symbol

logger = logging.getLogger(__name__)

SCRIPTS = {"data": "data_pipeline.py", "training": "train_bot.py", "evaluation": "evaluate_bot.py",
           TRADE_JOB: ""}  # the trade job runs in-process


def data_source_hint(symbol: str) -> str:
    """What to do when a data unit failed at its source: the units take no ``--source``, so the hint names the
    commands that do."""
    return (f"; the data job refreshes each prepared dataset from the source it was made from: prepare {symbol} "
            f"once with python data_pipeline.py --symbols {symbol} --source sample|csv|synthetic, or set data.source "
            "in training_config.json")


@dataclass
class Unit:
    name: str  # e.g. training/GOOGL/deepscalper
    job: str
    symbol: str
    script: str
    args: list[str]


class JobPlan:
    """What each job runs, from the config, and the chain rule.

    :param cfg: the resolved config (``load_config``); its symbols are validated here.
    :param config_file: passed to the child scripts as ``--config`` when given.
    """

    def __init__(self, cfg: dict[str, Any], config_file: Path | None = None) -> None:
        self.interval = cfg["data"]["interval"]
        self.symbols = [validate_symbol(s) for s in cfg["symbols"]]
        self.model_types = list(cfg["model_types"])
        self.config_file = Path(config_file).resolve() if config_file else None
        self.trading = bool(cfg["trading"]["enabled"])
        self.assignments: list[str] = []  # automate_training.py --set KEY=VALUE, passed on to every child script

    def units(self, job: str) -> list[Unit]:
        common = ["--interval", self.interval, "--quiet"]
        if self.config_file:
            common += ["--config", str(self.config_file)]
        common += [f"--set={item}" for item in self.assignments]
        if job == "data":
            return [Unit(f"data/{s}", job, s, SCRIPTS[job], ["--symbols", s, "--update-data", *common])
                    for s in self.symbols]
        if job == "training":
            return [Unit(f"training/{s}/{m}", job, s, SCRIPTS[job], ["--model-type", m, "--symbol", s, *common])
                    for s in self.symbols for m in self.model_types]
        if job == "evaluation":  # the nightly evaluation writes its plots and HTML report too
            return [Unit(f"evaluation/{s}", job, s, SCRIPTS[job], ["--symbol", s, "--create-plots", *common])
                    for s in self.symbols]
        if job == TRADE_JOB:
            return [Unit(f"trade/{s}", job, s, SCRIPTS[job], []) for s in self.symbols]
        raise UserError(f"unknown job {job!r}; use one of {', '.join(RUN_ONCE_JOBS)} or all")

    def blocked_by(self, unit: Unit, latest_units: dict[str, dict[str, Any]]) -> str | None:
        """Why ``unit`` must not run: its upstream step's latest run did not succeed (None when it may run).

        :param latest_units: the state's ``units`` (unit name -> its latest run).
        """
        if unit.job in ("training", "evaluation"):
            data = latest_units.get(f"data/{unit.symbol}")
            if data and data.get("outcome") != "ok":
                return f"the latest data update of {unit.symbol} ({data.get('start')}) {data.get('outcome')}"
        if unit.job == "evaluation":
            runs = [latest_units[k] for k in (f"training/{unit.symbol}/{m}" for m in self.model_types)
                    if k in latest_units]
            if runs and all(r.get("outcome") != "ok" for r in runs):
                return f"no training of {unit.symbol} succeeded in its latest run"
        return None

    def resume_args(self, unit: Unit, latest_units: dict[str, dict[str, Any]]) -> list[str]:
        """``--resume`` for a training unit whose latest run was cut short (killed, timed out or stopped with the
        daemon): train_bot.py then continues that run from its last checkpoint instead of starting over (and starts
        a new run when no unfinished one is left)."""
        latest = latest_units.get(unit.name)
        if unit.job == "training" and latest and latest.get("outcome") in RESUMABLE_OUTCOMES:
            return ["--resume"]
        return []

    def known_runs(self, unit: Unit) -> set[str]:
        """The run ids registered for a training unit's symbol and model type (before it runs)."""
        if unit.job != "training":
            return set()
        try:
            return {r.run_id for r in Registry().runs(symbol=unit.symbol, interval=self.interval,
                                                      model_type=unit.name.rsplit("/", 1)[-1])}
        except UserError:
            return set()

    def result_summary(self, unit: Unit, known: set[str]) -> str:
        """What a successful unit produced, in one line for ``--status`` (empty when nothing can be said).

        :param known: :meth:`known_runs` before the unit ran (a training unit's new run is the one not in it).
        """
        try:
            if unit.job == "training":
                return _training_summary(unit, self.interval, known)
            if unit.job == "data":
                return _data_summary(unit.symbol, self.interval)
        except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
            logger.warning("%s: no result summary (%s)", unit.name, exc)
        return ""


RESUMABLE_OUTCOMES = ("interrupted", "timeout", "aborted")


def _training_summary(unit: Unit, interval: str, known: set[str]) -> str:
    """The newest run this training unit registered: its validation Sharpe and whether it was promoted."""
    model_type = unit.name.rsplit("/", 1)[-1]
    runs = [r for r in Registry().runs(symbol=unit.symbol, interval=interval, model_type=model_type)
            if r.run_id not in known]
    if not runs:
        return "no new run registered"
    run = max(runs, key=lambda r: r.run_id)
    score = run.score
    sharpe = "n/a" if score != score else f"{score:.2f}"
    promotion = run.metadata.get("promotion") or {}
    verdict = "promoted to champion" if promotion.get("promoted") else "kept the champion"
    reason = promotion.get("reason")
    resumed = " (resumed)" if run.metadata.get("resumed") else ""
    status = run.metadata.get("status")
    health = f" [{status}]" if status and status != "ok" else ""
    why = f" ({reason})" if reason else ""
    return f"run {run.run_id}{resumed}{health}: validation Sharpe {sharpe}; {verdict}{why}"


def _data_summary(symbol: str, interval: str) -> str:
    """The prepared dataset after a data update: its last bar and its size."""
    manifest = json.loads(paths.manifest_path(symbol, interval).read_text(encoding="utf-8"))
    ranges = manifest.get("ranges", {})
    ends = [str(r.get("end")) for r in ranges.values() if r.get("end")]
    rows = sum(int(r.get("rows", 0)) for r in ranges.values())
    return f"data to {max(ends)}" + (f", {rows:,} bars" if rows else "") if ends else ""


class Chain:
    """Runs the units of a job in order, records each in the state, monitors and alerts.

    :param plan: the units and the chain rule.
    :param runner: launches one unit of work.
    :param timeout_seconds: the limit of one unit (``training_schedule.job_timeout_minutes``).
    :param store: the state, saved after every step so that a crash loses nothing.
    :param alerts: failures and skips are reported here.
    :param monitor: the checks after an evaluation and a data update.
    :param job_lock: held by the caller; its detail names the running unit (shown by ``--status``).
    :param clock: the time recorded for each unit.
    :param stop: when requested, the running unit is ended and no further unit starts.
    :param trader: runs one trade unit (a symbol) in-process (:class:`automation.trade.PaperTrading`).
    """

    def __init__(self, plan: JobPlan, runner: Runner, timeout_seconds: float, *, store: StateStore,
                 alerts: AlertLog, monitor: Monitor, job_lock: WorkspaceLock, clock: Clock, stop: StopFlag,
                 trader: Callable[[str], UnitResult] | None = None) -> None:
        self.plan = plan
        self.runner = runner
        self.timeout_seconds = timeout_seconds
        self.store = store
        self.alerts = alerts
        self.monitor = monitor
        self.job_lock = job_lock
        self.clock = clock
        self.stop = stop
        self.trader = trader

    def run_with_followups(self, job: str, trigger: str, force: bool = False) -> list[str]:
        """Run ``job``, then the trade job where the chain asks for it: after a data update, and after a training
        job that changed a champion (trading enabled). Returns the outcomes of the jobs run."""
        champions = self._champions() if job == "training" and self.plan.trading else None
        outcomes = [self.run_job(job, trigger, force)]
        follow = self.plan.trading and not self.stop.requested and (
            job == "data" or (champions is not None and self._champions() != champions))
        if follow:
            outcomes.append(self.run_job(TRADE_JOB, trigger=f"after {job}"))
        return outcomes

    def _champions(self) -> dict[str, str]:
        try:
            return {r.key: r.run_id for r in Registry().champions()}
        except UserError:
            return {}

    def run_job(self, job: str, trigger: str, force: bool = False) -> str:
        """Run every unit of ``job`` (the caller holds the job lock). One unit failing does not stop the others.

        :param trigger: ``schedule``, ``catch-up`` or ``run-once`` (recorded in the state).
        :param force: ignore the chain (run even when the upstream step failed).
        :return: the job's outcome: ``ok``, ``partial``, ``failed``, ``skipped`` or ``aborted``.
        """
        jobs = self.store.data["jobs"]
        jobs[job] = {"start": self._now_iso(), "end": None, "outcome": "running", "error": "",
                     "trigger": trigger, "pid": os.getpid()}
        self.store.save()
        logger.info("job %s started (%s)", job, trigger)
        if job == "training":
            self._forward_promotions()
        outcomes: dict[str, UnitResult] = {}
        for unit in self.plan.units(job):
            if self.stop.requested:
                break
            outcomes[unit.name] = self._run_unit(unit, trigger, force)
        outcome = self._job_outcome(outcomes)
        failed = {k: r for k, r in outcomes.items() if r.outcome in ("failed", "timeout")}
        skipped = {k: r for k, r in outcomes.items() if r.outcome == "skipped"}
        summary = "; ".join(f"{k}: {r.outcome}: {r.error}" for k, r in outcomes.items() if r.outcome != "ok")
        jobs[job] = {**jobs[job], "end": self._now_iso(), "outcome": outcome, "error": summary}
        if failed:
            self.alerts.alert("job_failed", job, f"{len(failed)} of {len(outcomes)} {job} units failed: "
                              + "; ".join(f"{k}: {r.error}" for k, r in failed.items()), severity="critical",
                              details={k: r.outcome for k, r in failed.items()})
        if skipped:
            self.alerts.alert("job_skipped", job, f"{len(skipped)} {job} units skipped because an earlier step "
                              "failed: " + "; ".join(f"{k}: {r.error}" for k, r in skipped.items()),
                              details={k: r.error for k, r in skipped.items()})
        self.store.save()
        logger.info("job %s finished: %s", job, outcome)
        return outcome

    def _forward_promotions(self) -> None:
        """Promotion on forward (paper) results happens at the training job, before it trains, so the newly trained
        model is judged against the champion the paper results chose (:meth:`PaperTrading.promote_forward`). A
        failure is alerted and never blocks the training."""
        promote = getattr(self.trader, "promote_forward", None)
        if promote is None or not self.plan.trading:
            return
        for symbol in self.plan.symbols:
            try:
                judged = promote(symbol)
            except Exception as exc:  # noqa: BLE001 - the training runs whatever the ledger says
                logger.exception("forward promotion of %s failed", symbol)
                self.alerts.alert("forward_promotion", symbol, f"the forward promotion check failed: "
                                  f"{type(exc).__name__}: {exc} (traceback in logs/)", severity="warning")
                continue
            for entry in (e for e in judged if e["promoted"]):
                self.alerts.alert("forward_promotion", symbol, f"{entry['run_id']} replaces the champion "
                                  f"{entry['champion']} on forward results: {entry['decision']['reason']}",
                                  severity="info", details={"run_id": entry["run_id"], "bars": entry["bars"]})
        self.store.save()

    def _run_unit(self, unit: Unit, trigger: str, force: bool) -> UnitResult:
        """Run (or skip) one unit, record it, run the checks that follow it and save the state."""
        reason = None if force else self.plan.blocked_by(unit, self.store.data["units"])
        start = self._now_iso()
        before: dict[Path, float] = {}
        known: set[str] = set()
        if reason:
            result = UnitResult("skipped", reason)
            logger.warning("%s skipped: %s", unit.name, reason)
        else:
            previous = {unit.name: dict(self.store.data["units"].get(unit.name) or {})}
            known = self.plan.known_runs(unit)
            self.job_lock.update_detail(f"{trigger} {unit.name}")
            self.store.data["units"][unit.name] = {"start": start, "end": None, "outcome": "running", "error": "",
                                                   "trigger": trigger, "pid": os.getpid()}
            self.store.save()
            if unit.job == "evaluation":
                before = self.monitor.comparison_files(unit.symbol)
            args = [*unit.args, *self.plan.resume_args(unit, previous)]
            if "--resume" in args:
                logger.info("%s: its latest run was %s; resuming it from its last checkpoint", unit.name,
                            previous[unit.name]["outcome"])
            logger.info("%s: %s %s", unit.name, unit.script or "paper trading", " ".join(args))
            try:
                if unit.job == TRADE_JOB:
                    if self.trader is None:
                        raise RuntimeError("no trader configured")
                    result = self.trader(unit.symbol)
                else:
                    result = self.runner(unit.script, args, self.timeout_seconds, self.stop)
            except Exception as exc:  # a broken runner is one failed unit, not a dead daemon
                logger.exception("%s: the runner failed", unit.name)
                what = "paper trading" if unit.job == TRADE_JOB else unit.script
                result = UnitResult("failed", f"could not run {what}: {type(exc).__name__}: {exc}")
            if unit.job == "data" and result.outcome == "failed" and "--source" in result.error:
                result.error += data_source_hint(unit.symbol)
            log = logger.info if result.outcome == "ok" else logger.error
            log("%s: %s%s", unit.name, result.outcome, f" ({result.error})" if result.error else "")
        result.error = self.alerts.notifier.redact(result.error)
        record = {"start": start, "end": self._now_iso(), "outcome": result.outcome, "error": result.error,
                  "trigger": trigger, "returncode": result.returncode}
        if result.outcome == "ok":
            record["result"] = self.plan.result_summary(unit, known)
        self.store.record_unit(unit.name, record)
        if unit.job == "evaluation" and result.outcome == "ok":
            summary = self.monitor.check_evaluation(unit.symbol, before)
            if summary:
                self.store.data["units"][unit.name]["result"] = summary
                self.store.data["history"][-1]["result"] = summary
        if unit.job in ("data", "evaluation") and result.outcome in ("ok", "failed", "timeout"):
            self.monitor.check_data_age(unit.symbol)
        self.store.save()
        return result

    def _job_outcome(self, outcomes: dict[str, UnitResult]) -> str:
        kinds = {r.outcome for r in outcomes.values()}
        if self.stop.requested or "aborted" in kinds:
            return "aborted"
        if not kinds or kinds == {"ok"}:
            return "ok"
        if kinds == {"skipped"}:
            return "skipped"
        return "partial" if "ok" in kinds else "failed"

    def _now_iso(self) -> str:
        return iso(self.clock.now())
