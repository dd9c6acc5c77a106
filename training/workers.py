"""Running work side by side in worker processes, with stop requests forwarded to them.

:func:`run_in_workers` runs calls in spawned processes, one process and one result pipe per call, at most
``processes`` at a time; :func:`run_jobs` runs training jobs through it.

Stopping (Ctrl-C, SIGTERM). A terminal's Ctrl-C sends SIGINT to the whole process group, workers included,
and a worker that dies of it at the wrong moment (for instance while it writes its result) would leave the
parent waiting. So workers never act on SIGINT: the parent blocks SIGINT while it starts a worker, the worker
inherits the blocked signal from its first instruction (its seconds of imports included) and blocks it again
itself. Only the parent decides:

1. on its first SIGINT/SIGTERM it sends every running worker one SIGTERM. A worker stops at its next safe
   point, saving a checkpoint, and sends its result; a training job that has not polled its stop flag yet
   (it is still importing, reading data, building its agent) has nothing to save and ends at once
   (``abandon_until_polled``). Calls not started yet are ``skipped``;
2. workers still running :data:`STOP_GRACE_SECONDS` later are killed (SIGKILL). Checkpoints are atomic, so
   their last checkpoint stands;
3. a second Ctrl-C (KeyboardInterrupt in the parent) kills the workers at once.

Results are read from each worker's own pipe while waiting, never after a join, so a worker can neither block
on a full pipe nor on a lock another (dead) worker holds. A worker ends as soon as its result is sent. A
worker whose parent dies (``kill -9``) stops on its own at its next safe point.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any

from botcore.logsetup import setup_worker_logging
from botcore.signals import StopFlag
from training.job import JobResult, JobSpec, guarded_job

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0
"""After a stop request, how long workers have to reach a safe point (and checkpoint) before they are killed."""

_POLL_SECONDS = 0.2
_EXIT_SECONDS = 5.0


def init_worker_process(log_file: str | None, quiet: bool) -> None:
    """Worker-process set-up: SIGINT blocked (the parent forwards stops as SIGTERM), one torch thread, the
    session's log file, warnings only on the console."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    import torch

    torch.set_num_threads(1)
    setup_worker_logging(log_file, quiet)


@dataclass
class WorkerOutcome:
    """How one call of :func:`run_in_workers` ended.

    :param status: ``done`` (``value`` holds the return value), ``error`` (the call raised; ``error`` says
        what), ``died`` (the process ended without a result: killed, or crashed; ``error`` says how) or
        ``skipped`` (a stop came before it started, or before it first polled its stop flag).
    """

    status: str
    value: Any = None
    error: str = ""


class _StopEscalation:
    """The stop policy shared by both waiting loops: one SIGTERM per worker on the first stop request, SIGKILL
    for those still alive ``grace`` seconds later."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.deadline: float | None = None
        self.killed: set[int] = set()

    def apply(self, stop: StopFlag, processes: Iterable[Any]) -> None:
        if not stop.requested:
            return
        alive = [p for p in processes if p.is_alive()]
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace
            for proc in alive:
                _send(proc, signal.SIGTERM)
        elif time.monotonic() >= self.deadline:
            for proc in alive:
                if proc.pid not in self.killed:
                    self.killed.add(proc.pid)
                    logger.warning("worker pid %s did not stop within %.0f s; killing it (its last checkpoint "
                                   "stands)", proc.pid, self.grace)
                    _send(proc, signal.SIGKILL)


def _send(proc: Any, signum: int) -> None:
    if proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


class _Abandon(KeyboardInterrupt):
    """Raised by a worker's SIGTERM handler while its call has not polled its stop flag yet (imports, reading
    data, building the agent): it has nothing to checkpoint, so it ends at once rather than after its set-up.
    A KeyboardInterrupt, so that the call's ``except Exception`` does not take it for a failure while code
    that cleans up after an interrupt (Optuna marks the trial failed) does."""


class _WorkerStop(StopFlag):
    """A worker's stop flag, which remembers whether the call has polled it (it has reached a safe point)."""

    def __init__(self) -> None:
        super().__init__()
        self.polled = False

    @property
    def requested(self) -> bool:
        self.polled = True
        return self.signum is not None


def _worker_main(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], log_file: str | None,
                 quiet: bool, parent_pid: int, abandon: bool) -> None:
    """A worker process: run ``fn(*args, stop)``, send ``(status, value)`` through ``conn``, exit."""
    stop = _WorkerStop()
    running = True

    def on_sigterm(signum: int, _frame: Any) -> None:
        first = stop.signum is None
        stop.request(signum)
        if abandon and running and not stop.polled:
            raise _Abandon
        if first:
            logger.warning("stop requested by the parent: stopping at the next safe point (a checkpoint is saved)")

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        init_worker_process(log_file, quiet)
        threading.Thread(target=_stop_when_orphaned, args=(stop, parent_pid), daemon=True).start()
        message: tuple[str, Any] = ("done", fn(*args, stop))
    except _Abandon:
        message = ("skipped", None)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, the traceback goes to the log
        logger.exception("worker failed")
        message = ("error", f"{type(exc).__name__}: {exc}")
    running = False
    try:
        conn.send(message)
    finally:
        conn.close()
        _exit_now(0 if message[0] != "error" else 1)


