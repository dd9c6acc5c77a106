"""Plots (PNG, matplotlib's Agg canvas, no GUI) and one self-contained HTML report per evaluation.

Every plot is drawn from backtest results (duck-typed ``rl_env.backtest.BacktestResult``: ``timestamps``,
``equity``, ``returns``, ``prices``, ``trades``) and the metrics of ``rl_env.metrics``; nothing is invented.
Files: ``{kind}_{SYMBOL}_{stamp}.png`` with kind in ``PLOT_KINDS`` and ``report_{SYMBOL}_{stamp}.html``
(the PNGs embedded as base64, so the HTML file can be mailed or archived alone).
"""
from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from botcore.atomic import atomic_path, atomic_write_text
from botcore.symbols import safe_name

logger = logging.getLogger(__name__)

PLOT_KINDS = ("performance", "drawdown", "returns_distribution", "risk_return", "trades", "rolling_sharpe",
              "rolling_volatility")
PLOT_TITLES = {
    "performance": "Equity curves",
    "drawdown": "Drawdown (underwater)",
    "returns_distribution": "Distribution of per-bar returns",
    "risk_return": "Risk and return",
    "trades": "Price and fills",
    "rolling_sharpe": "Rolling Sharpe ratio",
    "rolling_volatility": "Rolling volatility",
}
BASELINE_STYLE = {"linestyle": "--", "linewidth": 1.0, "alpha": 0.85, "zorder": 2}
MODEL_STYLE = {"linestyle": "-", "linewidth": 1.1, "alpha": 0.85, "zorder": 2}
CHAMPION_STYLE = {"linestyle": "-", "linewidth": 2.6, "alpha": 1.0, "zorder": 4}
"""Champions are drawn thick and on top: with many challengers, the models that trade are the ones to find."""
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, "fontsize": "small",
                  "frameon": False}
"""Legends sit right of the axes, never over the data (constrained layout makes room for them)."""
DATE_FORMATS = ["%Y", "%b %Y", "%d %b %Y", "%d %b %Y %H:%M", "%H:%M", "%H:%M:%S"]
"""Tick labels for year, month, day, hour, minute and second ticks: down to hours every label carries its year
(matplotlib's concise default shows it only in a corner offset, easy to miss on a multi-year split)."""
DATE_OFFSET_FORMATS = ["", "", "", "", "%d %b %Y", "%d %b %Y %H:%M"]
"""The corner offset: only for minute and second ticks, whose labels do not carry the date."""


