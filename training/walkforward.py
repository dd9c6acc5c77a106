"""Walk-forward: replay the continuous-training loop over a symbol's history and measure whether retraining pays.

Folds are laid from the start of the history forward, as the daemon would have lived through it: fold 1 starts
as soon as ``train_bars`` bars of history exist, each later fold ``test_bars`` bars after the previous one, and
only folds whose test window is complete are kept, so new data adds folds and never moves old ones. Fold ``k``
with test window ``[s, s + test_bars)``:

- trains on ``[s - train_bars, s - embargo)``: a fitting part, then ``embargo`` bars left out, then a validation
  tail of ``val_bars``; the embargo covers the longest feature window and the reward's hindsight (and
  volatility-target) horizon, and ``embargo`` more bars are left out between the validation tail and the test
  window;
- fits its feature normalisation on its fitting part only; every model keeps the normalisation it was trained
  with, and a model trading a later window sees that window through its own normalisation;
- decides, with the one promotion rule (:func:`evaluation.promotion.decide_promotion`) on its validation tail,
  whether its new model replaces the loop's champion; promotion is replayed in time order after the folds have
  trained (in parallel: ``workers`` long-lived processes, or a Ray cluster, see :mod:`training.cluster`);
- trades its test window with the champion of that moment (the loop as the daemon runs it), with the first
  fold's model (FROZEN, never retrained) and with its own new model (always the newest, FreqAI's policy), each
  from a flat account, net of costs, beside the baselines.

The test windows are stitched into one out-of-sample record per policy. Significance counts every trial that
could have been picked: the DSR uses folds x seeds x iterations x model types; a bootstrap CI of each stitched
Sharpe; the PBO (CSCV) over all the policies and seeds that competed; and a paired bootstrap of the stitched
Sharpe difference, retrained loop minus frozen model, gives the verdict in words.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents import load_model
from botcore import paths
from botcore.atomic import atomic_write_json
from botcore.errors import UserError
from botcore.markets import bars_per_day, infer_market, periods_per_year
from botcore.signals import StopFlag
from botcore.symbols import safe_name
from datafeed.dataset import Dataset
from datafeed.history import History, apply_zscore, fit_zscore, load_history
from deepscalper.config import DeepScalperConfig, training_env_overrides
from evaluation.backtest import BacktestResult, evaluation_env_config, run_backtest
from evaluation.baselines import make_baselines
from evaluation.metrics import metrics_from_arrays, sharpe_ratio
from evaluation.promotion import PromotionRule, decide_promotion
from evaluation.significance import probability_of_backtest_overfitting, sharpe_difference_test
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from training.cluster import JobRunner, make_runner
from training.job import JobInputs, JobResult, JobSpec

logger = logging.getLogger(__name__)

POLICIES = ("retrained", "frozen", "newest")
POLICY_TEXT = {"retrained": "the retrain loop (champion of each moment)", "frozen": "the first fold's model",
               "newest": "always the newest model"}


@dataclass(frozen=True)
class Fold:
    """Bar positions (``[start, stop)``) of one fold in the joined history."""

    number: int
    fit: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]


def lay_folds(n_bars: int, train_bars: int, test_bars: int, val_bars: int, embargo: int) -> list[Fold]:
    """Every fold the history allows, from its start forward (see the module docstring); only complete test
    windows. UserError when the training window cannot hold a fitting part, two embargoes and a validation tail."""
    fit_bars = train_bars - val_bars - 2 * embargo
    if fit_bars < 2 * val_bars // 3 or fit_bars < 20:
        raise UserError(f"--train-bars {train_bars} leaves {fit_bars} bars to fit on after a validation tail of "
                        f"{val_bars} and two embargoes of {embargo}; use more train bars")
    folds = []
    start = train_bars
    while start + test_bars <= n_bars:
        w0 = start - train_bars
        val = (start - embargo - val_bars, start - embargo)
        folds.append(Fold(len(folds) + 1, (w0, val[0] - embargo), val, (start, start + test_bars)))
        start += test_bars
    return folds


@dataclass
class WalkForwardSettings:
    """What to replay (flags override training_config.json's ``walkforward`` section)."""

    model_types: list[str]
    train_bars: int | None = None
    test_bars: int | None = None
    folds: int = 10
    seeds: int = 1
    workers: int = 1
    steps: int | None = None
    engine: str = "fast"
    create_plots: bool = False
    quiet: bool = False


@dataclass
class _Model:
    """One trained fold model: where it is, how to read data for it, how it scored on validation."""

    fold: int
    model_type: str
    seed: int
    algo: str
    path: Path
    params: dict[str, Any]
    env_config: EnvConfig
    val_sharpe: float
    status: str
    policy: Any = None


@dataclass
class _Loop:
    """One replay of the retrain loop: a model type and a seed."""

    model_type: str
    seed: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    returns: dict[str, list[np.ndarray]] = field(default_factory=lambda: {p: [] for p in POLICIES})
    trades: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POLICIES, 0))
    champion: _Model | None = None


