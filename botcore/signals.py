"""Stopping cleanly on SIGINT / SIGTERM: one handler for training jobs, optimisation workers and the daemon.

A :class:`StopFlag` is set by the handler; long-running loops poll it at their safe points (a checkpoint,
the end of a unit of work) and stop there. A second Ctrl-C while stopping raises KeyboardInterrupt as usual.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGINT/SIGTERM (or by ``request``); loops poll ``requested`` at safe points and stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a stop is requested or ``timeout`` seconds pass; True when a stop was requested."""
        return self._event.wait(timeout)


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag, message: str = "stopping at the next safe point") -> Iterator[StopFlag]:
    """Route SIGINT and SIGTERM to ``flag`` while the block runs (main thread only; elsewhere a no-op).

    :param message: what the warning logged on the first signal says will happen next.
    """
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: Any) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logger.warning("%s received: %s", signal.Signals(signum).name, message)
        flag.request(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)
