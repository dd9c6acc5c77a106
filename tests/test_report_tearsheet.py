"""Reports a quant reads: fills drawn where they happened, plots readable with many models, and the HTML report
laid out in a real headless browser at 1400 px without sideways scrolling."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib import dates as mdates
from matplotlib.colors import to_rgba

import datafeed
from agents.config import load_config
from agents.registry import Registry
from evaluation.backtest import evaluation_env_config, run_backtest
from evaluation.baselines import make_baselines
from evaluation.compare import evaluate_symbol
from evaluation.report import PLOT_KINDS, build_figures, series_colours, trades_figure
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from tests.browser import CHROMIUM_MISSING, find_chromium, layout_metrics, screenshot

SYMBOL = "SYN"
YEAR = re.compile(r"\b(19|20)\d{2}\b")
DATED_KINDS = ("performance", "drawdown", "rolling_sharpe", "rolling_volatility")


# --- the trades plot: every fill at its fill price, in the bar it filled in ----------------------------------

def _wide_bars(n: int = 400, seed: int = 4) -> MarketData:
    """Daily bars whose open, high, low and close differ a lot, so a marker off its bar is easy to catch."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.01, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0.002, 0.03, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0.002, 0.03, n))
    ts = (np.datetime64("2019-01-01") + np.arange(n).astype("timedelta64[D]")).astype("datetime64[ns]")
    return MarketData.from_arrays(open_, high, low, close, timestamps=ts, symbol=SYMBOL)


@pytest.mark.parametrize("engine", ["fast", "backtrader"])
def test_the_trades_plot_marks_every_fill_at_its_price_inside_its_bar(engine):
    data = _wide_bars()
    cfg = load_config(None, {"data": {"costs": {"slippage_bps": 25.0, "spread_bps": 10.0}}})
    config = evaluation_env_config(cfg, "box", window=8)
    result = run_backtest(make_baselines(5, 20, seed=1)["random"], data, config, engine=engine)
    assert len(result.fills) == result.n_fills > 20
    assert len(result.trades) < len(result.fills)  # reversals and scaling: fills, not round trips, are drawn

    fig = trades_figure(result, "random")
    ax = fig.axes[0]
    markers = [c for c in ax.collections if c.get_label().startswith(("buy fill", "sell fill"))]
    points = np.concatenate([c.get_offsets() for c in markers])
    assert len(points) == len(result.fills)
    row_of = {t: i for i, t in enumerate(data.timestamps.astype("datetime64[D]"))}
    away_from_close = 0
    for x, price in points:
        day = np.datetime64(mdates.num2date(x).replace(tzinfo=None), "D")
        bar = row_of[day]
        assert data.low[bar] * (1 - 1e-12) <= price <= data.high[bar] * (1 + 1e-12), (day, price)
        away_from_close += abs(price - data.close[bar]) > 1e-6 * price
    assert away_from_close > len(points) // 2  # drawn at the fill price (next open, slipped), not at the close
    assert sorted(map(tuple, points[:, 1:])) == sorted((f["price"],) for f in result.fills)
    # buys up, sells down: the marker's side matches the fill's sign
    buys = next(c for c in markers if c.get_label().startswith("buy fill"))
    assert len(buys.get_offsets()) == sum(f["qty"] > 0 for f in result.fills)


# --- many models: distinct colours, legend outside the data, years on the axis, champions emphasised --------

def _fake_result(ts: np.ndarray, rng: np.random.Generator) -> SimpleNamespace:
    r = rng.normal(0.0003, 0.01, ts.size - 1)
    equity = 100_000 * np.r_[1.0, np.cumprod(1 + r)]
    prices = 50 * np.r_[1.0, np.cumprod(1 + rng.normal(0, 0.01, ts.size - 1))]
    return SimpleNamespace(timestamps=ts, equity=equity, returns=r, prices=prices, trades=[], fills=[],
                           lows=prices * 0.99, highs=prices * 1.01)


def _many(n_models: int, ts: np.ndarray) -> tuple[dict, dict, list[str], list[str]]:
    rng = np.random.default_rng(7)
    names = [f"ppo 2026010{i % 10}T0200{i:02d}_abc{i:03d}" for i in range(n_models)]
    baselines = ["buy_and_hold", "flat", "ma_crossover", "random"]
    results = {name: _fake_result(ts, rng) for name in [*names, *baselines]}
    metrics = {name: {"volatility_pct": float(rng.uniform(5, 30)), "annualized_return_pct": float(rng.normal(3, 5)),
                      "sharpe_ratio": float(rng.normal())} for name in results}
    return results, metrics, baselines, names[:2]


