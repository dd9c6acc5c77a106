"""The one reader of prepared datasets: training, evaluation, the daemon and the scripts all read through here.

A prepared dataset is what ``data_pipeline.py`` writes for one symbol and interval (see ``datafeed.splits``):
three Parquet split files and, written last, a manifest holding their sha256 hashes and its own
``manifest_hash``. A dataset prepared before the splits were Parquet (CSV split files, a manifest without
``format``) is still read, the same way it always was, with the same hash checks; the next
``data_pipeline.py`` run for it writes Parquet and removes the CSV files. The ``f_*`` features come back as
:data:`~datafeed.splits.FEATURE_DTYPE` whatever the file holds (a dataset written before they were stored so
holds float64): the values every environment reads.
Every read checks the manifest's hash and the split file's hash against it, so a split that was edited,
truncated or left over from another run is refused with a :class:`~botcore.errors.DataError` that names the
command to recreate it.

Reads hold the dataset's lock shared (:func:`datafeed.splits.dataset_lock`), so they never overlap the renames
of a ``data_pipeline.py`` run replacing the dataset; a replacement a killed run left half done is completed
first. A :class:`Dataset` reads its manifest when opened and each split when asked: when another
``data_pipeline.py`` run replaced the dataset in between, the split no longer matches and the read fails with
a DataError that says so (run again), never with bars of another version.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from botcore import paths
from botcore.errors import DataError, UserError
from botcore.markets import infer_market
from datafeed.splits import (
    FEATURE_DTYPE,
    SPLITS,
    complete_switch,
    dataset_lock,
    manifest_hash,
    read_parquet,
    switch_pending,
)


def data_command(symbol: str, interval: str) -> str:
    """The command that (re)creates the dataset of ``symbol`` and ``interval``."""
    return f"python data_pipeline.py --symbols {symbol} --interval {interval}"


@contextlib.contextmanager
def _reading(symbol: str, interval: str) -> Iterator[None]:
    """The dataset's lock, shared, for one read; exclusive when an interrupted replacement must be completed."""
    if not paths.manifest_path(symbol, interval).exists() and not switch_pending(symbol, interval):
        yield  # nothing to read (the manifest, renamed last, is not there yet): the read says so
        return
    with dataset_lock(symbol, interval, shared=True):
        if not switch_pending(symbol, interval):
            yield
            return
    with dataset_lock(symbol, interval):
        try:
            complete_switch(symbol, interval)
        except OSError as exc:
            raise DataError(f"the dataset of {symbol} {interval} was left half replaced and cannot be repaired "
                            f"here ({exc}); recreate it with: {data_command(symbol, interval)}") from exc
        yield


def load_manifest(symbol: str, interval: str) -> dict[str, Any]:
    """The manifest of a prepared symbol; DataError when missing, unreadable or edited."""
    with _reading(symbol, interval):
        return _read_manifest(symbol, interval)


