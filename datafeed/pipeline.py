"""Preparing symbols end to end: load from a source, clean, compute features, split, write (``data_pipeline.py``).

One symbol's failure never stops the others: :func:`prepare_symbols` reports each failure and carries on.
With ``workers`` above 1 the symbols are prepared side by side in that many worker processes
(:func:`run_parallel`); the datasets, the report and the exit code are those of the serial run.

A refresh keeps each dataset's source: with ``reuse_recorded_source`` (the daemon's ``--update-data`` without
``--source``, ``train_bot.py --continuous``), a symbol that already has a dataset is reloaded from the source its
manifest records (the bundled sample, the same CSV file, the same synthetic generator and seed), never silently
from another one; ``data.source`` applies to symbols without a dataset, and ``--source`` switches explicitly.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from botcore import paths
from botcore.errors import DataError, UserError
from datafeed.dataset import load_manifest
from datafeed.sources import load_csv, load_sample, load_synthetic, load_yahoo, sample_symbols
from datafeed.splits import (
    default_threads,
    prepare,
    share_one_malloc_arena,
    spill_path,
    usable_cores,
    write_splits,
)

logger = logging.getLogger(__name__)

DEFAULT_SYNTHETIC_BARS = 2500
LONG_CSV_BYTES = 5 * 2**20
"""A CSV file this big is read by pandas' threads, and its history is long enough for threads of its own."""


def run_symbol(symbol: str, interval: str, cfg: dict[str, Any], *, csv_file: str | None = None,
               seed: int = 0, update: bool = False, synthetic_kind: str = "gbm",
               synthetic_bars: int = DEFAULT_SYNTHETIC_BARS, export_csv: bool = False,
               threads: int | None = None) -> dict[str, Any]:
    """Load, prepare and write one symbol; return its manifest. Raises UserError subclasses on bad data.

    :param threads: at most this many threads for this symbol's features and files (None: as many as it may
        use, see :func:`datafeed.splits.default_threads`); the dataset does not depend on it.
    """
    data = cfg["data"]
    source = data["source"]
    with contextlib.suppress(OSError, TypeError):  # a big CSV: before pandas' reader threads first allocate
        if source == "csv" and os.path.getsize(str(csv_file)) >= LONG_CSV_BYTES:
            share_one_malloc_arena()
    if source == "sample":
        raw, info = load_sample(symbol, interval)
    elif source == "csv":
        if not csv_file:
            raise UserError("--source csv needs --csv FILE (one file per symbol)")
        raw, info = load_csv(csv_file)
    elif source == "synthetic":
        raw, info = load_synthetic(synthetic_bars, seed, synthetic_kind, interval)
    else:
        raw, info = load_yahoo(symbol, interval, start=data["start"], end=data["end"], update=update)
        max_age = cfg["monitoring"]["max_data_age_days"]
        if info.get("age_days", 0) > max_age:
            logger.warning("%s: the newest bar is %.1f days old (monitoring.max_data_age_days = %s)%s", symbol,
                           info["age_days"], max_age, "" if update else "; add --update-data to fetch new bars")
    info.update(first_bar=raw.index.min(), last_bar=raw.index.max(), bars_loaded=len(raw))
    paths.data_dir().mkdir(parents=True, exist_ok=True)
    threads = default_threads(len(raw)) if threads is None else min(threads, default_threads(len(raw)))
    if threads > 1:
        share_one_malloc_arena()  # (a process that never prepares a long history keeps glibc's defaults)
    handed = [raw]
    del raw  # prepare() then holds the only reference and lets the raw bars go once cleaned (48 MB a million)
    prepared = prepare(handed.pop(), cfg, symbol, interval, spill_to=spill_path(symbol, interval), threads=threads)
    # How the data was made (data.workers only says how many symbols ran at once: not part of a dataset).
    settings = {"data": {**{k: v for k, v in data.items() if k != "workers"}, "interval": interval}, "symbol": symbol}
    if source == "synthetic":
        settings["synthetic"] = {"kind": synthetic_kind, "bars": synthetic_bars, "seed": seed}
    try:
        return write_splits(prepared, symbol, interval, info, settings, export_csv=export_csv, threads=threads)
    finally:
        prepared.close()


def _describe(manifest: dict[str, Any]) -> str:
    parts = [f"{name} {r['rows']:>6,} ({r['start']} .. {r['end']})" for name, r in manifest["ranges"].items()]
    return (f"{manifest['symbol']:<10} {manifest['interval']:<4} {manifest['source']:<9} " + " | ".join(parts)
            + f" | {len(manifest['feature_columns'])} features, embargo {manifest['embargo_bars']}")


@dataclass
class RecordedSource:
    """Where an existing dataset came from (its manifest): what a refresh needs to reload the same bars."""

    source: str
    csv_file: str | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)


