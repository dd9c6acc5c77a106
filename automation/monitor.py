"""Monitoring: the alert log, and the checks run after each evaluation and data update.

The champions in the comparison file an evaluation just wrote are checked against ``monitoring``:
``min_sharpe_ratio``, ``max_drawdown_threshold`` and ``degradation_drop`` (the test Sharpe ratio against the
mean of its previous ``degradation_window`` evaluations). The prepared data must end within
``max_data_age_days``; that alert is not repeated within STALE_ALERT_REPEAT_HOURS. After each trade unit
(:meth:`Monitor.check_paper`): data revisions of traded bars, parity of the paper ledger with its backtest replay,
and the champions' forward (paper) results against their validation period.
"""
from __future__ import annotations

import json
import logging
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

from automation.alerts import Alert, Notifier
from automation.schedule import Clock, iso, parse_time
from automation.state import StateStore
from botcore import paths
from botcore.symbols import safe_name

logger = logging.getLogger(__name__)

STALE_ALERT_REPEAT_HOURS = 12.0  # the same stale-data alert is not repeated within this time
FORWARD_ALERT_REPEAT_HOURS = 24.0 * 7  # a champion's implausible forward results are reported once a week


class AlertLog:
    """Deliver alerts and keep them, redacted and with their delivery result, in the state's recent alerts.

    :param notifier: the delivery channels.
    :param store: the state the alerts are kept in (the caller saves it).
    :param clock: the time stamped on each alert.
    """

    def __init__(self, notifier: Notifier, store: StateStore, clock: Clock) -> None:
        self.notifier = notifier
        self.store = store
        self.clock = clock

    def alert(self, kind: str, subject: str, message: str, severity: str = "warning",
              details: dict[str, Any] | None = None) -> None:
        """Log and deliver an alert and keep it (with its delivery result) in the state's recent alerts."""
        item = Alert(kind=kind, subject=subject, message=message, severity=severity, time=iso(self.clock.now()),
                     details=details or {})
        delivered = self.notifier.send(item)
        record = json.loads(self.notifier.redact(json.dumps(item.to_dict(), default=str)))
        record["delivered"] = delivered
        self.store.add_alert(record)

    def recent(self, kind: str, subject: str, hours: float) -> bool:
        """Whether an alert of ``kind`` about ``subject`` was raised within the last ``hours``."""
        cutoff = self.clock.now() - timedelta(hours=hours)
        return any(a.get("kind") == kind and a.get("subject") == subject
                   and (parse_time(a.get("time")) or cutoff) > cutoff for a in self.store.data["alerts"])


