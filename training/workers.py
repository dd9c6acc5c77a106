"""Running work side by side in a pool of long-lived worker processes, with stop requests forwarded to them.

:func:`run_in_workers` runs calls in a pool of at most ``processes`` spawned processes. Each worker imports the
toolkit (torch, stable-baselines3: seconds of CPU) once, sets torch to one thread (two workers on two cores,
not four threads fighting for them), then takes call after call from the parent until none is left; a worker
that dies is replaced while calls remain. :func:`run_jobs` runs training jobs through it.

A :class:`WorkerPool` can be started before its calls are known (:func:`job_pool`: the walk-forward starts its
workers before it prepares the folds' data, so their imports overlap that work), and can count the parent as
one of its ``processes`` (``share_parent``): the parent's main thread then takes calls from the same queue, at
one torch thread, while a thread of the parent manages the workers, so two workers are the parent and one
worker process (one start-up fewer, and no parent idling while its workers train).

Stopping (Ctrl-C, SIGTERM). A terminal's Ctrl-C sends SIGINT to the whole process group, workers included,
and a worker that dies of it at the wrong moment (for instance while it writes its result) would leave the
parent waiting. So workers never act on SIGINT: the parent blocks SIGINT while it starts a worker, the worker
inherits the blocked signal from its first instruction (its seconds of imports included) and blocks it again
itself. Only the parent decides:

1. on its first SIGINT/SIGTERM it sends every live worker one SIGTERM. A worker running a call stops at its
   next safe point, saving a checkpoint, and sends its result; a training job that has not polled its stop
   flag yet (it is still reading data, building its agent) has nothing to save and ends at once
   (``abandon_until_polled``); an idle or still-importing worker ends at once. Calls not started yet are
   ``skipped``;
2. workers still running :data:`STOP_GRACE_SECONDS` later are killed (SIGKILL). Checkpoints are atomic, so
   their last checkpoint stands;
3. a second Ctrl-C (KeyboardInterrupt in the parent) kills the workers at once.

A parent that takes calls itself (``share_parent``) runs them as one worker does: its call stops at its next
safe point on the first stop, and a second Ctrl-C interrupts it and kills its workers at once.

Results are read from each worker's own pipe while waiting, never after a join, so a worker can neither block
on a full pipe nor on a lock another (dead) worker holds. A call whose worker dies is reported ``died`` with
how the process ended. A worker whose parent dies (``kill -9``) stops on its own at its next safe point.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
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

SINGLE_WORKER_IN_PROCESS = True
"""``run_jobs`` with one worker trains in the calling process (torch's default threads) rather than in one
pool worker at one thread; bench/walkforward_speed.py measures both (see the guide's speed section)."""

SHARE_PARENT = True
""":func:`job_pool` with ``share_parent`` lets the calling process train jobs beside its workers (two workers =
the caller and one worker process); bench/walkforward_speed.py turns it off to measure the pool alone."""

_POLL_SECONDS = 0.2
_EXIT_SECONDS = 5.0


def init_worker_process(log_file: str | None, quiet: bool) -> None:
    """Worker-process set-up: SIGINT blocked (the parent forwards stops as SIGTERM), one torch thread, the
    session's log file, warnings only on the console."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    # tqdm's default lock holds a multiprocessing semaphore, which a worker ending with os._exit never
    # unregisters (the resource tracker then warns of a leak); the bars of one worker need a thread lock only
    tqdm.set_lock(threading.RLock())
    setup_worker_logging(log_file, quiet)


@dataclass
class WorkerOutcome:
    """How one call of :func:`run_in_workers` ended.

    :param status: ``done`` (``value`` holds the return value), ``error`` (the call raised; ``error`` says
        what), ``died`` (its process ended without a result: killed, or crashed; ``error`` says how) or
        ``skipped`` (a stop came before it started, or before it first polled its stop flag).
    """

    status: str
    value: Any = None
    error: str = ""


class _StopEscalation:
    """The stop policy: one SIGTERM per worker on the first stop request, SIGKILL for those still alive
    ``grace`` seconds later."""

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
    """Raised by a worker's SIGTERM handler while it has nothing to save: it is importing, idle, or running a
    call that has not polled its stop flag yet (reading data, building the agent). A KeyboardInterrupt, so that
    the call's ``except Exception`` does not take it for a failure while code that cleans up after an
    interrupt (Optuna marks the trial failed) does."""


class _WorkerStop(StopFlag):
    """A worker's stop flag, which remembers whether the current call has polled it (reached a safe point)."""

    def __init__(self) -> None:
        super().__init__()
        self.polled = False

    @property
    def requested(self) -> bool:
        self.polled = True
        return self.signum is not None


class _Phase:
    """What a worker is doing, for its SIGTERM handler: ``idle`` (importing, or waiting for a call) and an
    unpolled abandonable call end at once; a call that polls stops at its safe point; ``sending`` is never
    interrupted (a half-written result would be lost)."""

    def __init__(self) -> None:
        self.name = "idle"
        self.abandon = False


def _worker_main(conn: Connection, log_file: str | None, quiet: bool, parent_pid: int) -> None:
    """A pool worker: set up once, then run ``(index, fn, args, abandon)`` calls from ``conn`` until it sends
    None (or closes), answering each with ``(index, status, value)``."""
    stop = _WorkerStop()
    phase = _Phase()

    def on_sigterm(signum: int, _frame: Any) -> None:
        first = stop.signum is None
        stop.request(signum)
        if phase.name == "idle" or (phase.name == "call" and phase.abandon and not stop.polled):
            raise _Abandon
        if first and phase.name == "call":
            logger.warning("stop requested by the parent: stopping at the next safe point (a checkpoint is saved)")

    signal.signal(signal.SIGTERM, on_sigterm)
    code = 0
    try:
        init_worker_process(log_file, quiet)
        threading.Thread(target=_stop_when_orphaned, args=(stop, parent_pid), daemon=True).start()
        _serve(conn, stop, phase)
    except (_Abandon, EOFError, OSError):
        pass  # stopped while idle, or the parent is gone
    except BaseException:  # noqa: BLE001 - the traceback goes to the log
        logger.exception("worker failed outside a call")
        code = 1
    finally:
        with contextlib.suppress(OSError):
            conn.close()
        _exit_now(code)


def _serve(conn: Connection, stop: _WorkerStop, phase: _Phase) -> None:
    """The worker's loop: take a call, run it, send its result; return when told there is no more work."""
    phase.name = "sending"
    conn.send(("ready", None, None))
    while True:
        phase.name = "idle"
        if stop.signum is not None:
            return
        task = conn.recv()
        if task is None:
            return
        index, fn, args, abandon = task
        message = _call(fn, args, stop, phase, abandon)
        phase.name = "sending"
        conn.send((index, *message))


def _call(fn: Callable[..., Any], args: tuple[Any, ...], stop: _WorkerStop, phase: _Phase,
          abandon: bool) -> tuple[str, Any]:
    """Run one call: ``(status, value)`` with status ``done``, ``skipped`` or ``error``."""
    if stop.signum is not None:
        return "skipped", None
    stop.polled = False
    phase.abandon = abandon
    try:
        try:
            phase.name = "call"
            return "done", fn(*args, stop)
        finally:
            phase.name = "sending"
    except _Abandon:
        return "skipped", None
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, the traceback goes to the log
        logger.exception("worker call failed")
        return "error", f"{type(exc).__name__}: {exc}"


def _exit_now(code: int) -> None:
    """End the worker without the interpreter's finalization, as multiprocessing ends its forked children:
    tearing down torch, pandas and the rest takes seconds of CPU, and everything the worker owes (its
    checkpoint, its log lines, its results) is written already."""
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
    """The parent's view of one pool worker."""

    proc: Any
    conn: Connection
    ready: bool = False
    call: int | None = None  # index of the call it runs
    retired_at: float | None = None  # when it was told that no work is left


Calls = Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]


class _Pool:
    """The parent side of a :class:`WorkerPool`: workers, the calls they run, and what came back.

    The queue of waiting calls is shared with the parent when it takes calls too (``share_parent``): the pool is
    then managed by a thread of the parent while its main thread runs calls, so that signals, and a second
    Ctrl-C's KeyboardInterrupt, still reach the code that trains."""

    def __init__(self, size: int, stop: StopFlag, log_file: str | None, quiet: bool, grace: float,
                 abandon: bool, main_script: bool = True) -> None:
        self.size, self.stop = size, stop
        self.log_file, self.quiet, self.abandon, self.main_script = log_file, quiet, abandon, main_script
        self.ctx = mp.get_context("spawn")
        self.calls: Calls = ()
        self.outcomes: list[WorkerOutcome] = []
        self.waiting: collections.deque[int] = collections.deque()
        self.lock = threading.Lock()  # guards ``waiting`` (the parent's main thread takes calls from it too)
        self.abort = threading.Event()  # the parent's own work failed or was interrupted: kill the workers now
        self.workers: list[_Worker] = []
        self.escalation = _StopEscalation(grace)

    def start(self) -> None:
        """Start every worker now, before the calls are known: they import, then wait for work."""
        while len(self.workers) < self.size and not self.stop.requested:
            self.workers.append(self._start())

    def run(self, calls: Calls, share_parent: bool) -> list[WorkerOutcome]:
        self.calls = calls
        self.outcomes = [WorkerOutcome("skipped") for _ in calls]
        self.waiting = collections.deque(range(len(calls)))
        if not share_parent:
            self._manage()
            return self.outcomes
        failure: list[BaseException] = []
        manager = threading.Thread(target=self._manage_guarded, args=(failure,), name="worker-pool", daemon=True)
        manager.start()
        try:
            self._run_here()
            while manager.is_alive():
                manager.join(_POLL_SECONDS)
        except BaseException:
            self.abort.set()  # a second Ctrl-C (or a failure) in the parent: its workers are killed at once
            manager.join()
            raise
        if failure:
            raise failure[0]
        return self.outcomes

    def _manage(self) -> None:
        try:
            self._grow()
            while self.workers and not self.abort.is_set():
                if self.stop.requested:
                    with self.lock:
                        self.waiting.clear()  # their outcome stays "skipped"
                self.escalation.apply(self.stop, [w.proc for w in self.workers])
                self._dispatch()
                self._collect()
                self._grow()
        finally:
            self._reap()

    def _manage_guarded(self, failure: list[BaseException]) -> None:
        try:
            self._manage()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the parent's main thread
            failure.append(exc)
            with self.lock:
                self.waiting.clear()

    def _run_here(self) -> None:
        """The parent's share of the calls, taken from the same queue as the workers', at one torch thread while
        the workers train beside it (one thread per core, as the workers have)."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            while not self.stop.requested:
                with self.lock:
                    if not self.waiting:
                        return
                    index = self.waiting.popleft()
                fn, args = self.calls[index]
                self.outcomes[index] = _call_here(fn, args, self.stop)
        finally:
            torch.set_num_threads(threads)

    def _grow(self) -> None:
        """Start workers while calls wait and the pool is below its size (at start, and after a death)."""
        while not self.stop.requested and len(self.waiting) > sum(1 for w in self.workers if w.call is None
                                                                  and w.retired_at is None) \
                and len(self.workers) < self.size:
            self.workers.append(self._start())

    def _start(self) -> _Worker:
        receiver, sender = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker_main, args=(sender, self.log_file, self.quiet, os.getpid()))
        # Blocked here, a Ctrl-C waits for the parent (it is not lost) and the child inherits the mask. The
        # resource tracker is started first: starting it unblocks SIGINT instead of restoring the mask.
        resource_tracker.ensure_running()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with _main_script_left_out(not self.main_script):
                proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            sender.close()
        return _Worker(proc, receiver)

    def _dispatch(self) -> None:
        """Give each ready, idle worker the next call, or tell it that no work is left."""
        for worker in self.workers:
            if not worker.ready or worker.call is not None or worker.retired_at is not None:
                continue
            with self.lock:
                index = self.waiting.popleft() if self.waiting and not self.stop.requested else None
            try:
                if index is not None:
                    worker.call = index
                    worker.conn.send((index, *self.calls[index], self.abandon))
                elif not self.stop.requested:  # after a stop, the SIGTERM ends an idle worker
                    worker.retired_at = time.monotonic()
                    worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass  # it died; _collect reports its call

    def _collect(self) -> None:
        """Wait up to one poll interval; read the messages that arrived; account for workers that ended."""
        handles: dict[Any, _Worker] = {}
        for worker in self.workers:
            handles[worker.proc.sentinel] = worker
            handles[worker.conn] = worker
        for handle in wait(list(handles), timeout=_POLL_SECONDS):
            worker = handles[handle]
            if handle is worker.conn:
                self._receive(worker)
        for worker in list(self.workers):
            if worker.proc.is_alive():
                if worker.retired_at is not None and time.monotonic() - worker.retired_at > _EXIT_SECONDS:
                    _send(worker.proc, signal.SIGKILL)  # told to exit, but does not: nothing more is needed
                continue
            worker.proc.join()
            self._receive(worker)  # a result sent just before the process ended
            if not worker.ready and not self.stop.requested:  # it cannot start: neither can its replacements
                with self.lock:
                    for index in self.waiting:
                        self.outcomes[index] = WorkerOutcome("died", error="a worker process failed to start: "
                                                             + _how_it_ended(worker.proc.exitcode))
                    self.waiting.clear()
            if worker.call is not None:
                self.outcomes[worker.call] = WorkerOutcome("died", error=_how_it_ended(worker.proc.exitcode))
                logger.warning("a worker process died running call %d: %s", worker.call,
                               self.outcomes[worker.call].error)
            worker.conn.close()
            self.workers.remove(worker)

    def _receive(self, worker: _Worker) -> None:
        while True:
            try:
                if worker.conn.closed or not worker.conn.poll():
                    return
                index, status, value = worker.conn.recv()
            except (EOFError, OSError):
                return
            if index == "ready":
                worker.ready = True
                continue
            worker.call = None
            self.outcomes[index] = (WorkerOutcome(status, value=value) if status != "error"
                                    else WorkerOutcome(status, error=str(value)))

    def _reap(self) -> None:
        """Leave no worker behind: kill what is still alive (after an exception in the parent) and join it."""
        for worker in self.workers:
            if worker.proc.is_alive():
                _send(worker.proc, signal.SIGKILL)
            worker.proc.join(_EXIT_SECONDS)
            worker.conn.close()
        self.workers.clear()

    def close(self) -> None:
        """End the workers of a pool that was started but not run (the parent's preparation failed or was
        stopped): SIGTERM ends an idle or importing worker at once; one still alive later is killed."""
        for worker in self.workers:
            _send(worker.proc, signal.SIGTERM)
        deadline = time.monotonic() + _EXIT_SECONDS
        for worker in self.workers:
            worker.proc.join(max(0.0, deadline - time.monotonic()))
        self._reap()


@contextlib.contextmanager
def _main_script_left_out(leave_out: bool) -> Iterator[None]:
    """A spawned process runs the parent's main script again (as ``__mp_main__``), for the calls whose functions
    or arguments it defines. A worker of training jobs needs nothing from it (its calls come from the toolkit's
    packages), and the imports of a script such as evaluate_bot.py cost each worker about half a second of CPU
    before it can take its first job; multiprocessing leaves out a main script that has no ``__file__``."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not leave_out or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _call_here(fn: Callable[..., Any], args: tuple[Any, ...], stop: StopFlag) -> WorkerOutcome:
    """One call in the parent, reported as a worker reports it (a KeyboardInterrupt is not caught)."""
    try:
        return WorkerOutcome("done", value=fn(*args, stop))
    except Exception as exc:  # noqa: BLE001 - reported in the outcome, the traceback goes to the log
        logger.exception("call failed")
        return WorkerOutcome("error", error=f"{type(exc).__name__}: {exc}")


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"the worker process was killed by {signal.Signals(-exitcode).name}"
    return f"the worker process ended with exit code {exitcode} before reporting a result"


class WorkerPool:
    """A pool of spawned worker processes, startable before its calls are known, and runnable once.

    :meth:`start` spawns the workers at once: their seconds of imports then overlap whatever the parent does
    before :meth:`run` (a walk-forward reads its history and prepares its folds meanwhile). With
    ``share_parent`` the parent is one of the ``processes``: it takes calls from the same queue as the workers
    (``processes=2`` = the parent and one worker process), so one worker fewer is started and the parent does
    not sit idle while its workers train. Use it as a context manager, or call :meth:`close`.

    :param abandon_until_polled: see :func:`run_in_workers`.
    :param main_script: the workers import the command's main script (the calls may come from it); False for
        calls that come from the toolkit's packages (training jobs), which spares each worker the script's imports.
    """

    def __init__(self, processes: int, stop: StopFlag, log_file: str | None = None, quiet: bool = False, *,
                 share_parent: bool = False, grace_seconds: float = STOP_GRACE_SECONDS,
                 abandon_until_polled: bool = False, main_script: bool = True) -> None:
        processes = max(1, processes)
        self.share_parent = share_parent
        self._pool = _Pool(processes - 1 if share_parent else processes, stop, log_file, quiet, grace_seconds,
                           abandon_until_polled, main_script)
        self._used = False

    @property
    def size(self) -> int:
        """Worker processes (the parent not counted)."""
        return self._pool.size

    def start(self) -> WorkerPool:
        self._pool.start()
        return self

    def run(self, calls: Calls) -> list[WorkerOutcome]:
        """Run each ``fn(*args, stop)`` of ``calls`` (see :func:`run_in_workers`); outcomes in order."""
        if self._used:
            raise RuntimeError("a WorkerPool runs one list of calls")
        self._used = True
        return self._pool.run(calls, self.share_parent)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_in_workers(calls: Calls, processes: int, stop: StopFlag, log_file: str | None = None, quiet: bool = False,
                   grace_seconds: float = STOP_GRACE_SECONDS, abandon_until_polled: bool = False,
                   share_parent: bool = False, main_script: bool = True) -> list[WorkerOutcome]:
    """Run each ``fn(*args, stop)`` of ``calls`` in a pool of at most ``processes`` spawned worker processes
    (each takes call after call), and return their outcomes in order. ``fn`` and ``args`` must be picklable;
    the worker's ``stop`` flag is set when the parent forwards a stop (see the module docstring).

    :param abandon_until_polled: a stop ends a call at once (its outcome is ``skipped``) until it first polls
        its stop flag, i.e. while it sets up with nothing to save. For calls that leave nothing behind when
        interrupted there (a training job: its checkpoints are atomic); not for an Optuna worker, whose trial
        would be recorded as failed.
    :param share_parent: the calling process is one of the ``processes`` (see :class:`WorkerPool`).
    :param main_script: see :class:`WorkerPool`.
    """
    if not calls:
        return []
    with WorkerPool(min(processes, len(calls)), stop, log_file, quiet, share_parent=share_parent,
                    grace_seconds=grace_seconds, abandon_until_polled=abandon_until_polled,
                    main_script=main_script) as pool:
        return pool.run(calls)


def results_of(specs: Sequence[JobSpec], outcomes: Sequence[WorkerOutcome], stop: StopFlag) -> list[JobResult]:
    """Job results from worker outcomes: a job whose worker died is ``stopped`` during a stop (its last
    checkpoint stands), ``failed`` otherwise."""
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


def job_pool(processes: int, jobs: int, stop: StopFlag, log_file: str | None = None, quiet: bool = False,
             share_parent: bool = False) -> WorkerPool | None:
    """The pool :func:`run_jobs` would use for ``jobs`` jobs on ``processes`` processes, started now (its workers
    import while the caller prepares the jobs); None when the jobs run in this process. ``share_parent``: the
    caller trains jobs too (unless :data:`SHARE_PARENT` is off)."""
    processes = max(1, min(processes, jobs))
    if processes <= 1 and SINGLE_WORKER_IN_PROCESS:
        return None
    return WorkerPool(processes, stop, log_file, quiet, share_parent=share_parent and SHARE_PARENT
                      and processes > 1, abandon_until_polled=True, main_script=False).start()


def run_jobs(specs: list[JobSpec], processes: int, stop: StopFlag, log_file: str | None = None,
             quiet: bool = False, in_process: bool | None = None, pool: WorkerPool | None = None) -> list[JobResult]:
    """Run jobs, in this process or in a pool of ``processes`` worker processes (or in ``pool``, started
    earlier by :func:`job_pool`).

    A stop request (SIGINT/SIGTERM) is forwarded to the workers, which checkpoint and stop; jobs not yet
    started are reported as ``skipped``; a worker killed after the grace period is ``stopped`` at its last
    checkpoint.

    :param in_process: run in this process; None = when one worker is asked for (or one job) and
        :data:`SINGLE_WORKER_IN_PROCESS`, and no ``pool`` is given.
    """
    if in_process is None:
        in_process = pool is None and (processes <= 1 or len(specs) <= 1) and SINGLE_WORKER_IN_PROCESS
    if in_process:
        results = []
        for spec in specs:
            if stop.requested:
                results.append(JobResult.of(spec, "skipped"))
                continue
            results.append(guarded_job(spec, stop))
        return results
    for position, spec in enumerate(specs):
        spec.position = position
    calls = [(guarded_job, (spec,)) for spec in specs]
    if pool is not None:
        outcomes = pool.run(calls)
    else:
        outcomes = run_in_workers(calls, processes, stop, log_file, quiet, abandon_until_polled=True,
                                  main_script=False)
    return results_of(specs, outcomes, stop)
