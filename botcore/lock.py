"""Workspace locks: ``fcntl.flock`` on a file under results/, with the holder's pid written inside it.

The kernel releases an flock when its process dies, even by ``kill -9``, so a lock can never stay held
by a dead process. What a killed process does leave behind is its pid in the file; the next holder sees
that the pid is no longer running, logs that it takes over a stale lock, and overwrites it.

Locks conflict between separate ``open()`` calls, so two :class:`WorkspaceLock` objects on the same file
exclude each other even inside one process (the tests rely on this).

Not for network file systems where ``flock`` is not shared between machines (older NFS).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botcore import paths
from botcore.signals import StopFlag

logger = logging.getLogger(__name__)

DAEMON_LOCK = "automation_daemon.lock"
JOB_LOCK = "automation.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WorkspaceLock:
    """An exclusive lock on ``results/<name>`` for one role (``daemon``, ``job``, ...).

    :param name: the lock file's name under results/ (or an absolute path).
    :param role: written into the file so that ``--status`` and refusals can say who holds it.
    """

    def __init__(self, name: str | Path = JOB_LOCK, role: str = "job") -> None:
        path = Path(name)
        self.path = path if path.is_absolute() else paths.results_dir() / path
        self.role = role
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder replaced by the last acquire

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_seconds: float = 0.0, poll_seconds: float = 0.2, detail: str = "",
                stop: StopFlag | None = None, on_wait: Callable[[dict[str, Any] | None], None] | None = None
                ) -> bool:
        """Take the lock, waiting up to ``wait_seconds`` (``float("inf")`` = until free or ``stop`` is set).

        :param detail: a short description of what the holder does (shown by ``--status``).
        :param stop: give up early when a stop is requested.
        :param on_wait: called once with the current holder's info when the lock is busy.
        :return: True when acquired, False when it stayed busy.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_seconds
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if not told and on_wait is not None:
                    on_wait(self.holder())
                    told = True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.requested):
                    os.close(fd)
                    return False
                pause = min(poll_seconds, remaining)
                if stop is not None:
                    stop.wait(pause)
                else:
                    time.sleep(pause)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        previous = _parse(os.pread(fd, 4096, 0))
        self.took_over = None
        if previous and previous.get("pid") not in (None, os.getpid()) and not pid_alive(int(previous["pid"])):
            self.took_over = previous
            logger.warning("taking over stale lock %s left by pid %s (%s since %s), which is no longer running",
                           self.path, previous.get("pid"), previous.get("role"), previous.get("since"))
        info = {"pid": os.getpid(), "role": self.role, "detail": detail, "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds")}
        payload = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
        os.fsync(fd)
        self._fd = fd
        return True

    def update_detail(self, detail: str) -> None:
        """Rewrite the holder's description (e.g. the job now running) while holding the lock."""
        if self._fd is None:
            return
        info = _parse(os.pread(self._fd, 4096, 0)) or {"pid": os.getpid(), "role": self.role}
        info["detail"] = detail
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        """Release the lock. The file stays (removing it would race with a process about to lock it); its
        content is cleared so that nobody mistakes it for a holder."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now: the info written by the holder plus ``"alive"``; None when it is free.

        Probed with a shared non-blocking flock that is released at once, so it never disturbs the holder.
        """
        if self._fd is not None:
            info = _parse(os.pread(self._fd, 4096, 0)) or {}
            return {**info, "alive": True}
        if not self.path.exists():
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                info = _parse(os.pread(fd, 4096, 0)) or {}
                return {**info, "alive": True}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def stale_holder(self) -> dict[str, Any] | None:
        """The pid info left in a free lock file by a process that died without releasing it, else None."""
        if self.holder() is not None or not self.path.exists():
            return None
        info = _parse(self.path.read_bytes())
        if info and info.get("pid") and not pid_alive(int(info["pid"])):
            return info
        return None

    @contextlib.contextmanager
    def hold(self, **kwargs: Any) -> Iterator[bool]:
        """``with lock.hold(wait_seconds=5) as ok:`` releases on exit when acquired."""
        ok = self.acquire(**kwargs)
        try:
            yield ok
        finally:
            if ok:
                self.release()

    def __del__(self) -> None:  # a forgotten lock must not outlive its object
        with contextlib.suppress(Exception):
            self.release()


class LockTimeout(Exception):
    """:func:`locked_file` waited its ``wait_seconds`` and the lock stayed busy."""


@contextlib.contextmanager
def locked_file(path: str | Path, shared: bool = False, wait_seconds: float = 60.0,
                poll_seconds: float = 0.05) -> Iterator[bool]:
    """Hold ``fcntl.flock`` on ``path`` (created when missing) for the block: shared (readers) or exclusive.

    The file is never removed (that would race with a process about to lock it) and holds no content.

    :param wait_seconds: how long to wait for a busy lock before raising :class:`LockTimeout`.
    :return: (as the ``with`` value) True when locked; False when the lock file cannot be created because
        the folder is read-only, where no process can write either, so there is nothing to exclude.
    """
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        try:
            fd = os.open(target, os.O_RDONLY)
        except FileNotFoundError:
            yield False
            return
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{target} stayed locked by another process for {wait_seconds:g} s")
            time.sleep(poll_seconds)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def describe_holder(info: dict[str, Any] | None) -> str:
    """One readable phrase for a holder's info: ``pid 123 (daemon: training GOOGL) since 2024-...``."""
    if not info:
        return "nobody"
    what = info.get("role", "?")
    if info.get("detail"):
        what += f": {info['detail']}"
    host = f" on {info['host']}" if info.get("host") and info.get("host") != socket.gethostname() else ""
    return f"pid {info.get('pid', '?')}{host} ({what}) since {info.get('since', '?')}"


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw.decode("utf-8").strip() or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
