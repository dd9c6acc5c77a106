"""data_pipeline.py and datafeed/: every source, the incremental Yahoo store (faked at yfinance's edge),
cleaning, causal features, embargoed splits, the no-look-ahead property and bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yfinance
from tiny import dataset_state

import data_pipeline
import datafeed
from agents.config import load_config
from botcore import paths
from botcore.atomic import sha256_file
from botcore.errors import DataError
from datafeed import pipeline, sources
from datafeed.clean import clean_ohlcv
from datafeed.features import compute_features, feature_window
from datafeed.splits import prepare

REPO = Path(__file__).resolve().parent.parent


def _write_csv(path: Path, frame: pd.DataFrame, fmt: str = "%Y-%m-%d") -> Path:
    out = frame.rename(columns=str.capitalize)
    out.index = out.index.strftime(fmt)
    out.to_csv(path, index_label="Date")
    return path


def _split_bytes(workspace: Path, sym: str, interval: str = "1d") -> dict[str, bytes]:
    return {s: (workspace / "data" / f"{sym}_{interval}_{s}_data.parquet").read_bytes()
            for s in ("train", "val", "test")}


# --- sample source and file layout ---------------------------------------------------------------------

def test_sample_source_writes_contract_files(workspace, capsys):
    assert data_pipeline.main(["--symbols", "GOOGL", "EURUSD", "--source", "sample", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 symbol(s) prepared" in out
    for sym, interval in (("GOOGL", "1d"), ("EURUSD", "1h")):
        manifest = datafeed.load_manifest(sym, interval)
        assert manifest["interval"] == interval and manifest["source"] == "sample"
        assert manifest["market"] == ("fx" if sym == "EURUSD" else "equity")
        assert manifest["manifest_hash"] == datafeed.manifest_hash(manifest)
        assert manifest["format"] == "parquet" and manifest["exports"] == {}
        header = pq.read_schema(workspace / "data" / f"{sym}_{interval}_train_data.parquet").names
        assert header[:5] == ["open", "high", "low", "close", "volume"] and header[-1] == "timestamp"
        assert header[5:-1] == manifest["feature_columns"] and all(c.startswith("f_") for c in header[5:-1])
        assert not list((workspace / "data").glob(f"{sym}_*.csv"))  # CSV only on request (--export-csv)
        previous_end = None
        for split in ("train", "val", "test"):
            frame = datafeed.load_split(sym, interval, split)
            assert frame.index.name == "timestamp" and isinstance(frame.index, pd.DatetimeIndex)
            assert not frame.isna().any().any() and frame.index.is_monotonic_increasing
            assert manifest["ranges"][split]["rows"] == len(frame)
            assert manifest["hashes"][split] == sha256_file(paths.split_path(sym, interval, split))
            assert manifest["files"][split] == {"file": paths.split_path(sym, interval, split).name,
                                                "format": "parquet", "sha256": manifest["hashes"][split]}
            if previous_end is not None:  # embargo: at least embargo_bars bars left out between splits
                assert frame.index[0] > previous_end
            previous_end = frame.index[-1]
        assert ("f_tod_sin" in manifest["feature_columns"]) == (interval == "1h")
    # Raw prices are real: GOOGL's first sample close (2009-05-22) is 196.946945; train starts after warm-up.
    googl = datafeed.load_split("GOOGL", "1d", "train")
    assert googl.index[0] > pd.Timestamp("2009-05-22") and googl["close"].between(150, 1300).all()
    assert googl["high"].ge(googl[["open", "close"]].max(axis=1)).all()
    assert list(Path("logs").glob("data_pipeline_*.log"))


def test_unknown_sample_lists_available_and_others_finish(workspace, capsys):
    rc = data_pipeline.main(["--symbols", "NOPE", "GOOGL", "--source", "sample", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "no bundled sample for NOPE" in err and "GOOGL (1d)" in err and "EURUSD (1h)" in err
    assert paths.manifest_path("GOOGL", "1d").exists()


def test_sample_interval_mismatch_is_explained(workspace, capsys):
    assert data_pipeline.main(["--symbols", "EURUSD", "--source", "sample", "--interval", "1d", "--quiet"]) == 1
    assert "has 1h bars, not 1d" in capsys.readouterr().err


def test_runs_from_any_directory(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "data_pipeline.py"), "--symbols", "GOOGL", "--source",
                           "sample", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "GOOGL_1d_test_data.parquet").exists()


def test_invalid_symbol_is_refused_before_any_write(workspace, capsys):
    assert data_pipeline.main(["--symbols", "../evil", "--source", "sample", "--quiet"]) == 1
    assert "invalid symbol" in capsys.readouterr().err
    assert not (workspace / "data").exists() or not any((workspace / "data").iterdir())


def test_load_split_errors_name_the_fix(workspace):
    with pytest.raises(DataError, match=r"python data_pipeline.py --symbols GOOGL --interval 1d"):
        datafeed.load_split("GOOGL", "1d", "train")
    assert data_pipeline.main(["--symbols", "GOOGL", "--source", "sample", "--quiet"]) == 0
    target = paths.split_path("GOOGL", "1d", "val")
    content = bytearray(target.read_bytes())
    content[len(content) // 2] ^= 1  # one bit of one value
    target.write_bytes(bytes(content))
    with pytest.raises(DataError, match="does not match its manifest"):
        datafeed.load_split("GOOGL", "1d", "val")


# --- no look-ahead ---------------------------------------------------------------------------------------

def test_no_look_ahead_cut_history_gives_identical_train_and_val(tmp_path, monkeypatch):
    full = datafeed.generate_synthetic(1200, seed=3, kind="jump")
    val_end = "2003-06-30"
    after = full.index > pd.Timestamp(val_end)
    cut = full[~after | (np.cumsum(after) <= 80)]
    changed = full.copy()
    changed.loc[after, ["open", "high", "low", "close"]] *= np.linspace(0.5, 3.0, int(after.sum()))[:, None]
    results = {}
    for name, frame in (("full", full), ("cut", cut), ("changed", changed)):
        ws = tmp_path / name
        ws.mkdir()
        monkeypatch.chdir(ws)
        csv = _write_csv(ws / "prices.csv", frame)
        rc = data_pipeline.main(["--symbols", "SYN", "--source", "csv", "--csv", str(csv), "--train-end",
                                 "2002-06-28", "--val-end", val_end, "--quiet"])
        assert rc == 0
        results[name] = _split_bytes(ws, "SYN")
    for other in ("cut", "changed"):
        assert results[other]["train"] == results["full"]["train"]
        assert results[other]["val"] == results["full"]["val"]
        assert results[other]["test"] != results["full"]["test"]  # the future really was different


def test_features_use_only_the_past():
    bars = datafeed.generate_synthetic(600, seed=1, kind="regime", interval="1h")
    full = compute_features(bars, "1h")
    head = compute_features(bars.iloc[:400], "1h")
    pd.testing.assert_frame_equal(full.iloc[:400], head)
    atr = full["f_atr_14"]
    assert atr.iloc[:13].isna().all() and atr.iloc[13:].notna().all()  # ta's 0.0 warm-up is masked
    assert full["f_adx_14"].iloc[:27].isna().all() and full["f_adx_14"].iloc[27:].gt(0).all()


def test_splits_embargo_and_train_only_normalisation():
    bars = datafeed.generate_synthetic(900, seed=5)
    cfg = load_config(overrides={"data": {"embargo_bars": 7}})
    prepared = prepare(bars, cfg, "SYN", "1d")
    index = bars.index
    train, val, test = (prepared.splits[s] for s in ("train", "val", "test"))
    assert index.get_loc(val.index[0]) - index.get_loc(train.index[-1]) == 7 + 1
    assert index.get_loc(test.index[0]) - index.get_loc(val.index[-1]) == 7 + 1
    assert train.index[0] == index[prepared.warmup_bars_dropped]
    assert prepared.warmup_bars_dropped == feature_window(cfg["data"]["indicators"]) - 1
    fcols = [c for c in train.columns if c.startswith("f_")]
    assert np.allclose(train[fcols].mean(), 0.0, atol=0.02)  # fitted on train ...
    raw_val_ret = np.log(bars["close"]).diff().loc[val.index]
    norm = prepared.normalisation
    expected = ((raw_val_ret - norm["mean"]["f_ret_1"]) / norm["std"]["f_ret_1"]).round(6)
    np.testing.assert_allclose(val["f_ret_1"], expected.clip(-10, 10), atol=2e-6)  # ... applied to val as is
    pd.testing.assert_frame_equal(val[["open", "close"]], bars.loc[val.index, ["open", "close"]])


def test_too_short_history_is_a_clear_error():
    bars = datafeed.generate_synthetic(120, seed=0)
    with pytest.raises(DataError, match=r"too few bars for the splits.*each needs 20"):
        prepare(bars, load_config(), "SYN", "1d")


# --- cleaning ---------------------------------------------------------------------------------------------

def test_cleaning_repairs_and_rejects_rows_and_reports_them():
    rows = [  # timestamp, open, high, low, close, volume
        ("2020-01-01", 10.0, 11.0, 9.0, 10.5, 100.0),
        ("2020-01-03", 10.5, 10.0, 11.0, 10.6, 100.0),   # high < low: swapped
        ("2020-01-02", np.nan, 11.0, 10.0, 10.4, np.nan),  # out of order; open from previous close, volume 0
        ("2020-01-06", 10.6, 10.8, 10.4, -1.0, 100.0),   # non-positive close: dropped
        ("2020-01-07", 10.6, 10.8, 10.4, np.nan, 100.0),  # missing close: dropped
        ("2020-01-08", 10.6, 10.7, 10.5, 10.65, 100.0),
        ("2020-01-08", 10.6, 10.7, 10.5, 11.0, 100.0),   # duplicate (wins); close above high: range widened
        ("2020-01-09", 0.0, 11.2, 10.9, 11.1, 100.0),    # non-positive open: dropped
    ]
    frame = pd.DataFrame([r[1:] for r in rows], columns=["open", "high", "low", "close", "volume"],
                         index=pd.DatetimeIndex([r[0] for r in rows]))
    clean, report = clean_ohlcv(frame, "T")
    assert list(clean.index.strftime("%m-%d")) == ["01-01", "01-02", "01-03", "01-08"]
    assert report["was_unsorted"] and report["duplicates_dropped"] == 1
    assert report["missing_or_non_positive_close_dropped"] == 2
    assert report["non_positive_price_rows_dropped"] == 1
    assert report["missing_open_high_low_filled"] == 1 and report["missing_or_negative_volume_zeroed"] == 1
    assert report["high_low_swapped"] == 1 and report["range_widened_to_open_close"] == 1
    assert clean.loc["2020-01-02", "open"] == 10.5 and clean.loc["2020-01-02", "volume"] == 0.0
    assert (clean.loc["2020-01-03", "high"], clean.loc["2020-01-03", "low"]) == (11.0, 10.0)
    assert clean.loc["2020-01-08", "high"] == 11.0 and clean.loc["2020-01-08", "close"] == 11.0
    assert report["gaps"]["count"] == 1 and report["gaps"]["largest"][0]["days"] == 5.0


def test_mad_outliers_are_flagged_not_removed():
    rng = np.random.default_rng(0)
    log_ret = rng.normal(0, 0.01, 300)
    log_ret[150] = 0.3
    close = 100 * np.exp(np.cumsum(log_ret))
    frame = pd.DataFrame({"open": close, "high": close * 1.001, "low": close * 0.999, "close": close,
                          "volume": 1.0}, index=pd.bdate_range("2021-01-01", periods=300))
    clean, report = clean_ohlcv(frame, "T", mad_threshold=8.0)
    assert len(clean) == 300 and report["outliers"]["count"] == 1
    assert report["outliers"]["bars"][0]["timestamp"] == frame.index[150]


# --- csv source ------------------------------------------------------------------------------------------

def test_csv_spellings_offsets_adj_close_and_missing_volume(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("datetime,OPEN,high,Low,close,Adj Close\n"
                    "2020-01-02T09:30:00-05:00,10,11,9,10,5\n"
                    "2020-01-02T09:31:00-05:00,10,12,10,11,5.5\n")
    frame, info = sources.load_csv(path)
    assert list(frame.index) == [pd.Timestamp("2020-01-02 14:30"), pd.Timestamp("2020-01-02 14:31")]
    assert frame["close"].tolist() == [5.0, 5.5] and frame["high"].tolist() == [5.5, 6.0]
    assert info["adjusted_by_adj_close"] and not info["volume_present"] and (frame["volume"] == 0).all()
    path.write_text("Date,Time,Open,High,Low,Close,Volume\n31/01/2020,10:00,1,2,0.5,1.5,7\n"
                    "01/02/2020,10:00,1,2,0.5,1.5,7\n")
    frame, _ = sources.load_csv(path)  # day-first is the reading that runs forward
    assert list(frame.index) == [pd.Timestamp("2020-01-31 10:00"), pd.Timestamp("2020-02-01 10:00")]


@pytest.mark.parametrize("text, message", [
    ("Date,Open,High,Low,Close\n2020-01-01,1,2,1,1\n2020-01-02,1,2,1,1\n2020-01-03,1,two,1,1\n",
     r"p\.csv: line 4, column 'High': 'two' is not a number"),
    ("Date,Open,High,Low,Close\n2020-01-01,1,2,1,1\n2020-13-45,1,2,1,1\n",
     r"p\.csv: line 3, column 'Date': cannot read the date '2020-13-45'"),
    ("Date,Open,High,Low\n2020-01-01,1,2,1\n", r"p\.csv: missing column\(s\) close"),
])
def test_csv_errors_name_file_line_and_column(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        sources.load_csv(path)


def test_bad_csv_never_overwrites_last_good_files(workspace, capsys):
    good = _write_csv(workspace / "good.csv", datafeed.generate_synthetic(400, seed=2))
    assert data_pipeline.main(["--symbols", "MYCO", "--source", "csv", "--csv", str(good), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in (workspace / "data").iterdir()}
    bad = workspace / "bad.csv"
    bad.write_text(good.read_text().replace(",", ";", 1).replace("\n2001", "\n20x1", 1))
    assert data_pipeline.main(["--symbols", "MYCO", "--source", "csv", "--csv", str(bad), "--quiet"]) == 1
    assert "bad.csv" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (workspace / "data").iterdir()} == before


# --- synthetic source ------------------------------------------------------------------------------------

def test_synthetic_is_seeded_and_valid(workspace):
    for kind in ("gbm", "regime", "jump"):
        a = datafeed.generate_synthetic(500, seed=11, kind=kind, interval="5m")
        pd.testing.assert_frame_equal(a, datafeed.generate_synthetic(500, seed=11, kind=kind, interval="5m"))
        assert not a.equals(datafeed.generate_synthetic(500, seed=12, kind=kind, interval="5m"))
        assert (a["high"] >= a[["open", "close"]].max(axis=1)).all()
        assert (a["low"] <= a[["open", "close"]].min(axis=1)).all() and (a["low"] > 0).all()
        assert (a.index[1] - a.index[0]) == pd.Timedelta(minutes=5)
    jump = np.log(datafeed.generate_synthetic(20000, seed=1, kind="jump")["close"]).diff().dropna()
    gbm = np.log(datafeed.generate_synthetic(20000, seed=1, kind="gbm")["close"]).diff().dropna()
    assert jump.kurt() > gbm.kurt() + 3
    assert data_pipeline.main(["--symbols", "SYN", "--source", "synthetic", "--seed", "7", "--quiet"]) == 0
    manifest = datafeed.load_manifest("SYN", "1d")
    assert {k: manifest["source_info"][k] for k in ("source", "kind", "seed", "bars", "bars_loaded")} == {
        "source": "synthetic", "kind": "gbm", "seed": 7, "bars": 2500, "bars_loaded": 2500}


def test_interval_must_match_the_bars(workspace, capsys):
    hourly = _write_csv(workspace / "h.csv", datafeed.generate_synthetic(400, seed=1, interval="1h"),
                        fmt="%Y-%m-%d %H:%M:%S")
    assert data_pipeline.main(["--symbols", "MYCO", "--source", "csv", "--csv", str(hourly), "--quiet"]) == 1
    assert "60 minutes apart (median), which is not 1d; use --interval 1h" in capsys.readouterr().err
    assert data_pipeline.main(["--symbols", "MYCO", "--source", "csv", "--csv", str(hourly), "--interval", "1h",
                               "--quiet"]) == 0


# --- yahoo source (faked at yfinance's edge) --------------------------------------------------------------

def _naive_utc(moment):
    """A time as the store keeps it: aware times converted to UTC, naive ones (exchange dates) kept."""
    if moment is None:
        return None
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


class FakeYahoo:
    """Stands in for ``yfinance.Ticker.history``: serves a daily market stamped in New York time."""

    def __init__(self, market: pd.DataFrame | None, fail_first: int = 0):
        self.market = market
        self.fail_first = fail_first
        self.calls: list[dict] = []

    def history(self, ticker, start=None, end=None, interval="1d", auto_adjust=None, **kwargs):
        start_utc = getattr(start, "tzinfo", None) is not None and pd.Timestamp(start).utcoffset().total_seconds() == 0
        start, end = _naive_utc(start), _naive_utc(end)
        self.calls.append({"symbol": ticker.ticker, "start": start, "end": end, "start_utc": start_utc,
                           "interval": interval, "auto_adjust": auto_adjust})
        if len(self.calls) <= self.fail_first:
            raise yfinance.exceptions.YFRateLimitError()
        if self.market is None:
            return pd.DataFrame()
        idx = self.market.index.tz_localize(None)
        keep = (idx >= pd.Timestamp(start)) & (idx < pd.Timestamp(end) if end is not None else True)
        return self.market[keep].rename(columns=str.capitalize)


@pytest.fixture()
def fake_yahoo(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(sources, "_sleep", sleeps.append)
    state = {"sleeps": sleeps}

    def install(market, fail_first=0):
        fake = FakeYahoo(market, fail_first)
        monkeypatch.setattr(yfinance.Ticker, "history", lambda self, *a, **k: fake.history(self, *a, **k))
        state["fake"] = fake
        return fake

    state["install"] = install
    return state


def _ny_market(n: int, seed: int = 4) -> pd.DataFrame:
    bars = datafeed.generate_synthetic(n, seed=seed, start="2015-01-02")
    bars.index = bars.index.tz_localize("America/New_York")
    return bars


def test_yahoo_first_download_then_incremental_update(workspace, fake_yahoo):
    market = _ny_market(700)
    fake = fake_yahoo["install"](market.iloc[:650])
    assert data_pipeline.main(["--symbols", "AAPL", "--quiet"]) == 0
    store = sources.read_store("AAPL", "1d")
    assert len(store) == 650 and fake.calls[0]["auto_adjust"] is True
    assert store.index[0] == pd.Timestamp("2015-01-02")  # the exchange's date, not a UTC shift of it
    # Without --update-data the store is used as it is; Yahoo is not asked.
    fake = fake_yahoo["install"](market)
    assert data_pipeline.main(["--symbols", "AAPL", "--quiet"]) == 0 and fake.calls == []
    assert data_pipeline.main(["--symbols", "AAPL", "--update-data", "--quiet"]) == 0
    store = sources.read_store("AAPL", "1d")
    assert len(store) == 700 and store.index.is_unique and store.index.is_monotonic_increasing
    last_before = market.index[649].tz_localize(None)
    assert last_before - pd.Timedelta(days=10) == fake.calls[0]["start"]  # only the overlap and what is new
    pd.testing.assert_series_equal(store["close"], market["close"].set_axis(store.index), check_names=False)
    meta = json.loads(sources.raw_store_path("AAPL", "1d").with_suffix(".meta.json").read_text())
    assert meta["new_rows"] == 50 and meta["auto_adjust"] is True
    assert datafeed.load_manifest("AAPL", "1d")["source_info"]["new_rows"] == 50


def test_yahoo_retries_with_backoff_then_succeeds(workspace, fake_yahoo):
    fake = fake_yahoo["install"](_ny_market(400), fail_first=2)
    assert data_pipeline.main(["--symbols", "MSFT", "--quiet"]) == 0
    assert len(fake.calls) == 3 and fake_yahoo["sleeps"] == [10.0, 20.0]  # rate limits wait five times longer


def test_yahoo_down_uses_store_and_says_how_stale(workspace, fake_yahoo, caplog):
    fake_yahoo["install"](_ny_market(400))
    assert data_pipeline.main(["--symbols", "MSFT", "--quiet"]) == 0
    fake = fake_yahoo["install"](None)  # offline: yfinance returns empty frames
    assert data_pipeline.main(["--symbols", "MSFT", "--update-data", "--quiet"]) == 0
    assert len(fake.calls) == 4 and fake_yahoo["sleeps"] == [2.0, 4.0, 8.0]
    assert "using the local store instead" in caplog.text and "days old" in caplog.text
    assert datafeed.load_manifest("MSFT", "1d")["source_info"]["updated"] is False


def test_yahoo_empty_without_store_fails_naming_other_sources(workspace, fake_yahoo, capsys):
    fake_yahoo["install"](None)
    assert data_pipeline.main(["--symbols", "ZZZZ", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Yahoo returned no data for ZZZZ" in err and "--source sample" in err and "--source synthetic" in err
    assert not paths.manifest_path("ZZZZ", "1d").exists()


def test_yahoo_rescales_store_when_adjustments_change(workspace, fake_yahoo):
    market = _ny_market(300)
    fake_yahoo["install"](market.iloc[:280])
    sources.load_yahoo("AAPL", "1d", now=datetime(2016, 3, 1))
    split = market.copy()
    split[["open", "high", "low", "close"]] *= 0.5  # a 2:1 split re-adjusts all of Yahoo's history
    fake_yahoo["install"](split)
    store, info = sources.load_yahoo("AAPL", "1d", update=True, now=datetime(2016, 3, 1))
    np.testing.assert_allclose(store["close"].to_numpy(), split["close"].to_numpy())
    assert info["new_rows"] == 20


def test_yahoo_intraday_respects_range_limits(workspace, fake_yahoo, caplog):
    now = datetime(2024, 3, 1, 12, 0)
    minutes = pd.date_range("2024-01-01", now, freq="1h", tz="UTC")
    market = pd.DataFrame({"open": 1.0, "high": 1.1, "low": 0.9, "close": 1.0, "volume": 5.0}, index=minutes)
    fake = fake_yahoo["install"](market)
    store, _ = sources.load_yahoo("AAPL", "1m", start="2019-01-01", now=now)
    starts = [c["start"] for c in fake.calls]
    assert starts[0] == pd.Timestamp(now) - pd.Timedelta(days=29)
    assert all(b - a == pd.Timedelta(days=7) for a, b in zip(starts, starts[1:]))
    assert store.index[0] >= starts[0] and "Yahoo keeps 1m bars for only 29 days" in caplog.text
    # yfinance reads naive times as exchange-local: intraday requests must say they are UTC
    assert all(c["start_utc"] for c in fake.calls)


# --- large files: dates detected on a sample, errors after it --------------------------------------------

def _big_csv(path: Path, n: int, fmt: str = "%Y-%m-%d %H:%M:%S", freq: str = "1h") -> pd.DataFrame:
    bars = datafeed.generate_synthetic(n, seed=5, interval="1h")
    bars.index = pd.date_range("2019-01-01", periods=n, freq=freq, name="timestamp")
    _write_csv(path, bars.round(6), fmt=fmt)
    return bars


def test_dates_are_detected_on_a_sample_then_parsed_once(tmp_path, monkeypatch):
    path = tmp_path / "big.csv"
    bars = _big_csv(path, 5000, fmt="%d.%m.%Y %H:%M:%S")
    lengths = []
    original = sources._to_datetime

    def counting(text, fmt):
        lengths.append(len(text))
        return original(text, fmt)

    monkeypatch.setattr(sources, "_to_datetime", counting)
    frame, info = sources.load_csv(path)
    assert info["date_format"] == "%d.%m.%Y %H:%M:%S"
    assert lengths.count(5000) == 1 and sorted(lengths)[-2] <= sources._SAMPLE_ROWS  # one parse of the column
    assert frame.index.equals(bars.index.rename("timestamp"))
    np.testing.assert_array_equal(frame["close"].to_numpy(), bars["close"].round(6).to_numpy())


def test_a_row_the_sample_missed_still_decides_day_first(tmp_path):
    """Days 1..12 only, except one row outside the sample: month-first reads the sample, not the column."""
    days = [pd.Timestamp(2000 + m // 12, m % 12 + 1, d) for m in range(150) for d in range(1, 13)]
    n = len(days)
    outside = next(i for i in range(n - 1, 0, -1) if i not in set(sources._date_sample(pd.Series(range(n))).index))
    days[outside] = days[outside].replace(day=13)
    lines = ["Date,Open,High,Low,Close"] + [f"{d:%d/%m/%Y},10,11,9,10.5" for d in days]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    frame, info = sources.load_csv(tmp_path / "p.csv")
    assert info["date_format"] == "%d/%m/%Y" and list(frame.index) == days


@pytest.mark.parametrize("column, row, bad, message", [
    ("Date", 3777, "2020-02-30 10:00:00", r"line 3779, column 'Date': cannot read the date '2020-02-30 10:00:00'"),
    ("Close", 4000, "1..5", r"line 4002, column 'Close': '1\.\.5' is not a number"),
    ("Volume", 4999, "inf", r"line 5001, column 'Volume': 'inf' is not a finite number"),
])
def test_errors_after_the_sample_name_file_line_and_column(tmp_path, column, row, bad, message):
    path = tmp_path / "big.csv"
    _big_csv(path, 5000)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[header.index(column)] = bad
    lines[row + 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"big\.csv: " + message):
        sources.load_csv(path)


def test_fast_and_careful_readings_give_the_same_frame(tmp_path, monkeypatch):
    """A plain file takes the one-pass reading; the same file read cell by cell gives the same frame."""
    path = tmp_path / "p.csv"
    _big_csv(path, 3000)
    fast, info = sources.load_csv(path)
    assert sources._read_typed(path) is not None
    monkeypatch.setattr(sources, "_read_typed", lambda p: None)
    careful, careful_info = sources.load_csv(path)
    pd.testing.assert_frame_equal(fast, careful, check_exact=True)
    assert info == careful_info


# --- several symbols side by side (--workers) ---------------------------------------------------------------

def test_workers_give_exactly_the_serial_result(workspace, capsys):
    files = [_write_csv(workspace / f"s{i}.csv", datafeed.generate_synthetic(500, seed=i)) for i in range(3)]
    bad = workspace / "bad.csv"
    bad.write_text(files[0].read_text().replace(",", ",x", 1).replace("\n2000-03", "\n2000-0x", 1))
    argv = ["--symbols", "AAA", "BAD", "BBB", "CCC", "--source", "csv", "--csv", str(files[0]), str(bad),
            str(files[1]), str(files[2]), "--quiet"]
    outcomes = {}
    for workers in ("1", "3"):
        capsys.readouterr()
        rc = data_pipeline.main([*argv, "--workers", workers])
        out, err = capsys.readouterr()
        outcomes[workers] = (rc, out, err, dataset_state(workspace))
        shutil.rmtree(workspace / "data")
    assert outcomes["1"][0] == 1 and "BAD" in outcomes["1"][2] and "3 of 4 symbol(s) prepared" in outcomes["1"][1]
    assert outcomes["3"] == outcomes["1"]
    assert len(outcomes["1"][3]) == 3 * 5  # three datasets: 3 splits, quality report, manifest


def test_a_symbol_that_kills_its_process_fails_alone(workspace, monkeypatch, capsys):
    original = pipeline.run_symbol

    def run_symbol(symbol, *args, **kwargs):
        if symbol == "BOOM":
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
        return original(symbol, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_symbol", run_symbol)
    rc = data_pipeline.main(["--symbols", "AAA", "BOOM", "BBB", "--source", "synthetic", "--bars", "400",
                             "--workers", "2", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 1 and "2 of 3 symbol(s) prepared" in out and "failed: BOOM" in out
    assert "BOOM: the process preparing it died (signal 9" in err and len(err.strip().splitlines()) == 1
    assert paths.manifest_path("AAA", "1d").exists() and paths.manifest_path("BBB", "1d").exists()


def test_workers_from_the_config_and_bad_values(workspace, capsys):
    (workspace / "training_config.json").write_text(json.dumps({"data": {"workers": 0}}))
    assert data_pipeline.main(["--symbols", "SYN", "--source", "synthetic", "--quiet"]) == 2
    assert "data.workers" in capsys.readouterr().err
    (workspace / "training_config.json").write_text(json.dumps({"data": {"workers": 2}}))
    assert data_pipeline.main(["--symbols", "S1", "S2", "--source", "synthetic", "--bars", "300", "--quiet"]) == 0
    with pytest.raises(SystemExit) as stop:
        data_pipeline.main(["--symbols", "SYN", "--workers", "0"])
    assert stop.value.code == 2