class Monitor:
    """The health checks of the champions and of the prepared data.

    :param monitoring_cfg: the ``monitoring`` section of the config.
    :param interval: the bar interval of the data (``data.interval``).
    :param alerts: where problems are reported.
    :param store: the state holding each champion's metrics history (the caller saves it).
    :param clock: the time of each recorded evaluation and of the data-age check.
    """

    def __init__(self, monitoring_cfg: dict[str, Any], interval: str, alerts: AlertLog, store: StateStore,
                 clock: Clock) -> None:
        self.cfg = monitoring_cfg
        self.interval = interval
        self.alerts = alerts
        self.store = store
        self.clock = clock

    def comparison_files(self, symbol: str) -> dict[Path, float]:
        """The evaluation reports of ``symbol`` and their modification times."""
        folder = paths.results_dir()
        return {p: p.stat().st_mtime for p in folder.glob(f"model_comparison_{safe_name(symbol)}_*.json")}

    def check_evaluation(self, symbol: str, before: dict[Path, float]) -> str:
        """Check the champions in the comparison file the evaluation just wrote; alert on what is wrong.

        :param before: :meth:`comparison_files` taken before the evaluation ran.
        :return: the champions' test results in one line (for ``--status``), or "" when none could be read.
        """
        fresh = [p for p, m in self.comparison_files(symbol).items() if before.get(p) != m]
        if not fresh:
            self.alerts.alert("evaluation_output", f"evaluation/{symbol}",
                              f"evaluate_bot.py succeeded but wrote no results/model_comparison_"
                              f"{safe_name(symbol)}_*.json; nothing could be monitored")
            return ""
        path = max(fresh, key=lambda p: (p.stat().st_mtime, p.name))
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.alerts.alert("evaluation_output", f"evaluation/{symbol}", f"{path} is unreadable: {exc}")
            return ""
        interval = report.get("interval") or self.interval
        champions = [e for e in _model_entries(report) if e.get("is_champion")]
        if not champions:
            logger.warning("%s holds no champion of %s: nothing to monitor", path.name, symbol)
            return "no champion to evaluate"
        parts = []
        for entry in champions:
            self._check_champion(f"{symbol}/{interval}/{entry.get('model_type')}", entry, path.name)
            sharpe = _metric(entry, "sharpe_ratio")
            shown = "n/a" if sharpe is None else f"{sharpe:.2f}"
            parts.append(f"{entry.get('model_type')} champion {entry.get('run_id')} test Sharpe {shown}")
        return "; ".join(parts)

    def _check_champion(self, key: str, entry: dict[str, Any], file_name: str) -> None:
        """Record one champion's test metrics and alert on an unusable model, a low Sharpe ratio, a deep
        drawdown or a drop against its own recent evaluations."""
        mon = self.cfg
        run_id = entry.get("run_id")
        status = entry.get("status", "ok")
        if status not in ("ok", None):
            self.alerts.alert("champion_unusable", key, f"champion {run_id} could not be evaluated ({status}: "
                              f"{entry.get('error', 'no detail')}) in {file_name}", severity="critical")
            return
        sharpe = _metric(entry, "sharpe_ratio")
        drawdown = _metric(entry, "max_drawdown_pct")
        earlier = [h["sharpe_ratio"] for h in self.store.metrics_history(key)
                   if h.get("run_id") == run_id and h.get("sharpe_ratio") is not None]
        window = int(mon["degradation_window"])
        self.store.add_metrics(key, {"time": iso(self.clock.now()), "run_id": run_id, "sharpe_ratio": sharpe,
                                     "max_drawdown_pct": drawdown,
                                     "total_return_pct": _metric(entry, "total_return_pct"), "file": file_name})
        numbers = {"run_id": run_id, "sharpe_ratio": sharpe, "max_drawdown_pct": drawdown, "file": file_name}
        if sharpe is None or sharpe < mon["min_sharpe_ratio"]:
            shown = "undefined (no return variance, e.g. no trades)" if sharpe is None else f"{sharpe:.3f}"
            self.alerts.alert("low_sharpe", key, f"champion {run_id}: test Sharpe ratio {shown} is below "
                              f"monitoring.min_sharpe_ratio {mon['min_sharpe_ratio']:g}", details=numbers)
        if drawdown is not None and drawdown < mon["max_drawdown_threshold"]:
            self.alerts.alert("drawdown", key, f"champion {run_id}: max drawdown {drawdown:.2f}% is worse than "
                              f"monitoring.max_drawdown_threshold {mon['max_drawdown_threshold']:g}%",
                              severity="critical", details=numbers)
        if sharpe is not None and len(earlier) >= window:
            baseline = sum(earlier[-window:]) / window
            if baseline - sharpe > mon["degradation_drop"]:
                self.alerts.alert("degradation", key, f"champion {run_id}: test Sharpe ratio {sharpe:.3f} is "
                                  f"{baseline - sharpe:.3f} below the mean {baseline:.3f} of its previous {window} "
                                  f"evaluations (monitoring.degradation_drop {mon['degradation_drop']:g})",
                                  details={**numbers, "baseline": baseline})

    def check_data_age(self, symbol: str) -> None:
        """Alert when the prepared data of ``symbol`` ends more than ``max_data_age_days`` ago (or is missing)."""
        manifest = paths.manifest_path(symbol, self.interval)
        subject = f"data/{symbol}/{self.interval}"
        limit = float(self.cfg["max_data_age_days"])
        try:
            ranges = json.loads(manifest.read_text(encoding="utf-8")).get("ranges", {})
            ends = [parse_time(r.get("end", "").replace(" ", "T")) for r in ranges.values()]
            last = max(e for e in ends if e is not None)
        except FileNotFoundError:
            message = f"{manifest} does not exist: no prepared data for {symbol} {self.interval}"
            last = None
        except (OSError, ValueError, AttributeError) as exc:
            message = f"{manifest} is unreadable or holds no date ranges: {exc}"
            last = None
        else:
            age_days = (self.clock.now() - last).total_seconds() / 86400.0
            if age_days <= limit:
                return
            message = (f"the newest bar of {symbol} {self.interval} is from {last.date()} ({age_days:.1f} days old), "
                       f"older than monitoring.max_data_age_days {limit:g}")
        if not self.alerts.recent("stale_data", subject, STALE_ALERT_REPEAT_HOURS):
            self.alerts.alert("stale_data", subject, message, details={"last_bar": iso(last) if last else None})

    def check_paper(self, summary: dict[str, Any], ledger: Any, registry: Any) -> None:
        """Alert on what a trade unit found (:func:`trading.paper.trade_symbol`'s summary): data revisions of bars
        already traded, missing bars, a ledger that diverges from its backtest replay (naming the first bar),
        and champions whose forward results fall outside what their validation made plausible
        (:mod:`trading.forward`); with ``monitoring.auto_rollback``, such a champion is demoted to the previous
        champion its ledger records.

        :param ledger: the :class:`~trading.ledger.Ledger` the unit wrote.
        :param registry: the model registry (for the validation metrics and a rollback).
        """
        symbol, interval = summary["symbol"], summary["interval"]
        series = f"{symbol}/{interval}"
        for revision in summary["revisions"]:
            changes = ", ".join(f"{k} {old:.6g} -> {new:.6g}" for k, (old, new) in revision["changes"].items())
            self.alerts.alert("data_revision", series, f"bar {revision['bar']} of {symbol} {interval} changed after "
                              f"paper trading used it ({changes}); the ledger keeps the bar it traded on, and a "
                              "backtest on the new data will differ from the ledger from that bar on",
                              severity="critical", details=revision)
        if summary.get("gap"):
            self.alerts.alert("paper_gap", series, f"the prepared bars of {symbol} {interval} no longer reach back to "
                              f"the ledger's last bar {summary['gap']}: the bars in between were never traded")
        for run in summary["accounts"]:
            subject = f"{series}/{run['model_type']}/{run['run_id']}"
            if run["error"]:
                self.alerts.alert("paper_account", subject, f"paper account ({run['role']}) could not trade: "
                                  f"{run['error']}", severity="critical")
            parity = run.get("parity")
            account = ledger.account(run["account_id"])
            if parity and not parity["ok"] and parity["first_bad_bar"] != account.parity_bar:
                ledger.update_account(account.id, parity_bar=parity["first_bad_bar"])
                self.alerts.alert("parity", subject, f"the paper ledger and a backtest replay of its bars diverge at "
                                  f"bar {parity['first_bad_bar']}: {parity['detail']} (P&L {parity['pnl_ledger']:.6f} "
                                  f"vs {parity['pnl_backtest']:.6f}, fills {parity['fills_ledger']} vs "
                                  f"{parity['fills_backtest']})", severity="critical", details=parity)
            if run["role"] == "champion" and run["status"] == "active":
                self._check_forward(account, ledger, registry, subject)

    def _check_forward(self, account: Any, ledger: Any, registry: Any, subject: str) -> None:
        from trading.forward import account_status, describe

        try:
            meta = registry.get(account.run_id).metadata
        except Exception:  # noqa: BLE001 (a champion whose run is gone has no validation to compare with)
            return
        ppy = float(meta.get("periods_per_year") or 252.0)
        status = account_status(ledger, account, dict(meta.get("validation") or {}), ppy, self.cfg)
        failures = describe(status["forward"])
        for kind, message in failures:
            if not self.alerts.recent(kind, subject, FORWARD_ALERT_REPEAT_HOURS):
                self.alerts.alert(kind, subject, f"champion {account.run_id}: {message}", severity="critical",
                                  details=status["forward"])
        if failures and self.cfg["auto_rollback"]:
            self._roll_back(account, ledger, registry, subject)

    def _roll_back(self, account: Any, ledger: Any, registry: Any, subject: str) -> None:
        """Make the previous champion of the account's key (the latest other account that was champion, from the
        ledger) the champion again."""
        earlier = [a for a in ledger.accounts(account.symbol, account.interval)
                   if a.model_type == account.model_type and a.run_id != account.run_id and a.champion_until]
        if not earlier:
            logger.warning("%s: monitoring.auto_rollback: no earlier champion in the paper ledger", subject)
            return
        previous = max(earlier, key=lambda a: a.champion_until)
        try:
            record = registry.get(previous.run_id)
            registry.set_champion(record)
        except Exception as exc:  # noqa: BLE001 (a failed rollback is reported, the daemon goes on)
            self.alerts.alert("champion_rollback", subject, f"monitoring.auto_rollback could not restore "
                              f"{previous.run_id}: {exc}", severity="critical")
            return
        self.alerts.alert("champion_rollback", subject, f"champion {account.run_id} demoted: {previous.run_id} "
                          "(the previous champion) is champion again (monitoring.auto_rollback)", severity="critical",
                          details={"demoted": account.run_id, "restored": previous.run_id})


def _model_entries(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-model entries of an evaluate_bot.py model_comparison file (``models``: run id -> entry)."""
    models = report.get("models")
    if not isinstance(models, dict):
        return []
    return [{"run_id": key, **entry} for key, entry in models.items() if isinstance(entry, dict)]


def _metric(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
