"""Logging set-up for the scripts: a log file per run under logs/, terse lines on the terminal.

Packages only use ``logging.getLogger(__name__)``; handlers are installed here, from ``main()``.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from botcore import paths

_FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(script: str, quiet: bool = False, verbose: bool = False, max_bytes: int = 0,
                  backups: int = 5) -> Path:
    """Install a file handler (``logs/{script}_{timestamp}.log``, DEBUG) and a console handler.

    The console shows INFO (WARNING with ``quiet``, DEBUG with ``verbose``). Calling it again replaces
    the handlers installed before, so tests and the daemon can call ``main()`` many times.

    :param max_bytes: rotate the log file when it reaches this size, keeping ``backups`` old files
        (``.log.1`` ... ``.log.N``); 0 = one file, never rotated (a script's run is short; the daemon's is not).
    """
    log_dir = paths.logs_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    log_file = log_dir / f"{script}_{stamp}_{os.getpid()}.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_botcore", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG)
    if max_bytes > 0:
        from logging.handlers import RotatingFileHandler

        file_handler: logging.Handler = RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups,
                                                            encoding="utf-8")
    else:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    file_handler._botcore = True  # type: ignore[attr-defined]
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console._botcore = True  # type: ignore[attr-defined]
    # yfinance logs its own failures ("possibly delisted") at ERROR; our one-line message says what happened
    # and how to fix it, so yfinance's lines go to the log file only.
    console.addFilter(lambda record: not record.name.startswith("yfinance"))
    root.addHandler(file_handler)
    root.addHandler(console)
    _quiet_noisy_loggers()
    return log_file


def _quiet_noisy_loggers() -> None:
    for noisy in ("matplotlib", "PIL", "urllib3", "yfinance", "peewee", "optuna", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def setup_worker_logging(log_file: str | None, quiet: bool) -> None:
    """Logging in a worker process: append to the session's log file (lines tagged with the pid), and
    warnings (INFO unless ``quiet``) on the console."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FILE_FORMAT.replace("%(name)s", "[pid %(process)d] %(name)s")))
        root.addHandler(handler)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    _quiet_noisy_loggers()
