"""Where jobs run: one job-runner interface, two backends (this machine's process pool, or a Ray cluster).

Training jobs (symbol x model type), Optuna workers and walk-forward folds all go through a :class:`JobRunner`
made by :func:`make_runner`:

- :class:`LocalRunner` (the default): a pool of long-lived worker processes on this machine
  (:mod:`training.workers`), or this very process for one worker;
- :class:`RayRunner` (``--cluster auto``, ``--cluster ray://HOST:PORT``, ``--cluster HOST:PORT`` or
  ``cluster.address`` in training_config.json): one Ray task per job, on any node of the cluster.

Ray workers need no shared filesystem. The driver (the machine running the command) ships each job its
inputs: the prepared dataset as the bytes of its manifest and split files, written into a private temporary
workspace on the worker and read back through the one dataset reader (:mod:`datafeed.dataset`), which checks
every hash; or, for walk-forward folds, the fold's bars themselves. The job trains there and returns bytes to
the driver: its model file, its registry metadata (metrics included), its learning curves and its log lines.
The driver registers the model (:func:`training.job.register_trained`: the one promotion rule, against the
driver's champion), writes the curves under its results/ and the fold models where the walk-forward expects
them.

A worker that dies mid-job (its process or its node) is retried by Ray (``max_retries``). While a job trains,
a thread of its task ships every checkpoint it writes (state.json names the files; they are read after it)
to a small actor of the driver's, and a retried job starts from the latest one it finds there, so it resumes
instead of starting over; jobs without checkpoints (walk-forward folds, Optuna trials) start over. A job
stopped by Ctrl-C returns its last checkpoint, which the driver writes under models/checkpoints/ for
``--resume``; a ``--resume`` job on the cluster starts from the driver's newest unfinished checkpoint.

Ray is an optional extra (requirements-ray.txt), imported only when a cluster is asked for.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from botcore import paths
from botcore.atomic import atomic_write_bytes
from botcore.config import check_cluster_address
from botcore.errors import DataError, UserError
from botcore.signals import StopFlag
from datafeed.dataset import data_command, load_manifest, split_file
from datafeed.splits import SPLITS
from training.checkpoints import STATE_FILE, checkpoints_root, claim_run, find_unfinished, tensorboard_root
from training.job import Job, JobInputs, JobResult, JobSpec, PendingRegistration, register_trained
from training.workers import STOP_GRACE_SECONDS, WorkerOutcome, WorkerPool, job_pool, run_in_workers, run_jobs

logger = logging.getLogger(__name__)

MAX_RETRIES = 3
"""How often Ray restarts a job whose worker process (or node) died."""

_PACKAGES = ("botcore", "datafeed", "rl_env", "deepscalper", "agents", "evaluation", "training")
"""The toolkit's packages a job imports: shipped to the cluster with each session (Ray ``py_modules``)."""

_POLL_SECONDS = 0.5


def cluster_address(cfg: dict[str, Any]) -> str | None:
    """``cluster.address`` of the resolved config (the ``--cluster`` flag overrides it): None = this machine."""
    return (cfg.get("cluster") or {}).get("address") or None


class JobRunner(Protocol):
    """Runs training jobs and plain calls somewhere, with stop requests forwarded (see the module docstring)."""

    remote: bool
    """True when the work runs outside this machine's filesystem (files must travel as bytes)."""

    def start(self, jobs: int, stop: StopFlag, log_file: str | None = None, quiet: bool = False) -> None:
        """Get ready for ``jobs`` training jobs before they are prepared (this machine: start the workers, whose
        imports then overlap the caller's preparation); the next :meth:`run_jobs` uses what was started."""
        ...

    def run_jobs(self, specs: list[JobSpec], stop: StopFlag, log_file: str | None = None,
                 quiet: bool = False) -> list[JobResult]:
        """Run training jobs; results in the order of ``specs``."""
        ...

    def run_calls(self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], stop: StopFlag,
                  log_file: str | None = None, quiet: bool = False,
                  datasets: Sequence[tuple[str, str]] = ()) -> list[WorkerOutcome]:
        """Run ``fn(*args, stop)`` calls; ``datasets`` ((symbol, interval) pairs) are readable where they run."""
        ...

    def close(self) -> None:
        ...


