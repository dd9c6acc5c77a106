"""Brokers: where a model's orders go. A small interface (:class:`Broker`: submit, cancel, positions, account)
with two implementations, chosen by ``trading.broker``:

- ``paper`` (the default): :class:`PaperBroker`, the local paper broker. Its book is a paper account of the
  ledger (:mod:`trading.ledger`); an order submitted on the account's last processed bar is filled in the next
  bar by :meth:`trading.paper.PaperAccount.advance` with the env's own rules (:mod:`rl_env.broker`). The paper
  accounts' own decisions go through :meth:`PaperBroker.place`, the same code.
- ``alpaca``: :class:`AlpacaBroker`, an Alpaca **paper** account through the official ``alpaca-py`` client.
  After each trade unit the champions' newest orders are also sent there (:func:`mirror_orders`), once each:
  the client order id names the account and the bar, and an order already known to Alpaca is not sent again
  (a restart never doubles an order). Alpaca fills them with its own simulator, so its fills are NOT the env's;
  the ledger stays the record that parity and promotion are judged on.

Credentials are read from the environment variables named by ``trading.alpaca.key_env`` and ``secret_env``
(``APCA_API_KEY_ID``, ``APCA_API_SECRET_KEY``), never from the config and never written anywhere: every message
that leaves this module is redacted with both values (:func:`botcore.redact.redact`).
"""
from __future__ import annotations

import logging
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from botcore.errors import UserError
from botcore.redact import redact
from trading import ledger as db
from trading.ledger import Ledger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerOrder:
    """An order as a broker holds it. ``units`` are signed (buy > 0); ``limit_price`` None = market."""

    id: str
    symbol: str
    units: float
    limit_price: float | None
    status: str
    client_order_id: str | None = None


@dataclass(frozen=True)
class BrokerPosition:
    """An open position: signed units (short < 0) and the average entry price."""

    symbol: str
    units: float
    avg_price: float


@dataclass(frozen=True)
class BrokerAccount:
    """Cash and equity (cash plus positions at their last price) of the account."""

    cash: float
    equity: float
    currency: str = "USD"


class Broker(ABC):
    """What the trading code needs from a broker."""

    name: str

    @abstractmethod
    def submit(self, symbol: str, units: float, limit_price: float | None = None,
               client_order_id: str | None = None) -> BrokerOrder:
        """Send an order of ``units`` (signed) at the next open (market) or at ``limit_price``, good for one bar
        (the env's rule: a limit the next bar does not reach is cancelled)."""

    @abstractmethod
    def cancel(self, order_id: str) -> None:
        """Cancel a pending order (UserError when it is not pending)."""

    @abstractmethod
    def positions(self) -> list[BrokerPosition]:
        """The open positions."""

    @abstractmethod
    def account(self) -> BrokerAccount:
        """Cash and equity."""


# --- the local paper broker ---------------------------------------------------------------------------------

