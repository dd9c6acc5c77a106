"""Comparing models with baselines on one split: backtests, metrics, ranking, the recommendation, the report.

The champions of the symbol and interval (one per model type; every run with ``all_runs``, plus any named) and four
baselines (buy and hold, flat, moving-average crossover, seeded random) are backtested on the same split with
the same costs. A model is recommended only when it beats the best baseline's Sharpe ratio AND its
probabilistic Sharpe ratio exceeds the configured level; otherwise the recommendation says that no model shows
a significant edge. ``evaluate_bot.py`` is the command line over :func:`evaluate_symbol`.
"""
from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agents import Registry, load_registered
from agents.config import resolve_device
from botcore import paths
from botcore.atomic import atomic_write_json
from botcore.errors import ModelFileError, UserError
from botcore.markets import infer_market, periods_per_year, resolve_costs
from botcore.symbols import safe_name
from datafeed.dataset import Dataset
from datafeed.sources import generate_synthetic
from datafeed.splits import prepare_splits
from evaluation.backtest import evaluation_env_config, run_backtest
from evaluation.baselines import make_baselines
from evaluation.export import export_results
from evaluation.metrics import METRIC_KEYS, compute_metrics
from evaluation.report import (
    benchmark_relative,
    drawdown_periods,
    monthly_heatmap_html,
    write_html_report,
    yearly_returns_html,
)
from evaluation.report import create_plots as draw
from rl_env.data import MarketData

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ("name", "kind", "status", "sharpe_ratio", "total_return_pct", "max_drawdown_pct", "num_trades",
                 "win_rate_pct", "psr", "dsr")
REPORT_COLUMNS = ("label", "kind", "status", "sharpe_ratio", "validation_sharpe", "sharpe_ci_low", "sharpe_ci_high",
                  "psr", "dsr", "total_return_pct", "cagr_pct", "volatility_pct", "max_drawdown_pct", "sortino_ratio",
                  "calmar_ratio", "alpha_pct", "beta", "information_ratio", "num_trades", "win_rate_pct",
                  "profit_factor", "exposure_pct", "costs_paid")
COLUMN_TITLES = {
    "label": "model / baseline", "kind": "kind", "status": "status", "sharpe_ratio": "Sharpe (test)",
    "validation_sharpe": "Sharpe (val)", "sharpe_ci_low": "Sharpe 95% CI low", "sharpe_ci_high": "CI high",
    "psr": "PSR", "dsr": "DSR", "total_return_pct": "return %", "cagr_pct": "CAGR %", "volatility_pct": "vol %",
    "max_drawdown_pct": "max DD %", "sortino_ratio": "Sortino", "calmar_ratio": "Calmar",
    "alpha_pct": "alpha % (vs B&H)", "beta": "beta", "information_ratio": "info ratio", "num_trades": "trades",
    "win_rate_pct": "win %", "profit_factor": "profit factor", "exposure_pct": "time in market %",
    "costs_paid": "costs paid",
}
"""The report's human headers (the JSON keeps the keys)."""
BENCHMARK = "buy_and_hold"
"""The baseline that alpha, beta and the information ratio are measured against."""


# --- data -------------------------------------------------------------------------------------------------

def load_market_data(symbol: str, cfg: dict[str, Any], synthetic: bool, seed: int, bars: int,
                     kind: str) -> tuple[Any, dict[str, Any]]:
    """The split to evaluate on as MarketData, plus facts about it (market, range, source)."""
    interval, split = cfg["data"]["interval"], cfg["evaluation"]["split"]
    if synthetic:
        raw = generate_synthetic(bars, seed, kind=kind, interval=interval)
        frame = prepare_splits(raw, cfg, symbol, interval)[split]
        market = infer_market(symbol)
        source: dict[str, Any] = {"source": "synthetic", "seed": seed, "kind": kind, "bars": bars}
    else:
        dataset = Dataset.open(symbol, interval)
        frame = dataset.split(split)
        market = dataset.market
        source = {"source": dataset.manifest.get("source"), "manifest_hash": dataset.hash,
                  "data_file": str(dataset.split_file(split))}
    data = MarketData.from_frame(frame, symbol=symbol, interval=interval)
    stamp_format = "%Y-%m-%d" if interval == "1d" else "%Y-%m-%d %H:%M:%S"
    info = {"market": market, "periods_per_year": periods_per_year(interval, market),
            "split_range": {"start": frame.index[0].strftime(stamp_format),
                            "end": frame.index[-1].strftime(stamp_format), "rows": int(len(frame))},
            **source}
    return data, info