def default_test_bars(cfg: dict[str, Any], interval: str, market: str) -> int:
    """The retrain cadence of training_schedule in bars: a day of bars, or a week of them when training is weekly."""
    days = 5 if cfg["training_schedule"]["weekday"] else 1
    return max(1, int(round(days * bars_per_day(interval, market))))


def run_walkforward(symbol: str, cfg: dict[str, Any], settings: WalkForwardSettings, stop: StopFlag,
                    log_file: str | None = None) -> dict[str, Any]:
    """Replay the loop for ``symbol`` (see the module docstring); write and return the report."""
    started = time.monotonic()
    interval = cfg["data"]["interval"]
    dataset = Dataset.open(symbol, interval)
    history = load_history(dataset)
    ppy = periods_per_year(interval, dataset.market)
    frac = cfg["data"]["val_fraction"] / (cfg["data"]["train_fraction"] + cfg["data"]["val_fraction"])
    train_bars = settings.train_bars or sum(int(dataset.manifest["ranges"][s]["rows"]) for s in ("train", "val"))
    test_bars = settings.test_bars or default_test_bars(cfg, interval, dataset.market)
    window = int(cfg["env"]["window"])
    val_bars = max(window + 30, int(round(train_bars * frac)))
    embargo = _embargo(cfg, dataset)
    folds = lay_folds(len(history), train_bars, test_bars, val_bars, embargo)
    if not folds:
        raise UserError(f"{symbol} {interval}: {len(history)} bars of history hold no walk-forward fold of "
                        f"{train_bars} train bars and {test_bars} test bars; lower --train-bars or --test-bars, "
                        "or prepare a longer history")
    if settings.folds and len(folds) > settings.folds:
        folds = folds[-settings.folds:]
    logger.info("%s %s walk-forward: %d fold(s) of %d train (%d validation, embargo %d) and %d test bars; "
                "%d bars of history", symbol, interval, len(folds), train_bars, val_bars, embargo, test_bars,
                len(history))
    # the workers start now: their imports overlap the preparation of the folds' data (this process trains
    # folds too, beside workers - 1 worker processes)
    runner = make_runner(cfg, settings.workers, share_parent=True)
    work = Path(tempfile.mkdtemp(prefix="walkforward_", dir=_scratch_dir()))
    try:
        runner.start(len(folds) * len(settings.model_types) * settings.seeds, stop, log_file, settings.quiet)
        models = _train_folds(symbol, cfg, settings, dataset, history, folds, ppy, work, stop, log_file, runner)
        if stop.requested:
            raise KeyboardInterrupt
        report = _replay(symbol, cfg, settings, history, folds, models, ppy, window)
    finally:
        runner.close()
        shutil.rmtree(work, ignore_errors=True)
    report.update(symbol=symbol, interval=interval, market=dataset.market, periods_per_year=ppy,
                  manifest_hash=dataset.hash, created=datetime.now(UTC).isoformat(timespec="seconds"),
                  seconds=round(time.monotonic() - started, 3),
                  layout={"train_bars": train_bars, "val_bars": val_bars, "embargo_bars": embargo,
                          "test_bars": test_bars, "history_bars": len(history), "folds_available":
                          len(lay_folds(len(history), train_bars, test_bars, val_bars, embargo)),
                          "folds": len(folds), "history_gaps": history.gaps},
                  settings=asdict(settings), config=cfg)
    return report