def _figure(height: float = 4.8) -> Figure:
    """A figure 1,300 px wide: the report's page is 1,360 px, and the legend beside the axes needs the room."""
    fig = Figure(figsize=(13, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _date_axis(ax: Any) -> None:
    locator = mdates.AutoDateLocator(minticks=3, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, formats=DATE_FORMATS,
                                                             zero_formats=DATE_FORMATS,
                                                             offset_formats=DATE_OFFSET_FORMATS))
    ax.set_xlabel("date (UTC)")
    ax.grid(True, alpha=0.3)


def _legend_outside(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, ncol=1 if len(handles) <= 18 else 2, **LEGEND_OUTSIDE)


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    logger.debug("wrote %s", path)
    return path


def series_colours(names: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One distinct colour per series, in the order given: tab10 up to 10 series, tab20 (dark shades first) up
    to 20, then evenly spaced hues of the turbo map. The same name keeps its colour across every plot."""
    n = len(names)
    if n <= 10:
        cmap = colormaps["tab10"]
        cols = [cmap(i) for i in range(n)]
    elif n <= 20:
        cmap = colormaps["tab20"]
        cols = [cmap(i) for i in [*range(0, 20, 2), *range(1, 20, 2)][:n]]
    else:
        cmap = colormaps["turbo"]
        cols = [cmap(x) for x in np.linspace(0.03, 0.97, n)]
    return {name: tuple(float(c) for c in col) for name, col in zip(names, cols)}


class _Styles:
    """Colour, line style and legend label of each series (baselines dashed, champions thick)."""

    def __init__(self, names: Sequence[str], baselines: Sequence[str], champions: Sequence[str]) -> None:
        self.base, self.champs = set(baselines), set(champions)
        self.colours = series_colours(list(names))

    def line(self, name: str) -> dict[str, Any]:
        style = BASELINE_STYLE if name in self.base else CHAMPION_STYLE if name in self.champs else MODEL_STYLE
        return {**style, "color": self.colours[name], "label": self.label(name)}

    def label(self, name: str) -> str:
        if name in self.base:
            return f"{name} (baseline)"
        return f"{name} (champion)" if name in self.champs else name

    def order(self, names: Sequence[str]) -> list[str]:
        """Baselines and challengers first, champions last (drawn on top, listed last in the legend)."""
        return sorted(names, key=lambda n: n in self.champs)


def _rolling_mean_std(returns: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean and standard deviation (ddof=1) of each full window; arrays of ``len - window + 1``."""
    r = np.asarray(returns, dtype=np.float64)
    c1 = np.concatenate(([0.0], np.cumsum(r)))
    c2 = np.concatenate(([0.0], np.cumsum(r * r)))
    s1 = c1[window:] - c1[:-window]
    s2 = c2[window:] - c2[:-window]
    var = np.maximum((s2 - s1 * s1 / window) / (window - 1), 0.0)
    return s1 / window, np.sqrt(var)


def rolling_sharpe(returns: np.ndarray, window: int, periods_per_year: float) -> np.ndarray:
    """Annualised Sharpe over the trailing ``window`` returns (ddof=1); nan for the first ``window - 1`` bars and
    where the window has no spread."""
    r = np.asarray(returns, dtype=np.float64)
    out = np.full(r.size, np.nan)
    if window < 2 or r.size < window:
        return out
    mean, std = _rolling_mean_std(r, window)
    ok = std > 1e-12
    vals = np.full(mean.size, np.nan)
    vals[ok] = mean[ok] / std[ok] * math.sqrt(periods_per_year)
    out[window - 1:] = vals
    return out


def rolling_volatility(returns: np.ndarray, window: int, periods_per_year: float) -> np.ndarray:
    """Annualised volatility in percent over the trailing ``window`` returns: ``std(ddof=1) * sqrt(ppy) * 100``
    (as ``evaluation.metrics.volatility``); nan for the first ``window - 1`` bars."""
    r = np.asarray(returns, dtype=np.float64)
    out = np.full(r.size, np.nan)
    if window < 2 or r.size < window:
        return out
    out[window - 1:] = 100.0 * _rolling_mean_std(r, window)[1] * math.sqrt(periods_per_year)
    return out


def rolling_window(results: Mapping[str, Any], periods_per_year: float) -> int:
    """The rolling plots' window: about a quarter year of bars, at most a quarter of the shortest run (so there
    are at least four windows), at least 2."""
    n = min((len(res.returns) for res in results.values()), default=0)
    return int(max(2, min(round(periods_per_year / 4), n // 4)))


def trades_figure(result: Any, name: str, where: str = "") -> Figure:
    """The price (each bar's low..high band and its close) with every fill of ``result`` marked at its fill price
    in the bar it filled in: buys as green up-triangles, sells as red down-triangles. Fills are never drawn at a
    round trip's average price: an average of several fills is a price the market may not have traded that day.
    Open and high/low come from the backtest (``result.lows``/``highs``); without them only the close is drawn."""
    fig = _figure()
    ax = fig.add_subplot()
    ts = np.asarray(result.timestamps)
    lows, highs = np.asarray(getattr(result, "lows", ())), np.asarray(getattr(result, "highs", ()))
    if lows.size == ts.size and highs.size == ts.size and ts.size:
        ax.fill_between(ts, lows, highs, step="mid", color="0.75", alpha=0.6, linewidth=0, label="bar low..high")
    ax.plot(ts, result.prices, color="black", linewidth=0.8, label="close")
    fills = list(getattr(result, "fills", ()) or ())
    size = 30 if len(fills) <= 200 else 12
    for buy, (marker, colour, label) in ((True, ("^", "tab:green", "buy fill")),
                                         (False, ("v", "tab:red", "sell fill"))):
        pts = [(np.datetime64(f["time"]), f["price"]) for f in fills if (f["qty"] > 0) == buy]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour, edgecolors="black",
                       linewidths=0.4, s=size, label=f"{label} ({len(pts)})", zorder=5)
    n_trades = len(getattr(result, "trades", ()) or ())
    ax.set_title(f"{PLOT_TITLES['trades']} of {name}: {len(fills)} fills at their fill prices, {n_trades} round "
                 f"trips" + (f" ({where})" if where else ""))
    ax.set_ylabel("price")
    _date_axis(ax)
    _legend_outside(ax)
    return fig


def build_figures(results: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]], symbol: str,
                  periods_per_year: float, baselines: Sequence[str] = (), champions: Sequence[str] = (),
                  trades_of: str | None = None, split_label: str = "test") -> dict[str, Figure]:
    """Every plot of ``PLOT_KINDS`` as a matplotlib Figure (not saved; :func:`create_plots` saves them).

    :param results: name -> backtest result (models and baselines, all on the same split).
    :param metrics: name -> metrics dict (for the risk-return scatter).
    :param baselines: names in ``results`` that are baselines (dashed lines).
    :param champions: names in ``results`` that are champions (thick lines, drawn on top).
    :param trades_of: the result whose fills are marked on the price chart (default: the first model).
    """
    styles = _Styles(list(results), baselines, champions)
    order = styles.order(list(results))
    where = f"{symbol}, {split_label} split"
    figs: dict[str, Figure] = {}

    def dated(kind: str, title: str, ylabel: str, series: Any, zero_line: bool = False) -> None:
        fig = _figure()
        ax = fig.add_subplot()
        for name in order:
            x, y = series(results[name])
            ax.plot(x, y, **styles.line(name))
        if zero_line:
            ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"{title} ({where})")
        ax.set_ylabel(ylabel)
        _date_axis(ax)
        _legend_outside(ax)
        figs[kind] = fig

    dated("performance", f"{PLOT_TITLES['performance']}, net of costs", "equity (currency)",
          lambda res: (res.timestamps, res.equity))

    def underwater(res: Any) -> tuple[Any, np.ndarray]:
        eq = np.asarray(res.equity, dtype=np.float64)
        return res.timestamps, (100.0 * (eq / np.maximum.accumulate(eq) - 1.0) if eq.size else eq)

    dated("drawdown", f"{PLOT_TITLES['drawdown']}: percent below the running peak", "drawdown (%)", underwater)
    figs["returns_distribution"] = _distribution_figure(results, order, styles, where)
    figs["risk_return"] = _risk_return_figure(metrics, order, styles, where)
    models = [n for n in results if n not in styles.base]
    chosen = trades_of if trades_of in results else (models[0] if models else next(iter(results), None))
    figs["trades"] = trades_figure(results[chosen], chosen, where) if chosen is not None else _figure()
    window = rolling_window(results, periods_per_year)
    dated("rolling_sharpe", f"{PLOT_TITLES['rolling_sharpe']} over the last {window} bars, annualised",
          "Sharpe ratio", lambda res: (res.timestamps[1:], rolling_sharpe(res.returns, window, periods_per_year)),
          zero_line=True)
    dated("rolling_volatility", f"{PLOT_TITLES['rolling_volatility']} over the last {window} bars, annualised",
          "volatility (%)",
          lambda res: (res.timestamps[1:], rolling_volatility(res.returns, window, periods_per_year)))
    return figs


def _distribution_figure(results: Mapping[str, Any], order: Sequence[str], styles: _Styles, where: str) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    all_r = {name: 100.0 * np.asarray(results[name].returns, dtype=np.float64) for name in order}
    finite = np.concatenate([r[np.isfinite(r)] for r in all_r.values()]) if all_r else np.empty(0)
    lo, hi = (np.quantile(finite, [0.005, 0.995]) if finite.size else (-1.0, 1.0))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 60)
    for name, r in all_r.items():
        r = r[np.isfinite(r) & (r != 0.0)]  # bars out of the market (return exactly 0) would swamp the rest
        if r.size:
            line = styles.line(name)
            ax.hist(np.clip(r, lo, hi), bins=bins, histtype="step", linewidth=min(line["linewidth"], 2.0),
                    color=line["color"], linestyle=line["linestyle"], label=line["label"])
    ax.set_title(f"{PLOT_TITLES['returns_distribution']} (bars with a non-zero return; {where})")
    ax.set_xlabel("return per bar (%), clipped to the 0.5-99.5% range")
    ax.set_ylabel("number of bars")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return fig


