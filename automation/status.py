"""What ``automate_training.py --status`` reports: the daemon, the job lock, the last and next runs, the
champions with their latest test metrics, and the recent alerts."""
from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytz

from agents.registry import Registry
from automation.schedule import JOBS, RUN_ONCE_JOBS, Timetable, parse_time
from automation.state import HEARTBEAT_FILE, StateStore
from botcore import paths
from botcore.errors import UserError
from botcore.lock import DAEMON_LOCK, WorkspaceLock, describe_holder


def collect_status(store: StateStore, timetable: Timetable, job_lock: WorkspaceLock,
                   paper: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``--status`` shows, as a JSON-able dict (no secrets: alerts are stored redacted).

    :param store: the state; it is read again here (the daemon may have written it).
    :param timetable: gives the next runs when no daemon is running.
    :param job_lock: the workspace's job lock (only its holder is read).
    :param paper: the paper accounts (:meth:`automation.trade.PaperTrading.status`).
    """
    store.reload()
    store.recover_interrupted()
    state = store.data
    daemon_lock = WorkspaceLock(DAEMON_LOCK, role="daemon")
    holder = daemon_lock.holder()
    job_holder = job_lock.holder()
    daemon = dict(state["daemon"])
    daemon["running"] = holder is not None
    if holder:
        daemon["pid"] = holder.get("pid")
    daemon["stale_lock"] = daemon_lock.stale_holder()
    beat = read_heartbeat()
    if holder and beat and beat.get("pid") == holder.get("pid"):  # seen while a long unit holds the job lock
        daemon["last_seen"] = max([t for t in (daemon.get("last_seen"), beat.get("time")) if t],
                                  key=lambda t: parse_time(t) or datetime.min.replace(tzinfo=UTC))
    next_runs, source = _future_runs(timetable, state.get("next_runs") if holder is not None else None)
    return {
        "workspace": str(paths.workspace()),
        "timezone": timetable.tz.zone,
        "daemon": daemon,
        "job_lock": {"held": job_holder is not None, "holder": job_holder},
        "jobs": {job: state["jobs"].get(job) for job in RUN_ONCE_JOBS},
        "units": state["units"],
        "running_now": _running_now(state, job_holder),
        "recent_runs": state["history"][-20:],
        "next_runs": next_runs,
        "next_runs_source": source,
        "champions": _champions(store),
        "paper": paper if paper is not None else {"enabled": False, "symbols": {}},
        "recent_alerts": state["alerts"][-10:],
    }


def read_heartbeat() -> dict[str, Any] | None:
    """The daemon's heartbeat file (written every HEARTBEAT_FILE_SECONDS, even while a unit runs), or None."""
    try:
        data = json.loads((paths.results_dir() / HEARTBEAT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _future_runs(timetable: Timetable, daemon_runs: dict[str, str] | None) -> tuple[dict[str, str], str]:
    """The next run of each job, never one in the past: the daemon's own (recorded at its last heartbeat) where
    it is still ahead, else the next one the timetable gives from now."""
    fresh = timetable.next_runs(timetable.build_scheduler(lambda job: None))
    if not daemon_runs:
        return fresh, "config"
    now = datetime.now(UTC)
    out = {}
    for job, when in fresh.items():
        recorded = daemon_runs.get(job)
        moment = parse_time(recorded)
        out[job] = recorded if moment is not None and moment > now else when
    return out, "daemon"


def _running_now(state: dict[str, Any], job_holder: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What runs at this moment (apart from what ran before): the units left ``running`` by a live process, or
    the job lock's holder when it names no unit."""
    running = [{"unit": name, "since": u.get("start"), "trigger": u.get("trigger"), "pid": u.get("pid")}
               for name, u in sorted(state["units"].items()) if u.get("outcome") == "running"]
    if not running and job_holder:
        running.append({"unit": job_holder.get("detail") or job_holder.get("role"),
                        "since": job_holder.get("since"), "trigger": job_holder.get("role"),
                        "pid": job_holder.get("pid")})
    return running


def _champions(store: StateStore) -> list[dict[str, Any]] | dict[str, str]:
    """Each registered champion with its validation Sharpe ratio and its latest test by the automation."""
    try:
        records = Registry().champions()
    except UserError as exc:
        return {"error": str(exc)}
    out = []
    for rec in records:
        latest = next((h for h in reversed(store.metrics_history(rec.key)) if h.get("run_id") == rec.run_id), None)
        out.append({"key": rec.key, "run_id": rec.run_id, "algo": rec.algo, "created": rec.created,
                    "validation_sharpe": None if math.isnan(rec.score) else rec.score,
                    "latest_test": latest})
    return out


def format_status(st: dict[str, Any]) -> str:
    """The human-readable ``--status`` report of :func:`collect_status`."""
    tz = pytz.timezone(st["timezone"])

    def when(text: Any) -> str:
        moment = parse_time(text)
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
    if st.get("running_now"):
        lines.append("running now:")
        for r in st["running_now"]:
            lines.append(f"  {r['unit']} since {when(r.get('since'))} ({r.get('trigger')}, pid {r.get('pid')})")
    else:
        lines.append("running now: nothing")
    lines.append("last runs:")
    for job in RUN_ONCE_JOBS:
        j = st["jobs"].get(job)
        if not j:
            lines.append(f"  {job:<11} never run")
            continue
        lines.append(f"  {job:<11} {j.get('outcome'):<11} {when(j.get('start'))} -> {when(j.get('end'))} "
                     f"({j.get('trigger')})")
        for name, unit in sorted(st["units"].items()):
            if name.startswith(job + "/"):
                err = f": {unit['error']}" if unit.get("error") else ""
                result = f": {unit['result']}" if unit.get("result") and not err else ""
                lines.append(f"    {name:<34} {unit.get('outcome')}{err}{result}")
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
    lines += _paper_lines(st["paper"], when)
    lines.append("recent alerts:" if st["recent_alerts"] else "recent alerts: none")
    for a in st["recent_alerts"]:
        lines.append(f"  {when(a.get('time'))} [{a.get('severity')}] {a.get('kind')} {a.get('subject')}: "
                     f"{a.get('message')}")
    return "\n".join(lines)


def _paper_lines(paper: dict[str, Any], when: Any) -> list[str]:
    """The paper-trading section of ``--status``: per symbol, the champions and their shadows side by side."""
    if not paper.get("enabled"):
        return ["paper trading: off (trading.enabled)"]
    if paper.get("error"):
        return [f"paper trading: ledger unreadable: {paper['error']}"]
    if not paper["symbols"]:
        return ["paper trading: no accounts yet (the trade job opens them after a data update)"]
    lines = [f"paper trading ({paper.get('ledger')}):"]

    def num(value: Any, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    for symbol, accounts in sorted(paper["symbols"].items()):
        lines.append(f"  {symbol}:")
        for a in accounts:
            pos = a["position"]
            held = "flat" if not pos["units"] else f"{pos['units']:+.4f} units @ {pos['avg_price']:.4f}"
            last = a["last_decision"]
            decided = f"last decision {last['bar']} ({when(last['time'])})" if last else "no decision yet"
            fwd = a["forward"]
            forward = (f"forward {fwd['returns']} bars: Sharpe {num(fwd['sharpe'], '.2f')}, max drawdown "
                       f"{num(fwd['max_drawdown_pct'], '.2f')}%, rolling PSR {num(fwd['rolling_psr'], '.2f')}")
            flags = [k for k in ("sharpe_implausible", "drawdown_implausible") if fwd.get(k)]
            if a["parity_bar"]:
                flags.append(f"parity diverged at {a['parity_bar']}")
            lines.append(f"    {a['role']:<8} {a['model_type']:<11} {a['run_id']} [{a['status']}] since "
                         f"{a['start_bar']}: equity {a['equity']:.2f} ({num(a['return_pct'], '+.2f')}%), Sharpe "
                         f"{num(a['sharpe'], '.2f')}, {held}; {decided}")
            lines.append(f"             {forward}" + (f"; ALERT: {', '.join(flags)}" if flags else ""))
    return lines