def _overlaps(legend_box, axes_box) -> bool:
    return not (legend_box.x0 >= axes_box.x1 or legend_box.x1 <= axes_box.x0 or legend_box.y0 >= axes_box.y1
                or legend_box.y1 <= axes_box.y0)


@pytest.mark.parametrize("n_models", [4, 24])
def test_plots_stay_readable_with_many_models(n_models):
    ts = (np.datetime64("2019-03-01") + np.arange(700).astype("timedelta64[D]")).astype("datetime64[ns]")
    results, metrics, baselines, champions = _many(n_models, ts)
    figs = build_figures(results, metrics, SYMBOL, 252, baselines=baselines, champions=champions,
                         trades_of=champions[0])
    assert set(figs) == set(PLOT_KINDS)
    for kind, fig in figs.items():
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert legend is not None, kind
        renderer = fig.canvas.get_renderer()
        assert not _overlaps(legend.get_window_extent(renderer), ax.get_window_extent(renderer)), kind
        assert legend.get_window_extent(renderer).x1 <= fig.bbox.x1 + 1, kind  # and still on the figure
    for kind in DATED_KINDS:
        ax = figs[kind].axes[0]
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        assert len(lines) == len(results), kind
        colours = [tuple(np.round(to_rgba(ln.get_color()), 6)) for ln in lines]
        assert len(set(colours)) == len(colours), kind  # every series its own colour
        widths = {ln.get_label(): ln.get_linewidth() for ln in lines}
        champion_labels = [f"{c} (champion)" for c in champions]
        assert set(champion_labels) <= set(widths), kind
        others = [w for label, w in widths.items() if label not in champion_labels]
        assert min(widths[c] for c in champion_labels) > 2 * max(others) * 0.9, kind
        assert all(YEAR.search(t.get_text()) for t in ax.get_xticklabels() if t.get_text()), kind
        assert any(t.get_text() for t in ax.get_xticklabels()), kind
        # champions are drawn last, on top of the challengers
        assert [ln.get_label() for ln in lines][-len(champions):] == champion_labels
    assert len(set(series_colours([str(i) for i in range(40)]).values())) == 40


def test_intraday_date_axes_carry_the_year_too():
    ts = (np.datetime64("2024-12-30T14:00") + np.arange(60).astype("timedelta64[h]")).astype("datetime64[ns]")
    results, metrics, baselines, champions = _many(2, ts)
    fig = build_figures(results, metrics, SYMBOL, 260 * 24, baselines=baselines, champions=champions)["performance"]
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    offset = ax.xaxis.get_major_formatter().get_offset()
    assert labels and all(YEAR.search(label) or YEAR.search(offset) for label in labels), (labels, offset)


# --- the HTML report in a real browser ----------------------------------------------------------------------

def _register_models(count: int) -> list:
    """Untrained PPOs (random networks: no skill) registered through the registry API; the first is champion."""
    from stable_baselines3 import PPO

    from agents.sb3_agent import save_sb3
    from rl_env.trading_env import TradingEnv

    cfg = load_config()
    train = MarketData.from_frame(datafeed.load_split(SYMBOL, "1d", "train"), SYMBOL, "1d")
    env_config = EnvConfig.from_config(cfg, action_mode="discrete", training=True)
    records = []
    for seed in range(count):
        model = PPO("MlpPolicy", TradingEnv(train, env_config), n_steps=32, batch_size=32, seed=seed,
                    policy_kwargs={"net_arch": [8]}, device="cpu")
        file = Path(f"ppo_{seed}.zip")
        save_sb3(model, "ppo", {"n_steps": 32, "batch_size": 32, "net_arch": [8]}, file)
        meta = {"model_type": "backtrader", "algo": "ppo", "symbol": SYMBOL, "interval": "1d",
                "validation": {"sharpe_ratio": 0.1 * seed}, "env_config": env_config.to_dict(),
                "action_mode": "discrete", "hpo_trials": 1, "trial_sharpes": [],
                "feature_columns": list(train.feature_names)}
        record, _ = Registry().register(file, meta, promote=seed == 0, reason="test set-up")
        records.append(record)
    return records


