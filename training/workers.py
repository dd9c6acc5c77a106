"""Running training jobs side by side in worker processes, with stop requests forwarded to them."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
from typing import Any

from botcore.logsetup import setup_worker_logging
from botcore.signals import StopFlag, stop_on_signals
from training.job import JobResult, JobSpec, guarded_job


def init_worker_process(log_file: str | None, quiet: bool) -> None:
    """Worker-process set-up: one torch thread, the session's log file, warnings only on the console."""
    import torch

    torch.set_num_threads(1)
    setup_worker_logging(log_file, quiet)


def _worker_job(spec: JobSpec) -> JobResult:
    stop = StopFlag()
    with stop_on_signals(stop, "stopping at the next safe point (a checkpoint is saved)"):
        return guarded_job(spec, stop)


def wait_for_workers(futures: Any, stop: StopFlag) -> None:
    """Wait for a process pool's futures; on the first stop request, cancel what has not started and pass
    SIGTERM on to the worker processes (each stops at its next safe point with a checkpoint)."""
    forwarded = False
    pending = set(futures)
    while pending:
        _, pending = cf.wait(pending, timeout=0.5)
        if stop.requested and not forwarded:
            forwarded = True
            for fut in pending:
                fut.cancel()
            for child in mp.active_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)


def run_jobs(specs: list[JobSpec], processes: int, stop: StopFlag, log_file: str | None = None,
             quiet: bool = False) -> list[JobResult]:
    """Run jobs, in this process (``processes <= 1``) or in that many spawned worker processes.

    A stop request (SIGINT/SIGTERM) is forwarded to the workers, which checkpoint and stop; jobs not yet
    started are reported as ``skipped``.
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
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=min(processes, len(specs)), mp_context=ctx,
                                initializer=init_worker_process, initargs=(log_file, quiet)) as pool:
        futures = {pool.submit(_worker_job, spec): spec for spec in specs}
        wait_for_workers(futures, stop)
        results = []
        for fut, spec in futures.items():
            if fut.cancelled():
                results.append(JobResult.of(spec, "skipped"))
            elif fut.exception() is not None:
                exc = fut.exception()
                results.append(JobResult.of(spec, "failed", f"worker process failed: {type(exc).__name__}: {exc}"))
            else:
                results.append(fut.result())
        return results
