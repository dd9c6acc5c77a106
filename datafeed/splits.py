"""Chronological train / val / test splits, train-only normalisation, the split files and their manifest.

Layout of one split (``data/{SYM}_{INTERVAL}_{split}_data.parquet``): the index ``timestamp`` (UTC, stored as
``timestamp[us, tz=UTC]``; the day for daily bars, the second intraday), the raw ``open, high, low, close,
volume``, then the ``f_*`` features as z-scores with the train split's mean and standard deviation, clipped to
+-10, rounded to 6 decimals (in float64), then stored as float32 (:data:`FEATURE_DTYPE`: the precision the
environments read them at, so their observations are the same bits; OHLCV stay float64).
``data_pipeline.py --export-csv`` also writes each split as
``..._data.csv`` (``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM:SS``, numbers in full precision), the layout the split
files had before Parquet. The manifest records the format (``"format": "parquet"``) and, per file, its name,
format and sha256 (``files``; the CSV exports under ``exports``). Between two splits, ``embargo_bars`` bars are
left out (by default the longest feature window), so no feature of a later split reaches back into an earlier
one.

A dataset (three split files, the quality report, the manifest) is replaced as a whole. :func:`write_splits`
writes every new file under a temporary name first, then, holding the dataset's exclusive lock
(``fcntl`` on ``data/.{SYM}_{INTERVAL}.lock``), records the renames it is about to do in
``data/.{SYM}_{INTERVAL}.switch.json``, renames the splits, the report and the manifest last, removes CSV
split files the new manifest does not list (an older export), and deletes the record. The reader
(:mod:`datafeed.dataset`) reads the manifest and the splits under the same lock, shared, so it never sees half
a replacement. A writer killed between two renames leaves the record behind; the next
reader or writer completes the renames from it (every new file was complete before the first rename), so
the dataset is the old one or the new one, never a mix.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import hashlib
import io
import itertools
import json
import logging
import os
import platform
import queue
import secrets
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from botcore import paths
from botcore.atomic import (
    atomic_path,
    atomic_write_json,
    fsync_folder,
    remove_stale_temp_files,
    sha256_file,
    to_jsonable,
)
from botcore.errors import DataError, UserError
from botcore.lock import LockTimeout, locked_file
from botcore.markets import INTERVAL_MINUTES, infer_market, is_intraday
from botcore.symbols import safe_name
from datafeed.clean import complete_report, repair_ohlcv, step_seconds
from datafeed.features import feature_groups, feature_window, fill_forward
from datafeed.sources import OHLCV

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_SPLIT_ROWS = 20
CLIP = 10.0
DECIMALS = 6
FEATURE_DTYPE = np.dtype(np.float32)
"""The stored normalised features: what the environments read (``rl_env.data``, the paper ledger) whatever the
file holds, at half the bytes of float64 to encode, hash, write and read."""
LOCK_WAIT_SECONDS = 120.0


THREADED_ROWS = 100_000
"""From this many bars on, one symbol's feature groups and split files are computed in threads (see
:func:`default_threads`); shorter histories take longer to hand between threads than to compute."""
MAX_THREADS = 2
"""At most this many threads per symbol: each thread in flight holds a group of columns (memory), and symbols
use the other cores through ``--workers``."""


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(rows: int) -> int:
    """Threads for one symbol of ``rows`` bars: the cores this process may use, at most :data:`MAX_THREADS`,
    one below :data:`THREADED_ROWS`."""
    return 1 if rows < THREADED_ROWS else min(MAX_THREADS, usable_cores())


def in_order(tasks: Iterable[Callable[[], Any]], threads: int, ahead: int | None = None) -> Iterator[Any]:
    """The result of each task, in the order of ``tasks``; with ``threads`` above 1 computed by that many
    threads, at most ``ahead`` (default ``threads - 1``) tasks started beyond the one being handed back (what
    bounds the memory of results waiting for their turn). The first failure is raised here, in order; the
    tasks not started yet are then dropped."""
    if threads <= 1:
        for task in tasks:
            yield task()
        return
    remaining = iter(tasks)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="datafeed")
    try:
        first = itertools.islice(remaining, 1 + (threads - 1 if ahead is None else max(0, ahead)))
        pending: collections.deque[Future[Any]] = collections.deque(pool.submit(task) for task in first)
        while pending:
            result = pending.popleft().result()
            following = next(remaining, None)
            if following is not None:
                pending.append(pool.submit(following))
            yield result
            del result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


@functools.cache
def share_one_malloc_arena() -> bool:
    """Make the threads of this process allocate from glibc's main malloc arena (``M_ARENA_MAX`` 1), once.

    Why: glibc gives each new thread an arena of its own and keeps the blocks freed in it for that arena's
    reuse. A symbol's features and split files are computed in threads (pandas' CSV reader, the feature groups,
    the split writers), each with 8 MB temporaries for a million bars: with one arena per thread the freed
    blocks add up to about 100 MB more peak memory per million bars (measured: 360 MB against 255 MB with
    one arena) for no speed. It must happen before those threads first allocate: data_pipeline calls it before
    reading a big CSV file and before a long history's threads (a process that only prepares short histories
    keeps glibc's defaults). It stays for the life of the process (glibc has no way back); without glibc it
    does nothing.

    :return: whether the setting was applied.
    """
    return _glibc() is not None and bool(_glibc().mallopt(M_ARENA_MAX, 1))


def release_freed_memory() -> None:
    """Hand the memory glibc keeps from freed blocks back to the system (``malloc_trim``), between two stages
    of a long history: the feature stage leaves about 150 MB a million bars of freed temporaries, which the
    next stage could only partly reuse (measured: the split writers' peak 280 MB without, 230 MB with).
    Without glibc it does nothing."""
    if _glibc() is not None:
        _glibc().malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


SPILL_BYTES = 64 * 2**20
"""Features bigger than this (a few hundred thousand bars) wait in a temporary file while a dataset is written,
not in memory: a million minute bars hold about 300 MB of float64 features."""


class FeatureColumns:
    """Equally long float64 columns, in memory, or (``spill`` given) in one temporary file, the ``k``-th column
    stored at byte ``k * length * 8``, read back a column or a block of rows at a time. Positional reads and
    writes: several threads may store and read columns at once. :attr:`names` is the order of the columns
    (:meth:`add` appends, :meth:`store` leaves the order to the caller). A column's final form (the stored
    feature, :data:`FEATURE_DTYPE`, for a range of rows) replaces it in its place (:meth:`put_final`,
    :meth:`final_rows`): half the bytes to keep and to read back. The file is removed by :meth:`close`;
    one a killed run leaves (``.{SYM}_{INTERVAL}_features.*.tmp`` beside the dataset) is swept as a stale
    temporary file by the next run of that dataset."""

    def __init__(self, length: int, spill: Path | None = None) -> None:
        self.length = length
        self.names: list[str] = []
        self._memory: dict[str, np.ndarray] = {}
        self._slots: dict[str, int] = {}
        self._final: dict[str, int] = {}  # the first row of each column in its final form
        self._lock = threading.Lock()
        self._path = spill
        self._file = open(spill, "w+b", buffering=0) if spill is not None else None  # noqa: SIM115 (close())

    def add(self, name: str, values: np.ndarray) -> None:
        self.names.append(name)
        self.store(name, values)

    def store(self, name: str, values: np.ndarray) -> None:
        """Keep a new column without placing it in :attr:`names` (a thread computing a group does this; the
        caller then places the group's names in column order)."""
        self._new_slot(name)
        self.put(name, values)

    def store_final(self, name: str, values: np.ndarray, start: int) -> None:
        """:meth:`store` for a column already in its final form (:meth:`put_final`)."""
        self._new_slot(name)
        self.put_final(name, values, start)

    def _new_slot(self, name: str) -> None:
        with self._lock:
            if name in self._slots:
                raise ValueError(f"feature column {name} stored twice")
            self._slots[name] = len(self._slots)

    def get(self, name: str) -> np.ndarray:
        """The whole column (in memory: the array itself, so changes to it stay)."""
        return self.rows(name, 0, self.length)

    def put(self, name: str, values: np.ndarray) -> None:
        if self._file is None:
            self._memory[name] = values
            return
        self._write_at(np.ascontiguousarray(values, dtype=np.float64), self._offset(name, 0))

    def rows(self, name: str, start: int, stop: int, copy: bool = False) -> np.ndarray:
        """Rows ``start:stop`` of a column (in memory: a view of it unless ``copy``; from the file: a new array)."""
        if self._file is None:
            return self._memory[name][start:stop].copy() if copy else self._memory[name][start:stop]
        return self._read_at(np.empty(max(0, stop - start)), self._offset(name, start))

    def put_final(self, name: str, values: np.ndarray, start: int) -> None:
        """Replace the column ``name`` by its final form ``values`` (rows ``start .. start + len(values)``, as
        :data:`FEATURE_DTYPE`); its float64 rows are gone (from then on only :meth:`final_rows` reads it)."""
        values = np.ascontiguousarray(values, dtype=FEATURE_DTYPE)
        if self._file is None:
            self._memory[name] = values
        else:
            self._write_at(values, self._offset(name, 0))  # within the column's own float64 bytes
        self._final[name] = start

    def final_rows(self, name: str, start: int, stop: int, copy: bool = False) -> np.ndarray:
        """Rows ``start:stop`` of a column in its final form (see :meth:`rows`)."""
        first = self._final[name]
        if self._file is None:
            part = self._memory[name][start - first:stop - first]
            return part.copy() if copy else part
        out = np.empty(max(0, stop - start), dtype=FEATURE_DTYPE)
        return self._read_at(out, self._offset(name, 0) + (start - first) * FEATURE_DTYPE.itemsize)

    def _write_at(self, values: np.ndarray, offset: int) -> None:
        view = memoryview(values).cast("B")
        while view.nbytes:
            written = os.pwrite(self._file.fileno(), view, offset)
            view, offset = view[written:], offset + written

    def _read_at(self, out: np.ndarray, offset: int) -> np.ndarray:
        view = memoryview(out).cast("B")
        while view.nbytes:
            read = os.preadv(self._file.fileno(), [view], offset)
            if not read:
                raise DataError(f"{self._path}: the temporary feature file was cut short (disk full?)")
            view, offset = view[read:], offset + read
        return out

    def _offset(self, name: str, row: int) -> int:
        return (self._slots[name] * self.length + row) * 8

    @property
    def spilled(self) -> bool:
        return self._path is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self._path is not None:
                self._path.unlink(missing_ok=True)


@dataclass
class Prepared:
    """Everything :func:`prepare` computes for one symbol: the splits and what the manifest records.

    The rows of a split come from :meth:`frame` (a block at a time: how :func:`write_splits` streams a long
    history) or :attr:`splits` (whole DataFrames). :meth:`close` removes a spilled feature file.
    :attr:`quality` is the quality report; its gaps and return outliers are computed when first asked for
    (:func:`write_splits` has them computed beside the split files).
    """

    normalisation: dict[str, Any]
    embargo_bars: int
    feature_window: int
    warmup_bars_dropped: int
    interior_cells_filled: int
    report: dict[str, Any]  # the quality report, without gaps and outliers until ``finish_report`` ran
    ohlcv: pd.DataFrame
    stamps: pd.DatetimeIndex
    columns: FeatureColumns
    bounds: dict[str, tuple[int, int]]  # row range of each split in ``ohlcv``, ``stamps`` and ``columns``
    mad_threshold: float = 8.0
    _reported: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def quality(self) -> dict[str, Any]:
        self.finish_report()
        return self.report

    def finish_report(self) -> None:
        """Add the gaps and return outliers to the quality report, once (any thread)."""
        with self._reported:
            if "outliers" not in self.report:
                complete_report(self.report, self.ohlcv, self.mad_threshold)

    @property
    def feature_columns(self) -> list[str]:
        return list(self.columns.names)

    def rows(self, split: str) -> int:
        a, b = self.bounds[split]
        return b - a

    def frame(self, split: str, start: int = 0, stop: int | None = None) -> pd.DataFrame:
        """Rows ``start:stop`` of ``split``: the index ``timestamp``, OHLCV, then the normalised ``f_*``."""
        a, b = self.bounds[split]
        lo, hi = a + start, a + (b - a if stop is None else min(stop, b - a))
        part = {c: self.ohlcv[c].to_numpy()[lo:hi] for c in OHLCV}
        for name in self.columns.names:  # stored in their final form (filled, normalised: _fill_and_fit)
            part[name] = self.columns.final_rows(name, lo, hi, copy=True)
        return pd.DataFrame(part, index=self.stamps[lo:hi], copy=False)

    @functools.cached_property
    def splits(self) -> dict[str, pd.DataFrame]:
        return {name: self.frame(name) for name in SPLITS}

    def close(self) -> None:
        self.columns.close()


def _data_section(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["data"] if "data" in cfg and isinstance(cfg["data"], dict) else cfg


def _end_exclusive(value: str) -> pd.Timestamp:
    """A date means the whole day: ``2017-06-30`` ends before ``2017-07-01 00:00``."""
    stamp = pd.Timestamp(value)
    return stamp + pd.Timedelta(days=1) if len(value.strip()) <= 10 else stamp + pd.Timedelta(seconds=1)


def prepare(raw: pd.DataFrame, cfg: dict[str, Any], symbol: str, interval: str,
            spill_to: Path | None = None, threads: int | None = None) -> Prepared:
    """Clean, compute features, split and normalise (no dataset file is written).

    :param raw: raw OHLCV with a DatetimeIndex (any order, duplicates allowed).
    :param cfg: the resolved config (``load_config()``) or just its ``data`` section.
    :param spill_to: a temporary file for features bigger than :data:`SPILL_BYTES` (the caller closes the
        result); None keeps them in memory.
    :param threads: feature groups computed side by side (None: :func:`default_threads`); the numbers do
        not depend on it.
    """
    data = _data_section(cfg)
    frame = raw
    if data.get("start"):
        frame = frame[frame.index >= pd.Timestamp(data["start"])]
    if data.get("end"):
        frame = frame[frame.index < _end_exclusive(data["end"])]
    if frame.empty:
        raise DataError(f"{symbol}: no bars between {data.get('start') or 'the start'} and "
                        f"{data.get('end') or 'the end'} (the data runs {raw.index.min()} .. {raw.index.max()})")
    clean, quality = repair_ohlcv(frame, symbol)  # (the report's gaps and outliers: Prepared.finish_report)
    del frame, raw  # the caller may have handed over its only reference (see pipeline.run_symbol)
    _check_spacing(clean.index, interval, symbol)
    indicators = list(data.get("indicators", []))
    use_volume = not quality["volume_all_zero"]
    if not use_volume:
        logger.warning("%s: the data has no volume; volume features (OBV, volume z-score) are left out", symbol)
    n = len(clean)
    window = feature_window(indicators)
    embargo = window if data.get("embargo_bars") is None else int(data["embargo_bars"])
    big = spill_to is not None and n * 8 * (len(indicators) + 30) > SPILL_BYTES
    threads = default_threads(n) if threads is None else max(1, threads)
    if threads > 1 or big:
        release_freed_memory()  # what reading and cleaning freed: the feature stage holds the peak
    plan = _plan_ahead(clean, interval, indicators, use_volume, data, embargo, symbol, threads)
    done = None
    if plan is not None:
        done = _features_final(clean, interval, indicators, use_volume, plan, n, spill_to if big else None, threads)
        if done is None:
            logger.debug("%s: the warm-up of the first %d bars (%d) was not the whole history's; features again",
                         symbol, PROBE_ROWS, plan[0])
    if done is None:
        done = _features_then_final(clean, interval, indicators, use_volume, data, embargo, symbol, n,
                                    spill_to if big else None, threads)
    columns, warmup, bounds, mean, std, filled = done
    normalisation = {"method": "zscore", "fitted_on": "train", "ddof": 0, "clip": CLIP, "decimals": DECIMALS,
                     "dtype": FEATURE_DTYPE.name, "mean": mean, "std": std}
    quality.update(warmup_bars_dropped=warmup, interior_feature_cells_filled=filled)
    return Prepared(normalisation, embargo, window, warmup, filled, quality, clean, _stamps(clean.index, interval),
                    columns, {name: (warmup + a, warmup + b) for name, (a, b) in zip(SPLITS, bounds)},
                    float(data.get("outlier_mad_threshold", 8.0)))


PROBE_ROWS = 2048
"""A history longer than twice this has its warm-up read off its first bars (:func:`_plan_ahead`)."""

_Plan = tuple[int, list[tuple[int, int]]]  # the warm-up and the splits' row ranges after it


def _plan_ahead(clean: pd.DataFrame, interval: str, indicators: list[str], use_volume: bool, data: dict[str, Any],
                embargo: int, symbol: str, threads: int = 1) -> _Plan | None:
    """The warm-up (the first row where no feature is NaN) and the split bounds, from the features of the
    first :data:`PROBE_ROWS` bars alone: every feature at a bar uses that bar and earlier ones only, so the
    whole history's features are NaN in the same places there. Then each column can be filled, fitted and
    normalised the moment it is computed (:func:`_features_final`), which checks the warm-up against the
    whole history's columns. None for a short history, or when the first bars hold no complete row or too
    few rows for the splits (the features are then computed first: :func:`_features_then_final`)."""
    if len(clean) <= 2 * PROBE_ROWS:
        return None
    complete = np.ones(PROBE_ROWS, dtype=bool)
    groups = feature_groups(clean.iloc[:PROBE_ROWS], interval, indicators, use_volume=use_volume)
    with contextlib.closing(in_order([functools.partial(_incomplete_rows, g) for g in groups], threads)) as masks:
        for incomplete in masks:
            if incomplete is not None:
                complete &= ~incomplete
    if not complete.any():
        return None
    warmup = int(np.argmax(complete))
    try:
        return warmup, _split_bounds(clean.index[warmup:], data, embargo, symbol)
    except DataError:
        return None


def _incomplete_rows(group: Callable[[], Iterator[tuple[str, np.ndarray]]]) -> np.ndarray | None:
    """The rows where any column of ``group`` is NaN (None: the group has no column)."""
    incomplete = None
    for _, values in group():
        incomplete = np.isnan(values) if incomplete is None else incomplete | np.isnan(values)
    return incomplete


def _heaviest_first(tasks: list[Callable[[], Any]], groups: list[Any], threads: int, release: bool) -> list[Any]:
    """The results of ``tasks`` (one per feature group of ``groups``, in column order), computed by ``threads``
    threads with the groups that take longest (their ``cost``, :func:`datafeed.features.feature_groups`)
    started first, so the threads finish about together. ``release``: hand freed memory back after each."""
    order = sorted(range(len(tasks)), key=lambda i: -getattr(groups[i], "cost", 1.0))
    results: list[Any] = [None] * len(tasks)
    with contextlib.closing(in_order([tasks[i] for i in order], threads, ahead=len(tasks))) as done:  # small
        for i, result in zip(order, done):
            results[i] = result
            del result
            if release:
                release_freed_memory()
    return results


_Done = tuple[FeatureColumns, int, list[tuple[int, int]], dict[str, float], dict[str, float], int]


def _features_final(clean: pd.DataFrame, interval: str, indicators: list[str], use_volume: bool, plan: _Plan,
                    n: int, spill: Path | None, threads: int) -> _Done | None:
    """Every feature column computed, filled, fitted and normalised in one go with the warm-up and bounds of
    ``plan`` (each column is stored only in its final form); None, with nothing kept, when the columns show
    that the warm-up is not ``plan``'s after all."""
    warmup, bounds = plan
    columns = FeatureColumns(n, spill)
    try:
        head_complete = np.ones(warmup + 1, dtype=bool)
        mean, std, filled = {}, {}, 0
        groups = feature_groups(clean, interval, indicators, use_volume=use_volume)
        tasks = [functools.partial(_store_group_final, group, columns, warmup, bounds) for group in groups]
        for names, head_incomplete, fits in _heaviest_first(tasks, groups, threads, threads > 1 or spill is not None):
            columns.names.extend(names)
            if head_incomplete is not None:
                head_complete &= ~head_incomplete
            for name, (holes, column_mean, column_std) in zip(names, fits):
                mean[name], std[name] = column_mean, column_std
                filled += holes
        if not head_complete[warmup] or head_complete[:warmup].any():
            columns.close()
            return None
    except BaseException:
        columns.close()
        raise
    return columns, warmup, bounds, mean, std, filled


def _store_group_final(group: Callable[[], Iterator[tuple[str, np.ndarray]]], columns: FeatureColumns,
                       warmup: int, bounds: list[tuple[int, int]]
                       ) -> tuple[list[str], np.ndarray | None, list[tuple[int, float, float]]]:
    """Compute one feature group and store each column in its final form (:func:`_finalise`); its column
    names, the rows up to the warm-up where any of them is NaN (None: no column) and each column's
    ``(cells filled, mean, std)``."""
    names: list[str] = []
    head = None
    fits = []
    for name, values in group():
        nan = np.isnan(values[:warmup + 1])
        head = nan if head is None else head | nan
        final, *fit = _finalise(values, warmup, bounds[-1][1], bounds[0])
        del values
        columns.store_final(name, final, warmup)
        names.append(name)
        fits.append(tuple(fit))
        del final
    return names, head, fits


def _features_then_final(clean: pd.DataFrame, interval: str, indicators: list[str], use_volume: bool,
                         data: dict[str, Any], embargo: int, symbol: str, n: int, spill: Path | None,
                         threads: int) -> _Done:
    """Every feature column computed and stored away (in memory, or in a file for a long history), then the
    warm-up and the bounds found, then each column filled, fitted and normalised in its turn: a million-bar
    history never holds all its features at once."""
    columns = FeatureColumns(n, spill)
    try:
        complete = np.ones(n, dtype=bool)
        # Each group is computed and stored by one thread (several at a time when there are threads), column by
        # column as the serial generator would; its names are then placed in column order.
        groups = feature_groups(clean, interval, indicators, use_volume=use_volume)
        tasks = [functools.partial(_store_group, group, columns) for group in groups]
        for names, incomplete in _heaviest_first(tasks, groups, threads, threads > 1 or spill is not None):
            columns.names.extend(names)
            if incomplete is not None:
                complete &= ~incomplete
        warmup = int(np.argmax(complete)) if complete.any() else n
        del complete
        bounds = _split_bounds(clean.index[warmup:], data, embargo, symbol)
        mean, std, filled = {}, {}, 0
        fits = [functools.partial(_fill_and_fit, columns, name, warmup, bounds[-1][1], bounds[0])
                for name in columns.names]  # one column each, side by side when there are threads
        with contextlib.closing(in_order(fits, threads, ahead=len(fits))) as fitted:
            for name, (holes, column_mean, column_std) in zip(columns.names, fitted):
                mean[name], std[name] = column_mean, column_std
                filled += holes
    except BaseException:
        columns.close()
        raise
    return columns, warmup, bounds, mean, std, filled


def _finalise(values: np.ndarray, warmup: int, last: int,
              train: tuple[int, int]) -> tuple[np.ndarray, int, float, float]:
    """A feature column's final form: its rows ``warmup .. warmup + last`` (up to the end of the last split)
    with the interior NaN carried forward, normalised with the mean and standard deviation of its train rows
    ``train`` (counted from the warm-up): ``(final values, cells filled, mean, std)``. ``values`` is written
    over."""
    body = values[warmup:warmup + last]
    # A NaN makes the sum NaN: one pass without a mask finds the (common) columns with nothing to fill.
    holes = fill_forward(body) if np.isnan(np.add.reduce(body)) else 0
    mean = float(np.mean(body[train[0]:train[1]]))  # no NaN (filled): numpy's mean and std are pandas'
    centred = np.subtract(body, mean)  # the normalisation's first step, which np.std also takes:
    fitted = centred[train[0]:train[1]]
    std = float(np.sqrt(np.add.reduce(fitted * fitted) / len(fitted)))  # np.std(ddof=0)'s own steps, its bits
    std = std if std > 1e-12 else 1.0
    _scale_in_place(centred, std)
    return centred.astype(FEATURE_DTYPE), holes, mean, std


def _fill_and_fit(columns: FeatureColumns, name: str, warmup: int, last: int,
                  train: tuple[int, int]) -> tuple[int, float, float]:
    """One stored column in its final form (:func:`_finalise`, :meth:`FeatureColumns.put_final`):
    ``(cells filled, mean, std)``."""
    final, holes, mean, std = _finalise(columns.get(name), warmup, last, train)
    columns.put_final(name, final, warmup)
    return holes, mean, std


def _store_group(group: Callable[[], Iterator[tuple[str, np.ndarray]]],
                 columns: FeatureColumns) -> tuple[list[str], np.ndarray | None]:
    """Compute one feature group and store its columns one at a time (so a thread never holds the group's
    arrays for long); its column names in order and the rows where any of them is NaN (None: no column)."""
    names: list[str] = []
    incomplete = None
    for name, values in group():
        if incomplete is None:
            incomplete = np.isnan(values)
        else:
            incomplete |= np.isnan(values)
        columns.store(name, values)
        names.append(name)
        del values
    return names, incomplete


def spill_path(symbol: str, interval: str) -> Path:
    """A fresh name for the temporary feature file of one run (see :class:`FeatureColumns`)."""
    return paths.data_dir() / f".{safe_name(symbol)}_{interval}_features.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def zscore_in_place(values: np.ndarray, mean: float, std: float, clip: float = CLIP,
                    decimals: int = DECIMALS) -> None:
    """``round(clip((x - mean) / std, -clip, clip), decimals)``, the normalisation of the split files (and of
    walk-forward folds, :func:`datafeed.history.apply_zscore`), written over ``values``."""
    np.subtract(values, mean, out=values)
    _scale_in_place(values, std, clip, decimals)


def _scale_in_place(centred: np.ndarray, std: float, clip: float = CLIP, decimals: int = DECIMALS) -> None:
    """The steps of :func:`zscore_in_place` after the mean is taken off."""
    np.divide(centred, std, out=centred)
    np.clip(centred, -clip, clip, out=centred)
    np.round(centred, decimals, out=centred)


def normalised(values: np.ndarray, mean: float, std: float, clip: float = CLIP,
               decimals: int = DECIMALS) -> np.ndarray:
    """The stored feature: :func:`zscore_in_place` on ``values`` (float64, changed), as :data:`FEATURE_DTYPE`."""
    zscore_in_place(values, mean, std, clip, decimals)
    return values.astype(FEATURE_DTYPE)


def _stamps(index: pd.DatetimeIndex, interval: str) -> pd.DatetimeIndex:
    """The split files' timestamps: microseconds, floored to the second intraday and to the day for daily bars
    (what the CSV split files always held, ``YYYY-MM-DD HH:MM:SS`` or ``YYYY-MM-DD``)."""
    stamps = pd.DatetimeIndex(index).as_unit("us")
    return (stamps.floor("s") if is_intraday(interval) else stamps.normalize()).rename("timestamp")


def _check_spacing(index: pd.DatetimeIndex, interval: str, symbol: str) -> None:
    """Refuse bars whose typical spacing contradicts the interval (annualisation and features depend on it)."""
    median_minutes = float(np.median(step_seconds(index))) / 60.0
    expected = INTERVAL_MINUTES[interval]
    low, high = (0.9 * expected, 4.0 * expected) if interval == "1d" else (0.5 * expected, 2.0 * expected)
    if not low <= median_minutes <= high:
        guess = min(INTERVAL_MINUTES, key=lambda k: abs(np.log(INTERVAL_MINUTES[k] / max(median_minutes, 1e-9))))
        raise DataError(f"{symbol}: the bars are {median_minutes:g} minutes apart (median), which is not "
                        f"{interval}; use --interval {guess}")


def prepare_splits(raw: pd.DataFrame, cfg: dict[str, Any], symbol: str, interval: str) -> dict[str, pd.DataFrame]:
    """``{"train", "val", "test"}`` frames as in the split files (clean, features, normalised; no file writes)."""
    return prepare(raw, cfg, symbol, interval).splits


def _split_bounds(index: pd.DatetimeIndex, data: dict[str, Any], embargo: int,
                  symbol: str) -> list[tuple[int, int]]:
    n = len(index)
    train_end, val_end = data.get("train_end"), data.get("val_end")
    if bool(train_end) != bool(val_end):
        raise UserError("give both --train-end and --val-end (or neither, to split by fractions)")
    if train_end:
        n_train = int(np.searchsorted(index.values, _end_exclusive(train_end).to_datetime64(), side="left"))
        n_to_val_end = int(np.searchsorted(index.values, _end_exclusive(val_end).to_datetime64(), side="left"))
        how = f"train to {train_end}, val to {val_end}"
    else:
        usable = max(0, n - 2 * embargo)  # the fractions share out the bars that are not embargoed
        n_train = int(usable * data["train_fraction"])
        n_to_val_end = n_train + embargo + int(usable * data["val_fraction"])
        how = f"fractions {data['train_fraction']:g} / {data['val_fraction']:g}"
    bounds = [(0, n_train), (n_train + embargo, n_to_val_end), (n_to_val_end + embargo, n)]
    rows = {name: max(0, b - a) for name, (a, b) in zip(SPLITS, bounds)}
    short = [f"{name} {r}" for name, r in rows.items() if r < MIN_SPLIT_ROWS]
    if short:
        span = f"{index[0]} .. {index[-1]}" if n else "nothing"
        raise DataError(f"{symbol}: too few bars for the splits ({how}, embargo {embargo}): rows "
                        f"{', '.join(f'{k} {v}' for k, v in rows.items())}; each needs {MIN_SPLIT_ROWS} "
                        f"(usable data after warm-up: {n} bars, {span}); use a longer history or other split points")
    return bounds


# --- files --------------------------------------------------------------------------------------------

def _stamp_format(interval: str) -> str:
    return "%Y-%m-%d %H:%M:%S" if is_intraday(interval) else "%Y-%m-%d"


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its ``manifest_hash`` key, as compact JSON with sorted keys."""
    body = {k: v for k, v in manifest.items() if k != "manifest_hash"}
    text = json.dumps(to_jsonable(body), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def quality_path(symbol: str, interval: str):
    return paths.manifest_path(symbol, interval).with_name(
        paths.manifest_path(symbol, interval).name.replace("_manifest.json", "_quality.json"))


def write_splits(prepared: Prepared, symbol: str, interval: str, source_info: dict[str, Any],
                 settings: dict[str, Any], export_csv: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Replace the dataset of ``symbol`` and ``interval`` as a whole: the three Parquet split files (and their
    CSV export with ``export_csv``), the quality report and the manifest (see the module docstring).

    :param threads: split files written side by side (None: :func:`default_threads`); the files do not
        depend on it.
    :return: the manifest.
    """
    fmt = _stamp_format(interval)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staged: list[tuple[Path, Path]] = []  # (temporary file, target), in the order they are renamed

    def stage(target: Path) -> Path:
        tmp = target.with_name(f".{target.name}.{token}.tmp")
        staged.append((tmp, target))
        return tmp

    journal_written = False
    try:
        files, exports, ranges = {}, {}, {}
        tasks = []  # staged here, in the order of the renames; written side by side (each split its own files)
        threads = default_threads(len(prepared.stamps)) if threads is None else max(1, threads)
        for name in SPLITS:
            parquet = stage(paths.split_path(symbol, interval, name))
            csv = stage(paths.split_path(symbol, interval, name, "csv")) if export_csv else None
            tasks.append(functools.partial(_write_split, prepared, name, interval, parquet, csv))
        tasks.append(prepared.finish_report)  # last: by the thread done first (the train split takes longest)
        if threads > 1 or prepared.columns.spilled:
            release_freed_memory()
        with contextlib.closing(in_order(tasks, threads, ahead=len(tasks) - 1)) as outcomes:
            for name in SPLITS:
                digest, csv_digest = next(outcomes)
                files[name] = {"file": paths.split_path(symbol, interval, name).name, "format": "parquet",
                               "sha256": digest}
                if csv_digest is not None:
                    exports[name] = {"file": paths.split_path(symbol, interval, name, "csv").name, "format": "csv",
                                     "sha256": csv_digest}
            next(outcomes)  # the quality report's gaps and outliers
        for name in SPLITS:
            stamps = prepared.stamps[slice(*prepared.bounds[name])]
            ranges[name] = {"start": stamps[0].strftime(fmt), "end": stamps[-1].strftime(fmt),
                            "rows": prepared.rows(name)}
        report_file = quality_path(symbol, interval)
        atomic_write_json(stage(report_file),
                          {**prepared.quality, "interval": interval, "source": source_info.get("source")})
        manifest = _manifest(prepared, symbol, interval, source_info, settings, files, exports, ranges, report_file)
        atomic_write_json(stage(paths.manifest_path(symbol, interval)), manifest)
        # CSV split files the new manifest does not list (an earlier export, or the splits of a dataset prepared
        # before Parquet) would sit beside it with other numbers: they go with the switch.
        removes = [] if export_csv else [paths.split_path(symbol, interval, name, "csv").name for name in SPLITS]
        with dataset_lock(symbol, interval):
            complete_switch(symbol, interval)
            stale = [*remove_stale_temp_files(paths.data_dir(), prefix=f"{safe_name(symbol)}_{interval}_"),
                     *remove_stale_temp_files(paths.data_dir() / "raw", prefix=f"{safe_name(symbol)}_{interval}.")]
            for tmp in stale:
                logger.warning("removed %s, left by an interrupted data_pipeline.py run", tmp)
            atomic_write_json(_journal_path(symbol, interval),
                              {"pid": os.getpid(), "moves": [[tmp.name, target.name] for tmp, target in staged],
                               "removes": removes})
            journal_written = True  # from here on, a crash is completed by the next reader or writer
            complete_switch(symbol, interval, quiet=True)
    finally:
        if not journal_written:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
    return manifest


def _write_split(prepared: Prepared, name: str, interval: str, parquet: Path,
                 csv: Path | None) -> tuple[str, str | None]:
    """Write one split to the temporary file ``parquet`` (and ``csv``), a row group at a time; their sha256."""
    blocks = [(a, min(a + PARQUET_ROW_GROUP, prepared.rows(name))) for a in range(0, prepared.rows(name),
                                                                                  PARQUET_ROW_GROUP)]
    with atomic_path(parquet) as partial:
        digest = write_parquet((prepared.frame(name, a, b) for a, b in blocks), partial)
    if csv is None:
        return digest, None
    with atomic_path(csv) as partial:
        for i, (a, b) in enumerate(blocks):
            write_csv(prepared.frame(name, a, b), partial, interval, append=i > 0)
    return digest, sha256_file(csv)


WRITE_BUFFER = 1 << 20
"""Bytes Arrow gathers before each write to a split file."""
PARQUET_ROW_GROUP = 1 << 17
"""Rows per Parquet row group: the writer buffers one group (about 37 MB of 35 float columns) at a time."""


def write_parquet(frames: pd.DataFrame | Iterable[pd.DataFrame], path: Path) -> str:
    """One split as Parquet, from one frame or from consecutive blocks of rows (a row group each): the index as
    ``timestamp[us]`` with its time zone (a naive index is UTC, as everywhere in this package, and is stored as
    such), the columns as they are (bit for bit), uncompressed: z-scores and prices are close to incompressible
    (LZ4 would save 19% of the bytes of a minute-bar split and add 10% to the time to write it).

    :return: the sha256 of the file, computed on the bytes as they are written (no second read).
    """
    blocks = [frames] if isinstance(frames, pd.DataFrame) else frames
    with open(path, "wb", buffering=0) as fh:  # (unbuffered: the chunks are big, and written by one thread)
        sink = _HashingWriter(fh)
        # Arrow buffers the pages (a few hundred Python writes instead of thousands): each write from the
        # encoder needs the GIL, which the split writers and the hashing share.
        stream = pa.BufferedOutputStream(pa.PythonFile(sink, mode="w"), buffer_size=WRITE_BUFFER)
        writer, schema = None, None
        try:
            for frame in blocks:
                index = pd.DatetimeIndex(frame.index)
                index = index if index.tz is not None else index.tz_localize("UTC")
                if schema is None:  # pandas' metadata (index name, zone, dtypes) once, from an empty frame
                    schema = pa.Table.from_pandas(frame.iloc[:0].set_axis(index[:0]), preserve_index=True).schema
                    writer = pq.ParquetWriter(stream, schema, compression="none", use_dictionary=False,
                                              write_statistics=[schema.names[-1]])  # the index: skip by time
                arrays = [pa.array(frame[c].to_numpy(), type=schema.field(i).type) for i, c in enumerate(frame.columns)]
                arrays.append(pa.array(index, type=schema.field(len(frame.columns)).type))
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=PARQUET_ROW_GROUP)
        finally:
            try:
                if writer is not None:
                    writer.close()
            finally:
                try:
                    if not stream.closed:
                        stream.close()  # the last buffered bytes
                finally:
                    digest = sink.hexdigest()  # (also ends the hashing thread when writing failed)
    if writer is None:
        raise ValueError("write_parquet needs at least one frame")
    return digest