@pytest.mark.skipif(find_chromium() is None, reason=CHROMIUM_MISSING)
def test_the_browser_check_sees_a_page_that_scrolls_sideways(tmp_path):
    """The layout check can fail: a table wider than the window is measured, and named, as the overflow."""
    page = tmp_path / "wide.html"
    page.write_text("<!DOCTYPE html><html><body><p>fits</p><table id='wide'><tr>"
                    + "<td>0123456789</td>" * 200 + "</tr></table></body></html>")
    metrics = layout_metrics(page, width=1400)
    assert metrics["inner_width"] == 1400 and metrics["scroll_width"] > 1400
    assert metrics["tables"][0]["right"] > 1400 and metrics["widest_element"].startswith(("table#wide", "td", "tr"))
    assert page.read_text().count("<script") == 0  # the measuring script went into a copy only


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason=CHROMIUM_MISSING)
def test_the_report_fits_a_1400px_browser_window_and_reads_like_a_tear_sheet(workspace):
    import data_pipeline

    assert data_pipeline.main(["--symbols", SYMBOL, "--source", "synthetic", "--seed", "3", "--bars", "2200",
                               "--quiet"]) == 0
    records = _register_models(6)
    cfg = load_config(None, {"evaluation": {"bootstrap_samples": 50, "engine": "fast"}})
    out = evaluate_symbol(SYMBOL, cfg, create_plots=True, all_runs=True)
    assert set(out["models"]) == {r.run_id for r in records}
    page = Path(out["report_html"])
    text = page.read_text(encoding="utf-8")

    metrics = layout_metrics(page, width=1400)
    assert metrics["inner_width"] == 1400
    assert metrics["scroll_width"] <= metrics["inner_width"], metrics["widest_element"]
    assert len(metrics["tables"]) >= 5
    for table in metrics["tables"]:
        assert table["right"] <= metrics["inner_width"], table
    assert len(metrics["images"]) == len(PLOT_KINDS)
    assert all(img["loaded"] and img["right"] <= metrics["inner_width"] for img in metrics["images"])
    shot = screenshot(page, workspace / "report.png", width=1400, height=1000)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(shot).size == (1400, 1000)

    # the tear sheet's parts, in the order a quant reads them
    heads = ["<h2>Recommendation</h2>", "<h2>Summary</h2>", "<h2>Monthly and yearly returns</h2>",
             "<h2>Yearly returns of every model and baseline</h2>", "<h2>Worst drawdowns of",
             "<h2>Comparison</h2>", "<h2>Rolling volatility</h2>"]
    positions = [text.index(h) for h in heads]
    assert positions == sorted(positions)
    bh = out["baselines"]["buy_and_hold"]["period"]
    assert f"{bh['start']} to {bh['end']} ({bh['n_bars']} bars from the first decision bar" in text
    assert bh["start"] != out["split_range"]["start"]  # the first decision bar, not the split's first row
    # the comparison rows follow the ranking; the champion's row is emphasised; headers are for people
    table = text[text.index("<table id='comparison'>"):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr(?: class='champion')?><td>([^<]+)</td>", table)
    labels = {**{k: v["label"] for k, v in out["models"].items()}, **{k: k for k in out["baselines"]}}
    assert rows[:len(out["ranking"])] == [labels[r["name"]] for r in out["ranking"]]
    champion = next(r for r in records if r.run_id in out["models"] and out["models"][r.run_id]["is_champion"])
    assert f"<tr class='champion'><td>{out['models'][champion.run_id]['label']}</td>" in table
    assert re.search(r"<th>Sharpe \(test\)</th>\s*<th>Sharpe \(val\)</th>", table) and "sharpe_ratio" not in table
    for part in ("alpha % (vs B&amp;H)", "beta", "info ratio"):
        assert f"<th>{part}</th>" in table
    saved = json.loads(Path(out["json_path"]).read_text())
    assert saved["models"][champion.run_id]["beta"] is not None
    assert set(saved["export"]["files"]) == set(out["models"]) | set(out["baselines"])  # models exported too
    assert all(Path(f).is_file() for files in saved["export"]["files"].values() for f in files.values())


def test_benchmark_statistics_pair_returns_by_bar_not_by_position():
    """A model ruined early stops early: its returns are paired with buy and hold's on the same bars."""
    from evaluation.report import benchmark_relative

    rng = np.random.default_rng(2)
    ts = np.arange(301).astype("datetime64[D]").astype("datetime64[ns]")
    bench = rng.normal(0.0005, 0.01, 300)
    model = 1.5 * bench[:200] + 0.0002  # stops at bar 200 of the benchmark's 300
    paired = benchmark_relative(model, bench, 252, timestamps=ts[1:201], benchmark_timestamps=ts[1:])
    assert paired["beta"] == pytest.approx(1.5) and paired["alpha_pct"] == pytest.approx(100 * 0.0002 * 252)
    by_position = benchmark_relative(model, bench, 252)  # the old alignment on the last bars: wrong bars
    assert abs(by_position["beta"]) < 0.5
