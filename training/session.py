"""A training session's record: results/training_session_<timestamp>.json, rewritten (atomically) as it goes."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botcore import paths
from botcore.atomic import atomic_write_json


class Session:
    """results/training_session_<timestamp>.json, rewritten (atomically) as the session goes on."""

    def __init__(self, argv: Sequence[str], cfg: dict[str, Any], mode: str, log_file: Path):
        self.stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
        self.path = paths.results_dir() / f"training_session_{self.stamp}.json"
        self.data: dict[str, Any] = {"session": self.stamp, "mode": mode, "argv": list(argv),
                                     "started": now_iso(), "finished": None, "log_file": str(log_file),
                                     "config": cfg, "jobs": [], "cycles": [], "optimize": None, "exit_code": None}
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def finish(self, code: int) -> None:
        self.data.update(finished=now_iso(), exit_code=code)
        self.save()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