class _HashingWriter(io.RawIOBase):
    """A binary file whose bytes are written to ``fh`` and fed to a sha256 by a thread of its own (hashlib and
    the file writes let go of the GIL on big buffers): writing and hashing a split file overlap the encoding
    of its next pages instead of adding to it, and run on a core the encoder leaves free. :meth:`hexdigest`
    waits for the thread; a write that failed there (a full disk) is raised by the next :meth:`write` or by
    :meth:`hexdigest`."""

    BATCH = 1 << 16  # small writes (page headers) are handed over together, up to this many bytes

    def __init__(self, fh: Any) -> None:
        super().__init__()
        self._fh, self._digest = fh, hashlib.sha256()
        self._pending: queue.Queue[bytes | None] = queue.Queue(maxsize=32)  # bounds the bytes waiting
        self._batch: list[bytes] = []
        self._batched = 0
        self._failed: BaseException | None = None
        self._worker = threading.Thread(target=self._write_and_hash, name="sha256", daemon=True)
        self._worker.start()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._failed is not None:
            raise self._failed
        chunk = data if isinstance(data, bytes) else bytes(data)  # pyarrow hands over bytes: no copy then
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched >= self.BATCH:
            self._flush()
        return len(chunk)

    def _flush(self) -> None:
        if self._batch:
            self._pending.put(self._batch[0] if len(self._batch) == 1 else b"".join(self._batch))
            self._batch, self._batched = [], 0

    def _write_and_hash(self) -> None:
        while (chunk := self._pending.get()) is not None:
            if self._failed is not None:
                continue  # keep taking chunks: the writer must never wait on a full queue
            try:
                view = memoryview(chunk)
                while view.nbytes:
                    view = view[self._fh.write(view):]
                self._digest.update(chunk)
            except BaseException as exc:  # noqa: BLE001 (handed to the writing thread)
                self._failed = exc

    def hexdigest(self) -> str:
        """The sha256 of every byte written, in order, once all are in the file (no more writes after this)."""
        if self._worker.is_alive():
            self._flush()
            self._pending.put(None)
            self._worker.join()
        if self._failed is not None:
            raise self._failed
        return self._digest.hexdigest()