def _exit_now(code: int) -> None:
    """End the worker without the interpreter's finalization, as multiprocessing ends its forked children:
    tearing down torch, pandas and the rest takes seconds of CPU, and everything the worker owes (its
    checkpoint, its log lines, its result) is written already."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _stop_when_orphaned(stop: StopFlag, parent_pid: int) -> None:
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            logger.warning("the parent process is gone: stopping at the next safe point")
            stop.request()
            return


@dataclass
class _Worker:
    proc: Any
    conn: Connection
    outcome: WorkerOutcome | None = None
    reported_at: float = 0.0


def _start(ctx: Any, fn: Callable[..., Any], args: tuple[Any, ...], log_file: str | None, quiet: bool,
           abandon: bool) -> _Worker:
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker_main, args=(sender, fn, args, log_file, quiet, os.getpid(), abandon))
    # Blocked here, a Ctrl-C waits for the parent (it is not lost) and the child inherits the mask. The
    # resource tracker is started first: starting it unblocks SIGINT instead of restoring the mask.
    resource_tracker.ensure_running()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        sender.close()
    return _Worker(proc, receiver)


def run_in_workers(calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], processes: int, stop: StopFlag,
                   log_file: str | None = None, quiet: bool = False, grace_seconds: float = STOP_GRACE_SECONDS,
                   abandon_until_polled: bool = False) -> list[WorkerOutcome]:
    """Run each ``fn(*args, stop)`` of ``calls`` in its own spawned process, at most ``processes`` at once,
    and return their outcomes in order. ``fn`` and ``args`` must be picklable; the worker's ``stop`` flag is
    set when the parent forwards a stop (see the module docstring).

    :param abandon_until_polled: a stop ends a call at once (its outcome is ``skipped``) until it first polls
        its stop flag, i.e. while it sets up with nothing to save. For calls that leave nothing behind when
        interrupted there (a training job: its checkpoints are atomic); not for an Optuna worker, whose trial
        would be recorded as failed.
    """
    ctx = mp.get_context("spawn")
    outcomes: list[WorkerOutcome] = [WorkerOutcome("skipped") for _ in calls]
    waiting = collections.deque(range(len(calls)))
    running: dict[int, _Worker] = {}
    escalation = _StopEscalation(grace_seconds)
    try:
        while waiting or running:
            if stop.requested:
                waiting.clear()  # their outcome stays "skipped"
            while waiting and len(running) < max(1, processes):
                index = waiting.popleft()
                running[index] = _start(ctx, *calls[index], log_file, quiet, abandon_until_polled)
            escalation.apply(stop, [w.proc for w in running.values()])
            for index in _collect(running):
                outcomes[index] = running.pop(index).outcome or WorkerOutcome("died", error="no result")
    finally:
        _reap(running)
    return outcomes


def _collect(running: dict[int, _Worker]) -> list[int]:
    """Wait up to one poll interval, read the results that arrived; return the workers that have ended."""
    handles: dict[Any, _Worker] = {}
    for worker in running.values():
        handles[worker.proc.sentinel] = worker
        if worker.outcome is None:  # a pipe already read would report end-of-file until the process exits
            handles[worker.conn] = worker
    for handle in wait(list(handles), timeout=_POLL_SECONDS):
        worker = handles[handle]
        if worker.outcome is None:
            worker.outcome = _receive(worker.conn)
            worker.reported_at = time.monotonic()
    ended = []
    for index, worker in running.items():
        if worker.proc.is_alive():
            if worker.outcome is not None and time.monotonic() - worker.reported_at > _EXIT_SECONDS:
                _send(worker.proc, signal.SIGKILL)  # it reported but does not exit: nothing more is needed
            continue
        worker.proc.join()
        if worker.outcome is None:
            worker.outcome = _receive(worker.conn) or WorkerOutcome("died", error=_how_it_ended(worker.proc.exitcode))
        worker.conn.close()
        ended.append(index)
    return ended


def _receive(conn: Connection) -> WorkerOutcome | None:
    try:
        if not conn.poll():
            return None
        status, value = conn.recv()
    except (EOFError, OSError):
        return None
    return WorkerOutcome(status, value=value) if status != "error" else WorkerOutcome(status, error=str(value))


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"the worker process was killed by {signal.Signals(-exitcode).name}"
    return f"the worker process ended with exit code {exitcode} before reporting a result"


def _reap(running: dict[int, _Worker]) -> None:
    """Leave no worker behind: kill what is still alive (after an exception in the parent) and join it."""
    for worker in running.values():
        if worker.proc.is_alive():
            _send(worker.proc, signal.SIGKILL)
        worker.proc.join(_EXIT_SECONDS)
        worker.conn.close()
    running.clear()


def run_jobs(specs: list[JobSpec], processes: int, stop: StopFlag, log_file: str | None = None,
             quiet: bool = False) -> list[JobResult]:
    """Run jobs, in this process (``processes <= 1``) or in that many spawned worker processes.

    A stop request (SIGINT/SIGTERM) is forwarded to the workers, which checkpoint and stop; jobs not yet
    started are reported as ``skipped``; a worker killed after the grace period is ``stopped`` at its last
    checkpoint.
    """
    if processes <= 1 or len(specs) <= 1:
        results = []
        for spec in specs:
            if stop.requested:
                results.append(JobResult.of(spec, "skipped"))
                continue
            results.append(guarded_job(spec, stop))
        return results
    for position, spec in enumerate(specs):
        spec.position = position
    outcomes = run_in_workers([(guarded_job, (spec,)) for spec in specs], min(processes, len(specs)), stop,
                              log_file, quiet, abandon_until_polled=True)
    results = []
    for spec, outcome in zip(specs, outcomes):
        if outcome.status == "done":
            results.append(outcome.value)
        elif outcome.status == "skipped":
            results.append(JobResult.of(spec, "skipped"))
        elif stop.requested:
            results.append(JobResult.of(spec, "stopped", outcome.error))
        else:
            results.append(JobResult.of(spec, "failed", f"worker process failed: {outcome.error}"))
    return results