def _risk_return_figure(metrics: Mapping[str, Mapping[str, Any]], order: Sequence[str], styles: _Styles,
                        where: str) -> Figure:
    fig = _figure(5.0)
    ax = fig.add_subplot()
    for name in order:
        m = metrics.get(name, {})
        x, y = m.get("volatility_pct"), m.get("annualized_return_pct")
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        sharpe = m.get("sharpe_ratio")
        tag = f", Sharpe {sharpe:.2f}" if sharpe is not None and math.isfinite(sharpe) else ""
        ax.scatter([x], [y], marker="s" if name in styles.base else "o", s=120 if name in styles.champs else 50,
                   color=styles.colours[name], edgecolors="black", linewidths=0.5, label=styles.label(name) + tag,
                   zorder=4 if name in styles.champs else 3)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.margins(0.15)
    ax.set_title(f"{PLOT_TITLES['risk_return']}: annualised return vs volatility (squares: baselines; {where})")
    ax.set_xlabel("annualised volatility (%)")
    ax.set_ylabel("annualised mean return (%)")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return fig


def create_plots(results: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]], symbol: str, stamp: str,
                 out_dir: Path, periods_per_year: float, baselines: Sequence[str] = (),
                 trades_of: str | None = None, split_label: str = "test",
                 champions: Sequence[str] = ()) -> dict[str, Path]:
    """Draw every plot of ``PLOT_KINDS`` (:func:`build_figures`) into ``out_dir``; returns kind -> path."""
    figs = build_figures(results, metrics, symbol, periods_per_year, baselines=baselines, champions=champions,
                         trades_of=trades_of, split_label=split_label)
    sym = safe_name(symbol)
    return {kind: _save(fig, Path(out_dir) / f"{kind}_{sym}_{stamp}.png") for kind, fig in figs.items()}