def recorded_source(symbol: str, interval: str) -> RecordedSource | None:
    """The source of the prepared dataset of ``symbol`` and ``interval``; None when there is none (or its
    manifest cannot be read: the refresh then follows the config and rewrites it)."""
    try:
        manifest = load_manifest(symbol, interval)
    except DataError:
        return None
    source = manifest.get("source")
    if not isinstance(source, str):
        return None
    settings = manifest.get("settings") or {}
    info = manifest.get("source_info") or {}
    return RecordedSource(source=source, csv_file=info.get("file") if source == "csv" else None,
                          synthetic=dict(settings.get("synthetic") or {}))


@dataclass
class PipelineReport:
    """What :func:`prepare_symbols` did: one manifest per prepared symbol, one message per failed symbol."""

    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [_describe(m) for m in self.manifests.values()]


@dataclass(frozen=True)
class SymbolJob:
    """Everything :func:`run_symbol` needs for one symbol, fixed before any symbol runs (so a parallel run
    prepares exactly what the serial one would)."""

    symbol: str
    interval: str
    cfg: dict[str, Any]
    csv_file: str | None
    seed: int
    update: bool
    synthetic_kind: str
    synthetic_bars: int
    export_csv: bool
    threads: int | None = None  # within the symbol (None: automatic); several workers share the cores

    def run(self, log_file: Path | None) -> tuple[dict[str, Any] | None, str | None]:
        """``(manifest, None)`` or ``(None, message)``: a bad input is one line, a bug is logged with its
        traceback and summarised."""
        try:
            return run_symbol(self.symbol, self.interval, self.cfg, csv_file=self.csv_file, seed=self.seed,
                              update=self.update, synthetic_kind=self.synthetic_kind,
                              synthetic_bars=self.synthetic_bars, export_csv=self.export_csv,
                              threads=self.threads), None
        except UserError as exc:
            logger.debug("%s failed", self.symbol, exc_info=True)
            return None, str(exc)
        except Exception as exc:  # one symbol's bug must not stop the others; traceback to the log
            logger.exception("%s: unexpected failure", self.symbol)
            return None, f"unexpected {type(exc).__name__}: {exc} (traceback in {log_file or 'logs/'})"


