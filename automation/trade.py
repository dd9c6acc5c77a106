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
from trading.brokers import make_broker, mirror_orders
from trading.forward import account_status, judge_shadow
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
            broker = make_broker(self.cfg)  # the Alpaca credentials are checked before anything trades
            ledger = Ledger.from_config(self.cfg)
        except UserError as exc:
            return UnitResult("failed", str(exc))
        try:
            summary = trade_symbol(symbol, self.cfg, ledger, registry, now=self.clock.now())
            self.monitor.check_paper(summary, ledger, registry)
            sent = mirror_orders(ledger, broker, summary) if broker is not None else []
        except UserError as exc:
            return UnitResult("failed", redact(str(exc)))
        finally:
            ledger.close()
        broken = [f"{a['run_id']}: {a['error']}" for a in summary["accounts"] if a["error"]]
        broken += [f"{o['run_id']}: {o['error']}" for o in sent if o["result"] == "error"]
        if broken:
            return UnitResult("failed", "; ".join(broken))
        return UnitResult("ok")

    def promote_forward(self, symbol: str) -> list[dict[str, Any]]:
        """Forward promotion, run by the training job before it trains: for each model type of ``symbol``, every
        active shadow challenger is judged against the active champion on their forward bars
        (:func:`trading.forward.judge_shadow`, the one promotion rule); the best promoted one (highest forward
        Sharpe) becomes champion, with the rule's reason and numbers in the registry's champion history.

        :return: one entry per judged challenger (``run_id``, ``champion``, ``bars``, ``decision``, ``promoted``).
        """
        if not self.cfg["trading"]["enabled"] or not ledger_exists(self.cfg):
            return []
        registry = Registry.from_config(self.cfg)
        ledger = Ledger.from_config(self.cfg)
        judged: list[dict[str, Any]] = []
        try:
            active = [a for a in ledger.accounts(symbol, self.cfg["data"]["interval"]) if a.status == "active"]
            for model_type in dict.fromkeys(self.cfg["model_types"]):
                judged += self._promote_model_type(ledger, registry, [a for a in active
                                                                      if a.model_type == model_type])
        finally:
            ledger.close()
        return judged

    def _promote_model_type(self, ledger: Ledger, registry: Registry, accounts: list[Any]) -> list[dict[str, Any]]:
        champion = next((a for a in accounts if a.role == "champion"), None)
        if champion is None:
            return []
        current = registry.champion(champion.symbol, champion.interval, champion.model_type)
        if current is None or current.run_id != champion.run_id:  # the ledger has not seen the newest change yet
            return []
        _, ppy = _model_facts(registry, champion)
        judged = [judge_shadow(ledger, a, champion, self.cfg, ppy) for a in accounts if a.role == "shadow"]
        for entry in judged:
            entry["promoted"] = False
            logger.info("%s: forward judgement of %s against the champion %s: %s", champion.symbol,
                        entry["run_id"], champion.run_id, entry["decision"]["reason"])
        winners = [e for e in judged if e["decision"]["promoted"]]
        if winners:
            best = max(winners, key=lambda e: e["decision"]["challenger_sharpe"])
            reason = (f"forward promotion over {champion.run_id} on {best['bars']} paper bars {best['from']} .. "
                      f"{best['to']}: {best['decision']['reason']}")
            registry.set_champion(registry.get(best["run_id"]), reason=reason,
                                  evidence={"window": "forward", "from": best["from"], "to": best["to"],
                                            "bars": best["bars"], **best["decision"]})
            best["promoted"] = True
            logger.warning("%s: %s is the new champion: %s", champion.symbol, best["run_id"], reason)
        return judged

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
