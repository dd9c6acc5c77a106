"""Logging set-up for the scripts: a log file per run under logs/, terse lines on the terminal.

Packages only use ``logging.getLogger(__name__)``; handlers are installed here, from ``main()``.

Every handler installed here masks secrets (:func:`botcore.redact.redact`) in each line it writes. The
terminal gets one line per record, never a traceback or a stack: tracebacks go to the log file only.

Progress bars and log lines share the terminal without interleaving: the console handler writes each line
through ``tqdm.write`` (what ``tqdm.contrib.logging.logging_redirect_tqdm`` does), which lifts this process's
bars, prints the line above them and redraws them. Training jobs in worker processes each draw their own bar on
their own line; on a terminal, every process of a session takes one lock (a ``flock`` on a file named in
``BOTCORE_TERMINAL_LOCK``, inherited by the workers) around each bar update and each log line, so one process
never writes into the middle of another's.
"""
from __future__ import annotations

import atexit
import fcntl
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from botcore import paths
from botcore.redact import redact

_FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_CONSOLE_FORMAT = "%(levelname)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, traceback and stack before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a bad format string: the handler reports it as logging always has)
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class OneLineFormatter(logging.Formatter):
    """The terminal's format: ``LEVEL: message`` on one line, without the traceback or stack of the record
    (those are in the log file)."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        return " ".join(self.formatMessage(record).splitlines())


class TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The console handler: each record through ``tqdm.write``, so that it lands above the progress bars, never
    inside one. On a terminal the line first erases the screen below the cursor (other processes' bars, redrawn at
    their next update)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            line = self.format(record)
            stream: TextIO = self.stream
            erase = "\r\x1b[J" if _isatty(stream) else ""
            tqdm.write(erase + line, file=stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 (logging's own convention: report and carry on)
            self.handleError(record)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


_TERMINAL_LOCK_ENV = "BOTCORE_TERMINAL_LOCK"


class TerminalLock:
    """A lock shared by the processes of one session that draw on the same terminal (tqdm's write lock): a
    ``flock`` on ``path``, re-entrant within a process as tqdm expects. ``acquire(False)`` does not wait."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0
        self._threads = threading.RLock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._threads.acquire(blocking):
            return False
        if self._depth == 0:
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError:
                if not blocking:
                    self._threads.release()
                    return False
                # the lock file cannot be used: draw without it rather than not at all
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass
        self._threads.release()

    def __enter__(self) -> TerminalLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _share_terminal(path: str) -> None:
    """Make tqdm's bars and our log lines in this process take the session's terminal lock."""
    from tqdm import tqdm

    tqdm.set_lock(TerminalLock(path))


def _start_terminal_session() -> None:
    """In the main process, on a terminal: a lock file for this session, named in the environment so that the
    worker processes it spawns share it (removed at exit)."""
    if not _isatty(sys.stderr):
        os.environ.pop(_TERMINAL_LOCK_ENV, None)
        return
    path = os.path.join(tempfile.gettempdir(), f"botcore_terminal_{os.getpid()}.lock")
    if os.environ.get(_TERMINAL_LOCK_ENV) != path:
        os.environ[_TERMINAL_LOCK_ENV] = path
        atexit.register(_remove_quietly, path)
    _share_terminal(path)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _LogState:
    """Where this process logs to: the file, or why there is none."""

    log_file: Path | None = None
    problem: str | None = None


def current_log_file() -> Path | None:
    """The log file :func:`setup_logging` opened, or ``None`` (not set up yet, or it could not be written)."""
    return _LogState.log_file


def traceback_hint() -> str:
    """Where the traceback of an unexpected error went, for the one line shown to the user."""
    if _LogState.log_file is not None:
        return f"traceback in {_LogState.log_file}"
    if _LogState.problem is not None:
        return f"no traceback saved: {_LogState.problem}"
    return "traceback in logs/"


def console_installed() -> bool:
    """True when :func:`setup_logging` has installed its terminal handler in this process."""
    return any(getattr(h, "_botcore_console", False) for h in logging.getLogger().handlers)


def setup_logging(script: str, quiet: bool = False, verbose: bool = False, max_bytes: int = 0,
                  backups: int = 5) -> Path:
    """Install a file handler (``logs/{script}_{timestamp}.log``, DEBUG) and a console handler.

    The console shows INFO (WARNING with ``quiet``, DEBUG with ``verbose``). Calling it again replaces
    the handlers installed before, so tests and the daemon can call ``main()`` many times. When the log file
    cannot be created (a read-only workspace or ``logs/``), the script goes on with the console only, after
    one warning that says where the log would have gone (:func:`current_log_file` is then ``None``).

    :return: the log file's path (where it would have gone, when it could not be created).

    :param max_bytes: rotate the log file when it reaches this size, keeping ``backups`` old files
        (``.log.1`` ... ``.log.N``); 0 = one file, never rotated (a script's run is short; the daemon's is not).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_botcore", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG)
    _start_terminal_session()
    console = TerminalHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    console.setFormatter(OneLineFormatter(_CONSOLE_FORMAT))
    console.addFilter(RedactingFilter())
    console._botcore = True  # type: ignore[attr-defined]
    console._botcore_console = True  # type: ignore[attr-defined]
    # yfinance logs its own failures ("possibly delisted") at ERROR; our one-line message says what happened
    # and how to fix it, so yfinance's lines go to the log file only.
    console.addFilter(lambda record: not record.name.startswith("yfinance"))

    log_dir = paths.logs_dir()
    log_file = log_dir / f"{script}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.log"
    try:
        file_handler = _file_handler(log_file, max_bytes, backups)
    except OSError as exc:
        _LogState.log_file = None
        reason = f"{log_dir} is not a folder" if log_dir.exists() and not log_dir.is_dir() else exc.strerror or exc
        _LogState.problem = f"cannot write the log file {log_file} ({reason})"
        root.addHandler(console)
        logging.getLogger(__name__).warning("%s; going on without a log file (make %s writable to keep logs)",
                                            _LogState.problem, log_dir)
    else:
        _LogState.log_file, _LogState.problem = log_file, None
        root.addHandler(file_handler)
        root.addHandler(console)
    _quiet_noisy_loggers()
    return log_file


def _file_handler(log_file: Path, max_bytes: int, backups: int) -> logging.Handler:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if max_bytes > 0:
        from logging.handlers import RotatingFileHandler

        handler: logging.Handler = RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups,
                                                       encoding="utf-8")
    else:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    handler.addFilter(RedactingFilter())
    handler._botcore = True  # type: ignore[attr-defined]
    return handler


def _quiet_noisy_loggers() -> None:
    for noisy in ("matplotlib", "PIL", "urllib3", "yfinance", "peewee", "optuna", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def setup_worker_logging(log_file: str | None, quiet: bool) -> None:
    """Logging in a worker process: append to the session's log file (lines tagged with the pid), and
    warnings (INFO unless ``quiet``) on the console, one line each, secrets masked as in the parent; bars and
    lines under the session's terminal lock (see the module docstring)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if os.environ.get(_TERMINAL_LOCK_ENV) and _isatty(sys.stderr):
        _share_terminal(os.environ[_TERMINAL_LOCK_ENV])
    if log_file:
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError:
            pass  # the parent process has said already that the log file cannot be written
        else:
            handler.setFormatter(logging.Formatter(_FILE_FORMAT.replace("%(name)s", "[pid %(process)d] %(name)s")))
            handler.addFilter(RedactingFilter())
            root.addHandler(handler)
    console = TerminalHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(OneLineFormatter(_CONSOLE_FORMAT))
    console.addFilter(RedactingFilter())
    root.addHandler(console)
    _quiet_noisy_loggers()