def read_parquet(content: bytes) -> pd.DataFrame:
    """A frame written by :func:`write_parquet`, from the bytes of its file (time zone as stored)."""
    return pq.read_table(pa.BufferReader(content)).to_pandas()


def write_csv(frame: pd.DataFrame, path: Path, interval: str, append: bool = False) -> None:
    """One split as CSV (``--export-csv``; the format of the split files before Parquet): ``timestamp`` as
    ``YYYY-MM-DD`` (daily) or ``YYYY-MM-DD HH:MM:SS`` (intraday, UTC), numbers in full precision.

    :param append: add ``frame``'s rows to the file, without a header (a split written block by block).
    """
    frame.to_csv(path, index_label="timestamp", date_format=_stamp_format(interval), lineterminator="\n",
                 mode="a" if append else "w", header=not append)


def _manifest(prepared: Prepared, symbol: str, interval: str, source_info: dict[str, Any], settings: dict[str, Any],
              files: dict[str, dict[str, str]], exports: dict[str, dict[str, str]], ranges: dict[str, Any],
              report_file: Path) -> dict[str, Any]:
    q = prepared.quality
    manifest: dict[str, Any] = {
        "symbol": symbol,
        "interval": interval,
        "source": source_info.get("source"),
        "market": infer_market(symbol),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ranges": ranges,
        "feature_columns": prepared.feature_columns,
        "normalisation": prepared.normalisation,
        "embargo_bars": prepared.embargo_bars,
        "feature_window": prepared.feature_window,
        "warmup_bars_dropped": prepared.warmup_bars_dropped,
        "format": "parquet",
        "files": files,
        "hashes": {name: entry["sha256"] for name, entry in files.items()},
        "exports": exports,
        "source_info": to_jsonable(source_info),
        "quality_report": str(report_file.relative_to(paths.workspace())),
        "quality_summary": {"rows_in": q["rows_in"], "rows_out": q["rows_out"], "gaps": q["gaps"]["count"],
                            "outliers_flagged": q["outliers"]["count"]},
        "settings": to_jsonable(settings),
    }
    manifest = json.loads(json.dumps(to_jsonable(manifest)))
    manifest["manifest_hash"] = manifest_hash(manifest)
    return manifest