def _read_manifest(symbol: str, interval: str) -> dict[str, Any]:
    path = paths.manifest_path(symbol, interval)
    if not path.is_file():
        raise DataError(f"no prepared dataset for {symbol} {interval} ({_relative(path)} is missing); "
                        f"make it with: {data_command(symbol, interval)}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError covers JSON and UTF-8 decoding errors
        raise DataError(f"{path}: unreadable ({exc}); recreate it with: {data_command(symbol, interval)}") from exc
    if not isinstance(manifest, dict) or manifest.get("manifest_hash") != manifest_hash(manifest):
        raise DataError(f"{path}: its content does not match its manifest_hash (edited or corrupt); "
                        f"recreate it with: {data_command(symbol, interval)}")
    return manifest


def load_split(symbol: str, interval: str, split: str, manifest: dict[str, Any] | None = None) -> pd.DataFrame:
    """One prepared split, checked against its manifest: a DatetimeIndex named ``timestamp``, OHLCV, then
    the ``f_*`` features.

    :param manifest: the already loaded manifest (read and checked here, under the same lock, when None).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use train, val or test")
    with _reading(symbol, interval):
        opened = manifest
        manifest = manifest if manifest is not None else _read_manifest(symbol, interval)
        path = split_file(symbol, interval, split, manifest)
        if not path.is_file():
            raise DataError(f"no prepared dataset for {symbol} {interval} ({_relative(path)} is missing); "
                            f"make it with: {data_command(symbol, interval)}")
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: unreadable ({exc}); recreate it with: {data_command(symbol, interval)}") from exc
        if (manifest.get("hashes") or {}).get(split) != hashlib.sha256(content).hexdigest():
            if opened is not None and _replaced_since(symbol, interval, opened):
                raise DataError(f"the dataset of {symbol} {interval} was replaced (by a data_pipeline.py run) after "
                                "this command read its manifest; run the command again")
            raise DataError(f"{path}: does not match its manifest (changed since it was written); "
                            f"recreate it with: {data_command(symbol, interval)}")
    try:
        if _format(manifest) == "parquet":
            frame = read_parquet(content)
            stamps = pd.DatetimeIndex(frame.index)
            frame.index = (stamps.tz_convert("UTC").tz_localize(None) if stamps.tz is not None else stamps).rename(
                "timestamp")
            return _features_as_stored(frame)
        frame = pd.read_csv(io.BytesIO(content), index_col="timestamp", parse_dates=["timestamp"])
    except (ValueError, TypeError, OSError, pa.ArrowException, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); recreate it with: {data_command(symbol, interval)}") from exc
    frame.index = pd.DatetimeIndex(frame.index, name="timestamp").as_unit("us")
    return _features_as_stored(frame)


def _features_as_stored(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``f_*`` columns as :data:`~datafeed.splits.FEATURE_DTYPE` (a no-op for a split written so)."""
    cast = {c: FEATURE_DTYPE for c in frame.columns if str(c).startswith("f_") and frame[c].dtype != FEATURE_DTYPE}
    return frame.astype(cast) if cast else frame


def _format(manifest: dict[str, Any]) -> str:
    """``parquet``; ``csv`` for a dataset prepared before the split files were Parquet (no ``format`` key)."""
    return "parquet" if manifest.get("format") == "parquet" else "csv"


def split_file(symbol: str, interval: str, split: str, manifest: dict[str, Any]) -> Path:
    """The file holding one split of the dataset ``manifest`` describes (Parquet, or CSV for an older one)."""
    return paths.split_path(symbol, interval, split, _format(manifest))


def _replaced_since(symbol: str, interval: str, opened: dict[str, Any]) -> bool:
    try:
        current = _read_manifest(symbol, interval)
    except DataError:
        return False
    return current.get("manifest_hash") != opened.get("manifest_hash")


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset whose manifest has been read and checked; ``split(name)`` reads one split.

    :param symbol: as given to data_pipeline.py, e.g. ``"GOOGL"``.
    :param interval: bar interval, e.g. ``"1d"``.
    :param manifest: the checked manifest (ranges, hashes, feature columns, normalisation, source).
    """

    symbol: str
    interval: str
    manifest: dict[str, Any]

    @classmethod
    def open(cls, symbol: str, interval: str) -> Dataset:
        """Read and check the manifest; DataError (naming the data_pipeline.py command) when it is missing."""
        return cls(symbol, interval, load_manifest(symbol, interval))

    def split(self, name: str) -> pd.DataFrame:
        return load_split(self.symbol, self.interval, name, self.manifest)

    def split_file(self, name: str) -> Path:
        """The file of split ``name`` (for reports; read it with :meth:`split`, which checks its hash)."""
        return split_file(self.symbol, self.interval, name, self.manifest)

    @property
    def market(self) -> str:
        return self.manifest.get("market") or infer_market(self.symbol)

    @property
    def hash(self) -> str:
        return str(self.manifest["manifest_hash"])

    @property
    def command(self) -> str:
        return data_command(self.symbol, self.interval)


def _relative(path: Any) -> str:
    try:
        return str(path.relative_to(paths.workspace()))
    except ValueError:
        return str(path)