def prepare_symbols(symbols: Sequence[str], cfg: dict[str, Any], *, csv_files: Sequence[str | None] | None = None,
                    update: bool = False, interval_given: bool = True, synthetic_kind: str = "gbm",
                    synthetic_bars: int = DEFAULT_SYNTHETIC_BARS, quiet: bool = False,
                    log_file: Path | None = None, reuse_recorded_source: bool = False, export_csv: bool = False,
                    workers: int = 1) -> PipelineReport:
    """Prepare every symbol with the config's source; symbol ``i`` of the synthetic source gets seed
    ``data.seed + i``. The sample source takes each sample's own interval unless ``interval_given``.

    :param reuse_recorded_source: a symbol that has a dataset already is reloaded from the source its manifest
        records (see the module docstring); the caller passes False when the user named the source.
    :param export_csv: also write each split as CSV (see :func:`datafeed.splits.write_splits`).
    :param workers: symbols prepared at the same time, each in its own process (see :func:`run_parallel`).
    """
    jobs = symbol_jobs(symbols, cfg, csv_files=csv_files, update=update, interval_given=interval_given,
                       synthetic_kind=synthetic_kind, synthetic_bars=synthetic_bars,
                       reuse_recorded_source=reuse_recorded_source, export_csv=export_csv)
    bar = tqdm(total=len(jobs), desc="data", unit="symbol", file=sys.stderr, disable=True if quiet else None)
    try:
        if workers > 1 and len(jobs) > 1:
            share = max(1, usable_cores() // min(workers, len(jobs)))  # each worker's threads: the cores shared
            outcomes = run_parallel([dataclasses.replace(job, threads=share) for job in jobs], workers, log_file, bar)
        else:
            outcomes = []
            for job in jobs:
                bar.set_postfix_str(job.symbol)
                outcomes.append(job.run(log_file))
                bar.update()
    finally:
        bar.close()
    report = PipelineReport()
    for job, (manifest, message) in zip(jobs, outcomes):
        if manifest is not None:
            report.manifests[job.symbol] = manifest
        else:
            report.failures[job.symbol] = str(message)
    return report


def symbol_jobs(symbols: Sequence[str], cfg: dict[str, Any], *, csv_files: Sequence[str | None] | None = None,
                update: bool = False, interval_given: bool = True, synthetic_kind: str = "gbm",
                synthetic_bars: int = DEFAULT_SYNTHETIC_BARS, reuse_recorded_source: bool = False,
                export_csv: bool = False) -> list[SymbolJob]:
    """One :class:`SymbolJob` per symbol, in order (see :func:`prepare_symbols` for the parameters)."""
    data = cfg["data"]
    files = list(csv_files) if csv_files is not None else [None] * len(symbols)
    jobs = []
    for i, symbol in enumerate(symbols):
        interval = data["interval"]
        if data["source"] == "sample" and not interval_given:
            interval = sample_symbols().get(symbol, interval)
        sym_cfg, csv_file, seed, kind, n_bars = cfg, files[i], data["seed"] + i, synthetic_kind, synthetic_bars
        recorded = recorded_source(symbol, interval) if reuse_recorded_source else None
        if recorded is not None:
            if recorded.source != data["source"]:
                logger.info("%s %s: refreshing from %s, the source its dataset was prepared from (data.source is "
                            "%s; data_pipeline.py --source %s switches it)", symbol, interval, recorded.source,
                            data["source"], data["source"])
            sym_cfg = {**cfg, "data": {**data, "source": recorded.source}}
            csv_file = recorded.csv_file or csv_file
            seed = int(recorded.synthetic.get("seed", seed))
            kind = str(recorded.synthetic.get("kind", kind))
            n_bars = int(recorded.synthetic.get("bars", n_bars))
        jobs.append(SymbolJob(symbol, interval, sym_cfg, csv_file, seed, update, kind, n_bars, export_csv))
    return jobs


Outcome = tuple[dict[str, Any] | None, str | None]


@dataclass
class _Worker:
    """The parent's side of one worker process: its pipe and the index of the job it runs (None: idle)."""

    process: Any
    conn: Connection
    job: int | None = None


def run_parallel(jobs: Sequence[SymbolJob], workers: int, log_file: Path | None, bar: Any = None) -> list[Outcome]:
    """Run ``jobs`` in at most ``workers`` forked processes; the outcomes in the order of ``jobs``, as
    :meth:`SymbolJob.run` gives them.

    Each worker takes one symbol after another (job numbers and outcomes go over its pipe as JSON; the
    manifest is JSON already). A symbol whose worker dies (killed, out of memory) fails alone, with a message
    saying so; a new worker takes the symbols still waiting. Ctrl-C ends the workers (each dataset is replaced
    atomically, so an interrupted symbol keeps its previous dataset) and is raised again here.
    """
    context = mp.get_context("fork")  # the workers start from this process: config, logging, no re-imports
    outcomes: list[Outcome | None] = [None] * len(jobs)
    waiting = collections.deque(range(len(jobs)))
    pool: list[_Worker] = []
    finished = False
    try:
        while waiting or any(w.job is not None for w in pool):
            while waiting and len(pool) < min(workers, len(jobs)):
                parent_end, child_end = context.Pipe(duplex=True)
                process = context.Process(target=_worker_main, args=(jobs, child_end, log_file), daemon=True,
                                          name="data_pipeline worker")
                process.start()
                child_end.close()
                pool.append(_Worker(process, parent_end))
            for worker in pool:
                if worker.job is None and waiting:
                    worker.job = waiting.popleft()
                    worker.conn.send_bytes(json.dumps(worker.job).encode("utf-8"))
            ready = set(wait([w.conn for w in pool] + [w.process.sentinel for w in pool]))
            for worker in [w for w in pool if w.conn in ready or w.process.sentinel in ready]:
                job, answer = worker.job, _answer(worker)
                if answer is None:  # the worker ended: its symbol (if it had one) failed
                    pool.remove(worker)
                    if job is not None:
                        outcomes[job] = (None, _died(worker.process))
                else:
                    outcomes[job], worker.job = answer, None
                if job is not None and bar is not None:
                    bar.set_postfix_str(jobs[job].symbol)
                    bar.update()
        finished = True
    finally:
        for worker in pool:
            if finished:
                with contextlib.suppress(OSError):
                    worker.conn.send_bytes(b"null")  # no more work
                worker.process.join(timeout=10)
            if worker.process.is_alive():  # Ctrl-C or an error here: stop it
                worker.process.terminate()
                worker.process.join()
            worker.conn.close()
    return [o if o is not None else (None, "not run") for o in outcomes]


def _worker_main(jobs: Sequence[SymbolJob], conn: Connection, log_file: Path | None) -> None:
    """A worker: run the job whose number arrives, send its outcome, until ``null`` (or the pipe) ends it."""
    while True:
        try:
            job = json.loads(conn.recv_bytes().decode("utf-8"))
        except EOFError:
            return
        if job is None:
            return
        manifest, message = jobs[job].run(log_file)
        conn.send_bytes(json.dumps({"manifest": manifest, "message": message}).encode("utf-8"))


def _answer(worker: _Worker) -> Outcome | None:
    """The outcome a worker sent, or None when it has ended (an idle worker only ends that way)."""
    try:
        answer = json.loads(worker.conn.recv_bytes().decode("utf-8"))
    except (EOFError, OSError, ValueError):
        worker.process.join()
        return None
    return answer["manifest"], answer["message"]


def _died(process: Any) -> str:
    how = f"signal {-process.exitcode}" if (process.exitcode or 0) < 0 else f"exit code {process.exitcode}"
    return (f"the process preparing it died ({how}: killed, or out of memory?); its previous dataset, if any, "
            "is unchanged")