# --- models ---------------------------------------------------------------------------------------------

def select_models(registry: Any, symbol: str, interval: str, wanted: Sequence[str] | None,
                  all_runs: bool = False) -> list[Any]:
    """The run records to evaluate: the champions of the symbol and interval (one per model type), or with
    ``all_runs`` every run of the symbol and interval; then the run ids named in ``wanted`` not already chosen.

    Champions by default keep the plots readable once the registry holds dozens of challengers; ``--all`` asks
    for every run. Only runs inside the registry: a path is refused (a model from elsewhere is imported first with
    ``train_bot.py --import-model``, which checks it; it is never loaded where it lies).
    """
    runs = registry.runs(symbol=symbol, interval=interval)
    chosen = list(runs) if all_runs else [r for r in runs if r.is_champion]
    seen = {r.run_id for r in chosen}
    records = []
    if wanted:
        for w in wanted:
            if "/" in w or "\\" in w or Path(w).exists():
                raise UserError(f"--models takes run ids, not paths ({w!r}); bring a model from outside the "
                                f"registry in with: python train_bot.py --import-model {w}, then evaluate it by the "
                                "run id that prints")
            rec = registry.get(w)
            if rec.path.resolve().parent != registry.root.resolve():
                raise UserError(f"--models {w!r} names {rec.path}, which is not a run of the registry under "
                                f"{registry.root}")
            if rec.run_id not in seen:
                seen.add(rec.run_id)
                records.append(rec)
        for rec in records:
            if rec.symbol != symbol or rec.interval != interval:
                logger.warning("model %s was trained on %s %s, evaluated here on %s %s", rec.run_id, rec.symbol,
                               rec.interval, symbol, interval)
    return chosen + records


def _model_env_config(record: Any, cfg: dict[str, Any], market: str = "equity") -> Any:
    meta = record.metadata
    stored = meta.get("env_config")
    if not isinstance(stored, dict):
        raise ModelFileError(f"{record.path}/metadata.json holds no env_config; cannot rebuild the model's env")
    return evaluation_env_config(cfg, meta.get("action_mode") or "discrete", trained=stored, market=market)


def _feature_problem(record: Any, data: Any, env_config: Any, policy: Any) -> str | None:
    """Why the model cannot read this data (feature set or observation size differ), or None."""
    meta = record.metadata
    trained = meta.get("feature_columns") or (meta.get("dataset") or {}).get("feature_columns")
    if trained and list(trained) != list(data.feature_names):
        missing = sorted(set(trained) - set(data.feature_names))
        extra = sorted(set(data.feature_names) - set(trained))
        return (f"feature set differs from the model's ({len(trained)} trained vs {len(data.feature_names)} here; "
                f"missing {missing[:5]}, extra {extra[:5]})")
    expected = env_config.window * data.n_features + 4
    space = getattr(policy, "observation_space", None)
    shape = getattr(space, "shape", None)
    if shape and int(math.prod(shape)) != expected:
        return f"observation size {tuple(shape)} of the model does not match {expected} here (feature set differs)"
    return None


def _empty_metrics() -> dict[str, Any]:
    return {k: None for k in METRIC_KEYS}


def _model_entry(record: Any) -> dict[str, Any]:
    meta = record.metadata
    trials = meta.get("hpo_trials")
    label = f"{record.algo}{'*' if record.is_champion else ''} {record.run_id}"
    return {"name": record.run_id, "label": label, "kind": "model", "run_id": record.run_id,
            "model_type": record.model_type,
            "algo": record.algo, "is_champion": bool(record.is_champion), "status": "pending",
            "error": None, "hpo_trials": int(trials) if isinstance(trials, int) and trials >= 1 else 1,
            "path": str(record.path), "validation_sharpe": record.score}


def _engines(engine: str) -> list[str]:
    return ["backtrader", "fast"] if engine == "both" else [engine]


def _run_engines(policy: Any, data: Any, env_config: Any, engine: str) -> tuple[Any, dict[str, Any] | None]:
    """Backtest on the chosen engine(s); with 'both' the backtrader result is reported and the gap measured."""
    results = {name: run_backtest(policy, data, env_config, engine=name, deterministic=True)
               for name in _engines(engine)}
    primary = results["backtrader"] if "backtrader" in results else results[engine]
    if len(results) == 1:
        return primary, None
    return primary, engine_gap(results["backtrader"], results["fast"])