class LocalRunner:
    """This machine: a pool of ``workers`` long-lived processes (:mod:`training.workers`); with
    ``share_parent`` this process is one of them (it trains jobs beside ``workers - 1`` worker processes)."""

    remote = False

    def __init__(self, workers: int, share_parent: bool = False) -> None:
        self.workers = max(1, workers)
        self.share_parent = share_parent
        self.pool: WorkerPool | None = None

    def start(self, jobs: int, stop: StopFlag, log_file: str | None = None, quiet: bool = False) -> None:
        self.close()
        self.pool = job_pool(self.workers, jobs, stop, log_file, quiet, self.share_parent)

    def run_jobs(self, specs: list[JobSpec], stop: StopFlag, log_file: str | None = None,
                 quiet: bool = False) -> list[JobResult]:
        pool, self.pool = self.pool, None
        try:
            return run_jobs(specs, self.workers, stop, log_file, quiet, pool=pool)
        finally:
            if pool is not None:
                pool.close()

    def run_calls(self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], stop: StopFlag,
                  log_file: str | None = None, quiet: bool = False,
                  datasets: Sequence[tuple[str, str]] = ()) -> list[WorkerOutcome]:
        return run_in_workers(calls, self.workers, stop, log_file, quiet)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make_runner(cfg: dict[str, Any], workers: int, address: str | None = None,
                share_parent: bool = False) -> JobRunner:
    """The runner for this command: Ray when a cluster address is given (``address``, else ``cluster.address``
    of ``cfg``), else this machine's pool of ``workers`` processes (``share_parent``: this one among them)."""
    address = address or cluster_address(cfg)
    if not address:
        return LocalRunner(workers, share_parent)
    return RayRunner(address)


def import_ray() -> Any:
    """Ray, or a one-line UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--cluster needs Ray, an optional extra: pip install -r requirements-ray.txt "
                        "(on the driver and on every node of the cluster)") from None
    return ray


# --- files as bytes ------------------------------------------------------------------------------------------

Pack = dict[str, bytes]
"""Files by their path relative to a workspace (``data/...``, ``models/checkpoints/...``, ``results/...``)."""


def pack_files(root: Path, files: Sequence[Path]) -> Pack:
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in files if f.is_file()}


def pack_folder(root: Path, folder: Path) -> Pack:
    return pack_files(root, sorted(p for p in folder.rglob("*") if p.is_file())) if folder.is_dir() else {}


def unpack(root: Path, pack: Pack, last: str | None = None) -> None:
    """Write ``pack`` under ``root``, each file atomically, ``last`` (a state.json naming the others) last;
    a path that would leave ``root`` is refused."""
    for name in sorted(pack, key=lambda n: n == last):
        target = (root / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or root.resolve() not in target.parents:
            raise UserError(f"refusing a shipped file outside the workspace: {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, pack[name])


@dataclasses.dataclass
class ShippedDataset:
    """A prepared dataset as bytes (manifest and split files), checked on both ends by the one dataset reader."""

    symbol: str
    interval: str
    manifest_hash: str
    files: Pack

    @classmethod
    def read(cls, symbol: str, interval: str) -> ShippedDataset:
        """The driver's dataset: its checked manifest, and its split files (their hashes are checked when the
        worker reads them, by the same reader)."""
        manifest = load_manifest(symbol, interval)
        root = paths.workspace()
        files = [paths.manifest_path(symbol, interval)] + [split_file(symbol, interval, s, manifest) for s in SPLITS]
        pack = pack_files(root, files)
        for split in SPLITS:  # checked here too: a dataset replaced while it was read is not shipped
            name = split_file(symbol, interval, split, manifest).relative_to(root).as_posix()
            if name not in pack or hashlib.sha256(pack[name]).hexdigest() != manifest["hashes"].get(split):
                raise DataError(f"the {split} split of {symbol} {interval} does not match its manifest (replaced "
                                "while it was read?); run again, or recreate it with: "
                                f"{data_command(symbol, interval)}")
        return cls(symbol, interval, str(manifest["manifest_hash"]), pack)

    def write(self, root: Path) -> None:
        unpack(root, self.files)


@contextlib.contextmanager
def _workspace(root: Path) -> Iterator[None]:
    """Work inside ``root`` (every toolkit path resolves against the working directory)."""
    old = os.getcwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(old)


class _LogCapture(logging.Handler):
    """The job's log records (INFO and up) as (level, logger, message, traceback), returned to the driver's log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        trace = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        self.records.append((record.levelno, record.name, record.getMessage(), trace))


