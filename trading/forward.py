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
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation.metrics import max_drawdown, probabilistic_sharpe_ratio, sharpe_ratio


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