class PaperBroker(Broker):
    """The local paper broker over one paper account of the ledger.

    :param ledger: the ledger holding the account.
    :param account_id: the account (its symbol is the only one it trades).
    """

    name = "paper"

    def __init__(self, ledger: Ledger, account_id: int) -> None:
        self.ledger = ledger
        self.account_id = account_id
        self.symbol = ledger.account(account_id).symbol

    @staticmethod
    def place(conn: sa.Connection, account_id: int, bar: str, units: float, limit_price: float | None) -> int:
        """Record a pending order decided on ``bar`` inside the caller's transaction; returns its id. The
        database holds at most one order per account and bar (a restart cannot place it twice)."""
        return int(conn.execute(sa.insert(db.orders).values(
            account_id=account_id, decided_bar=bar, units=float(units), limit_price=limit_price,
            status="pending")).inserted_primary_key[0])

    def submit(self, symbol: str, units: float, limit_price: float | None = None,
               client_order_id: str | None = None) -> BrokerOrder:
        if symbol != self.symbol:
            raise UserError(f"paper account {self.account_id} trades {self.symbol}, not {symbol}")
        if not (math.isfinite(units) and units) or (limit_price is not None and not limit_price > 0):
            raise UserError(f"an order needs non-zero finite units and a positive limit price (got {units}, "
                            f"{limit_price})")
        state = self.ledger.state(self.account_id)
        if state.last_bar is None:
            raise UserError(f"paper account {self.account_id} has processed no bar yet; orders are placed on its "
                            "last processed bar and fill in the next one")
        if state.pending is not None:
            raise UserError(f"paper account {self.account_id} already has order {state.pending['id']} pending for "
                            f"the bar after {state.last_bar}; cancel it first")
        with self.ledger.transaction() as conn:
            order_id = self.place(conn, self.account_id, state.last_bar, units, limit_price)
        return BrokerOrder(str(order_id), symbol, float(units), limit_price, "pending", client_order_id)

    def cancel(self, order_id: str) -> None:
        with self.ledger.transaction() as conn:
            done = conn.execute(sa.update(db.orders).where(
                db.orders.c.id == int(order_id), db.orders.c.account_id == self.account_id,
                db.orders.c.status == "pending").values(status="cancelled")).rowcount
        if not done:
            raise UserError(f"order {order_id} of paper account {self.account_id} is not pending")

    def positions(self) -> list[BrokerPosition]:
        state = self.ledger.state(self.account_id)
        return [BrokerPosition(self.symbol, state.units, state.avg_price)] if state.units else []

    def account(self) -> BrokerAccount:
        state = self.ledger.state(self.account_id)
        return BrokerAccount(state.cash, state.equity)


# --- Alpaca (paper) -----------------------------------------------------------------------------------------