def _embargo(cfg: dict[str, Any], dataset: Dataset) -> int:
    """Bars left out before a validation tail and before a test window: the longest feature window and the
    reward's horizons (hindsight bonus, volatility target), whichever is longest."""
    ds = cfg["deepscalper"]
    horizons = [int(dataset.manifest.get("feature_window") or 0), int(dataset.manifest.get("embargo_bars") or 0),
                int(ds["hindsight_horizon"]), int(ds["vol_horizon"])]
    return max(horizons)


def _scratch_dir() -> Path:
    folder = paths.results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _slice(history: History, start: int, stop: int, lead: int, params: dict[str, Any], symbol: str,
           interval: str) -> MarketData:
    """Bars ``[start - lead, stop)`` with features normalised by ``params`` (``lead`` bars of observation window
    before ``start``, so that the first decision is taken on bar ``start``'s close)."""
    a = max(0, start - lead)
    bars = history.bars.iloc[a:stop]
    feats = apply_zscore(history.features.iloc[a:stop], params)
    return MarketData.from_frame(pd.concat([bars, feats], axis=1), symbol, interval)


def _train_folds(symbol: str, cfg: dict[str, Any], settings: WalkForwardSettings, dataset: Dataset,
                 history: History, folds: Sequence[Fold], ppy: float, work: Path, stop: StopFlag,
                 log_file: str | None, runner: JobRunner) -> dict[tuple[int, str, int], _Model]:
    """Train every (fold, model type, seed) job with ``runner`` (``settings.workers`` processes, this one
    included, or a Ray cluster); the data of a fold is prepared once and shared by its jobs."""
    tp = cfg["training_params"]
    steps = int(settings.steps or tp["steps"])
    specs: list[JobSpec] = []
    meta: list[tuple[int, str, int, dict[str, Any], EnvConfig]] = []
    lead = int(cfg["env"]["window"]) - 1
    for fold in folds:
        params = fit_zscore(history.features.iloc[fold.fit[0]:fold.fit[1]])
        train_data = _slice(history, fold.fit[0], fold.fit[1], 0, params, symbol, dataset.interval)
        val_data = _slice(history, fold.val[0], fold.val[1], lead, params, symbol, dataset.interval)
        for model_type in settings.model_types:
            algo = "deepscalper" if model_type == "deepscalper" else tp["algo"]
            action_mode = "multidiscrete" if algo == "deepscalper" else "discrete"
            shaping: dict[str, Any] = {}
            if algo == "deepscalper":
                shaping = training_env_overrides(DeepScalperConfig.from_dict(dict(cfg["deepscalper"])))
            train_config = EnvConfig.from_config(cfg, action_mode, training=True, market=dataset.market, **shaping)
            eval_config = evaluation_env_config(cfg, action_mode, market=dataset.market)
            inputs = JobInputs(dataset, train_data, val_data, train_config, eval_config, ppy)
            for s in range(settings.seeds):
                path = work / f"fold{fold.number}_{model_type}_seed{s}.zip"
                specs.append(JobSpec(symbol=symbol, interval=dataset.interval, model_type=model_type, algo=algo,
                                     engine=settings.engine if model_type == "backtrader" else "fast", cfg=cfg,
                                     steps=steps, iterations=int(tp["iterations"]), episodes=int(tp["episodes"]),
                                     seed=int(tp["seed"]) + s, eval_every=int(tp["eval_every"]), register=False,
                                     checkpoints=False, quiet=settings.quiet, inputs=inputs,
                                     save_model_to=str(path)))
                meta.append((fold.number, model_type, s, params, eval_config))
    logger.info("training %d fold model(s) of %d steps %s", len(specs), steps,
                "on the Ray cluster" if runner.remote else f"in {settings.workers} worker(s)")
    results: list[JobResult] = runner.run_jobs(specs, stop, log_file, settings.quiet)
    models = {}
    for spec, result, (number, model_type, s, params, eval_config) in zip(specs, results, meta):
        if result.status != "finished":
            raise UserError(f"walk-forward fold {number} ({model_type}, seed {s}) did not train: "
                            f"{result.status} {result.error}".strip())
        models[(number, model_type, s)] = _Model(number, model_type, s, spec.algo, Path(spec.save_model_to or ""),
                                                 params, eval_config, result.val_sharpe, result.status)
    return models


