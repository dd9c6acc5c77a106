"""Parquet split files: bit-for-bit round trips, the CSV export, and datasets prepared before Parquet."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data_pipeline
import datafeed
from agents.config import load_config
from botcore import paths
from botcore.atomic import sha256_file
from botcore.errors import DataError
from datafeed.sources import OHLCV
from datafeed.splits import SPLITS, prepare, read_parquet, write_parquet


def _assert_bitwise_equal(written: pd.DataFrame, read: pd.DataFrame) -> None:
    """Same columns, dtypes, index (values, unit, zone, name) and the same 64 bits in every cell (so -0.0 is
    not 0.0 and NaN payloads count)."""
    assert list(read.columns) == list(written.columns)
    assert list(read.dtypes) == list(written.dtypes)
    assert read.index.dtype == written.index.dtype and read.index.name == written.index.name
    assert np.array_equal(read.index.asi8, written.index.asi8)
    for column in written.columns:
        bits = {4: np.int32, 8: np.int64}[written[column].dtype.itemsize]
        assert np.array_equal(read[column].to_numpy().view(bits), written[column].to_numpy().view(bits)), column


def test_prepared_splits_round_trip_bit_for_bit(workspace):
    """What prepare() computes is what load_split() returns: every value, dtype and timestamp (written with
    the zone UTC, read back as the package's naive UTC)."""
    bars = datafeed.generate_synthetic(3000, seed=21, kind="jump", interval="5m")
    bars.iloc[100, 0] = np.nextafter(bars.iloc[100, 0], np.inf)  # a last-bit value survives
    prepared = prepare(bars, load_config(), "RT", "5m")
    datafeed.splits.write_splits(prepared, "RT", "5m", {"source": "synthetic"}, {})
    manifest = datafeed.load_manifest("RT", "5m")
    for name in SPLITS:
        written = prepared.splits[name]
        assert written.index.tz is None and str(written.index.dtype) == "datetime64[us]"
        _assert_bitwise_equal(written, datafeed.load_split("RT", "5m", name))
        schema = pq.read_schema(paths.split_path("RT", "5m", name))
        assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
        assert all(schema.field(c).type == pa.float64() for c in OHLCV)  # prices as read, features as used:
        assert all(schema.field(c).type == pa.float32() for c in written.columns if c.startswith("f_"))
        assert manifest["files"][name]["sha256"] == sha256_file(paths.split_path("RT", "5m", name))


def test_negative_zero_nan_and_time_zones_round_trip(tmp_path):
    """The writer keeps any zone it is given, and the bits of -0.0, NaN, infinities and subnormals."""
    naive = pd.DatetimeIndex(["2021-03-14 01:59:59.123456", "2021-03-14 03:00:00", "2021-11-07 01:30:00"],
                             name="timestamp").as_unit("us")
    index = naive.tz_localize("America/New_York", ambiguous=[False, False, True])  # the last: the second 01:30
    frame = pd.DataFrame({"open": [-0.0, np.nan, np.inf], "f_x": [5e-324, -np.inf, 1.0 / 3.0]}, index=index)
    path = tmp_path / "x.parquet"
    digest = write_parquet(frame, path)
    assert digest == sha256_file(path)
    read = read_parquet(path.read_bytes())
    assert str(read.index.tz) == "America/New_York"
    _assert_bitwise_equal(frame, read)


def test_export_csv_holds_the_same_numbers_and_goes_when_not_asked_for(workspace):
    assert data_pipeline.main(["--symbols", "EURUSD", "--source", "sample", "--export-csv", "--quiet"]) == 0
    manifest = datafeed.load_manifest("EURUSD", "1h")
    for name in SPLITS:
        csv = paths.split_path("EURUSD", "1h", name, "csv")
        assert manifest["exports"][name] == {"file": csv.name, "format": "csv", "sha256": sha256_file(csv)}
        exported = pd.read_csv(csv, index_col="timestamp", parse_dates=["timestamp"])
        exported = exported.astype({c: np.float32 for c in exported.columns if c.startswith("f_")})
        assert csv.read_text().splitlines()[1].startswith("20") and " " in csv.read_text().splitlines()[1][:20]
        pd.testing.assert_frame_equal(exported, datafeed.load_split("EURUSD", "1h", name), check_exact=True)
    # The next run without --export-csv removes the exports (they would hold the old numbers).
    assert data_pipeline.main(["--symbols", "EURUSD", "--source", "sample", "--quiet"]) == 0
    assert not list((workspace / "data").glob("EURUSD_*.csv"))
    assert datafeed.load_manifest("EURUSD", "1h")["exports"] == {}


def _make_legacy(symbol: str, interval: str) -> dict[str, pd.DataFrame]:
    """Turn a prepared dataset into one as data_pipeline.py wrote it before Parquet: CSV splits, a manifest
    with ``hashes`` of them and no ``format``. Returns the splits as they were read from Parquet."""
    frames = {name: datafeed.load_split(symbol, interval, name) for name in SPLITS}
    manifest = datafeed.load_manifest(symbol, interval)
    for name in SPLITS:
        paths.split_path(symbol, interval, name).unlink()
    manifest = {k: v for k, v in manifest.items() if k not in ("format", "files", "exports", "manifest_hash")}
    manifest["hashes"] = {name: sha256_file(paths.split_path(symbol, interval, name, "csv")) for name in SPLITS}
    manifest["manifest_hash"] = datafeed.manifest_hash(manifest)
    paths.manifest_path(symbol, interval).write_text(json.dumps(manifest, indent=2))
    return frames


def test_datasets_prepared_before_parquet_are_still_read(workspace):
    """A workspace from before (CSV splits, no ``format`` in the manifest) keeps working, hash-checked, and
    the next data_pipeline.py run turns it into Parquet."""
    assert data_pipeline.main(["--symbols", "GOOGL", "--source", "sample", "--export-csv", "--quiet"]) == 0
    frames = _make_legacy("GOOGL", "1d")
    dataset = datafeed.Dataset.open("GOOGL", "1d")
    for name in SPLITS:
        assert dataset.split_file(name).suffix == ".csv"
        pd.testing.assert_frame_equal(dataset.split(name), frames[name], check_exact=True)
    csv = paths.split_path("GOOGL", "1d", "val", "csv")
    csv.write_text(csv.read_text().replace("2016", "2015", 1))
    with pytest.raises(DataError, match="does not match its manifest"):
        datafeed.load_split("GOOGL", "1d", "val")
    assert data_pipeline.main(["--symbols", "GOOGL", "--quiet"]) == 0  # refreshed from its recorded source
    assert datafeed.Dataset.open("GOOGL", "1d").split_file("val").suffix == ".parquet"
    assert not list((workspace / "data").glob("GOOGL_*.csv"))
    for name in SPLITS:
        pd.testing.assert_frame_equal(datafeed.load_split("GOOGL", "1d", name), frames[name], check_exact=True)


def test_features_spilled_to_disk_give_the_same_files(workspace, monkeypatch):
    """A long history keeps its features in a temporary file while it is written: same bytes, file removed."""
    argv = ["--symbols", "SPL", "--source", "synthetic", "--interval", "5m", "--bars", "3000", "--quiet",
            "--export-csv"]
    assert data_pipeline.main(argv) == 0
    in_memory = {p.name: p.read_bytes() for p in (workspace / "data").glob("SPL_*_data.*")}
    spilled = []
    original = datafeed.splits.FeatureColumns.__init__

    def recording(self, length, spill=None):
        spilled.append(spill)
        original(self, length, spill)

    monkeypatch.setattr(datafeed.splits, "SPILL_BYTES", 0)
    monkeypatch.setattr(datafeed.splits.FeatureColumns, "__init__", recording)
    monkeypatch.setattr(datafeed.splits, "PARQUET_ROW_GROUP", 1000)  # several blocks per split
    assert data_pipeline.main(argv) == 0
    assert spilled and spilled[0] is not None and not spilled[0].exists()
    written = {p.name: p.read_bytes() for p in (workspace / "data").glob("SPL_*_data.*")}
    assert written.keys() == in_memory.keys() and len(written) == 6
    for name in written:  # CSV byte for byte; Parquet (other row groups) value for value
        if name.endswith(".csv"):
            assert written[name] == in_memory[name], name
        else:
            _assert_bitwise_equal(read_parquet(in_memory[name]), read_parquet(written[name]))
    assert not list((workspace / "data").glob(".*features*"))


def test_features_stored_as_float64_by_an_older_run_read_as_float32(workspace):
    """A dataset written before the features were stored as float32 reads as the environments always read
    it: the features as float32 (what casting its float64 values gives), the prices as float64."""
    assert data_pipeline.main(["--symbols", "GOOGL", "--source", "sample", "--quiet"]) == 0
    manifest = datafeed.load_manifest("GOOGL", "1d")
    older = {}
    for name in SPLITS:
        path = paths.split_path("GOOGL", "1d", name)
        frame = read_parquet(path.read_bytes())
        older[name] = frame.astype({c: np.float64 for c in frame.columns if c.startswith("f_")})
        older[name] = older[name] + 1e-9 * (older[name].columns.str.startswith("f_"))  # not float32 values
        manifest["files"][name]["sha256"] = manifest["hashes"][name] = write_parquet(older[name], path)
    manifest["manifest_hash"] = datafeed.manifest_hash(manifest)
    paths.manifest_path("GOOGL", "1d").write_text(json.dumps(manifest, indent=2))
    for name in SPLITS:
        split = datafeed.load_split("GOOGL", "1d", name)
        features = [c for c in split.columns if c.startswith("f_")]
        assert all(split[c].dtype == np.float32 for c in features) and all(split[c].dtype == np.float64 for c in OHLCV)
        assert np.array_equal(split[features].to_numpy(), older[name][features].to_numpy(dtype=np.float32))
        assert np.array_equal(split[OHLCV].to_numpy(), older[name][OHLCV].to_numpy())


def test_a_full_disk_while_writing_a_split_is_raised_not_hung(tmp_path, monkeypatch):
    """The file writes happen on the hashing thread: a full disk there reaches the writer (no deadlock on the
    bounded queue, no thread left behind, no digest of a short file)."""
    import errno
    import io
    import threading

    class FullDisk(io.FileIO):
        def write(self, data):
            if self.tell() > 300_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(datafeed.splits, "open", lambda path, mode, buffering=-1: FullDisk(path, "w"), raising=False)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.standard_normal((200_000, 12)), columns=[f"f_{i}" for i in range(12)],
                         index=pd.date_range("2020-01-01", periods=200_000, freq="min", name="timestamp"))
    threads = threading.active_count()
    with pytest.raises(OSError, match="No space left"):
        write_parquet([frame.iloc[:100_000], frame.iloc[100_000:]], tmp_path / "x.parquet")
    assert threading.active_count() == threads