# --- the dataset lock and the replacement record ----------------------------------------------------------

def _journal_path(symbol: str, interval: str) -> Path:
    return paths.data_dir() / f".{safe_name(symbol)}_{interval}.switch.json"


@contextlib.contextmanager
def dataset_lock(symbol: str, interval: str, shared: bool = False) -> Iterator[None]:
    """Hold the lock of one dataset: exclusive to replace it, shared to read it.

    :raises DataError: it stayed locked for :data:`LOCK_WAIT_SECONDS`.
    """
    if not paths.data_dir().is_dir():  # nothing to read, and a writer creates the folder first
        yield
        return
    entered = False
    try:
        with locked_file(paths.data_dir() / f".{safe_name(symbol)}_{interval}.lock", shared=shared,
                         wait_seconds=LOCK_WAIT_SECONDS):
            entered = True
            yield
    except LockTimeout as exc:
        if entered:
            raise
        raise DataError(f"the dataset of {symbol} {interval} stayed locked by another process for "
                        f"{LOCK_WAIT_SECONDS:g} s (a data_pipeline.py run writing it?); try again when it "
                        "ends") from exc


def switch_pending(symbol: str, interval: str) -> bool:
    """Whether a replacement of the dataset was interrupted between its renames."""
    return _journal_path(symbol, interval).exists()


def complete_switch(symbol: str, interval: str, quiet: bool = False) -> bool:
    """Do the renames recorded for the dataset that are not done yet, then delete the record (call it holding
    the exclusive :func:`dataset_lock`). True when there was a record."""
    journal = _journal_path(symbol, interval)
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        moves, pid = [(str(a), str(b)) for a, b in record["moves"]], record.get("pid")
        removes = [str(name) for name in record.get("removes", [])]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # written atomically: only a hand edit
        moves, pid, removes = [], None, []
    folder = paths.data_dir()
    for tmp_name, target_name in moves:
        with contextlib.suppress(FileNotFoundError):  # renamed before the interruption
            os.replace(folder / tmp_name, folder / target_name)
    for name in removes:
        if Path(name).name == name and name.endswith("_data.csv"):  # a split export of this folder, nothing else
            (folder / name).unlink(missing_ok=True)
    fsync_folder(folder)
    journal.unlink(missing_ok=True)
    fsync_folder(folder)
    if not quiet:
        logger.warning("%s %s: completed the replacement of the dataset that an interrupted data_pipeline.py run "
                       "(pid %s) left half done", symbol, interval, pid)
    return True

