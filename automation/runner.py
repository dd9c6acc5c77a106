"""Running one unit of work (one script for one symbol) as a child process with a timeout.

A crash, a hang or a memory leak in training cannot take the daemon down, and a stop request ends the unit
cleanly. Tests inject their own :data:`Runner` instead of :class:`SubprocessRunner`.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botcore import paths
from botcore.signals import StopFlag

logger = logging.getLogger(__name__)

SCRIPTS_DIR = Path(__file__).resolve().parent.parent  # where the four scripts live


@dataclass
class UnitResult:
    """How one unit of work ended.

    :param outcome: ``ok``, ``failed``, ``timeout`` or ``aborted`` (stopped by SIGTERM/SIGINT); the chain
        also records ``skipped``.
    :param error: one line saying why when not ok.
    :param returncode: the child's exit code (None when it was ended by us).
    """

    outcome: str
    error: str = ""
    returncode: int | None = None


# runner(script, args, timeout_seconds, stop) -> UnitResult; tests inject their own.
Runner = Callable[[str, list[str], float, StopFlag], UnitResult]


class SubprocessRunner:
    """Run ``python <scripts_dir>/<script> args...`` in the workspace as a child process.

    The child gets its own session (a terminal's Ctrl-C reaches only the daemon, which then ends the child
    in order) and, on Linux, a SIGTERM from the kernel if the daemon is killed outright; it inherits the
    environment minus the alert secrets, and writes stdout/stderr to
    ``logs/automate_<script>_<time>_<pid>.out`` (removed when it succeeds, kept and named when it fails).
    On timeout or stop: SIGTERM to the child's process group, ``grace_seconds`` to finish, then SIGKILL.
    """

    def __init__(self, scripts_dir: Path = SCRIPTS_DIR, python: str = sys.executable, grace_seconds: float = 30.0,
                 hidden_env: Sequence[str] = (), poll_seconds: float = 0.5) -> None:
        self.scripts_dir = Path(scripts_dir)
        self.python = python
        self.grace_seconds = grace_seconds
        self.hidden_env = set(hidden_env)
        self.poll_seconds = poll_seconds

    def __call__(self, script: str, args: list[str], timeout_seconds: float, stop: StopFlag) -> UnitResult:
        path = self.scripts_dir / script
        if not path.exists():
            return UnitResult("failed", f"{path} does not exist")
        env = {k: v for k, v in os.environ.items() if k not in self.hidden_env}
        env["PYTHONUNBUFFERED"] = "1"
        paths.logs_dir().mkdir(parents=True, exist_ok=True)
        out_path = paths.logs_dir() / f"automate_{path.stem}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.out"
        deadline = time.monotonic() + timeout_seconds
        with open(out_path, "wb") as out:
            # preexec_fn is safe here although the daemon may have threads: it only calls prctl, nothing that
            # takes a lock or allocates between fork and exec.
            proc = subprocess.Popen([self.python, str(path), *args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd(), start_new_session=True,
                                    preexec_fn=_die_with_parent if _LIBC is not None else None)  # noqa: PLW1509
            logger.debug("started pid %d: %s %s", proc.pid, script, " ".join(args))
            while True:
                try:
                    returncode = proc.wait(timeout=self.poll_seconds)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if stop.requested:
                    self._end(proc)
                    return UnitResult("aborted", f"stopped by a signal; {script} (pid {proc.pid}) was ended; "
                                                 f"output in {out_path}")
                if time.monotonic() > deadline:
                    self._end(proc)
                    return UnitResult("timeout", f"{script} ran longer than {timeout_seconds / 60:g} minutes and "
                                                 f"was ended; output in {out_path}")
        if returncode == 0:
            out_path.unlink(missing_ok=True)
            return UnitResult("ok", "", 0)
        return UnitResult("failed", f"exit code {returncode}: {_last_line(out_path)} (output in {out_path})",
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
    """The child's last error line (or last line) of output, for a one-line failure message."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    errors = [ln for ln in lines if ln.lower().startswith(("error", "critical"))]
    line = (errors or lines or ["no output"])[-1]
    return line[:limit]
