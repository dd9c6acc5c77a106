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
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from botcore.atomic import atomic_path, atomic_write_text
from botcore.symbols import safe_name

logger = logging.getLogger(__name__)

PLOT_KINDS = ("performance", "drawdown", "returns_distribution", "risk_return", "trades", "rolling_sharpe")
PLOT_TITLES = {
    "performance": "Equity curves",
    "drawdown": "Drawdown (underwater)",
    "returns_distribution": "Distribution of per-bar returns",
    "risk_return": "Risk and return",
    "trades": "Price and trades",
    "rolling_sharpe": "Rolling Sharpe ratio",
}
BASELINE_STYLE = {"linestyle": "--", "linewidth": 1.0, "alpha": 0.8}
MODEL_STYLE = {"linestyle": "-", "linewidth": 1.4}


def _figure(height: float = 4.5) -> Figure:
    fig = Figure(figsize=(11, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _date_axis(ax: Any) -> None:
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("date (UTC)")
    ax.grid(True, alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    logger.debug("wrote %s", path)
    return path


def _style(name: str, baselines: set[str]) -> dict[str, Any]:
    return BASELINE_STYLE if name in baselines else MODEL_STYLE


def _label(name: str, baselines: set[str]) -> str:
    return f"{name} (baseline)" if name in baselines else name


def rolling_sharpe(returns: np.ndarray, window: int, periods_per_year: float) -> np.ndarray:
    """Annualised Sharpe over the trailing ``window`` returns (ddof=1); nan for the first ``window - 1`` bars and
    where the window has no spread."""
    r = np.asarray(returns, dtype=np.float64)
    out = np.full(r.size, np.nan)
    if window < 2 or r.size < window:
        return out
    c1 = np.concatenate(([0.0], np.cumsum(r)))
    c2 = np.concatenate(([0.0], np.cumsum(r * r)))
    s1 = c1[window:] - c1[:-window]
    s2 = c2[window:] - c2[:-window]
    var = np.maximum((s2 - s1 * s1 / window) / (window - 1), 0.0)
    std = np.sqrt(var)
    ok = std > 1e-12
    vals = np.full(s1.size, np.nan)
    vals[ok] = s1[ok] / window / std[ok] * math.sqrt(periods_per_year)
    out[window - 1:] = vals
    return out


def create_plots(results: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]], symbol: str, stamp: str,
                 out_dir: Path, periods_per_year: float, baselines: Sequence[str] = (),
                 trades_of: str | None = None, split_label: str = "test") -> dict[str, Path]:
    """Draw every plot of ``PLOT_KINDS`` into ``out_dir``; returns kind -> path.

    :param results: name -> backtest result (models and baselines, all on the same bars).
    :param metrics: name -> metrics dict (for the risk-return scatter).
    :param baselines: names in ``results`` that are baselines (dashed lines).
    :param trades_of: the model whose trades are marked on the price chart (default: the first model).
    """
    out_dir = Path(out_dir)
    base = set(baselines)
    sym = safe_name(symbol)
    where = f"{symbol}, {split_label} split"
    paths: dict[str, Path] = {}

    def target(kind: str) -> Path:
        return out_dir / f"{kind}_{sym}_{stamp}.png"

    # equity curves
    fig = _figure()
    ax = fig.add_subplot()
    for name, res in results.items():
        ax.plot(res.timestamps, res.equity, label=_label(name, base), **_style(name, base))
    ax.set_title(f"{PLOT_TITLES['performance']}, net of costs ({where})")
    ax.set_ylabel("equity (currency)")
    _date_axis(ax)
    ax.legend(loc="best", fontsize="small")
    paths["performance"] = _save(fig, target("performance"))

    # drawdown
    fig = _figure()
    ax = fig.add_subplot()
    for name, res in results.items():
        eq = np.asarray(res.equity, dtype=np.float64)
        dd = 100.0 * (eq / np.maximum.accumulate(eq) - 1.0) if eq.size else eq
        ax.plot(res.timestamps, dd, label=_label(name, base), **_style(name, base))
    ax.set_title(f"{PLOT_TITLES['drawdown']}: percent below the running peak ({where})")
    ax.set_ylabel("drawdown (%)")
    _date_axis(ax)
    ax.legend(loc="lower left", fontsize="small")
    paths["drawdown"] = _save(fig, target("drawdown"))

    # return distributions
    fig = _figure()
    ax = fig.add_subplot()
    all_r = [100.0 * np.asarray(res.returns, dtype=np.float64) for res in results.values()]
    finite = np.concatenate([r[np.isfinite(r)] for r in all_r]) if all_r else np.empty(0)
    lo, hi = (np.quantile(finite, [0.005, 0.995]) if finite.size else (-1.0, 1.0))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 60)
    for name, r in zip(results, all_r):
        r = r[np.isfinite(r) & (r != 0.0)]  # bars out of the market (return exactly 0) would swamp the rest
        if r.size:
            ax.hist(np.clip(r, lo, hi), bins=bins, histtype="step", linewidth=1.2, label=_label(name, base),
                    linestyle="--" if name in base else "-")
    ax.set_title(f"{PLOT_TITLES['returns_distribution']} (bars with a non-zero return; {where})")
    ax.set_xlabel("return per bar (%), clipped to the 0.5-99.5% range")
    ax.set_ylabel("number of bars")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    paths["returns_distribution"] = _save(fig, target("returns_distribution"))

    # risk-return scatter
    fig = _figure(5.0)
    ax = fig.add_subplot()
    for name, m in metrics.items():
        x, y = m.get("volatility_pct"), m.get("annualized_return_pct")
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        ax.scatter([x], [y], marker="s" if name in base else "o", s=50)
        sharpe = m.get("sharpe_ratio")
        tag = f"{name}\nSharpe {sharpe:.2f}" if sharpe is not None and math.isfinite(sharpe) else name
        ax.annotate(tag, (x, y), textcoords="offset points", xytext=(6, 4), fontsize="small")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.margins(0.15)
    ax.set_title(f"{PLOT_TITLES['risk_return']}: annualised return vs volatility (squares: baselines; {where})")
    ax.set_xlabel("annualised volatility (%)")
    ax.set_ylabel("annualised mean return (%)")
    ax.grid(True, alpha=0.3)
    paths["risk_return"] = _save(fig, target("risk_return"))

    # price with trades
    models = [n for n in results if n not in base]
    chosen = trades_of if trades_of in results else (models[0] if models else next(iter(results), None))
    fig = _figure()
    ax = fig.add_subplot()
    if chosen is not None:
        res = results[chosen]
        ax.plot(res.timestamps, res.prices, color="black", linewidth=0.9, label="close")
        marks = {("long", "entry"): ("^", "tab:green", "long entry"),
                 ("short", "entry"): ("v", "tab:red", "short entry"),
                 ("long", "exit"): ("x", "tab:green", "long exit"),
                 ("short", "exit"): ("x", "tab:red", "short exit")}
        for (side, end), (marker, color, label) in marks.items():
            pts = [(np.datetime64(t[f"{end}_time"]), t[f"{end}_price"]) for t in res.trades
                   if t.get("side") == side and t.get(f"{end}_time") is not None]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, s=36, label=label,
                           zorder=3)
        ax.set_title(f"{PLOT_TITLES['trades']} of {chosen} ({len(res.trades)} trades; {where})")
        ax.legend(loc="best", fontsize="small")
    ax.set_ylabel("price")
    _date_axis(ax)
    paths["trades"] = _save(fig, target("trades"))

    # rolling Sharpe
    fig = _figure()
    ax = fig.add_subplot()
    n = min((len(res.returns) for res in results.values()), default=0)
    window = int(max(2, min(round(periods_per_year / 4), n // 4)))  # about a quarter, at least 4 windows
    for name, res in results.items():
        rs = rolling_sharpe(np.asarray(res.returns), window, periods_per_year)
        ax.plot(res.timestamps[1:], rs, label=_label(name, base), **_style(name, base))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_title(f"{PLOT_TITLES['rolling_sharpe']} over the last {window} bars, annualised ({where})")
    ax.set_ylabel("Sharpe ratio")
    _date_axis(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    paths["rolling_sharpe"] = _save(fig, target("rolling_sharpe"))
    return paths


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:,.3f}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def write_html_report(path: Path, title: str, header: Mapping[str, Any], table_columns: Sequence[str],
                      rows: Sequence[Mapping[str, Any]], recommendation: str, plots: Mapping[str, Path],
                      notes: Sequence[str] = (),
                      extra_tables: Sequence[tuple[str, Sequence[str], Sequence[Mapping[str, Any]]]] = ()) -> Path:
    """Write one self-contained HTML page: header facts, the comparison table, the recommendation, notes and
    every plot embedded as a base64 PNG.

    :param header: label -> value lines shown at the top (symbol, split dates, engine, ...).
    :param table_columns: keys of ``rows`` shown as columns, in order (the first is the row name).
    :param rows: one mapping per model or baseline.
    :param extra_tables: (heading, columns, rows) of further tables shown after the comparison.
    """
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}"
        "td:first-child,th:first-child{text-align:left}.rec{padding:0.8em;background:#f4f4f4;"
        "border-left:4px solid #555}img{max-width:100%;border:1px solid #ddd;margin-bottom:1.5em}</style>",
        f"</head><body><h1>{esc(title)}</h1><ul>",
    ]
    parts += [f"<li><b>{esc(str(k))}</b>: {esc(_fmt(v))}</li>" for k, v in header.items()]
    parts.append("</ul><h2>Recommendation</h2>")
    parts.append(f"<p class='rec'>{esc(recommendation)}</p><h2>Comparison</h2><table><tr>")
    parts += [f"<th>{esc(c)}</th>" for c in table_columns]
    parts.append("</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{esc(_fmt(row.get(c)))}</td>" for c in table_columns) + "</tr>")
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
    baselines = {name for name, s in report["stitched"].items() if s["kind"] == "baseline"}
    for name, s in report["stitched"].items():
        equity = np.asarray([np.nan if v is None else v for v in s["equity"]], dtype=float)
        ax.plot(np.arange(equity.size), equity, label=_label(name, baselines), **_style(name, baselines))
    boundaries = np.cumsum([f["test_returns"] for f in report["folds"]])[:-1]
    for x in boundaries:  # fold boundaries (retrains) on the stitched axis
        ax.axvline(float(x), color="#bbb", linewidth=0.6)
    ax.set_title(f"Walk-forward {symbol}: stitched out-of-sample equity, net of costs (vertical lines: retrains)")
    ax.set_xlabel("test bar (stitched)")
    ax.set_ylabel("equity (start = 1)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
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