def alpaca_credentials(section: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The API key id and secret from the environment variables named in ``trading.alpaca``; UserError (one
    line) when either is missing."""
    environ = os.environ if environ is None else environ
    key_env, secret_env = section["key_env"], section["secret_env"]
    missing = [name for name in (key_env, secret_env) if not environ.get(name, "").strip()]
    if missing:
        raise UserError(f"trading.broker is alpaca but {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not set; export the Alpaca paper account's key id "
                        f"in {key_env} and its secret in {secret_env} (never in training_config.json), or set "
                        "trading.broker to paper")
    return environ[key_env].strip(), environ[secret_env].strip()


class AlpacaBroker(Broker):
    """An Alpaca paper account through ``alpaca.trading.client.TradingClient`` (alpaca-py).

    :param section: the ``trading.alpaca`` section of the config.
    :param environ: where the credentials are read (default ``os.environ``).
    """

    name = "alpaca"

    def __init__(self, section: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
        from alpaca.trading.client import TradingClient

        key, secret = alpaca_credentials(section, environ)
        self._secrets = (key, secret)
        self.client = TradingClient(api_key=key, secret_key=secret, paper=True,
                                    url_override=section.get("base_url") or None)

    def _fail(self, what: str, exc: Exception) -> UserError:
        """A one-line UserError for a refused or failed request, with the credentials masked."""
        from alpaca.common.exceptions import APIError

        if isinstance(exc, APIError):
            detail = f"HTTP {exc.status_code}: {exc.message if exc.code is not None else str(exc)}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return UserError(redact(f"Alpaca {what} failed ({detail})", known=self._secrets))

    def submit(self, symbol: str, units: float, limit_price: float | None = None,
               client_order_id: str | None = None) -> BrokerOrder:
        from alpaca.trading.enums import OrderSide, TimeInForce
        from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest

        if not (math.isfinite(units) and units):
            raise UserError(f"an order needs non-zero finite units (got {units})")
        common = {"symbol": symbol, "qty": round(abs(units), 9), "side": OrderSide.BUY if units > 0 else
                  OrderSide.SELL, "time_in_force": TimeInForce.DAY, "client_order_id": client_order_id}
        request = (MarketOrderRequest(**common) if limit_price is None else
                   LimitOrderRequest(**common, limit_price=round(float(limit_price), 2)))
        try:
            order = self.client.submit_order(request)
        except Exception as exc:  # noqa: BLE001 - every failure of the request becomes one clear line
            raise self._fail(f"order {client_order_id or ''} for {symbol}", exc) from None
        return _order(order)

    def find(self, client_order_id: str) -> BrokerOrder | None:
        """The order with this client order id, or None when Alpaca knows none."""
        from alpaca.common.exceptions import APIError

        try:
            return _order(self.client.get_order_by_client_id(client_order_id))
        except APIError as exc:
            if exc.status_code == 404:
                return None
            raise self._fail(f"lookup of order {client_order_id}", exc) from None
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"lookup of order {client_order_id}", exc) from None

    def cancel(self, order_id: str) -> None:
        try:
            self.client.cancel_order_by_id(order_id)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cancel of order {order_id}", exc) from None

    def positions(self) -> list[BrokerPosition]:
        try:
            found = self.client.get_all_positions()
        except Exception as exc:  # noqa: BLE001
            raise self._fail("positions request", exc) from None
        out = []
        for p in found:
            units = float(p.qty)
            if str(getattr(p.side, "value", p.side)) == "short" and units > 0:
                units = -units
            out.append(BrokerPosition(p.symbol, units, float(p.avg_entry_price)))
        return out

    def account(self) -> BrokerAccount:
        try:
            acc = self.client.get_account()
        except Exception as exc:  # noqa: BLE001
            raise self._fail("account request", exc) from None
        return BrokerAccount(float(acc.cash or 0.0), float(acc.equity or 0.0), str(acc.currency or "USD"))


def _order(order: Any) -> BrokerOrder:
    side = str(getattr(order.side, "value", order.side))
    qty = float(order.qty or 0.0)
    return BrokerOrder(str(order.id), str(order.symbol), -qty if side == "sell" else qty,
                       None if order.limit_price is None else float(order.limit_price),
                       str(getattr(order.status, "value", order.status)), order.client_order_id)


def make_broker(cfg: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AlpacaBroker | None:
    """The external broker the config names (``trading.broker``): an :class:`AlpacaBroker`, or None for the
    local paper broker (whose books are the ledger's accounts, one :class:`PaperBroker` each)."""
    section = cfg["trading"]
    if section.get("broker", "paper") == "alpaca":
        return AlpacaBroker(section["alpaca"], environ)
    return None


def client_order_id(account: Any, bar: str) -> str:
    """The client order id of an account's order decided on ``bar``: the same on every run (Alpaca refuses a
    second order with it, and :func:`mirror_orders` looks it up before sending)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"tb-{account.symbol}-{account.run_id}-{bar}")[:128]


def mirror_orders(ledger: Ledger, broker: Broker, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Send each active champion's pending order (decided on the ledger's newest decided bar) to ``broker``,
    once: an order whose client order id the broker already knows is reported, not sent again.

    :param summary: :func:`trading.paper.trade_symbol`'s summary of the unit.
    :return: per champion account: ``run_id``, ``bar``, ``client_order_id`` and ``result``: ``sent``, ``known``,
        ``none`` (no order pending), ``late`` (decided on a bar before the newest: an intraday account decides
        two bars behind, too late for a real order) or ``error`` (with the one-line reason).
    """
    out = []
    for run in summary["accounts"]:
        if run["role"] != "champion" or run["status"] != "active" or run["error"]:
            continue
        account = ledger.account(run["account_id"])
        state = ledger.state(account.id)
        entry: dict[str, Any] = {"run_id": account.run_id, "bar": state.last_bar, "client_order_id": None}
        if state.pending is None or state.last_bar is None:
            out.append({**entry, "result": "none"})
            continue
        if state.last_bar != ledger.last_bar(account.symbol, account.interval):  # intraday: decided two bars late
            out.append({**entry, "result": "late"})
            continue
        cid = client_order_id(account, state.last_bar)
        entry["client_order_id"] = cid
        try:
            known = broker.find(cid) if isinstance(broker, AlpacaBroker) else None
            if known is not None:
                out.append({**entry, "result": "known", "order_id": known.id, "status": known.status})
                continue
            order = broker.submit(account.symbol, state.pending["units"], state.pending["limit_price"], cid)
            out.append({**entry, "result": "sent", "order_id": order.id, "status": order.status})
            logger.info("%s: order %s (%+.4f units%s) sent to %s", account.symbol, cid, state.pending["units"],
                        "" if state.pending["limit_price"] is None else f" limit {state.pending['limit_price']:.4f}",
                        broker.name)
        except UserError as exc:
            out.append({**entry, "result": "error", "error": str(exc)})
            logger.error("%s: %s", account.symbol, exc)
    return out