def _replay(symbol: str, cfg: dict[str, Any], settings: WalkForwardSettings, history: History,
            folds: Sequence[Fold], models: dict[tuple[int, str, int], _Model], ppy: float,
            window: int) -> dict[str, Any]:
    """Promotion in time order, the test windows traded by each policy, stitched, with significance."""
    rule = PromotionRule.from_config(cfg)
    ev = cfg["evaluation"]
    interval = cfg["data"]["interval"]
    lead = window - 1
    cache: dict[tuple[int, str, int, str, int], BacktestResult] = {}

    def backtest(model: _Model, span: tuple[int, int], kind: str, fold_number: int) -> BacktestResult:
        key = (model.fold, model.model_type, model.seed, kind, fold_number)
        if key not in cache:
            if model.policy is None:
                model.policy = load_model(model.algo, model.path)
            data = _slice(history, span[0], span[1], lead, model.params, symbol, interval)
            cache[key] = run_backtest(model.policy, data, model.env_config, engine="fast", deterministic=True)
        return cache[key]

    base_config = evaluation_env_config(cfg, "box", market=infer_market(symbol), window=window)
    raw_params = {"method": "zscore", "clip": 10.0, "decimals": 6,
                  "mean": dict.fromkeys(history.features.columns, 0.0),
                  "std": dict.fromkeys(history.features.columns, 1.0)}

    def baselines(span: tuple[int, int]) -> dict[str, BacktestResult]:
        data = _slice(history, span[0], span[1], lead, raw_params, symbol, interval)
        return {name: run_backtest(policy, data, base_config, engine="fast", deterministic=True)
                for name, policy in make_baselines(ev["ma_fast"], ev["ma_slow"], ev["random_seed"]).items()}

    loops = [_Loop(m, s) for m in settings.model_types for s in range(settings.seeds)]
    base_returns: dict[str, list[np.ndarray]] = {}
    base_trades: dict[str, int] = {}
    fold_rows: list[dict[str, Any]] = []
    for fold in folds:
        val_base = baselines(fold.val)
        best_base = max((sharpe_ratio(r.returns, ppy) for r in val_base.values()), key=_floor)
        test_base = baselines(fold.test)
        for name, result in test_base.items():
            base_returns.setdefault(name, []).append(result.returns)
            base_trades[name] = base_trades.get(name, 0) + len(result.trades)
        fold_rows.append({"fold": fold.number, "fit": _range(history, fold.fit), "val": _range(history, fold.val),
                          "test": _range(history, fold.test), "test_returns": int(test_base["flat"].returns.size),
                          "best_baseline_val_sharpe": _json_float(best_base),
                          "baseline_test_sharpe": {k: _json_float(sharpe_ratio(v.returns, ppy))
                                                   for k, v in test_base.items()}})
        for loop in loops:
            new = models[(fold.number, loop.model_type, loop.seed)]
            champion = loop.champion
            challenger_val = backtest(new, fold.val, "val", fold.number)
            champion_val = backtest(champion, fold.val, "val", fold.number) if champion else None
            decision = decide_promotion(challenger_val.returns,
                                        champion_val.returns if champion_val is not None else None,
                                        best_base, ppy, rule)
            if decision.promoted:
                loop.champion = champion = new
            frozen = models[(folds[0].number, loop.model_type, loop.seed)]
            traded = {"retrained": champion, "frozen": frozen, "newest": new}
            row = {"fold": fold.number, "model_type": loop.model_type, "seed": loop.seed,
                   "val_sharpe": _json_float(new.val_sharpe), "promoted": decision.promoted,
                   "reason": decision.reason, "champion_fold": champion.fold if champion else None}
            for policy, model in traded.items():
                if model is None:  # no champion yet: the loop stays flat (in cash) on this window
                    loop.returns[policy].append(np.zeros_like(test_base["flat"].returns))
                    row[f"{policy}_test_sharpe"] = None
                    row[f"{policy}_trades"] = 0
                    continue
                result = backtest(model, fold.test, "test", fold.number)
                loop.returns[policy].append(result.returns)
                loop.trades[policy] += len(result.trades)
                row[f"{policy}_test_sharpe"] = _json_float(sharpe_ratio(result.returns, ppy))
                row[f"{policy}_trades"] = len(result.trades)
            loop.rows.append(row)
    return _summarise(loops, base_returns, base_trades, fold_rows, models, folds, settings, cfg, ppy)


