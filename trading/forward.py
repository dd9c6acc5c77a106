"""Forward monitoring: a paper account's results on bars its model never saw, against what its validation period
made plausible.

Forward bars are the account's bars after the model's training data ended (the end of its validation split, from
its metadata). On their returns (simple, per bar, net of costs, as :mod:`evaluation.metrics` defines them):

- ``sharpe``: the annualised Sharpe ratio; ``max_drawdown_pct``; ``total_return_pct``;
- ``rolling_psr``: the probabilistic Sharpe ratio (against 0) of the last ``monitoring.forward_psr_window``
  returns: the probability that the model's true Sharpe over that window is above zero;
- two plausibility tests, judged once ``monitoring.forward_min_bars`` returns exist:

  * **Sharpe**: ``p_above_validation_low = PSR(forward returns, SR* = validation sharpe_ci_low / sqrt(ppy))``, the
    probability that the forward Sharpe is at least the lower bound of the validation Sharpe's bootstrap
    confidence interval. Below ``1 - monitoring.psr_level`` (0.05 by default) the forward Sharpe is
    significantly below everything the validation period made plausible: ``sharpe_implausible``.
  * **Drawdown**: the forward max drawdown is deeper than ``monitoring.forward_drawdown_factor`` (1.5) times the
    validation max drawdown: ``drawdown_implausible``.

Forward promotion (:func:`judge_shadow`): a shadow challenger's forward returns against the champion's, on the
bars both accounts marked after both models' training data ended, through the one promotion rule
(:func:`evaluation.promotion.judge_forward`) with the best baseline backtested on the same bars.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation.metrics import max_drawdown, probabilistic_sharpe_ratio, sharpe_ratio
from evaluation.promotion import PromotionRule, best_baseline_sharpe, judge_forward
from rl_env.config import EnvConfig


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def forward_report(equity: Sequence[tuple[str, float]], data_end: str | None, ppy: float,
                   validation: dict[str, Any], monitoring: dict[str, Any]) -> dict[str, Any]:
    """The forward results of one account (see the module docstring).

    :param equity: ``(bar, equity)`` of the account, oldest first (the ledger's ``equity`` table).
    :param data_end: the last bar the model's training or selection saw (None: every bar is forward).
    :param ppy: bars per year (annualisation).
    :param validation: the model's ``metadata["validation"]`` (sharpe_ratio, sharpe_ci_low, max_drawdown_pct).
    :param monitoring: the ``monitoring`` section of the config.
    """
    values = np.array([v for bar, v in equity if data_end is None or bar > data_end], dtype=np.float64)
    returns = values[1:] / values[:-1] - 1.0 if values.size > 1 else np.empty(0)
    n = int(returns.size)
    window = int(monitoring["forward_psr_window"])
    report: dict[str, Any] = {
        "bars": int(values.size), "returns": n, "from": next((b for b, _ in equity if data_end is None or b > data_end),
                                                             None),
        "total_return_pct": _finite(100.0 * (values[-1] / values[0] - 1.0)) if values.size > 1 else None,
        "sharpe": _finite(sharpe_ratio(returns, ppy)),
        "max_drawdown_pct": _finite(100.0 * max_drawdown(values)) if values.size else None,
        "rolling_psr": _finite(probabilistic_sharpe_ratio(returns[-window:])),
        "rolling_psr_window": window,
        "validation_sharpe": _finite(validation.get("sharpe_ratio")),
        "validation_sharpe_ci_low": _finite(validation.get("sharpe_ci_low")),
        "validation_max_drawdown_pct": _finite(validation.get("max_drawdown_pct")),
        "p_above_validation_low": None, "sharpe_implausible": False, "drawdown_implausible": False,
        "drawdown_limit_pct": None, "judged": n >= int(monitoring["forward_min_bars"]),
    }
    if not report["judged"]:
        return report
    ci_low = report["validation_sharpe_ci_low"]
    if ci_low is not None:
        p = _finite(probabilistic_sharpe_ratio(returns, sr_benchmark=ci_low / math.sqrt(ppy)))
        report["p_above_validation_low"] = p
        report["sharpe_implausible"] = p is not None and p < 1.0 - float(monitoring["psr_level"])
    val_dd = report["validation_max_drawdown_pct"]
    if val_dd is not None and report["max_drawdown_pct"] is not None:
        limit = float(monitoring["forward_drawdown_factor"]) * min(val_dd, -1e-9)
        report["drawdown_limit_pct"] = limit
        report["drawdown_implausible"] = report["max_drawdown_pct"] < limit
    return report


def describe(report: dict[str, Any]) -> list[tuple[str, str]]:
    """``(alert kind, message)`` for each plausibility test the forward results fail, with the numbers."""
    out = []
    if report["sharpe_implausible"]:
        out.append(("forward_sharpe", f"forward Sharpe {report['sharpe']:.2f} over {report['returns']} bars since "
                    f"{report['from']} is significantly below the validation Sharpe's bootstrap CI lower bound "
                    f"{report['validation_sharpe_ci_low']:.2f} (validation Sharpe {report['validation_sharpe']:.2f}): "
                    f"P(forward Sharpe >= {report['validation_sharpe_ci_low']:.2f}) = "
                    f"{report['p_above_validation_low']:.3f}"))
    if report["drawdown_implausible"]:
        out.append(("forward_drawdown", f"forward max drawdown {report['max_drawdown_pct']:.2f}% over "
                    f"{report['returns']} bars since {report['from']} is deeper than "
                    f"{report['drawdown_limit_pct']:.2f}% "
                    f"(monitoring.forward_drawdown_factor x the validation max drawdown "
                    f"{report['validation_max_drawdown_pct']:.2f}%)"))
    return out


def account_status(ledger: Any, account: Any, validation: dict[str, Any], ppy: float,
                   monitoring: dict[str, Any]) -> dict[str, Any]:
    """One paper account as ``--status`` shows it: equity, return and Sharpe since its start, the open position,
    the last decision, the forward report and the parity state.

    :param ledger: the :class:`~trading.ledger.Ledger` holding it.
    :param account: the account's row.
    :param validation: its model's ``metadata["validation"]`` ({} when the run is gone).
    """
    from trading import ledger as db

    curve = ledger.series_of(account.id, db.equity, "equity")
    values = np.array([v for _, v in curve], dtype=np.float64)
    returns = values[1:] / values[:-1] - 1.0 if values.size > 1 else np.empty(0)
    state = ledger.state(account.id)
    last = ledger.last_decision(account.id)
    return {
        "account_id": account.id, "run_id": account.run_id, "model_type": account.model_type, "algo": account.algo,
        "role": account.role, "status": account.status, "start_bar": account.start_bar, "last_bar": state.last_bar,
        "bars": int(values.size), "initial_cash": account.initial_cash,
        "equity": float(values[-1]) if values.size else account.initial_cash,
        "return_pct": _finite(100.0 * (values[-1] / values[0] - 1.0)) if values.size > 1 else 0.0,
        "sharpe": _finite(sharpe_ratio(returns, ppy)),
        "position": {"units": state.units, "avg_price": state.avg_price},
        "pending_order": None if state.pending is None else {"units": state.pending["units"],
                                                             "limit_price": state.pending["limit_price"]},
        "last_decision": None if last is None else {"bar": last.bar, "time": last.decided, "units": last.units,
                                                    "limit_price": last.limit_price},
        "training_data_end": account.training_data_end, "parity_bar": account.parity_bar,
        "forward": forward_report(curve, account.training_data_end, ppy, validation, monitoring),
    }


# --- forward promotion ---------------------------------------------------------------------------------------

def paired_forward_equity(ledger: Any, challenger: Any, champion: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The two accounts' equity on their common bars after BOTH models' training data ended, oldest first:
    ``(bars, challenger equity, champion equity)``. Both accounts mark every stored bar from their start, so the
    common bars are consecutive; the first forward bar's equity is the base of the first return (as in
    :func:`forward_report`). Empty when a model's training data end is unknown (its forward bars are too)."""
    from trading import ledger as db

    ends = [challenger.training_data_end, champion.training_data_end]
    if None in ends:
        return [], np.empty(0), np.empty(0)
    data_end = max(ends)
    mine = dict(ledger.series_of(challenger.id, db.equity, "equity"))
    theirs = dict(ledger.series_of(champion.id, db.equity, "equity"))
    bars = sorted(b for b in mine.keys() & theirs.keys() if b > data_end)
    return (bars, np.array([mine[b] for b in bars], dtype=np.float64),
            np.array([theirs[b] for b in bars], dtype=np.float64))


def judge_shadow(ledger: Any, challenger: Any, champion: Any, cfg: dict[str, Any], ppy: float) -> dict[str, Any]:
    """The promotion rule (:func:`evaluation.promotion.judge_forward`) on a shadow challenger's forward returns
    against the champion's on the same bars, with the best baseline backtested on those bars (from the ledger's
    stored bars, the costs of the symbol's market). Returns the decision with the bars it was judged on."""
    from trading.paper import bars_data  # paper imports the broker and the models; forward stays light

    bars, mine, theirs = paired_forward_equity(ledger, challenger, champion)
    out: dict[str, Any] = {"run_id": challenger.run_id, "champion": champion.run_id, "bars": len(bars),
                           "from": bars[0] if bars else None, "to": bars[-1] if bars else None}
    rule = PromotionRule.from_config(cfg)
    if None in (challenger.training_data_end, champion.training_data_end):
        out["decision"] = {"promoted": False, "reason": "the training data end of a model is unknown, so its "
                                                        "forward bars are too"}
        return out
    returns = (mine[1:] / mine[:-1] - 1.0, theirs[1:] / theirs[:-1] - 1.0) if len(bars) > 1 else (
        np.empty(0), np.empty(0))
    baseline = None
    if len(bars) - 1 >= rule.forward_min_bars:
        window = EnvConfig.from_dict(json.loads(champion.env_config)).window
        rows = ledger.bars(champion.symbol, champion.interval)
        stamps = [r.ts for r in rows]
        first = stamps.index(bars[0]) - window + 1
        if first >= 0:  # the baselines decide from the first forward bar on: their returns are on the same bars
            names = ledger.feature_names(champion.symbol, champion.interval) or []
            data = bars_data(rows[first: stamps.index(bars[-1]) + 1], champion.symbol, champion.interval, names)
            baseline = best_baseline_sharpe(data, window, cfg, ppy)
    out["decision"] = judge_forward(returns[0], returns[1], baseline, ppy, rule).to_dict()
    return out
