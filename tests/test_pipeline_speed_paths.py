"""The fast paths of data_pipeline.py (issue 16) give what the plain paths give: Arrow's reading of plain ISO
dates, pandas' multi-threaded CSV reader, and a symbol's feature groups and split files computed in threads."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.io.parsers import readers
from tiny import dataset_state

import data_pipeline
import datafeed
from agents.config import load_config
from botcore.errors import DataError
from datafeed import sources, splits
from datafeed.splits import FeatureColumns, in_order, prepare

# --- dates --------------------------------------------------------------------------------------------------


def _stamps(n: int, seed: int) -> pd.DatetimeIndex:
    """Random times from 1600 to 2400 (leap days, year ends, midnight, the epoch's neighbourhood)."""
    rng = np.random.default_rng(seed)
    seconds = rng.integers(-11_676_096_000, 13_569_465_600, n)
    edges = pd.to_datetime(["2000-02-29 23:59:59", "1900-03-01 00:00:00", "1969-12-31 23:59:59",
                            "1970-01-01 00:00:00", "2099-12-31 23:59:00"]).as_unit("s").asi8
    return pd.DatetimeIndex(np.concatenate([seconds, edges]).astype("datetime64[s]"))


@pytest.mark.parametrize("fmt", ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M",
                                 "%Y-%m-%d"])
def test_plain_iso_dates_are_the_dates_pandas_reads(tmp_path, fmt):
    text = pd.Series(_stamps(3000, seed=len(fmt)).strftime(fmt), dtype="str", name="Date")
    fast = sources._plain_iso_dates(text)
    assert fast is not None
    careful, date_format = sources._parse_dates(text, tmp_path / "x.csv", "Date")
    assert date_format == "ISO8601"
    assert fast.dtype == careful.dtype and np.array_equal(fast.asi8, careful.asi8)


@pytest.mark.parametrize("cell", ["2000-01-01 10:00:00.5", "2000-01-01 10:00:00+01:00", "2000-01-01 10:00:00Z",
                                  " 2000-01-01 10:00:00", "2021-02-29 10:00:00", "2000-01-01 24:00:00",
                                  "2000-1-01 10:00:00", "20000101", "01.02.2000 10:00:00", ""])
def test_other_dates_are_left_to_the_careful_reading(cell):
    text = pd.Series(["2000-01-01 09:00:00"] * 50 + [cell] + ["2000-01-01 11:00:00"] * 50, dtype="str")
    assert sources._plain_iso_dates(text) is None


def _minute_csv(path: Path, n: int, fmt: str = "%Y-%m-%d %H:%M:%S", seed: int = 3) -> Path:
    bars = datafeed.generate_synthetic(n, seed=seed, kind="regime", interval="1m")
    out = bars.rename(columns=str.capitalize)
    out["Volume"] = out["Volume"].astype("int64")
    out.index = out.index.strftime(fmt)
    out.to_csv(path, index_label="Date", float_format="%.6f")
    return path


