"""The CSV export beside an evaluation's JSON: complete, named in the JSON, written as one set, and readable by
quantstats with the same Sharpe ratio, maximum drawdown and CAGR as ours."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents.config import load_config
from evaluation import export
from evaluation.compare import evaluate_symbol
from evaluation.export import BAR_COLUMNS, FILL_COLUMNS, TRADE_COLUMNS
from evaluation.metrics import equity_curve, max_drawdown

SYMBOL = "SYN"


@pytest.fixture()
def outcome(workspace):
    cfg = load_config(None, {"evaluation": {"bootstrap_samples": 50, "engine": "fast"}})
    return evaluate_symbol(SYMBOL, cfg, synthetic=True, seed=11, bars=1500, kind="regime")


def _bars(path: str) -> pd.DataFrame:
    return pd.read_csv(path, index_col="timestamp", parse_dates=True)


def test_every_result_is_exported_beside_the_json_and_named_in_it(outcome):
    saved = json.loads(Path(outcome["json_path"]).read_text())
    folder = Path(saved["export"]["folder"])
    assert folder.parent == Path(outcome["json_path"]).parent and folder.is_dir()
    files = saved["export"]["files"]
    assert set(files) == set(saved["baselines"]) | {n for n, e in saved["models"].items() if e["status"] == "ok"}
    assert sorted(p.name for p in folder.iterdir()) == sorted(Path(p).name for f in files.values()
                                                              for p in f.values())
    for name, entry in saved["baselines"].items():
        bars = _bars(files[name]["bars"])
        assert tuple(bars.columns) == BAR_COLUMNS[1:]
        assert len(bars) == entry["n_bars"] and math.isnan(bars["return"].iloc[0])
        assert str(bars.index[0].date()) == entry["period"]["start"]  # from the first decision bar
        # equity and returns agree with each other and with the JSON
        eq = bars["equity"].to_numpy()
        np.testing.assert_allclose(bars["return"].to_numpy()[1:], eq[1:] / eq[:-1] - 1, rtol=1e-12, atol=1e-15)
        assert eq[-1] == pytest.approx(entry["final_equity"], rel=1e-12)
        trades = pd.read_csv(files[name]["trades"])
        assert tuple(trades.columns) == TRADE_COLUMNS
        assert len(trades) >= entry["num_trades"]  # closed trades, plus one still open at the end
        fills = pd.read_csv(files[name]["fills"])
        assert tuple(fills.columns) == FILL_COLUMNS
        assert (fills["qty"] > 0).sum() + (fills["qty"] < 0).sum() == len(fills)
    assert len(pd.read_csv(files["flat"]["fills"])) == 0
    assert len(pd.read_csv(files["random"]["fills"])) > 20


def test_quantstats_reads_the_export_and_agrees_with_our_metrics(outcome):
    """quantstats (a test dependency only) takes the exported returns as they are. Its conventions match ours
    here: Sharpe = mean / std(ddof=1) * sqrt(periods) with rf = 0; CAGR over count / periods years; drawdown from
    the starting equity (its phantom baseline). Its PSR is not compared (it feeds excess kurtosis)."""
    qs = pytest.importorskip("quantstats")
    saved = json.loads(Path(outcome["json_path"]).read_text())
    ppy = saved["periods_per_year"]
    files = saved["export"]["files"]
    checked = 0
    for name, entry in saved["baselines"].items():
        returns = _bars(files[name]["bars"])["return"].dropna()
        if entry["sharpe_ratio"] is None:  # flat: no spread, no Sharpe (quantstats divides by zero)
            assert (returns == 0).all()
            continue
        assert qs.stats.sharpe(returns, rf=0.0, periods=ppy) == pytest.approx(entry["sharpe_ratio"], rel=1e-9)
        assert 100 * qs.stats.max_drawdown(returns) == pytest.approx(entry["max_drawdown_pct"], rel=1e-9)
        assert 100 * qs.stats.cagr(returns, periods=ppy) == pytest.approx(entry["cagr_pct"], rel=1e-9)
        checked += 1
    assert checked == 3
    # alpha, beta and the information ratio against buy and hold (quantstats' IR is per bar: annualise it)
    bench = _bars(files["buy_and_hold"]["bars"])["return"].dropna()
    for name in ("random", "ma_crossover"):
        returns, entry = _bars(files[name]["bars"])["return"].dropna(), saved["baselines"][name]
        greeks = qs.stats.greeks(returns, bench, periods=ppy)
        assert greeks["beta"] == pytest.approx(entry["beta"], rel=1e-9)
        assert 100 * greeks["alpha"] == pytest.approx(entry["alpha_pct"], rel=1e-9)
        assert qs.stats.information_ratio(returns, bench) * math.sqrt(ppy) == pytest.approx(
            entry["information_ratio"], rel=1e-9)
    # a series whose first bar loses money: both count the drop from the starting equity
    random_returns = _bars(files["random"]["bars"])["return"].dropna()
    first_loss = random_returns.copy()
    first_loss.iloc[0] = -0.05
    ours = max_drawdown(equity_curve(first_loss.to_numpy()))
    assert ours <= -0.05 and qs.stats.max_drawdown(first_loss) == pytest.approx(ours, rel=1e-9)


def test_a_failed_export_leaves_no_folder_and_no_partial_files(workspace, monkeypatch):
    from types import SimpleNamespace

    ts = (np.datetime64("2020-01-01") + np.arange(4).astype("timedelta64[D]")).astype("datetime64[ns]")
    result = SimpleNamespace(timestamps=ts, prices=np.ones(4), positions=np.zeros(4), exposure=np.zeros(4),
                             equity=np.full(4, 100.0), returns=np.zeros(3), trades=[], fills=[])
    calls = {"n": 0}
    real = export.atomic_write_text

    def failing(path, text):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full")
        real(path, text)

    monkeypatch.setattr(export, "atomic_write_text", failing)
    with pytest.raises(OSError, match="disk full"):
        export.export_results({"a": result, "b": result}, workspace / "results" / "export_X_1")
    assert list((workspace / "results").iterdir()) == []  # neither the folder nor its temporary twin
    # a leftover of a killed export is removed by the next export once it is an hour old, not before
    old, fresh = workspace / "results" / ".export_X_0.abc.tmp", workspace / "results" / ".export_X_2.def.tmp"
    old.mkdir()
    fresh.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    monkeypatch.setattr(export, "atomic_write_text", real)
    files = export.export_results({"a": result, "a/b": result}, workspace / "results" / "export_X_1")
    assert Path(files["a/b"]["bars"]).name == "a_b_bars.csv" and Path(files["a"]["bars"]).is_file()
    assert not old.exists() and fresh.is_dir()
    assert pd.read_csv(files["a"]["bars"])["timestamp"].tolist()[:2] == ["2020-01-01", "2020-01-02"]