def _summarise(loops: list[_Loop], base_returns: dict[str, list[np.ndarray]], base_trades: dict[str, int],
               fold_rows: list[dict[str, Any]],
               models: dict[tuple[int, str, int], _Model], folds: Sequence[Fold], settings: WalkForwardSettings,
               cfg: dict[str, Any], ppy: float) -> dict[str, Any]:
    ev = cfg["evaluation"]
    iterations = int(cfg["training_params"]["iterations"])
    n_trials = len(folds) * settings.seeds * iterations * len(settings.model_types)
    trial_sharpes = [m.val_sharpe for m in models.values() if math.isfinite(m.val_sharpe)]
    stitched: dict[str, dict[str, Any]] = {}
    matrix, names = [], []
    for loop in loops:
        for policy in POLICIES:
            r = np.concatenate(loop.returns[policy])
            name = f"{loop.model_type}/seed{loop.seed}/{policy}"
            metrics = metrics_from_arrays(r, ppy, n_trials=n_trials, trial_sharpes=trial_sharpes,
                                          bootstrap_samples=int(ev["bootstrap_samples"]), seed=int(ev["random_seed"]))
            metrics["num_trades"] = loop.trades[policy]
            stitched[name] = {"kind": "policy", "model_type": loop.model_type, "seed": loop.seed, "policy": policy,
                              "metrics": _jsonable(metrics), "equity": _jsonable(np.cumprod(np.r_[1.0, 1.0 + r]))}
            matrix.append(r)
            names.append(name)
    for name, parts in base_returns.items():
        r = np.concatenate(parts)
        metrics = metrics_from_arrays(r, ppy, bootstrap_samples=int(ev["bootstrap_samples"]),
                                      seed=int(ev["random_seed"]))
        metrics["num_trades"] = base_trades[name]
        stitched[name] = {"kind": "baseline", "policy": name, "metrics": _jsonable(metrics),
                          "equity": _jsonable(np.cumprod(np.r_[1.0, 1.0 + r]))}
    m = np.column_stack(matrix)
    blocks = _pbo_blocks(m.shape[0])
    pbo = probability_of_backtest_overfitting(m, n_blocks=blocks) if blocks else {"pbo": None, "n_splits": 0}
    verdicts = []
    for loop in loops:
        retrained = np.concatenate(loop.returns["retrained"])
        frozen = np.concatenate(loop.returns["frozen"])
        test = sharpe_difference_test(retrained, frozen, ppy, n_samples=int(ev["bootstrap_samples"]),
                                      seed=int(ev["random_seed"]))
        verdicts.append({"model_type": loop.model_type, "seed": loop.seed, "test": _jsonable(test),
                         "text": _verdict(loop, test)})
    return {"folds": fold_rows, "loops": [{"model_type": lp.model_type, "seed": lp.seed, "rows": lp.rows}
                                          for lp in loops],
            "stitched": stitched, "n_trials": n_trials, "pbo": _jsonable({**pbo, "configurations": names}),
            "verdicts": verdicts}