@pytest.mark.parametrize("fmt", ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"])
def test_a_file_of_plain_iso_dates_reads_the_same_either_way(tmp_path, monkeypatch, fmt):
    path = _minute_csv(tmp_path / "m.csv", 4000, fmt)
    calls = []
    original = sources._plain_iso_dates
    monkeypatch.setattr(sources, "_plain_iso_dates", lambda text: calls.append(len(text)) or original(text))
    fast, info = sources.load_csv(path)
    assert calls == [4000]
    monkeypatch.setattr(sources, "_plain_iso_dates", lambda text: None)
    careful, careful_info = sources.load_csv(path)
    pd.testing.assert_frame_equal(fast, careful, check_exact=True)
    assert info == careful_info and info["date_format"] == "ISO8601"


def test_an_impossible_plain_date_is_still_named_by_its_line(tmp_path):
    path = _minute_csv(tmp_path / "m.csv", 3000)
    lines = path.read_text().splitlines()
    lines[2001] = "2021-02-29 10:00:00" + lines[2001][19:]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 2002, column 'Date': cannot read the date '2021-02-29 10:00:00'"):
        sources.load_csv(path)


# --- pandas' threads ----------------------------------------------------------------------------------------

def test_the_multi_threaded_csv_reader_parses_the_same_numbers(tmp_path, monkeypatch):
    """A file above pandas' threshold for its parallel reader (5 MB), read by two threads: the same frame as
    with one."""
    path = _minute_csv(tmp_path / "m.csv", 110_000, seed=4)
    parallel = []
    original = readers._read_csv_parallel
    monkeypatch.setattr(readers, "_read_csv_parallel", lambda *a, **k: parallel.append(original(*a, **k)) or
                        parallel[-1])
    with pd.option_context("mode.max_threads", 2):
        threaded = sources._read_typed(path)
    assert len(parallel) == 1 and parallel[0] is not None  # the file was read in parallel chunks
    with pd.option_context("mode.max_threads", 1):
        single = sources._read_typed(path)
    assert threaded is not None and single is not None
    pd.testing.assert_frame_equal(threaded, single, check_exact=True)


# --- threads within a symbol -------------------------------------------------------------------------------

def test_in_order_hands_results_back_in_order_and_raises_the_first_failure():
    def task(i: int, seconds: float):
        def run():
            time.sleep(seconds)
            if i == 5:
                raise ValueError("task 5")
            return i
        return run

    tasks = [task(i, 0.02 * ((7 - i) % 4)) for i in range(8)]
    for threads in (1, 2, 3):
        results = []
        with pytest.raises(ValueError, match="task 5"):
            for value in in_order(tasks, threads):
                results.append(value)
        assert results == [0, 1, 2, 3, 4]
    assert list(in_order(tasks[:5], 2)) == list(range(5))


def test_in_order_starts_at_most_ahead_tasks_beyond_the_one_handed_back():
    started, lock = [], threading.Lock()

    def task(i: int):
        def run():
            with lock:
                started.append(i)
            return i
        return run

    consumed = []
    for value in in_order([task(i) for i in range(10)], threads=2, ahead=1):
        time.sleep(0.01)
        with lock:
            assert max(started) <= value + 2  # the one handed back, one more, and the one just submitted
        consumed.append(value)
    assert consumed == list(range(10))


def _read_back(columns: FeatureColumns, name: str, into: dict[str, np.ndarray]) -> None:
    """A column read back in blocks of rows (a split file's row groups)."""
    into[name] = np.concatenate([columns.rows(name, a, min(a + 7001, columns.length), copy=True)
                                 for a in range(0, columns.length, 7001)])


def test_feature_columns_stored_and_read_by_threads_at_once(tmp_path):
    n = 50_000
    arrays = {f"c{i}": np.random.default_rng(i).standard_normal(n) for i in range(12)}
    for spill in (None, tmp_path / "features.tmp"):
        columns = FeatureColumns(n, spill)
        try:
            threads = [threading.Thread(target=columns.store, args=(name, values.copy()))
                       for name, values in arrays.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            columns.names.extend(arrays)
            blocks: dict[str, np.ndarray] = {}
            readers = [threading.Thread(target=_read_back, args=(columns, name, blocks)) for name in arrays]
            for t in readers:
                t.start()
            for t in readers:
                t.join()
            for name, values in arrays.items():
                assert np.array_equal(blocks[name].view(np.int64), values.view(np.int64)), name
            with pytest.raises(ValueError, match="stored twice"):
                columns.store("c0", arrays["c0"])
        finally:
            columns.close()
        assert spill is None or not spill.exists()


@pytest.mark.parametrize("spill", [False, True])
def test_threads_give_byte_for_byte_the_dataset_of_one_thread(workspace, monkeypatch, spill):
    """Feature groups and split files computed by 1, 2 or 3 threads: the same files, byte for byte (the
    manifest too, but for its creation time), with and without the temporary feature file."""
    csv = _minute_csv(workspace / "m.csv", 6000)
    argv = ["--symbols", "THR", "--source", "csv", "--csv", str(csv), "--interval", "1m", "--quiet", "--export-csv"]
    if spill:
        monkeypatch.setattr(splits, "SPILL_BYTES", 0)
        monkeypatch.setattr(splits, "PARQUET_ROW_GROUP", 700)  # several row groups per split
    used = []
    original = splits.in_order
    monkeypatch.setattr(splits, "in_order", lambda tasks, threads, ahead=None: used.append(threads) or
                        original(tasks, threads, ahead))
    monkeypatch.setattr(splits, "usable_cores", lambda: 4)
    states = {}
    for threads in (1, 2, 3):
        monkeypatch.setattr(splits, "THREADED_ROWS", 1000 if threads > 1 else 10**9)
        monkeypatch.setattr(splits, "MAX_THREADS", threads)
        used.clear()
        assert data_pipeline.main(argv) == 0
        assert used == [threads] * 3  # the features, their normalisation and the split files
        states[threads] = dataset_state(workspace)
        for path in (workspace / "data").glob("THR_*"):
            path.unlink()
    assert len(states[1]) == 3 * 2 + 2
    assert states[2] == states[1] and states[3] == states[1]
    assert not list((workspace / "data").glob(".*.tmp"))


def test_a_failing_feature_group_in_a_thread_fails_the_symbol_and_writes_nothing(workspace, monkeypatch, capsys):
    csv = _minute_csv(workspace / "m.csv", 3000)
    monkeypatch.setattr(splits, "THREADED_ROWS", 1000)

    def broken(*args, **kwargs):
        raise MemoryError("no room for CCI")

    monkeypatch.setattr(datafeed.features, "commodity_channel_index", broken)
    rc = data_pipeline.main(["--symbols", "THR", "--source", "csv", "--csv", str(csv), "--interval", "1m",
                             "--quiet"])
    assert rc == 1 and "MemoryError: no room for CCI" in capsys.readouterr().err
    assert not [p for p in (workspace / "data").glob("*") if not p.name.endswith(".lock")]


# --- features in their final form as they are computed -----------------------------------------------------

def _market(case: str) -> pd.DataFrame:
    """Minute bars with the holes real data gives features: flat stretches (0/0 in the stochastic oscillator,
    CCI, %b), bars without volume (the volume z-score), a late start of the volume (a warm-up the data sets)."""
    bars = datafeed.generate_synthetic(12_000, seed=17, kind="regime", interval="1m")
    if case in ("flat", "late_volume"):
        bars.iloc[3000:3090, :4] = 101.25
        bars.iloc[7000:7040, :4] = bars.iloc[7000, 3]
        bars.iloc[5000:5030, bars.columns.get_loc("volume")] = 0.0
    if case == "late_volume":
        bars.iloc[:300, bars.columns.get_loc("volume")] = 0.0
    return bars


def _same_prepared(a: splits.Prepared, b: splits.Prepared) -> None:
    assert (a.warmup_bars_dropped, a.bounds, a.interior_cells_filled) == (b.warmup_bars_dropped, b.bounds,
                                                                         b.interior_cells_filled)
    assert a.normalisation == b.normalisation and a.quality == b.quality
    for name in splits.SPLITS:
        x, y = a.splits[name], b.splits[name]
        assert list(x.columns) == list(y.columns) and list(x.dtypes) == list(y.dtypes)
        assert np.array_equal(x.index.asi8, y.index.asi8)
        for column in x.columns:
            bits = {4: np.int32, 8: np.int64}[x[column].dtype.itemsize]
            assert np.array_equal(x[column].to_numpy().view(bits), y[column].to_numpy().view(bits)), column


@pytest.mark.parametrize("case", ["clean", "flat", "late_volume"])
@pytest.mark.parametrize("threads", [1, 2])
def test_features_final_as_computed_equal_features_then_final(tmp_path, monkeypatch, case, threads):
    """The warm-up read off the first bars lets each column be filled, fitted and normalised as it is
    computed: the same dataset, bit for bit, as computing every column first (with and without the file)."""
    cfg = load_config()
    bars = _market(case)
    taken = []
    original = splits._features_final
    monkeypatch.setattr(splits, "_features_final", lambda *a: taken.append(original(*a)) or taken[-1])
    monkeypatch.setattr(splits, "PROBE_ROWS", 2000)
    monkeypatch.setattr(splits, "SPILL_BYTES", 0 if threads == 2 else splits.SPILL_BYTES)
    ahead = prepare(bars, cfg, "FIN", "1m", spill_to=tmp_path / "a.tmp", threads=threads)
    assert len(taken) == 1 and taken[0] is not None  # it was the path taken
    monkeypatch.setattr(splits, "PROBE_ROWS", 10**9)
    plain = prepare(bars, cfg, "FIN", "1m", spill_to=tmp_path / "b.tmp", threads=threads)
    assert len(taken) == 1
    if case == "late_volume":
        assert ahead.warmup_bars_dropped >= 300  # (the default warm-up is 50 bars)
    if case != "clean":
        assert ahead.interior_cells_filled > 0
    _same_prepared(ahead, plain)
    ahead.close()
    plain.close()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("shift", [-1, 1])
def test_a_wrong_warm_up_from_the_first_bars_is_caught_and_computed_again(monkeypatch, shift):
    """Were the first bars ever to disagree with the whole history (a feature that is not causal), the check
    catches it and the columns are computed again the plain way: still the same dataset."""
    cfg = load_config()
    bars = _market("flat")
    monkeypatch.setattr(splits, "PROBE_ROWS", 2000)
    original = splits._plan_ahead

    def off_by_one(*args):
        warmup, _ = original(*args)
        clean, data, embargo, symbol = args[0], args[4], args[5], args[6]
        return warmup + shift, splits._split_bounds(clean.index[warmup + shift:], data, embargo, symbol)

    monkeypatch.setattr(splits, "_plan_ahead", off_by_one)
    taken = []
    final, then = splits._features_final, splits._features_then_final
    monkeypatch.setattr(splits, "_features_final", lambda *a: taken.append("final") or final(*a))
    monkeypatch.setattr(splits, "_features_then_final", lambda *a: taken.append("then") or then(*a))
    wrong = prepare(bars, cfg, "FIN", "1m")
    assert taken == ["final", "then"]
    monkeypatch.setattr(splits, "_plan_ahead", lambda *a: None)
    _same_prepared(wrong, prepare(bars, cfg, "FIN", "1m"))


@pytest.mark.parametrize("n", [0, 1, 3, 5, 6, 400])
def test_the_lagged_returns_are_the_shifted_log_returns(n):
    bars = datafeed.generate_synthetic(400, seed=5, interval="1m").iloc[:n]
    got = dict(datafeed.features._returns(bars))
    log_ret = np.log(bars["close"]).diff()
    assert list(got) == [f"f_ret_{lag + 1}" for lag in range(datafeed.features.RETURN_LAGS)]
    for lag in range(datafeed.features.RETURN_LAGS):
        want = np.array(log_ret.shift(lag), dtype="float64")
        assert np.array_equal(got[f"f_ret_{lag + 1}"].view(np.int64), want.view(np.int64))


def test_the_time_of_day_from_the_stamps_is_what_pandas_fields_give():
    """Minutes of the day from the integer stamps (UTC, any unit, before 1970 too) or from pandas' fields (other
    zones), and sin/cos looked up per minute: the bits of the whole-column arithmetic."""
    for tz in (None, "UTC", "America/New_York", "Asia/Kolkata"):
        for unit in ("s", "ms", "us", "ns"):
            index = pd.date_range("1969-12-30 21:17", periods=4000, freq="7min", tz=tz).as_unit(unit)
            minutes = (index.hour * 60 + index.minute).to_numpy()
            assert np.array_equal(datafeed.features._minute_of_day(index), minutes)
            bars = pd.DataFrame(1.0, index=index, columns=["open", "high", "low", "close", "volume"])
            got = dict(datafeed.features._time_of_day(bars))
            want = {"f_tod_sin": np.sin(2 * np.pi * minutes / 1440.0),
                    "f_tod_cos": np.cos(2 * np.pi * minutes / 1440.0)}
            for k in datafeed.features.TOD_HARMONICS:
                want[f"f_tod_sin_{k}"] = np.sin(2 * np.pi * k * minutes / 1440.0)
                want[f"f_tod_cos_{k}"] = np.cos(2 * np.pi * k * minutes / 1440.0)
            assert list(got) == list(want)
            for name, values in want.items():
                assert np.array_equal(got[name].view(np.int64), values.view(np.int64)), (tz, unit, name)


# --- cleaning without copies -------------------------------------------------------------------------------

def _reference_clean(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The repairs of clean_ohlcv as written before it skipped the steps with nothing to do (commit ad212e0)."""
    df = frame[["open", "high", "low", "close", "volume"]].astype("float64").sort_index(kind="stable")
    dup = df.index.duplicated(keep="last")
    df = df[~dup].copy()
    bad_close = ~(df["close"] > 0)
    df = df[~bad_close]
    prev_close = df["close"].shift(1).fillna(df["close"])
    missing_open = df["open"].isna()
    df.loc[missing_open, "open"] = prev_close[missing_open]
    missing_high, missing_low = df["high"].isna(), df["low"].isna()
    df.loc[missing_high, "high"] = df.loc[missing_high, ["open", "close"]].max(axis=1)
    df.loc[missing_low, "low"] = df.loc[missing_low, ["open", "close"]].min(axis=1)
    non_positive = (df[["open", "high", "low"]] <= 0).any(axis=1)
    df = df[~non_positive]
    bad_volume = ~(df["volume"] >= 0)
    df.loc[bad_volume, "volume"] = 0.0
    swapped = df["high"] < df["low"]
    df.loc[swapped, ["high", "low"]] = df.loc[swapped, ["low", "high"]].to_numpy()
    body_high, body_low = df[["open", "close"]].max(axis=1), df[["open", "close"]].min(axis=1)
    widened = (body_high > df["high"]) | (body_low < df["low"])
    df["high"] = np.maximum(df["high"], body_high)
    df["low"] = np.minimum(df["low"], body_low)
    counts = {"duplicates_dropped": int(dup.sum()), "missing_or_non_positive_close_dropped": int(bad_close.sum()),
              "missing_open_high_low_filled": int((missing_open | missing_high | missing_low).sum()),
              "non_positive_price_rows_dropped": int(non_positive.sum()),
              "missing_or_negative_volume_zeroed": int(bad_volume.sum()), "high_low_swapped": int(swapped.sum()),
              "range_widened_to_open_close": int(widened.sum())}
    return df, counts


@pytest.mark.parametrize("seed", range(12))
def test_cleaning_gives_what_it_gave_before(seed):
    rng = np.random.default_rng(seed)
    n = 400
    bars = datafeed.generate_synthetic(n, seed=seed, interval="1h")
    dirty = bars.copy()
    if seed % 3:  # dirty rows: missing and non-positive cells, swapped ranges, duplicates, out of order
        for column in ["open", "high", "low", "close", "volume"]:
            rows = rng.choice(n, size=rng.integers(1, 12), replace=False)
            dirty.iloc[rows, dirty.columns.get_loc(column)] = rng.choice([np.nan, 0.0, -1.0, 1e-3, 5.0], len(rows))
        swap = rng.choice(n, 10, replace=False)
        dirty.iloc[swap, [1, 2]] = dirty.iloc[swap, [2, 1]].to_numpy()
        dirty = pd.concat([dirty, dirty.iloc[rng.choice(n, 15)] * 1.01]).sample(frac=1.0, random_state=seed)
    cleaned, report = datafeed.clean.clean_ohlcv(dirty, "C")
    expected, counts = _reference_clean(dirty)
    pd.testing.assert_frame_equal(cleaned, expected.rename_axis("timestamp"), check_exact=True)
    assert {k: report[k] for k in counts} == counts
    if seed % 3 == 0:
        assert not any(counts.values())
