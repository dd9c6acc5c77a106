"""The HTML report as a tear sheet: calendar returns, drawdown periods, benchmark-relative statistics (hand-built
series with known answers), and the page an evaluation writes."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from agents.config import load_config
from evaluation.compare import COLUMN_TITLES, evaluate_symbol
from evaluation.report import benchmark_relative, calendar_returns, drawdown_periods

DAYS = np.array(["2020-01-30", "2020-01-31", "2020-02-03", "2020-02-28", "2020-03-02", "2021-01-04"],
                dtype="datetime64[ns]")


def test_calendar_returns_compound_to_the_total():
    equity = np.array([100.0, 110.0, 121.0, 99.0, 108.9, 217.8])
    monthly = calendar_returns(DAYS, equity, "M")
    assert [k for k, _ in monthly] == ["2020-01", "2020-02", "2020-03", "2021-01"]
    # January from the first bar; each later month from the previous month's last bar
    assert [v for _, v in monthly] == pytest.approx([0.10, 99 / 110 - 1, 108.9 / 99 - 1, 1.0])
    yearly = dict(calendar_returns(DAYS, equity, "Y"))
    assert yearly == pytest.approx({"2020": 0.089, "2021": 1.0})
    assert np.prod([1 + v for _, v in monthly]) == pytest.approx(equity[-1] / equity[0])
    assert calendar_returns(DAYS[:1], equity[:1]) == [] and calendar_returns([], []) == []


def test_drawdown_periods_deepest_first_with_peak_trough_and_recovery():
    ts = np.arange("2020-01-01", "2020-01-09", dtype="datetime64[D]").astype("datetime64[ns]")
    equity = np.array([100.0, 110.0, 99.0, 105.0, 110.0, 120.0, 90.0, 95.0])
    first, second = drawdown_periods(ts, equity)
    assert first == {"peak": "2020-01-06", "trough": "2020-01-07", "recovery": None, "depth_pct": pytest.approx(-25.0),
                     "bars": 2}
    assert second == {"peak": "2020-01-02", "trough": "2020-01-03", "recovery": "2020-01-05",
                      "depth_pct": pytest.approx(-10.0), "bars": 3}
    assert drawdown_periods(ts, equity, top=1) == [first]
    assert drawdown_periods(ts, np.linspace(1, 2, ts.size)) == []  # never under water


def test_benchmark_relative_recovers_a_known_beta_and_alpha():
    rng = np.random.default_rng(0)
    b = rng.normal(0.0005, 0.01, 500)
    r = 2.0 * b + 0.0001
    out = benchmark_relative(r, b, 252)
    assert out["beta"] == pytest.approx(2.0) and out["alpha_pct"] == pytest.approx(100 * 0.0001 * 252)
    active = r - b
    assert out["information_ratio"] == pytest.approx(active.mean() / active.std(ddof=1) * math.sqrt(252))
    same = benchmark_relative(b, b, 252)
    assert same["beta"] == pytest.approx(1.0) and math.isnan(same["information_ratio"])  # no active risk
    assert all(math.isnan(v) for v in benchmark_relative(r[:2], b[:2], 252).values())
    flat = benchmark_relative(r, np.zeros_like(r), 252)
    assert math.isnan(flat["beta"]) and math.isnan(flat["alpha_pct"]) and math.isfinite(flat["information_ratio"])
    # the two series are aligned on their last bars (a model with a longer window starts later)
    assert benchmark_relative(r[100:], b, 252)["beta"] == pytest.approx(2.0)


def test_the_evaluation_report_reads_like_a_tear_sheet(workspace):
    cfg = load_config(None, {"evaluation": {"bootstrap_samples": 50}})
    out = evaluate_symbol("SYN", cfg, synthetic=True, seed=3, bars=1500, create_plots=True)
    page = open(out["report_html"], encoding="utf-8").read()
    summary, heat, drawdowns, comparison = (page.index(h) for h in (
        "<h2>Summary</h2>", "<h2>Monthly and yearly returns</h2>", "<h2>Worst drawdowns of buy_and_hold</h2>",
        "<h2>Comparison</h2>"))
    assert page.index("<h2>Recommendation</h2>") < summary < heat < drawdowns < comparison
    period = out["baselines"]["buy_and_hold"]["period"]
    assert f"{period['start']} .. {period['end']} ({period['n_bars']} bars)" in page  # the first decision bar
    for title in ("Sharpe (test)", "Sharpe (val)", "alpha % (vs B&amp;H)", "info ratio", "time in market %"):
        assert f"<th>{title}</th>" in page
    assert "sharpe_ratio</th>" not in page  # human headers, not keys
    # the comparison rows follow the ranking
    table = page[comparison:page.index("</table>", comparison)]
    names = re.findall(r"<tr(?: class='champion')?><td>([^<]+)</td>", table)
    assert names[:len(out["ranking"])] == [r["name"] for r in out["ranking"]]
    bh = out["baselines"]["buy_and_hold"]
    assert bh["beta"] == pytest.approx(1.0) and bh["information_ratio"] is None
    assert out["baselines"]["flat"]["beta"] == pytest.approx(0.0)
    # fits a 1400 px window: the page is capped below it and no table row is wider than the comparison's
    assert "max-width:1360px" in page and len(COLUMN_TITLES) <= 24
    assert max(row.count("<th>") for row in re.findall(r"<tr>.*?</tr>", page)) <= len(COLUMN_TITLES)


def test_rolling_volatility_matches_a_direct_computation():
    from evaluation.report import rolling_volatility

    r = np.random.default_rng(1).normal(0, 0.01, 80)
    vol = rolling_volatility(r, 20, 252)
    assert np.isnan(vol[:19]).all()
    direct = [100 * np.std(r[i - 19:i + 1], ddof=1) * math.sqrt(252) for i in range(19, 80)]
    assert vol[19:] == pytest.approx(direct, rel=1e-9)
    assert np.isnan(rolling_volatility(r[:5], 20, 252)).all()


def test_yearly_returns_table_keeps_the_ranking_order_and_leaves_missing_years_blank():
    from evaluation.report import yearly_returns_html

    equity = np.array([100.0, 110.0, 121.0, 99.0, 108.9, 217.8])
    stopped = (DAYS[:5], equity[:5])  # stopped in 2020 (an early ruin, say): no 2021 figure
    page = yearly_returns_html([("model b", DAYS, equity), ("model a", DAYS[3:], equity[3:]), ("stopped", *stopped)])
    rows = re.findall(r"<tr><td>([^<]+)</td>(.*?)</tr>", page)
    assert [name for name, _ in rows] == ["model b", "model a", "stopped"]
    cells = dict(rows)
    assert re.findall(r">([+-][\d.]+)<|(<td></td>)", cells["stopped"]) == [("+8.9", ""), ("", "<td></td>"),
                                                                           ("+8.9", "")]
    assert re.findall(r">([+-][\d.]+)<", cells["model b"]) == ["+8.9", "+100.0", "+117.8"]
    assert re.findall(r">([+-][\d.]+)<", cells["model a"]) == ["+10.0", "+100.0", "+120.0"]
    assert "<th>2020</th><th>2021</th><th>whole period</th>" in page
    assert yearly_returns_html([]) == ""