def _verdict(loop: _Loop, test: dict[str, Any]) -> str:
    who = f"{loop.model_type} (seed {loop.seed})"
    diff, low, high, p = test["difference"], test["ci_low"], test["ci_high"], test["p_value"]
    if not math.isfinite(diff):
        return f"{who}: too few test bars to compare retraining with the frozen model"
    ci = f"95% CI {low:+.2f} to {high:+.2f}, p = {p:.3f}"
    if p < 0.05 and low > 0:
        return f"{who}: retraining adds {diff:+.2f} Sharpe over the frozen model ({ci})"
    if p > 0.95 and high < 0:
        return f"{who}: retraining costs {-diff:.2f} Sharpe against the frozen model ({ci})"
    return f"{who}: no significant difference between retraining and the frozen model ({diff:+.2f} Sharpe, {ci})"


def _pbo_blocks(n: int) -> int:
    """Blocks for CSCV: 16, or fewer (even) so that each holds at least 4 bars; 0 when too short."""
    blocks = min(16, (n // 4) // 2 * 2)
    return blocks if blocks >= 4 else 0


def _range(history: History, span: tuple[int, int]) -> dict[str, Any]:
    index = history.bars.index
    return {"start": str(index[span[0]]), "end": str(index[span[1] - 1]), "bars": int(span[1] - span[0])}


def _floor(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def _json_float(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_float(float(v)) for v in value]
    if isinstance(value, (float, np.floating)):
        return _json_float(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_report(report: dict[str, Any], stamp: str) -> Path:
    """``results/walkforward_{SYM}_{stamp}.json`` (atomic); returns its path."""
    path = paths.results_dir() / f"walkforward_{safe_name(report['symbol'])}_{stamp}.json"
    atomic_write_json(path, report)
    return path


def format_walkforward(report: dict[str, Any]) -> str:
    """The per-fold table and the stitched results, for the terminal."""
    lay = report["layout"]
    lines = [f"\n{report['symbol']} {report['interval']} walk-forward: {lay['folds']} fold(s) of {lay['train_bars']} "
             f"train bars ({lay['val_bars']} validation, embargo {lay['embargo_bars']}) and {lay['test_bars']} test "
             "bars, net of costs"]
    lines.append(f"{'fold':>4} {'model':<12} {'seed':>4} {'test':<23} {'val SR':>7} {'promoted':<8} "
                 f"{'retrained':>9} {'frozen':>7} {'newest':>7}")
    folds = {f["fold"]: f for f in report["folds"]}
    for loop in report["loops"]:
        for r in loop["rows"]:
            test = folds[r["fold"]]["test"]
            lines.append(f"{r['fold']:>4} {r['model_type']:<12} {r['seed']:>4} "
                         f"{test['start'][:10] + ' .. ' + test['end'][:10]:<23} {_cell(r['val_sharpe']):>7} "
                         f"{'yes' if r['promoted'] else 'no':<8} {_cell(r['retrained_test_sharpe']):>9} "
                         f"{_cell(r['frozen_test_sharpe']):>7} {_cell(r['newest_test_sharpe']):>7}")
    lines.append(f"\n{'stitched out-of-sample':<32} {'Sharpe':>7} {'95% CI':>17} {'return %':>9} {'max DD %':>9} "
                 f"{'trades':>6} {'PSR':>5} {'DSR':>5}")
    for name, s in report["stitched"].items():
        m = s["metrics"]
        ci = f"{_cell(m['sharpe_ci_low'])} .. {_cell(m['sharpe_ci_high'])}"
        lines.append(f"{name:<32} {_cell(m['sharpe_ratio']):>7} {ci:>17} {_cell(m['total_return_pct']):>9} "
                     f"{_cell(m['max_drawdown_pct']):>9} {m.get('num_trades') or 0:>6} {_cell(m['psr']):>5} "
                     f"{_cell(m['dsr']):>5}")
    pbo = report["pbo"].get("pbo")
    lines.append(f"DSR counts {report['n_trials']} trial(s); PBO over {len(report['pbo'].get('configurations', []))} "
                 f"competing policies: {_cell(pbo)}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.2f}"