@contextlib.contextmanager
def _captured_logs() -> Iterator[_LogCapture]:
    handler = _LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level or logging.INFO, logging.INFO))
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


# --- the worker side (runs in a Ray task) -----------------------------------------------------------------------

class _CheckpointStore:
    """A Ray actor on the cluster (no CPU): the newest checkpoint of each job, which jobs run where, and the
    driver's stop request."""

    def __init__(self) -> None:
        self.checkpoints: dict[str, tuple[str, Pack]] = {}
        self.running: dict[str, int] = {}
        self.attempts: dict[str, int] = {}
        self.stop = False

    def put(self, key: str, updated: str, pack: Pack) -> None:
        if key not in self.checkpoints or self.checkpoints[key][0] < updated:
            self.checkpoints[key] = (updated, pack)

    def get(self, key: str) -> Pack | None:
        return self.checkpoints[key][1] if key in self.checkpoints else None

    def has_checkpoint(self, key: str) -> bool:
        return key in self.checkpoints

    def started(self, key: str, pid: int) -> int:
        self.running[key] = pid
        self.attempts[key] = self.attempts.get(key, 0) + 1
        return self.attempts[key]

    def ended(self, key: str) -> None:
        self.running.pop(key, None)

    def running_jobs(self) -> dict[str, int]:
        return dict(self.running)

    def request_stop(self) -> None:
        self.stop = True

    def stop_requested(self) -> bool:
        return self.stop


class _Watcher(threading.Thread):
    """In a task: forwards the driver's stop request to the job's StopFlag, and ships every new checkpoint."""

    def __init__(self, store: Any, key: str, stop: StopFlag, root: Path) -> None:
        super().__init__(daemon=True)
        self.store, self.key, self.stop, self.root = store, key, stop, root
        self.done = threading.Event()
        self.shipped = ""

    def run(self) -> None:
        import ray

        while not self.done.wait(_POLL_SECONDS):
            with contextlib.suppress(Exception):  # the driver gone: Ray ends the task anyway
                if ray.get(self.store.stop_requested.remote(), timeout=10):
                    self.stop.request()
            self.ship()

    def ship(self) -> Pack | None:
        """Send the newest complete checkpoint when it is newer than the last one sent; return it."""
        import ray

        found = _latest_checkpoint(self.root)
        if found is None or found[0] == self.shipped:
            return None
        updated, pack = found
        ray.get(self.store.put.remote(self.key, updated, pack))
        self.shipped = updated
        return pack

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=30)


def _latest_checkpoint(root: Path) -> tuple[str, Pack] | None:
    """(updated, files) of the checkpoint in ``root``'s models/checkpoints (a task's workspace holds one run)."""
    folder = checkpoints_root()
    for run in sorted(folder.iterdir()) if folder.is_dir() else []:
        found = _latest_in(root, run)
        if found is not None:
            return found
    return None