def engine_gap(reference: Any, other: Any) -> dict[str, Any]:
    """How far two backtests of the same policy differ: final equity, worst bar, trade count."""
    a, b = np.asarray(reference.equity, dtype=float), np.asarray(other.equity, dtype=float)
    n = min(a.size, b.size)
    rel = np.abs(a[:n] - b[:n]) / np.maximum(np.abs(a[:n]), 1e-12) if n else np.empty(0)
    return {
        "final_equity_backtrader": float(a[-1]) if a.size else math.nan,
        "final_equity_fast": float(b[-1]) if b.size else math.nan,
        "final_equity_diff_pct": 100.0 * (b[-1] / a[-1] - 1.0) if n and a[-1] != 0 else math.nan,
        "max_equity_diff_pct": 100.0 * float(rel.max()) if rel.size else math.nan,
        "num_trades_backtrader": len(reference.trades), "num_trades_fast": len(other.trades),
        "n_bars_backtrader": int(a.size), "n_bars_fast": int(b.size),
    }


def _period(result: Any, interval: str) -> dict[str, Any]:
    """First and last bar backtested (as in the split files: a date for daily bars) and their number."""
    ts = result.timestamps
    if not len(ts):
        return {}
    unit = "D" if interval == "1d" else "s"
    start, end = (str(x).replace("T", " ") for x in np.datetime_as_string(ts[[0, -1]], unit=unit))
    return {"start": start, "end": end, "n_bars": int(len(ts))}


