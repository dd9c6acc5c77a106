"""The broker arithmetic: how an action becomes an order, when and at what price an order fills, what it costs,
and what the account is worth. Pure functions of plain numbers (python floats).

This is the one implementation of the fill and cost rules. :class:`~rl_env.trading_env.TradingEnv` uses it in
its general path (``decide_order``, ``_advance``, ``_execute``, ``_mark``), its fused fast path repeats the
decision, fill and mark inline for speed (``tests/test_env_paths.py`` proves the two paths equal bit for bit),
and the paper broker (:mod:`trading.paper`) fills its orders with these same functions, so paper trading and
backtests cannot drift apart. The rules are those of backtrader's ``BackBroker`` with the settings BacktraderEnv
uses; the TradingEnv docstring states them in words.

Conventions: quantities are signed units (buy > 0); ``limit`` is ``nan`` for a market order; ``slip`` is
``(spread_bps / 2 + slippage_bps) / 1e4``; ``leverage`` is ``margin_leverage``.
"""
from __future__ import annotations

import math

NAN = math.nan


# --- from an action to an order (at decision time, bar t) ------------------------------------------------

def position_limit(max_position: float, equity: float, close: float) -> float:
    """Units the position may hold at most: ``max_position * equity / close`` (0 when equity is gone)."""
    return max_position * equity / close if equity > 0 else 0.0


def flatten_order(units: float) -> float:
    """The order that closes the position (0.0 when flat)."""
    return -units if units else 0.0


def target_order(target: float, units: float, lim: float, band: float) -> float:
    """Market order towards ``target`` (a fraction of ``lim``, signed); none unless the target moves by more
    than ``band`` (a flat target always closes the position)."""
    if target == 0.0:
        return -units if units else 0.0
    current = units / lim if lim > 0 else 0.0
    if abs(target - current) <= band:
        return 0.0
    return target * lim - units


def limit_order(fraction: float, offset: float, vol: float, close: float, units: float, lim: float,
                allow_short: bool) -> tuple[float, float]:
    """Limit order for ``fraction * lim`` units (signed) at ``close * (1 + offset * vol)``, clipped so that
    the position stays within ``[-lim, lim]`` (``[0, lim]`` long-only). Returns ``(units, limit price)``;
    ``(0.0, nan)`` when nothing is ordered."""
    if fraction == 0.0 or lim <= 0.0:
        return 0.0, NAN
    qty = fraction * lim
    new = units + qty
    low = -lim if allow_short else 0.0
    if new > lim:
        new = lim
    elif new < low:
        new = low
    if abs(new) <= 1e-12 * lim:
        new = 0.0
    if (new - units > 0) != (qty > 0) or new == units:
        return 0.0, NAN
    qty = -units if new == 0.0 else new - units
    limit = close * (1.0 + offset * vol)
    floor = 1e-9 * close
    return qty, floor if floor > limit else limit  # max(limit, floor), nan kept like max()


# --- fills (in bar t+1) ---------------------------------------------------------------------------------

def market_fill_price(is_buy: bool, o: float, h: float, lo: float, slip: float) -> float:
    """Market order at the open, slipped against the trader but never outside the bar's range."""
    if not slip:
        return o
    if is_buy:
        p = o * (1 + slip)
        return p if p <= h else h
    p = o * (1 - slip)
    return p if p >= lo else lo


def limit_fill_price(is_buy: bool, limit: float, o: float, h: float, lo: float, slip: float) -> float | None:
    """Limit order: at the open (slipped, capped at the limit) if the open is already at least as good,
    at the limit if the bar trades through it, else None (no fill)."""
    if is_buy:
        if limit >= o:
            if not slip:
                return o
            cap = h if h < limit else limit
            p = o * (1 + slip)
            return p if p <= cap else cap
        return limit if limit >= lo else None
    if limit <= o:
        if not slip:
            return o
        p = o * (1 - slip)
        return p if p >= limit else limit
    return limit if limit <= h else None


def fill_price(qty: float, limit: float, o: float, h: float, lo: float, slip: float) -> tuple[float | None, float]:
    """Where an order of ``qty`` units (limit ``nan`` = market) fills in a bar ``o, h, lo``:
    ``(price or None when a limit is not reached, reference price)``. The reference is the price without
    slippage and spread (the open, or the limit when the bar traded through it), so
    ``|units| * |price - reference|`` is the slippage cost."""
    is_buy = qty > 0
    if limit != limit:  # market
        return market_fill_price(is_buy, o, h, lo, slip), o
    price = limit_fill_price(is_buy, limit, o, h, lo, slip)
    if price is None:
        return None, 0.0
    return price, (o if (limit >= o if is_buy else limit <= o) else price)


def split_order(size: float, qty: float) -> tuple[float, float]:
    """(opened, closed) parts of an order of ``qty`` on a position of ``size`` (both signed like qty)."""
    new = size + qty
    if not new:
        return 0.0, qty
    if not size:
        return qty, 0.0
    if size > 0:
        if qty > 0:
            return qty, 0.0
        return (0.0, qty) if new > 0 else (new, -size)
    if qty < 0:
        return qty, 0.0
    return (0.0, qty) if new < 0 else (new, -size)


def execute(cash: float, size: float, avg: float, qty: float, price: float, rate: float, minimum: float,
            leverage: float) -> tuple[float, float, float, float, float]:
    """Execute ``qty`` units at ``price`` on an account ``(cash, size, avg entry price)``: split into the part
    that closes and the part that opens (as :func:`split_order`), charge ``max(rate * |units| * price,
    minimum)`` per executed part, drop the opening part when cash would fall below zero after paying
    ``cost / leverage`` plus its commission (shorts credit their proceeds), then update the size and the average
    entry price.

    :return: ``(cash, size, avg, executed units, commission)``.
    """
    new = size + qty
    if not new:
        opened, closed = 0.0, qty
    elif not size or (size > 0) == (qty > 0):
        opened, closed = qty, 0.0
    elif (new > 0) == (size > 0):
        opened, closed = 0.0, qty
    else:
        opened, closed = new, -size
    commission = 0.0
    if closed:
        closed_value = -closed * avg
        close_cash = closed_value / leverage if closed_value > 0 else closed_value
        cash += close_cash + -closed * (price - avg)
        fee = abs(closed) * rate * price
        if fee < minimum:
            fee = minimum
        cash -= fee
        commission += fee
    if opened:
        opened_value = opened * price
        trial = cash - (opened_value / leverage if opened_value > 0 else opened_value)
        fee = abs(opened) * rate * price
        if fee < minimum:
            fee = minimum
        trial -= fee
        if trial < 0.0:
            opened = 0.0  # not enough cash: the opening part is dropped
        else:
            cash = trial
            commission += fee
    executed = closed + opened
    if executed:
        new = size + executed
        if not new:
            size, avg = 0.0, 0.0
        elif not size:
            size, avg = new, price
        elif (size > 0) == (executed > 0):
            size, avg = new, (avg * size + executed * price) / new
        else:
            size, avg = new, (avg if (new > 0) == (size > 0) else price)
    return cash, size, avg, executed, commission


def account_value(cash: float, size: float, avg_price: float, price: float, leverage: float) -> float:
    """Broker value: cash plus the position (a long's margin part unlevered, as backtrader does)."""
    value = size * price
    if value > 0:
        unrealised = size * (price - avg_price)
        return cash + ((value - unrealised) / leverage + unrealised)
    return cash + value