def remote_job(spec: JobSpec, dataset: ShippedDataset | None, store: Any, key: str) -> dict[str, Any]:
    """One training job in a Ray task (see the module docstring): in a temporary workspace, from the newest
    shipped checkpoint when there is one; returns the result and what the driver needs, as bytes."""
    import torch

    torch.set_num_threads(1)
    import ray

    attempt = ray.get(store.started.remote(key, os.getpid()))
    out: dict[str, Any] = {"attempt": attempt}
    with tempfile.TemporaryDirectory(prefix="trading_bot_job_") as tmp, _workspace(Path(tmp)), \
            _captured_logs() as logs:
        root = Path(tmp)
        if dataset is not None:
            dataset.write(root)
        spec = dataclasses.replace(spec, quiet=True, position=0)
        saved = ray.get(store.get.remote(key))
        if saved:
            unpack(root, saved, last=next((n for n in saved if n.endswith("/" + STATE_FILE)), None))
            spec.resume = True
        fold_model = spec.save_model_to
        if fold_model:
            spec.save_model_to = str(root / "fold_model.zip")
        stop = StopFlag()
        watcher = _Watcher(store, key, stop, root)
        watcher.start()
        job: Job | None = None
        try:
            job = Job(spec, stop, None, defer_registration=spec.register)
            result = job.run()
        except UserError as exc:
            logger.error("%s: %s", spec.label, exc)
            result = JobResult.of(spec, "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - the traceback goes to the driver's log
            logger.exception("%s: training failed", spec.label)
            result = JobResult.of(spec, "failed", f"unexpected {type(exc).__name__}: {exc} (traceback in logs/)")
        finally:
            watcher.finish()
        if result.status == "stopped":
            watcher.ship()
            found = _latest_checkpoint(root)
            out["checkpoint"] = found[1] if found else {}
        if fold_model and result.status == "finished":
            out["fold_model"] = Path(spec.save_model_to or "").read_bytes()
        if job is not None and job.pending is not None:
            pending = job.pending
            out["pending"] = {"model": pending.model_file.read_bytes(), "metadata": pending.metadata,
                              "health_reason": pending.health_reason, "run_id": pending.run_id,
                              "folder": job.folder.name}
            out["curves"] = {**pack_folder(root, paths.results_dir() / "training_curves" / job.folder.name),
                             **pack_folder(root, tensorboard_root() / job.folder.name)}
        out["result"] = result
        out["logs"] = logs.records
    ray.get(store.ended.remote(key))
    return out


def remote_call(fn: Callable[..., Any], args: tuple[Any, ...], datasets: Sequence[ShippedDataset], store: Any,
                key: str) -> dict[str, Any]:
    """``fn(*args, stop)`` in a Ray task, in a temporary workspace holding ``datasets``."""
    import torch

    torch.set_num_threads(1)
    import ray

    ray.get(store.started.remote(key, os.getpid()))
    with tempfile.TemporaryDirectory(prefix="trading_bot_call_") as tmp, _workspace(Path(tmp)), \
            _captured_logs() as logs:
        for dataset in datasets:
            dataset.write(Path(tmp))
        stop = StopFlag()
        watcher = _Watcher(store, key, stop, Path(tmp))
        watcher.start()
        try:
            out = {"status": "done", "value": fn(*args, stop)}
        except Exception as exc:  # noqa: BLE001 - reported to the driver, the traceback to its log
            logger.exception("a cluster call failed")
            out = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            watcher.finish()
        out["logs"] = logs.records
    ray.get(store.ended.remote(key))
    return out


# --- the driver side ---------------------------------------------------------------------------------------------

class RayRunner:
    """A Ray cluster: one task per job (see the module docstring)."""

    remote = True

    def __init__(self, address: str, grace_seconds: float = STOP_GRACE_SECONDS, max_retries: int = MAX_RETRIES):
        problem = check_cluster_address(address)
        if problem:
            raise UserError(f"--cluster {address!r} {problem}")
        self.ray = import_ray()
        self.address = address
        self.grace = grace_seconds
        self.max_retries = max_retries
        self.owns_connection = not self.ray.is_initialized()
        if self.owns_connection:
            self._connect()
        self.store = self.ray.remote(num_cpus=0)(_CheckpointStore).remote()
        self.job_seconds: list[float] = []

    def _connect(self) -> None:
        code = paths.CODE_ROOT
        runtime_env = {"py_modules": [str(code / name) for name in _PACKAGES],
                       "env_vars": {"OMP_NUM_THREADS": "1"}}
        try:
            self.ray.init(address=self.address, runtime_env=runtime_env, logging_level=logging.WARNING,
                          log_to_driver=False)
        except Exception as exc:  # unreachable head, wrong port, version mismatch
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot connect to the Ray cluster at {self.address}: {first}; start one with "
                            "`ray start --head` (see the guide's 'Scaling out')") from exc
        resources = self.ray.cluster_resources()
        logger.info("Ray cluster at %s: %d node(s), %g CPU(s), %g GPU(s)", self.address,
                    len([n for n in self.ray.nodes() if n.get("Alive")]), resources.get("CPU", 0),
                    resources.get("GPU", 0))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(self.store)
        if self.owns_connection:
            self.ray.shutdown()

    # --- training jobs ---

    def start(self, jobs: int, stop: StopFlag, log_file: str | None = None, quiet: bool = False) -> None:
        return None  # connected already; Ray starts its workers per task

    def _gpus(self, spec: JobSpec) -> int:
        """1 when the job trains on cuda (``--device cuda``, or ``auto`` on a cluster with a GPU), else 0."""
        device = getattr(spec, "device", "cpu") or "cpu"
        available = self.ray.cluster_resources().get("GPU", 0)
        if device == "cuda" and not available:
            raise UserError("--device cuda: the Ray cluster has no GPU; add a GPU node or use --device cpu")
        return 1 if device == "cuda" or (device == "auto" and available) else 0

    def run_jobs(self, specs: list[JobSpec], stop: StopFlag, log_file: str | None = None,
                 quiet: bool = False) -> list[JobResult]:
        ray = self.ray
        datasets: dict[tuple[str, str], Any] = {}
        refs: list[Any] = []
        keys: list[str] = []
        held: list[Any] = []
        task = ray.remote(remote_job)
        try:
            for index, spec in enumerate(specs):
                if spec.inputs is None and (spec.symbol, spec.interval) not in datasets:
                    datasets[(spec.symbol, spec.interval)] = ray.put(ShippedDataset.read(spec.symbol, spec.interval))
                key = f"job{index}"
                if spec.resume and spec.checkpoints:
                    held.extend(self._seed_resume(spec, key))
                options = task.options(num_cpus=1, num_gpus=self._gpus(spec), max_retries=self.max_retries,
                                       retry_exceptions=False, name=f"{spec.label} ({key})")
                refs.append(options.remote(spec, datasets.get((spec.symbol, spec.interval)), self.store, key))
                keys.append(key)
            outputs = self._wait(refs, keys, stop)
        finally:
            for lock in held:
                lock.release()
        results = []
        for spec, output in zip(specs, outputs):
            results.append(self._adopt(spec, output, stop))
        return results

    def _seed_resume(self, spec: JobSpec, key: str) -> list[Any]:
        """``--resume`` on the cluster: ship the driver's newest unfinished checkpoint of this job, locked
        against a second process for as long as the job runs."""
        folder = find_unfinished(spec.symbol, spec.interval, spec.model_type, spec.algo)
        if folder is None:
            return []
        lock = claim_run(folder, spec.label)
        root = paths.workspace()
        found = _latest_in(root, folder)
        if found is not None:
            self.ray.get(self.store.put.remote(key, *found))
            logger.info("%s: resuming %s on the cluster", spec.label, folder.name)
        return [lock]

    def _wait(self, refs: list[Any], keys: list[str], stop: StopFlag) -> list[Any]:
        """Outputs in order (a dict, or a WorkerOutcome when the task gave none), forwarding a stop: the jobs
        checkpoint and return; jobs not started are cancelled; after the grace period the rest is killed."""
        ray = self.ray
        outputs: list[Any] = [None] * len(refs)
        pending = {ref: i for i, ref in enumerate(refs)}
        started = {ref: time.monotonic() for ref in refs}
        deadline: float | None = None
        try:
            while pending:
                if stop.requested and deadline is None:
                    deadline = time.monotonic() + self.grace
                    ray.get(self.store.request_stop.remote())
                    running = ray.get(self.store.running_jobs.remote())
                    for ref, i in pending.items():
                        if keys[i] not in running:
                            ray.cancel(ref, force=False)
                elif deadline is not None and time.monotonic() > deadline:
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    deadline = float("inf")
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.2)
                for ref in ready:
                    i = pending.pop(ref)
                    outputs[i] = self._get(ref, stop)
                    self.job_seconds.append(time.monotonic() - started[ref])
        finally:
            for ref in pending:  # a second Ctrl-C: end everything at once
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        return outputs

    def _get(self, ref: Any, stop: StopFlag) -> Any:
        from ray.exceptions import RayTaskError, TaskCancelledError

        try:
            return self.ray.get(ref)
        except TaskCancelledError:
            return WorkerOutcome("skipped" if stop.requested else "died", error="the task was cancelled")
        except RayTaskError as exc:
            return WorkerOutcome("error", error=str(exc).strip().splitlines()[-1])
        except Exception as exc:  # noqa: BLE001 - worker or node lost more often than max_retries
            return WorkerOutcome("died", error=f"{type(exc).__name__}: the job's worker died "
                                               f"{self.max_retries + 1} times ({str(exc).strip()[:200]})")

    def _adopt(self, spec: JobSpec, output: Any, stop: StopFlag) -> JobResult:
        """Turn a task's output into the driver's state: log lines, the fold model, the registration, the
        curves, the checkpoint of a stopped job."""
        if isinstance(output, WorkerOutcome) or output is None:
            outcome = output or WorkerOutcome("died", error="no result")
            if outcome.status == "skipped":
                return JobResult.of(spec, "skipped")
            return JobResult.of(spec, "stopped" if stop.requested else "failed",
                                f"cluster worker failed: {outcome.error}")
        _replay_logs(output["logs"])
        result: JobResult = output["result"]
        if output["attempt"] > 1:
            logger.warning("%s: its worker died; Ray ran it again (attempt %d)%s", spec.label, output["attempt"],
                           ", resuming from its last checkpoint" if result.resumed else "")
        root = paths.workspace()
        if output.get("checkpoint"):
            unpack(root, output["checkpoint"], last=next((n for n in output["checkpoint"]
                                                          if n.endswith("/" + STATE_FILE)), None))
        if "fold_model" in output and spec.save_model_to:
            atomic_write_bytes(spec.save_model_to, output["fold_model"])
        if "pending" in output and result.status == "finished":
            result = self._register(spec, output, result)
        return result

    def _register(self, spec: JobSpec, output: dict[str, Any], result: JobResult) -> JobResult:
        """Register a model trained on the cluster, on the driver, with the driver's promotion rule."""
        from agents import load_model

        shipped = output["pending"]
        root = paths.workspace()
        unpack(root, output.get("curves") or {})
        metadata = shipped["metadata"]
        curves = paths.results_dir() / "training_curves" / shipped["folder"]
        metadata.setdefault("training", {})["curves"] = str(curves)
        metadata["trained_on"] = {"backend": "ray", "cluster": self.address}
        with tempfile.TemporaryDirectory(prefix="trading_bot_register_", dir=_scratch(paths.models_dir())) as tmp:
            model_file = Path(tmp) / "final.zip"
            model_file.write_bytes(shipped["model"])
            inputs = JobInputs.load(spec)
            if inputs.dataset.hash != metadata.get("dataset", {}).get("manifest_hash"):
                raise UserError(f"{spec.label}: the dataset changed while the job trained on the cluster; run again")
            policy = load_model(spec.algo, model_file)
            result = register_trained(spec, inputs, policy, PendingRegistration(
                model_file, metadata, shipped["health_reason"], shipped["run_id"]), result)
        local = checkpoints_root() / shipped["folder"]
        if local.is_dir():  # a --resume run finished on the cluster: its local checkpoint is spent
            import shutil

            shutil.rmtree(local, ignore_errors=True)
        return result

    # --- plain calls (Optuna workers) ---

    def run_calls(self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], stop: StopFlag,
                  log_file: str | None = None, quiet: bool = False,
                  datasets: Sequence[tuple[str, str]] = ()) -> list[WorkerOutcome]:
        ray = self.ray
        shipped = ray.put([ShippedDataset.read(s, i) for s, i in datasets])
        task = ray.remote(remote_call).options(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)
        keys = [f"call{i}" for i in range(len(calls))]
        refs = [task.remote(fn, args, shipped, self.store, key) for (fn, args), key in zip(calls, keys)]
        outcomes = []
        for output in self._wait(refs, keys, stop):
            if isinstance(output, WorkerOutcome):
                outcomes.append(output)
                continue
            _replay_logs(output["logs"])
            outcomes.append(WorkerOutcome(output["status"], value=output.get("value"), error=output.get("error", "")))
        return outcomes


