"""The automation's state file, ``results/automation_state.json``.

It holds the daemon's liveness, the latest run of every job and unit, a bounded history of unit runs, the
recent alerts (redacted) and the test metrics of each champion. Every save is atomic, so a ``kill -9`` leaves
the previous or the new version, never half of one; writers hold the job lock.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from botcore.atomic import atomic_write_json
from botcore.lock import pid_alive

logger = logging.getLogger(__name__)

STATE_FILE = "automation_state.json"
HEARTBEAT_FILE = "automation_heartbeat.json"  # the daemon's pid and time, rewritten even while a unit runs
HISTORY_LIMIT = 500  # unit runs kept in the state file
ALERTS_LIMIT = 200
METRICS_LIMIT = 200  # evaluations kept per champion key


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
            raise TypeError("not a JSON object")
    except (OSError, ValueError, TypeError) as exc:
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d_%H%M%S')}")
        shutil.move(str(path), aside)
        logger.error("%s is unreadable (%s); moved it to %s and started a new state", path, exc, aside)
        return empty_state()
    state = empty_state()
    state.update(data)
    return state


class StateStore:
    """The state file and its contents in memory (``data``, the layout of :func:`empty_state`).

    :param path: the state file; it is read at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = load_state(path)

    def reload(self) -> None:
        """Read the file again (another process may have written it since)."""
        self.data = load_state(self.path)

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def recover_interrupted(self) -> None:
        """Entries left ``running`` by a process that died (kill -9, power loss) become ``interrupted``."""
        for entry in [*self.data["jobs"].values(), *self.data["units"].values()]:
            if entry.get("outcome") == "running" and not (entry.get("pid") and pid_alive(int(entry["pid"]))
                                                          and entry.get("pid") != os.getpid()):
                entry["outcome"] = "interrupted"
                entry["error"] = f"process {entry.get('pid')} ended while this ran (killed or crashed)"

    def record_unit(self, name: str, record: dict[str, Any]) -> None:
        """Set the latest run of unit ``name`` and append it to the history (the newest HISTORY_LIMIT kept)."""
        self.data["units"][name] = record
        self.data["history"] = [*self.data["history"], {"unit": name, **record}][-HISTORY_LIMIT:]

    def add_alert(self, record: dict[str, Any]) -> None:
        """Keep an alert among the recent ones (the newest ALERTS_LIMIT)."""
        self.data["alerts"] = [*self.data["alerts"], record][-ALERTS_LIMIT:]

    def metrics_history(self, key: str) -> list[dict[str, Any]]:
        """The recorded test metrics of champion key ``key`` (``symbol/interval/model_type``), oldest first."""
        return self.data["metrics_history"].get(key, [])

    def add_metrics(self, key: str, entry: dict[str, Any]) -> None:
        """Append one evaluation of ``key`` (the newest METRICS_LIMIT kept)."""
        history = self.data["metrics_history"].setdefault(key, [])
        history.append(entry)
        del history[:-METRICS_LIMIT]