def evaluate_models(records: Sequence[Any], registry: Any, data: Any, cfg: dict[str, Any], ppy: float,
                    engine: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Backtest every model; a model that fails its checksum, does not load, cannot read the data or fails
    in the backtest is reported with its status and skipped. Returns (entries, results of those that ran)."""
    ev = cfg["evaluation"]
    entries: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    for record in records:
        entry = _model_entry(record)
        entries[record.run_id] = entry
        entry.update(_empty_metrics())
        try:
            registry.verify(record)
        except ModelFileError as exc:
            entry.update(status="checksum_failed", error=str(exc))
            logger.error("model %s skipped: %s", record.run_id, exc)
            continue
        try:
            env_config = _model_env_config(record, cfg, infer_market(data.symbol))  # the evaluated bars' costs
            policy = load_registered(registry, record, device=resolve_device(cfg["evaluation"]["device"]))
        except (ModelFileError, UserError) as exc:
            entry.update(status="load_failed", error=str(exc))
            logger.error("model %s skipped: %s", record.run_id, exc)
            continue
        problem = _feature_problem(record, data, env_config, policy)
        if problem:
            entry.update(status="feature_mismatch", error=problem)
            logger.warning("model %s skipped: %s", record.run_id, problem)
            continue
        started = time.perf_counter()
        try:
            result, gap = _run_engines(policy, data, env_config, engine)
        except Exception as exc:  # one broken model must not end the evaluation of the others
            logger.exception("backtest of model %s failed", record.run_id)
            entry.update(status="backtest_failed", error=f"{type(exc).__name__}: {exc}")
            continue
        trial_sharpes = record.metadata.get("trial_sharpes") or []
        entry.update(compute_metrics(result, ppy, n_trials=entry["hpo_trials"], trial_sharpes=trial_sharpes,
                                     bootstrap_samples=ev["bootstrap_samples"], seed=ev["random_seed"]))
        entry.update(status="ok", engine=result.engine, period=_period(result, data.interval),
                     env_config=env_config.to_dict(), seconds=round(time.perf_counter() - started, 3))
        if gap is not None:
            entry["engine_gap"] = gap
        if engine == "fast" and record.is_champion and ev["parity_bars"] > 0:
            entry["parity_check"] = parity_check(policy, data, env_config, ev["parity_bars"])
        results[record.run_id] = result
        logger.info("model %s: Sharpe %.3f, total return %.2f%%", record.run_id, entry["sharpe_ratio"],
                    entry["total_return_pct"])
    return entries, results


def parity_check(policy: Any, data: Any, env_config: Any, bars: int) -> dict[str, Any]:
    """Replay a champion's backtest over the first ``bars`` decision bars of the split on both engines
    (backtrader's broker and the fast engine) and measure the gap (:func:`engine_gap`): a spot-check, each
    evaluation, that the fast engine the figures come from still fills like backtrader. Both runs see the same
    shortened split (the observation's time-left cell depends on the split's length). ``--engine both``
    compares the whole split; ``evaluation.parity_bars = 0`` turns the spot-check off."""
    started = time.perf_counter()
    part = data.slice(0, min(data.n_bars, env_config.window + bars))
    try:
        reference = run_backtest(policy, part, env_config, engine="backtrader", deterministic=True)
        fast = run_backtest(policy, part, env_config, engine="fast", deterministic=True)
    except Exception as exc:  # the spot-check must not cost the evaluation; its failure is reported
        logger.exception("parity spot-check on backtrader failed")
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    gap = engine_gap(reference, fast)
    out = {"status": "ok", "bars": int(part.n_bars), **gap, "seconds": round(time.perf_counter() - started, 3)}
    logger.info("parity spot-check over %d bars: final equity gap %.2e%%, worst bar %.2e%%", part.n_bars,
                gap["final_equity_diff_pct"], gap["max_equity_diff_pct"])
    return out


def evaluate_baselines(data: Any, cfg: dict[str, Any], ppy: float, engine: str,
                       window: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Backtest the four baselines (box action mode: the target position directly) with the config's costs."""
    ev = cfg["evaluation"]
    env_config = evaluation_env_config(cfg, "box", market=infer_market(data.symbol), window=window)
    entries: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    for name, policy in make_baselines(ev["ma_fast"], ev["ma_slow"], ev["random_seed"]).items():
        started = time.perf_counter()
        result, gap = _run_engines(policy, data, env_config, engine)
        entry: dict[str, Any] = {"name": name, "label": name, "kind": "baseline", "run_id": None,
                                 "model_type": "baseline", "algo": name, "is_champion": False, "status": "ok",
                                 "error": None, "hpo_trials": 1}
        entry.update(compute_metrics(result, ppy, n_trials=1, bootstrap_samples=ev["bootstrap_samples"],
                                     seed=ev["random_seed"]))
        entry.update(engine=result.engine, period=_period(result, data.interval),
                     seconds=round(time.perf_counter() - started, 3))
        if gap is not None:
            entry["engine_gap"] = gap
        entries[name], results[name] = entry, result
    return entries, results


# --- ranking and verdict --------------------------------------------------------------------------------

def _finite_or_floor(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def _sharpe_key(entry: dict[str, Any]) -> float:
    return _finite_or_floor(entry.get("sharpe_ratio"))


def rank(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries that ran, by annualised Sharpe ratio (undefined Sharpe last), then total return."""
    ran = [e for e in entries if e["status"] == "ok"]
    ran.sort(key=lambda e: (_sharpe_key(e), _finite_or_floor(e.get("total_return_pct"))), reverse=True)
    return [{"rank": i + 1, "name": e["name"], "kind": e["kind"], "sharpe_ratio": e["sharpe_ratio"],
             "total_return_pct": e["total_return_pct"], "psr": e["psr"], "dsr": e["dsr"]}
            for i, e in enumerate(ran)]


def recommend(models: dict[str, dict[str, Any]], baselines: dict[str, dict[str, Any]],
              psr_level: float) -> dict[str, Any]:
    """Name the best model (highest Sharpe) only if its Sharpe beats the best baseline's AND its PSR exceeds
    ``psr_level``; otherwise say that no model shows a significant edge over the baselines."""
    ran = [m for m in models.values() if m["status"] == "ok"]
    best_base = max(baselines.values(), key=_sharpe_key)
    base_sharpe = _sharpe_key(best_base)
    out: dict[str, Any] = {"recommended": None, "best_model": None, "best_baseline": best_base["name"],
                           "best_baseline_sharpe": best_base["sharpe_ratio"], "psr_level": psr_level,
                           "sharpe_margin": None, "psr": None, "dsr": None}
    if not ran:
        why = "no model could be evaluated" if models else "no model is registered for this symbol and interval"
        out["text"] = (f"no model shows a significant edge over the baselines: {why} "
                       f"(best baseline: {best_base['name']}, Sharpe {_num(best_base['sharpe_ratio'])})")
        return out
    best = max(ran, key=_sharpe_key)
    sharpe, psr = _sharpe_key(best), best["psr"]
    margin = sharpe - base_sharpe if math.isfinite(sharpe) and math.isfinite(base_sharpe) else (
        math.inf if math.isfinite(sharpe) else math.nan)
    out.update(best_model=best["name"], sharpe_margin=margin, psr=psr, dsr=best["dsr"])
    beats = math.isfinite(sharpe) and sharpe > base_sharpe
    significant = psr is not None and math.isfinite(psr) and psr > psr_level
    facts = (f"{best['name']} ({best['algo']}) Sharpe {_num(best['sharpe_ratio'])} vs best baseline "
             f"{best_base['name']} Sharpe {_num(best_base['sharpe_ratio'])} (margin {_num(margin)}), "
             f"PSR {_num(psr)} (level {psr_level:g}), DSR {_num(best['dsr'])} after {best['hpo_trials']} trial(s)")
    if beats and significant:
        out["recommended"] = best["name"]
        out["text"] = (f"recommend {facts}: it beats the best baseline's Sharpe by {_num(margin)} and its PSR "
                       f"exceeds {psr_level:g} by {psr - psr_level:.3f}")
    else:
        why = []
        if not beats:
            why.append("it does not beat the best baseline's Sharpe")
        if not significant:
            why.append(f"its PSR is not above {psr_level:g}")
        out["text"] = f"no model shows a significant edge over the baselines: best model {facts}; {' and '.join(why)}"
    return out


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None or math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.3f}"


# --- one symbol -----------------------------------------------------------------------------------------

def evaluate_symbol(symbol: str, cfg: dict[str, Any], models: Sequence[str] | None = None, synthetic: bool = False,
                    seed: int = 0, bars: int = 2500, kind: str = "gbm",
                    create_plots: bool = False, all_runs: bool = False) -> dict[str, Any]:
    """Evaluate the champions (every run with ``all_runs``), the runs named in ``models`` and the baselines on
    one symbol; write the JSON, the CSV export (evaluation.export) and with ``create_plots`` the plots and the
    report; return the JSON content with ``json_path`` added."""
    interval, split, engine = cfg["data"]["interval"], cfg["evaluation"]["split"], cfg["evaluation"]["engine"]
    psr_level = cfg["monitoring"]["psr_level"]
    data, info = load_market_data(symbol, cfg, synthetic, seed, bars, kind)
    ppy = info["periods_per_year"]
    registry = Registry.from_config(cfg)
    records = select_models(registry, symbol, interval, models, all_runs=all_runs)
    if not records:
        logger.warning("no registered model for %s %s under %s; evaluating the baselines only "
                       "(train one with train_bot.py)", symbol, interval, registry.root)
    logger.info("evaluating %d model(s) and 4 baselines on %s %s %s split (%d bars, engine %s)", len(records),
                symbol, interval, split, data.n_bars, engine)
    model_entries, model_results = evaluate_models(records, registry, data, cfg, ppy, engine)
    windows = [e["env_config"]["window"] for e in model_entries.values() if e["status"] == "ok"]
    base_window = max(windows, default=int(cfg["env"]["window"]))
    base_entries, base_results = evaluate_baselines(data, cfg, ppy, engine, base_window)
    if BENCHMARK in base_results:
        bench = base_results[BENCHMARK]
        for name, res in {**model_results, **base_results}.items():
            stats = benchmark_relative(res.returns, bench.returns, ppy, timestamps=res.timestamps[1:],
                                       benchmark_timestamps=bench.timestamps[1:])
            ({**model_entries, **base_entries})[name].update(
                {k: (v if math.isfinite(v) else None) for k, v in stats.items()})
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%d_%H%M%S")
    out: dict[str, Any] = {
        "symbol": symbol, "interval": interval, "split": split, "engine": engine,
        "created": now.isoformat(timespec="seconds"),
        **info, "psr_level": psr_level,
        "model_selection": {"all_runs": all_runs, "named": list(models or [])},
        "models": model_entries, "baselines": base_entries,
        "ranking": rank([*model_entries.values(), *base_entries.values()]),
        "recommendation": recommend(model_entries, base_entries, psr_level),
        "costs": resolve_costs(cfg["data"]["costs"], info["market"]).to_dict(),
        # engine fast: each champion's first parity_bars bars replayed on backtrader's broker, and the gap
        "parity_check": {name: e["parity_check"] for name, e in model_entries.items() if "parity_check" in e},
        "config": cfg,
    }
    results_dir = paths.results_dir()
    if create_plots:
        # Plots name models by algorithm and run id (a '*' marks a champion), baselines by name.
        label = {k: model_entries[k]["label"] for k in model_results} | {k: k for k in base_results}
        all_results = {label[k]: v for k, v in {**model_results, **base_results}.items()}
        metrics = {label[k]: model_entries[k] for k in model_results} | {k: base_entries[k] for k in base_results}
        best_model = out["recommendation"]["best_model"]
        plots = draw(all_results, metrics, symbol, stamp, results_dir, ppy, baselines=list(base_results),
                     trades_of=label[best_model] if best_model else "ma_crossover", split_label=split,
                     champions=[label[k] for k in model_results if model_entries[k]["is_champion"]])
        report = results_dir / f"report_{safe_name(symbol)}_{stamp}.html"
        header = {"symbol": symbol, "interval": interval, "market": info["market"],
                  "split": f"{split}: {info['split_range']['start']} to {info['split_range']['end']} "
                           f"({info['split_range']['rows']} bars)",
                  "period judged": judged_period(out),
                  "models": "every run (--all)" if all_runs else "champions" + (" and the runs named" if models
                                                                                 else "") + " (--all: every run)",
                  "engine": engine, "data source": info["source"], "bars per year": ppy,
                  "costs": out["costs"]["statement"]}
        notes = [f"{e['name']}: {e['status']}: {e['error']}" for e in model_entries.values() if e["status"] != "ok"]
        entries = {**model_entries, **base_entries}
        ranked = [r["name"] for r in out["ranking"]]
        rows = [entries[n] for n in ranked] + [e for n, e in entries.items() if n not in ranked]
        write_html_report(report, f"Model comparison: {symbol} {interval}", header, REPORT_COLUMNS, rows,
                          out["recommendation"]["text"], plots, notes, column_titles=COLUMN_TITLES,
                          sections=tear_sheet(out, {**model_results, **base_results}),
                          table_caption=f"rows in ranking order (test Sharpe on the {split} split, then return); "
                                        "bold: champions; * after the algorithm marks a champion")
        out["plots"] = {k: str(v) for k, v in plots.items()}
        out["report_html"] = str(report)
    files = export_results({**model_results, **base_results}, results_dir / f"export_{safe_name(symbol)}_{stamp}")
    out["export"] = {"folder": str(results_dir / f"export_{safe_name(symbol)}_{stamp}"), "files": files}
    json_path = results_dir / f"model_comparison_{safe_name(symbol)}_{stamp}.json"
    atomic_write_json(json_path, out)
    out["json_path"] = str(json_path)
    logger.info("wrote %s", json_path)
    return out


SUMMARY_COLUMNS = ("label", "judged", "total_return_pct", "cagr_pct", "sharpe_ratio", "validation_sharpe",
                   "max_drawdown_pct", "alpha_pct", "beta", "information_ratio", "exposure_pct", "num_trades",
                   "costs_paid")
DRAWDOWN_COLUMNS = ("peak", "trough", "recovery", "depth_pct", "bars")


def judged_period(outcome: dict[str, Any]) -> str:
    """The bars the figures are judged on: from the first decision bar (``window - 1`` bars into the split, where
    the first order can be placed), not the split's first row. Buy and hold's period is the baselines'; a model
    whose window (or an early ruin) gives it other bars is listed with its own."""
    entries = {**outcome["models"], **outcome["baselines"]}
    periods = {n: e["period"] for n, e in entries.items() if e.get("period")}
    ref = periods.get(BENCHMARK) or next(iter(periods.values()), None)
    if not ref:
        return "n/a"
    text = (f"{ref['start']} to {ref['end']} ({ref['n_bars']} bars from the first decision bar; the split's "
            f"first row is {outcome['split_range']['start']})")
    other = [f"{entries[n].get('label', n)}: {p['start']} to {p['end']} ({p['n_bars']} bars)"
             for n, p in periods.items() if (p["start"], p["end"]) != (ref["start"], ref["end"])]
    return text + ("; other periods: " + "; ".join(other) if other else "")


def tear_sheet(outcome: dict[str, Any], results: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's top sections, for the model the verdict is about (the recommended one, else the best ranked
    model, else buy and hold) beside buy and hold: a summary (the period actually judged: from the first
    decision bar), monthly and yearly returns, and the worst drawdowns."""
    entries = {**outcome["models"], **outcome["baselines"]}
    models = [r["name"] for r in outcome["ranking"] if r["kind"] == "model"]
    subject = outcome["recommendation"].get("best_model") or (models[0] if models else BENCHMARK)
    if subject not in results:
        return []
    shown = [subject] + ([BENCHMARK] if subject != BENCHMARK and BENCHMARK in results else [])
    esc = html.escape

    def table(columns: Sequence[str], rows: Sequence[dict[str, Any]], titles: dict[str, str]) -> str:
        head = "".join(f"<th>{esc(titles.get(c, c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(_html_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
                       for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    summary_rows = []
    for name in shown:
        e, p = entries[name], entries[name].get("period") or {}
        summary_rows.append({**e, "label": e.get("label", name),
                             "judged": f"{p.get('start')} .. {p.get('end')} ({p.get('n_bars')} bars)" if p else ""})
    titles = {**COLUMN_TITLES, "judged": "period judged (first decision bar ..)"}
    sections = [("Summary", table(SUMMARY_COLUMNS, summary_rows, titles))]
    heat = "".join(monthly_heatmap_html(entries[n].get("label", n), results[n].timestamps, results[n].equity)
                   for n in shown)
    if heat:
        sections.append(("Monthly and yearly returns", heat))
    ranked = [r["name"] for r in outcome["ranking"] if r["name"] in results]
    yearly = yearly_returns_html([(entries[n].get("label", n), results[n].timestamps, results[n].equity)
                                  for n in ranked])
    if yearly:
        sections.append(("Yearly returns of every model and baseline", yearly))
    dd = drawdown_periods(results[subject].timestamps, results[subject].equity)
    if dd:
        dd_titles = {"peak": "peak", "trough": "trough", "recovery": "recovered", "depth_pct": "depth %",
                     "bars": "bars (peak to recovery)"}
        sections.append((f"Worst drawdowns of {entries[subject].get('label', subject)}",
                         table(DRAWDOWN_COLUMNS, [{**d, "recovery": d["recovery"] or "not yet"} for d in dd],
                               dd_titles)))
    return sections


def _html_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{0.0 if abs(value) < 5e-3 else value:,.2f}"  # a rounding residue prints as 0.00, not -0.00
    return str(value)


def format_table(outcome: dict[str, Any]) -> str:
    """A short fixed-width table of models and baselines (ranked order first, then those that did not run)."""
    entries = {**outcome["models"], **outcome["baselines"]}
    order = [r["name"] for r in outcome["ranking"]] + [n for n, e in entries.items() if e["status"] != "ok"]
    both = outcome.get("engine") == "both"
    heads = ("name", "kind", "status", "Sharpe", "return %", "max DD %", "trades", "win %", "PSR", "DSR",
             *(("gap %",) if both else ()))
    rows = []
    for name in order:
        e = entries[name]
        gap = [_cell((e.get("engine_gap") or {}).get("final_equity_diff_pct"))] if both else []
        rows.append([e.get("label", name)[:40], e["kind"], e["status"], *(_cell(e.get(c)) for c in TABLE_COLUMNS[3:]),
                     *gap])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if any(e["kind"] == "model" for e in entries.values()):
        lines.append("models are named by algorithm and run id; * marks the current champion")
    if both:
        lines.append(engine_gap_summary(entries))
    return "\n".join(lines)


def engine_gap_summary(entries: dict[str, dict[str, Any]]) -> str:
    """One line on how far the two engines differ (``--engine both``): the figures above are backtrader's, and
    ``gap %`` is the fast engine's final equity against backtrader's."""
    gaps = {e.get("label", name): e["engine_gap"] for name, e in entries.items()
            if e.get("engine_gap") and math.isfinite(e["engine_gap"].get("final_equity_diff_pct", math.nan))}
    if not gaps:
        return "engine gap: not measured (no backtest ran on both engines)"
    worst = max(gaps, key=lambda k: abs(gaps[k]["final_equity_diff_pct"]))
    g = gaps[worst]
    return (f"engine gap: figures are backtrader's; gap % = the fast engine's final equity against backtrader's; "
            f"largest {g['final_equity_diff_pct']:+.3f}% ({worst}; worst bar {g['max_equity_diff_pct']:.3f}%, "
            f"trades {g['num_trades_backtrader']} / {g['num_trades_fast']})")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.2f}"