def _latest_in(root: Path, folder: Path) -> tuple[str, Pack] | None:
    """(updated, files) of the checkpoint in ``folder`` (under ``root``): state.json, the files it names, and
    the run's curves; None when there is none, or when a file it names was replaced while reading (the next
    poll reads the newer one)."""
    try:
        state_bytes = (folder / STATE_FILE).read_bytes()
        state = json.loads(state_bytes)
        pack = {(folder / name).relative_to(root).as_posix(): (folder / name).read_bytes()
                for name in state.get("files", [])}
    except (OSError, ValueError):
        return None
    pack[(folder / STATE_FILE).relative_to(root).as_posix()] = state_bytes
    for extra in (paths.results_dir() / "training_curves" / folder.name, tensorboard_root() / folder.name):
        pack.update(pack_folder(root, extra))
    return str(state.get("updated", "")), pack


def _scratch(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _replay_logs(records: Sequence[tuple[int, str, str, str]]) -> None:
    """A remote job's log records, into the driver's log (warnings and errors reach its terminal as usual, as
    one line; a traceback goes to the log file only, as for a local job)."""
    for level, name, message, trace in records:
        target = logging.getLogger(name)
        if target.isEnabledFor(level):
            record = target.makeRecord(name, level, "(cluster)", 0, "[cluster] %s", (message,), None)
            record.exc_text = trace or None
            target.handle(record)


def shared_storage(url: str, runner: JobRunner) -> str:
    """The Optuna storage URL as cluster workers must see it: a relative SQLite path made absolute (workers run
    in their own temporary folders), with a warning that SQLite needs the workers to share this disk."""
    if not runner.remote or not url.startswith("sqlite:///"):
        return url
    path, _, query = url[len("sqlite:///"):].partition("?")
    if path and path != ":memory:" and not Path(path).is_absolute():
        path = str((paths.workspace() / path).resolve())
    logger.warning("Optuna storage is an SQLite file: cluster workers on other machines cannot reach it; use "
                   "--storage postgresql://... across machines")
    return f"sqlite:///{path}" + (f"?{query}" if query else "")
