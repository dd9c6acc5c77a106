"""The trade job: paper-trade each symbol's champions and shadow challengers on the bars that arrived.

Unlike the other jobs, a trade unit runs inside the automation's own process instead of a child script: it is
a forward pass of each model per new bar and a few database transactions (seconds, not hours), it has no
script of its own among the four, and the ledger's transactions already make it safe to interrupt (a bar is
written whole or not at all). An exception fails the unit, never the daemon. After trading, the monitor checks
the data revisions, the parity with the backtest and the forward results (:meth:`Monitor.check_paper`).
"""
from __future__ import annotations

import logging
from typing import Any

from agents import Registry
from automation.monitor import Monitor
from automation.runner import UnitResult
from automation.schedule import Clock
from botcore.errors import UserError
from botcore.markets import infer_market, periods_per_year
from botcore.redact import redact
from trading.forward import account_status
from trading.ledger import Ledger, ledger_exists
from trading.paper import trade_symbol

logger = logging.getLogger(__name__)


class PaperTrading:
    """Runs one trade unit (one symbol) and reports the paper accounts for ``--status``.

    :param cfg: the resolved config.
    :param monitor: checks what each unit found and raises the alerts.
    :param clock: the time recorded with each decision.
    """

    def __init__(self, cfg: dict[str, Any], monitor: Monitor, clock: Clock) -> None:
        self.cfg = cfg
        self.monitor = monitor
        self.clock = clock

    def __call__(self, symbol: str) -> UnitResult:
        registry = Registry.from_config(self.cfg)
        try:
            ledger = Ledger.from_config(self.cfg)
        except UserError as exc:
            return UnitResult("failed", str(exc))
        try:
            summary = trade_symbol(symbol, self.cfg, ledger, registry, now=self.clock.now())
            self.monitor.check_paper(summary, ledger, registry)
        except UserError as exc:
            return UnitResult("failed", redact(str(exc)))
        finally:
            ledger.close()
        broken = [a for a in summary["accounts"] if a["error"]]
        if broken:
            return UnitResult("failed", "; ".join(f"{a['run_id']}: {a['error']}" for a in broken))
        return UnitResult("ok")

    def status(self) -> dict[str, Any]:
        """Per symbol, its paper accounts (champions first, then shadows) as
        :func:`trading.forward.account_status` describes them; ``{"error": ...}`` when the ledger is unreadable."""
        if not self.cfg["trading"]["enabled"]:
            return {"enabled": False, "symbols": {}}
        try:
            if not ledger_exists(self.cfg):
                return {"enabled": True, "symbols": {}}
            ledger = Ledger.from_config(self.cfg)
        except UserError as exc:
            return {"enabled": True, "error": redact(str(exc)), "symbols": {}}
        registry = Registry.from_config(self.cfg)
        out: dict[str, list[dict[str, Any]]] = {}
        try:
            for account in ledger.accounts():
                validation, ppy = _model_facts(registry, account)
                entry = account_status(ledger, account, validation, ppy, self.cfg["monitoring"])
                out.setdefault(account.symbol, []).append(entry)
        finally:
            ledger.close()
        for entries in out.values():
            entries.sort(key=lambda e: (e["status"] != "active", e["role"] != "champion", e["model_type"],
                                        e["account_id"]))
        return {"enabled": True, "ledger": ledger.shown_url, "symbols": out}


def _model_facts(registry: Registry, account: Any) -> tuple[dict[str, Any], float]:
    """The model's validation metrics and bars per year ({} and the symbol's market when the run is gone)."""
    try:
        meta = registry.get(account.run_id).metadata
    except UserError:
        meta = {}
    ppy = meta.get("periods_per_year") or periods_per_year(account.interval, infer_market(account.symbol))
    return dict(meta.get("validation") or {}), float(ppy)