# --- tear sheet: calendar returns, drawdown periods, benchmark-relative statistics -------------------------

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def calendar_returns(timestamps: Any, equity: Any, unit: str = "M") -> list[tuple[str, float]]:
    """Compounded return of each calendar month (``unit="M"``, labels ``YYYY-MM``) or year (``"Y"``, ``YYYY``):
    ``equity at the period's last bar / equity at the previous period's last bar - 1`` (the first period starts
    from the first bar's equity). The periods compound exactly to the total return. Empty for fewer than 2 bars.
    """
    eq = np.asarray(equity, dtype=np.float64)
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    if eq.size < 2 or ts.size != eq.size:
        return []
    periods = ts.astype(f"datetime64[{unit}]")
    keys, first = np.unique(periods, return_index=True)
    last = np.r_[first[1:] - 1, eq.size - 1]
    start = np.r_[eq[0], eq[last[:-1]]]
    with np.errstate(divide="ignore", invalid="ignore"):
        rets = np.where(start != 0, eq[last] / start - 1.0, np.nan)
    return [(str(k), float(r)) for k, r in zip(keys, rets)]


def drawdown_periods(timestamps: Any, equity: Any, top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` deepest drawdowns: each from its peak (the last bar at the running high) through its trough
    to its recovery (the first bar back at the peak; None while still under water), with its depth in percent
    and its length in bars from peak to recovery (or to the last bar)."""
    eq = np.asarray(equity, dtype=np.float64)
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    if eq.size < 2:
        return []
    peak = np.maximum.accumulate(eq)
    under = eq < peak
    edges = np.diff(np.r_[0, under.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # [start, end) under water
    out = []
    for s, e in zip(starts, ends):
        trough = s + int(np.argmin(eq[s:e] / peak[s:e]))
        recovered = e < eq.size
        out.append({"peak": str(ts[s - 1])[:10], "trough": str(ts[trough])[:10],
                    "recovery": str(ts[e])[:10] if recovered else None,
                    "depth_pct": 100.0 * (eq[trough] / peak[trough] - 1.0),
                    "bars": int((e if recovered else eq.size - 1) - (s - 1))})
    return sorted(out, key=lambda d: d["depth_pct"])[:top]


def benchmark_relative(returns: Any, benchmark: Any, periods_per_year: float, timestamps: Any = None,
                       benchmark_timestamps: Any = None) -> dict[str, float]:
    """Statistics against a benchmark's per-bar returns on the same bars (buy and hold): ``beta`` =
    cov(r, b) / var(b) (ddof=1); ``alpha_pct`` = the OLS intercept, mean(r) - beta * mean(b), times
    ``periods_per_year``, in percent (arithmetic, like empyrical's alpha with a zero risk-free rate);
    ``information_ratio`` = mean(r - b) / std(r - b, ddof=1) * sqrt(periods_per_year); ``tracking_error_pct``
    = std(r - b, ddof=1) * sqrt(periods_per_year) in percent. nan where undefined (fewer than 3 bars, a flat
    benchmark for alpha and beta, no active risk for the information ratio).

    :param timestamps: the bar each of ``returns`` ends on (``result.timestamps[1:]``); with
        ``benchmark_timestamps`` the two series are paired by bar (a model with another window starts on another
        bar; a model ruined early stops early). Without them both are taken to end on the same bar.
    """
    r, b = np.asarray(returns, dtype=np.float64), np.asarray(benchmark, dtype=np.float64)
    if timestamps is not None and benchmark_timestamps is not None:
        _, ri, bi = np.intersect1d(np.asarray(timestamps, dtype="datetime64[ns]")[:r.size],
                                   np.asarray(benchmark_timestamps, dtype="datetime64[ns]")[:b.size],
                                   assume_unique=True, return_indices=True)
        r, b = r[ri], b[bi]
    n = min(r.size, b.size)
    r, b = r[r.size - n:], b[b.size - n:]
    ok = np.isfinite(r) & np.isfinite(b)
    r, b = r[ok], b[ok]
    nan = {"alpha_pct": math.nan, "beta": math.nan, "information_ratio": math.nan, "tracking_error_pct": math.nan}
    if r.size < 3:
        return nan
    out = dict(nan)
    var_b = float(np.var(b, ddof=1))
    if var_b > 1e-18:
        beta = float(np.cov(r, b, ddof=1)[0, 1] / var_b)
        out.update(beta=beta, alpha_pct=100.0 * (float(r.mean()) - beta * float(b.mean())) * periods_per_year)
    active = r - b
    te = float(np.std(active, ddof=1))
    if te > 1e-12:
        out.update(information_ratio=float(active.mean()) / te * math.sqrt(periods_per_year),
                   tracking_error_pct=100.0 * te * math.sqrt(periods_per_year))
    return out


def _pct_cell(value: float | None) -> str:
    """A table cell of a return in percent, tinted green (gain) or red (loss) by its size (the heatmap)."""
    if value is None or not math.isfinite(value):
        return "<td></td>"
    strength = min(abs(value) / 10.0, 1.0)  # full colour at 10% in a period
    rgb = (255, int(255 - 120 * strength), int(255 - 120 * strength)) if value < 0 else (
        int(255 - 120 * strength), 255, int(255 - 120 * strength))
    return f"<td style='background:rgb{rgb}'>{value:+.1f}</td>"


def monthly_heatmap_html(name: str, timestamps: Any, equity: Any) -> str:
    """Monthly returns (%) as a year x month table tinted like a heatmap, with each year's return at the end."""
    monthly = dict(calendar_returns(timestamps, equity, "M"))
    yearly = dict(calendar_returns(timestamps, equity, "Y"))
    if not monthly:
        return ""
    esc = html.escape
    rows = [f"<table class='heat'><caption>{esc(name)}: monthly returns, % (net of costs)</caption><tr><th>year</th>"
            + "".join(f"<th>{m}</th>" for m in MONTHS) + "<th>year</th></tr>"]
    for year in sorted(yearly):
        cells = "".join(_pct_cell(100.0 * monthly[f"{year}-{m:02d}"] if f"{year}-{m:02d}" in monthly else None)
                        for m in range(1, 13))
        rows.append(f"<tr><td>{year}</td>{cells}{_pct_cell(100.0 * yearly[year])}</tr>")
    rows.append("</table>")
    return "".join(rows)


def yearly_returns_html(series: Sequence[tuple[str, Any, Any]]) -> str:
    """Each series' compounded return (%) per calendar year, one row per (name, timestamps, equity) in the order
    given (the ranking), tinted like the monthly heatmap, with the whole period's return last. A year the series
    did not trade in (it started later or stopped early) is left blank."""
    table = {name: dict(calendar_returns(ts, eq, "Y")) for name, ts, eq in series}
    years = sorted({y for per_year in table.values() for y in per_year})
    if not years:
        return ""
    esc = html.escape
    rows = ["<table class='heat'><caption>yearly returns, % (net of costs; partial first and last years)</caption>"
            "<tr><th>model / baseline</th>"
            + "".join(f"<th>{y}</th>" for y in years) + "<th>whole period</th></tr>"]
    for name, _ts, eq in series:
        e = np.asarray(eq, dtype=np.float64)
        total = 100.0 * (e[-1] / e[0] - 1.0) if e.size >= 2 and e[0] != 0 else None
        rows.append(f"<tr><td>{esc(name)}</td>"
                    + "".join(_pct_cell(100.0 * table[name][y] if y in table[name] else None) for y in years)
                    + f"{_pct_cell(total)}</tr>")
    rows.append("</table>")
    return "".join(rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = 0.0 if abs(value) < 5e-4 else value  # a rounding residue prints as 0.000, not -0.000
        return "n/a" if not math.isfinite(value) else f"{value:,.3f}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def write_html_report(path: Path, title: str, header: Mapping[str, Any], table_columns: Sequence[str],
                      rows: Sequence[Mapping[str, Any]], recommendation: str, plots: Mapping[str, Path],
                      notes: Sequence[str] = (),
                      extra_tables: Sequence[tuple[str, Sequence[str], Sequence[Mapping[str, Any]]]] = (),
                      column_titles: Mapping[str, str] | None = None,
                      sections: Sequence[tuple[str, str]] = (), table_caption: str = "") -> Path:
    """Write one self-contained HTML page: header facts, the recommendation, the comparison table, notes and
    every plot embedded as a base64 PNG. It fits a 1400 px window: tables are at most as wide as the page.

    :param header: label -> value lines shown at the top (symbol, split dates, engine, ...).
    :param table_columns: keys of ``rows`` shown as columns, in order (the first is the row name).
    :param rows: one mapping per model or baseline.
    :param extra_tables: (heading, columns, rows) of further tables shown after the comparison.
    :param column_titles: key -> the header shown for it (default: the key itself).
    :param sections: (heading, HTML) blocks shown after the recommendation, before the comparison (the tear
        sheet: summary, calendar returns, drawdowns); the HTML is inserted as given (build it escaped).
    :param table_caption: the line above the comparison table (how its rows are ordered). Rows whose
        ``is_champion`` is true are shown bold.
    """
    esc = html.escape
    titles = dict(column_titles or {})
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1360px}table{border-collapse:collapse;"
        "font-size:0.8em;max-width:100%;margin-bottom:1em}th,td{border:1px solid #ccc;padding:2px 5px;"
        "text-align:right}th{background:#eee;font-weight:600}td:first-child,th:first-child{text-align:left}"
        "caption{text-align:left;font-weight:600;padding:4px 0}.rec{padding:0.8em;background:#f4f4f4;"
        "border-left:4px solid #555}img{max-width:100%;border:1px solid #ddd;margin-bottom:1.5em}"
        "tr.champion td{font-weight:700;background:#fff8e0}</style>",
        f"</head><body><h1>{esc(title)}</h1><ul>",
    ]
    parts += [f"<li><b>{esc(str(k))}</b>: {esc(_fmt(v))}</li>" for k, v in header.items()]
    parts.append("</ul><h2>Recommendation</h2>")
    parts.append(f"<p class='rec'>{esc(recommendation)}</p>")
    for heading, block in sections:
        parts.append(f"<h2>{esc(heading)}</h2>{block}")
    parts.append(f"<h2>Comparison</h2><table id='comparison'><caption>{esc(table_caption)}</caption><tr>")
    parts += [f"<th>{esc(titles.get(c, c))}</th>" for c in table_columns]
    parts.append("</tr>")
    for row in rows:
        css = " class='champion'" if row.get("is_champion") else ""
        parts.append(f"<tr{css}>" + "".join(f"<td>{esc(_fmt(row.get(c)))}</td>" for c in table_columns) + "</tr>")
    parts.append("</table>")
    for heading, columns, extra_rows in extra_tables:
        parts.append(f"<h2>{esc(heading)}</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns)
                     + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                  for r in extra_rows]
        parts.append("</table>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    for kind, png in plots.items():
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        parts.append(f"<h2>{esc(PLOT_TITLES.get(kind, kind))}</h2>"
                     f"<img alt='{esc(kind)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>\n")
    atomic_write_text(path, "\n".join(parts))
    return Path(path)


# --- walk-forward ------------------------------------------------------------------------------------------

WALKFORWARD_COLUMNS = ("name", "kind", "sharpe_ratio", "sharpe_ci_low", "sharpe_ci_high", "total_return_pct",
                       "max_drawdown_pct", "num_trades", "psr", "dsr")
FOLD_COLUMNS = ("fold", "model_type", "seed", "test", "val_sharpe", "promoted", "champion_fold",
                "retrained_test_sharpe", "frozen_test_sharpe", "newest_test_sharpe", "retrained_trades", "reason")


def write_walkforward_report(report: Mapping[str, Any], results_dir: Path, stamp: str) -> dict[str, Path]:
    """The stitched out-of-sample equity of every policy and baseline (PNG) and an HTML page with the stitched
    metrics, the per-fold table and the verdicts; returns ``{"equity": png, "html": page}``."""
    symbol = str(report["symbol"])
    fig = _figure(5.0)
    ax = fig.add_subplot()
    baselines = [name for name, s in report["stitched"].items() if s["kind"] == "baseline"]
    styles = _Styles(list(report["stitched"]), baselines, ())
    for name, s in report["stitched"].items():
        equity = np.asarray([np.nan if v is None else v for v in s["equity"]], dtype=float)
        ax.plot(np.arange(equity.size), equity, **styles.line(name))
    boundaries = np.cumsum([f["test_returns"] for f in report["folds"]])[:-1]
    for x in boundaries:  # fold boundaries (retrains) on the stitched axis
        ax.axvline(float(x), color="#bbb", linewidth=0.6)
    ax.set_title(f"Walk-forward {symbol}: stitched out-of-sample equity, net of costs (vertical lines: retrains)")
    ax.set_xlabel("test bar (stitched)")
    ax.set_ylabel("equity (start = 1)")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    png = _save(fig, results_dir / f"walkforward_{safe_name(symbol)}_{stamp}_equity.png")
    rows = [{"name": name, "kind": s["kind"], **s["metrics"]} for name, s in report["stitched"].items()]
    folds = {f["fold"]: f for f in report["folds"]}
    fold_rows = [{**row, "test": f"{folds[row['fold']]['test']['start'][:10]} .. "
                                 f"{folds[row['fold']]['test']['end'][:10]}"}
                 for loop in report["loops"] for row in loop["rows"]]
    layout = report["layout"]
    header = {"symbol": f"{symbol} {report['interval']} ({report['market']})",
              "folds": f"{layout['folds']} of {layout['folds_available']} available; {layout['train_bars']} train "
                       f"bars ({layout['val_bars']} validation, embargo {layout['embargo_bars']}), "
                       f"{layout['test_bars']} test bars each",
              "trials counted in the DSR": report["n_trials"],
              "PBO (CSCV over every policy and seed)": report["pbo"].get("pbo")}
    verdict = " ".join(v["text"] + "." for v in report["verdicts"])
    page = results_dir / f"walkforward_{safe_name(symbol)}_{stamp}.html"
    write_html_report(page, f"Walk-forward: {symbol} {report['interval']}", header, WALKFORWARD_COLUMNS, rows,
                      verdict, {"performance": png}, extra_tables=[("Folds", FOLD_COLUMNS, fold_rows)])
    return {"equity": png, "html": page}
