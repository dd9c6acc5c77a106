"""The paper broker: champions and their challengers (in shadow) trade every new bar on paper accounts.

For each symbol, after a data update (:func:`trade_symbol`):

1. **Bars.** The newest prepared bars (the test split's) are stored in the ledger as first seen. A bar already
   stored whose prices the source has since changed is a *data revision*: it is recorded once, named, and the
   ledger keeps the bar it traded on.
2. **Accounts.** The champion of each model type has a paper account (role ``champion``); the newest
   ``trading.shadow_challengers`` challengers of the same model type trade beside it (role ``shadow``) on the
   same bars. A new account starts on the newest stored bar with ``initial_cash`` and no position. An account
   whose model is neither champion nor a recent challenger any more is retired (its history stays).
3. **Bars since the last decision.** For each account and each new bar t, in one transaction: the order
   decided on bar t-1 fills in bar t with the env's rules (:func:`rl_env.broker.fill_price`,
   :func:`rl_env.broker.execute`), the account is marked at t's close (:func:`rl_env.broker.account_value`),
   and the model decides on t: the observation comes from :class:`~trading.signals.ForwardEnv` (TradingEnv's
   own code) over the account's bars, the order from ``TradingEnv.decide_order``. The decision, its reason
   (Q-values or action probabilities) and the pending order are written with the bar.
4. **Parity** (:func:`check_parity`): the account's bars replayed through
   :func:`evaluation.backtest.run_backtest` with the same model must give the same equity, positions, fills,
   commissions and P&L to 1e-9. A divergence names the first bar where it appears.

**Intraday bars.** With ``env.close_at_session_end`` the env orders the position flat at the decision on bar t
when bar t+1 is its session's last, which shows only on bar t+2's date. An intraday account therefore decides
on bar t once bar t+2 is stored (:func:`~trading.signals.session_lag`): its ledger trails the data by two bars,
the model still sees bars up to t only, and the order fills in bar t+1 with the env's rules, so the flattening
at every session end is exactly the backtest's. The parity replay runs over the ledger's bars plus those two.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from agents import Registry, RunRecord, load_registered
from botcore.errors import ModelFileError, UserError
from datafeed.dataset import Dataset
from evaluation.backtest import run_backtest
from rl_env.broker import account_value, execute, fill_price
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from trading import ledger as db
from trading.brokers import PaperBroker
from trading.ledger import AccountState, Ledger
from trading.signals import (
    ForwardEnv,
    ForwardPolicy,
    action_to_json,
    bar_time,
    check_features,
    model_env_config,
    session_lag,
    training_data_end,
)

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-9  # relative, per bar (equity, position) and on the totals
PRICE_FIELDS = ("open", "high", "low", "close")


def _now_iso(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= PARITY_TOLERANCE * max(1.0, abs(a), abs(b))


# --- bars --------------------------------------------------------------------------------------------------

@dataclass
class BarSync:
    """What storing the newest prepared bars found.

    :param appended: bars added after the last stored one.
    :param revisions: newly found data revisions: ``{"bar", "changes": {field: [ledger, now]}}``.
    :param gap: the last stored bar when the prepared data no longer reaches back to it (bars are missing).
    """

    appended: int
    revisions: list[dict[str, Any]]
    gap: str | None = None


def sync_bars(ledger: Ledger, symbol: str, interval: str, frame: pd.DataFrame, now: datetime | None = None) -> BarSync:
    """Store the bars of ``frame`` (a prepared split) that come after the last stored bar, and record the stored
    bars whose prices changed (one transaction)."""
    names = [c for c in frame.columns if str(c).startswith("f_")]
    stamps = [bar_time(ts, interval) for ts in frame.index.to_numpy(dtype="datetime64[ns]")]
    prices = frame[["open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64)
    features = frame[names].to_numpy(dtype=np.float32)
    seen = _now_iso(now)
    found: list[dict[str, Any]] = []
    with ledger.transaction() as conn:
        stored_names = conn.execute(sa.select(db.series.c.feature_names).where(
            db.series.c.symbol == symbol, db.series.c.interval == interval)).scalar()
        if stored_names is None:
            conn.execute(sa.insert(db.series).values(symbol=symbol, interval=interval, feature_names=json.dumps(names)))
        elif json.loads(stored_names) != names:
            raise UserError(f"the prepared data of {symbol} {interval} has other feature columns than the bars its "
                            "paper accounts traded on; prepare it with the same data.indicators, or start a new ledger "
                            "(trading.ledger_url)")
        stored = {r.ts: r for r in conn.execute(sa.select(db.bars).where(
            db.bars.c.symbol == symbol, db.bars.c.interval == interval, db.bars.c.ts >= stamps[0]))}
        known = {r.ts for r in conn.execute(sa.select(db.revisions.c.ts).where(
            db.revisions.c.symbol == symbol, db.revisions.c.interval == interval))}
        last = conn.execute(sa.select(sa.func.max(db.bars.c.ts)).where(
            db.bars.c.symbol == symbol, db.bars.c.interval == interval)).scalar()
        new_rows = []
        for i, ts in enumerate(stamps):
            old = stored.get(ts)
            if old is not None:
                changes = {f: [getattr(old, f), float(prices[i, k])] for k, f in enumerate(PRICE_FIELDS)
                           if not _close(getattr(old, f), float(prices[i, k]))}
                if changes and ts not in known:
                    conn.execute(sa.insert(db.revisions).values(symbol=symbol, interval=interval, ts=ts, detected=seen,
                                                                detail=json.dumps(changes)))
                    found.append({"bar": ts, "changes": changes})
            elif last is None or ts > last:
                new_rows.append({"symbol": symbol, "interval": interval, "ts": ts, "open": float(prices[i, 0]),
                                 "high": float(prices[i, 1]), "low": float(prices[i, 2]), "close": float(prices[i, 3]),
                                 "volume": float(prices[i, 4]), "features": json.dumps(features[i].tolist()),
                                 "first_seen": seen})
        if new_rows:
            conn.execute(sa.insert(db.bars), new_rows)
    gap = last if last is not None and stamps[0] > last else None
    if gap:
        logger.warning("%s %s: the prepared bars start at %s, after the last stored bar %s: bars in between are "
                       "missing from the ledger", symbol, interval, stamps[0], last)
    return BarSync(len(new_rows), found, gap)


def bars_data(rows: list[Any], symbol: str, interval: str, feature_names: list[str]) -> MarketData:
    """Stored bars as MarketData (features back to float32 exactly as they were stored)."""
    stamps = np.array([np.datetime64(r.ts.replace(" ", "T")) for r in rows], dtype="datetime64[ns]")
    return MarketData(
        symbol, interval, stamps,
        *(np.array([getattr(r, c) for r in rows], dtype=np.float64) for c in (*PRICE_FIELDS, "volume")),
        features=np.array([json.loads(r.features) for r in rows], dtype=np.float32), feature_names=feature_names)


# --- accounts ----------------------------------------------------------------------------------------------

def ensure_accounts(ledger: Ledger, registry: Registry, cfg: dict[str, Any], symbol: str,
                    now: datetime | None = None) -> list[Any]:
    """Open an account for each champion and each of the newest ``trading.shadow_challengers`` challengers
    (per model type), set their roles, retire the others. Returns the active accounts."""
    interval = cfg["data"]["interval"]
    stamp = _now_iso(now)
    existing = {a.run_id: a for a in ledger.accounts(symbol, interval)}
    wanted: dict[str, tuple[RunRecord, str]] = {}
    for model_type in dict.fromkeys(cfg["model_types"]):
        runs = registry.runs(symbol=symbol, interval=interval, model_type=model_type)
        champion = next((r for r in runs if r.is_champion), None)
        if champion is not None:
            wanted[champion.run_id] = (champion, "champion")
        for record in registry.shadow_runs(runs, int(cfg["trading"]["shadow_challengers"])):
            wanted[record.run_id] = (record, "shadow")
    for run_id, account in existing.items():
        if run_id not in wanted and account.status == "active":
            logger.info("%s: paper account of %s retired (no longer champion or a recent challenger)", symbol, run_id)
            until = account.champion_until or (stamp if account.role == "champion" else None)
            ledger.update_account(account.id, status="retired", role="shadow", champion_until=until)
    for run_id, (record, role) in wanted.items():
        account = existing.get(run_id)
        if account is None:
            _open_account(ledger, record, cfg, role, stamp)
            continue
        if account.status == "retired":
            ledger.update_account(account.id, status="active")
        if account.role != role:
            change: dict[str, Any] = {"role": role}
            if role == "champion":
                change.update(champion_since=stamp, champion_until=None)
            else:
                change["champion_until"] = stamp
            ledger.update_account(account.id, **change)
    return [a for a in ledger.accounts(symbol, interval) if a.status == "active"]


def _open_account(ledger: Ledger, record: RunRecord, cfg: dict[str, Any], role: str, stamp: str) -> None:
    """A new account starting on the newest decidable stored bar (the newest, or on intraday bars the third
    newest: :func:`~trading.signals.session_lag`); its window of bars before it must be stored."""
    config = model_env_config(record, cfg)
    stored = ledger.bars(record.symbol, record.interval)
    lag = session_lag(record.interval, config)
    if len(stored) < config.window + 1 + lag:
        logger.warning("%s: %d stored bars, the model %s needs %d before it can trade on paper", record.symbol,
                       len(stored), record.run_id, config.window + 1 + lag)
        return
    start = len(stored) - 1 - lag
    with ledger.transaction() as conn:
        conn.execute(sa.insert(db.accounts).values(
            symbol=record.symbol, interval=record.interval, model_type=record.model_type, run_id=record.run_id,
            algo=record.algo, role=role, status="active", created=stamp,
            data_start=stored[start - config.window + 1].ts, start_bar=stored[start].ts,
            initial_cash=config.initial_cash,
            env_config=json.dumps(config.to_dict()), training_data_end=training_data_end(record),
            champion_since=stamp if role == "champion" else None))
    logger.info("%s: paper account for %s %s (%s) opened at bar %s", record.symbol, record.model_type, record.run_id,
                role, stored[start].ts)


# --- trading the new bars ----------------------------------------------------------------------------------

@dataclass
class AccountRun:
    """What one account did in one trade run."""

    account_id: int
    run_id: str
    model_type: str
    role: str
    processed: int
    last_bar: str | None
    status: str
    error: str | None = None


class PaperAccount:
    """One paper account: its policy, its bars and its env settings (:meth:`from_registry` loads its model).

    :param ledger: the ledger holding the account.
    :param account: the account's row.
    :param policy: what decides: a :class:`~trading.signals.ForwardPolicy` (anything with ``predict`` and
        ``explain``).
    """

    def __init__(self, ledger: Ledger, account: Any, policy: Any) -> None:
        self.ledger = ledger
        self.account = account
        self.config = EnvConfig.from_dict(json.loads(account.env_config))
        self.policy = policy
        names = ledger.feature_names(account.symbol, account.interval) or []
        self.rows = ledger.bars(account.symbol, account.interval, since=account.data_start)
        self.stamps = [r.ts for r in self.rows]
        self.data = bars_data(self.rows, account.symbol, account.interval, names)
        self.start = self.stamps.index(account.start_bar)
        self.lag = session_lag(account.interval, self.config)  # bars stored after the newest decidable one

    @classmethod
    def from_registry(cls, ledger: Ledger, account: Any, registry: Registry) -> PaperAccount:
        """The account with its registered model (checksum verified, feature columns checked)."""
        record = registry.get(account.run_id)
        paper = cls(ledger, account, ForwardPolicy(load_registered(registry, record)))
        check_features(record, paper.data)
        return paper

    def advance(self, now: datetime | None = None) -> int:
        """Process every decidable stored bar after the account's last one (all of them on daily bars; on
        intraday bars all but the newest two), one transaction per bar. Returns the number of bars processed;
        an exception leaves the bars before it committed and the failing one untouched."""
        state = self.ledger.state(self.account.id)
        first = self.start if state.last_bar is None else self.stamps.index(state.last_bar) + 1
        end = len(self.rows) - self.lag
        if first >= end or self.account.status != "active":
            return 0
        env = ForwardEnv(self.data, self.config)
        try:
            for i in range(first, end):
                state = self._bar(env, i, state, now)
                if state is None:  # ruined
                    return i - first + 1
        finally:
            env.close()
        return end - first

    def _bar(self, env: ForwardEnv, i: int, state: AccountState, now: datetime | None) -> AccountState | None:
        """Fill the pending order in bar i, mark at its close, decide on it: one transaction."""
        c, acc, bar = self.config, self.account, self.rows[i]
        cash, units, avg = state.cash, state.units, state.avg_price
        key = {"account_id": acc.id, "bar": bar.ts}
        with self.ledger.transaction() as conn:
            pending = state.pending
            if pending is not None:
                qty = pending["units"]
                limit = math.nan if pending["limit_price"] is None else pending["limit_price"]
                price, reference = fill_price(qty, limit, bar.open, bar.high, bar.low, c.slip_perc)
                status = "cancelled"
                if price is not None:
                    cash, units, avg, executed, commission = execute(cash, units, avg, qty, price, c.commission_rate,
                                                                     c.commission_min, c.margin_leverage)
                    status = "rejected"
                    if executed:
                        status = "filled" if executed == qty else "partial"
                        conn.execute(sa.insert(db.fills).values(
                            **key, order_id=pending["id"], units=executed, price=price, commission=commission,
                            slippage_cost=abs(executed) * abs(price - reference)))
                conn.execute(sa.update(db.orders).where(db.orders.c.id == pending["id"])
                             .values(status=status, fill_bar=bar.ts))
            equity = acc.initial_cash if i == self.start else account_value(cash, units, avg, bar.close,
                                                                           c.margin_leverage)
            conn.execute(sa.insert(db.equity).values(**key, equity=equity))
            conn.execute(sa.insert(db.cash).values(**key, cash=cash))
            conn.execute(sa.insert(db.positions).values(**key, units=units, avg_price=avg))
            if i > self.start and equity <= c.ruin_fraction * c.initial_cash:
                conn.execute(sa.update(db.accounts).where(db.accounts.c.id == acc.id).values(status="ruined"))
                logger.warning("%s: paper account of %s ruined at bar %s (equity %.2f)", acc.symbol, acc.run_id,
                               bar.ts, equity)
                return None
            obs = env.observe(i, cash, units, avg, equity)
            action, _ = self.policy.predict(obs, deterministic=True)
            qty, limit = env.decide_order(action)
            limit_price = None if math.isnan(limit) else float(limit)
            conn.execute(sa.insert(db.decisions).values(
                **key, run_id=acc.run_id, action=json.dumps(action_to_json(action)), units=float(qty),
                limit_price=limit_price, why=json.dumps(self.policy.explain(obs)), decided=_now_iso(now)))
            new_pending = None
            if qty:
                order_id = PaperBroker.place(conn, acc.id, bar.ts, float(qty), limit_price)
                new_pending = {"id": order_id, "units": float(qty), "limit_price": limit_price}
        return AccountState(bar.ts, cash, units, avg, equity, new_pending)


# --- parity ------------------------------------------------------------------------------------------------

@dataclass
class ParityReport:
    """The ledger of one account against a backtest replay of its bars with the same model.

    :param first_bad_bar: the first bar whose equity, position or fill differs beyond PARITY_TOLERANCE (None:
        none).
    :param commissions_backtest: the replay's commissions; None on an intraday replay, which runs two bars past
        the ledger's last (:func:`~trading.signals.session_lag`) and so holds fills the ledger has not made yet:
        there the commissions are checked through each bar's equity (cash net of every commission) and each fill.
    """

    ok: bool
    bars: int
    first_bad_bar: str | None
    max_equity_diff: float
    pnl_ledger: float
    pnl_backtest: float
    fills_ledger: int
    fills_backtest: int
    commissions_ledger: float
    commissions_backtest: float | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(paper: PaperAccount) -> ParityReport:
    """Replay the account's bars (its observation window, every bar it processed and, intraday, the two bars
    after them that its last decisions read) through :func:`~evaluation.backtest.run_backtest` with the same
    model and compare bar by bar: equity, position, and every fill's bar, units and price."""
    ledger, acc = paper.ledger, paper.account
    eq = ledger.series_of(acc.id, db.equity, "equity")
    pos = ledger.series_of(acc.id, db.positions, "units")
    fills = ledger.fills_of(acc.id)
    ledger_fills, ledger_commissions = len(fills), float(sum(f.commission for f in fills))
    if len(eq) < 2:
        pnl = eq[-1][1] - eq[0][1] if eq else 0.0
        return ParityReport(True, len(eq), None, 0.0, pnl, pnl, ledger_fills, 0, ledger_commissions, 0.0,
                            "nothing to replay yet")
    last = paper.stamps.index(eq[-1][0])
    replay = paper.data.slice(0, min(last + 1 + paper.lag, len(paper.stamps)))
    result = run_backtest(paper.policy, replay, paper.config, engine="fast")
    bt_bars = [bar_time(ts, acc.interval) for ts in result.timestamps]
    first_bad, worst = None, 0.0
    for k, (bar, value) in enumerate(eq):
        if k >= len(bt_bars) or bt_bars[k] != bar:
            first_bad = first_bad or bar
            break
        worst = max(worst, abs(value - float(result.equity[k])))
        if first_bad is None and not (_close(value, float(result.equity[k]))
                                      and _close(pos[k][1], float(result.positions[k]))):
            first_bad = bar
    whole = replay.n_bars == last + 1  # the replay ends on the ledger's last bar (daily bars)
    if first_bad is None and (len(bt_bars) < len(eq) or (whole and len(bt_bars) != len(eq))):
        first_bad = bt_bars[len(eq)] if len(bt_bars) > len(eq) else eq[-1][0]
    bt_fills = [f for f in result.fills if f["bar"] <= last]
    for mine, theirs in zip(fills, bt_fills):
        bar = bar_time(replay.timestamps[theirs["bar"]], acc.interval)
        if first_bad is None and not (mine.bar == bar and _close(mine.units, theirs["qty"])
                                      and _close(mine.price, theirs["price"])):
            first_bad = min(mine.bar, bar)
    k_last = min(len(eq), len(bt_bars)) - 1
    pnl_ledger, pnl_backtest = eq[-1][1] - eq[0][1], float(result.equity[k_last] - result.equity[0])
    bt_commissions = float(result.commissions) if whole else None
    totals_ok = (ledger_fills == len(bt_fills) and _close(pnl_ledger, pnl_backtest)
                 and (bt_commissions is None or _close(ledger_commissions, bt_commissions)))
    ok = first_bad is None and totals_ok
    detail = "" if ok else (f"first divergent bar {first_bad}" if first_bad else
                            f"totals differ: fills {ledger_fills} vs {len(bt_fills)}, commissions "
                            f"{ledger_commissions:.6f} vs {bt_commissions if bt_commissions is not None else 'n/a'}"
                            f", P&L {pnl_ledger:.6f} vs {pnl_backtest:.6f}")
    return ParityReport(ok, len(eq), first_bad or (None if ok else eq[-1][0]), worst, pnl_ledger, pnl_backtest,
                        ledger_fills, len(bt_fills), ledger_commissions, bt_commissions, detail)


# --- one symbol --------------------------------------------------------------------------------------------

def trade_symbol(symbol: str, cfg: dict[str, Any], ledger: Ledger, registry: Registry | None = None,
                 now: datetime | None = None) -> dict[str, Any]:
    """Store the newest bars of ``symbol``, keep its accounts (champions and shadows), let every account decide on
    every bar since its last decision, and check each account's parity with the backtest.

    :return: a JSON-able summary: bars appended, revisions and gap found, and per account what it did and its
        parity report. An account whose model cannot be loaded is reported with its error; the others trade.
    """
    interval = cfg["data"]["interval"]
    registry = registry or Registry.from_config(cfg)
    frame = Dataset.open(symbol, interval).split("test")
    sync = sync_bars(ledger, symbol, interval, frame, now)
    runs: list[dict[str, Any]] = []
    for account in ensure_accounts(ledger, registry, cfg, symbol, now):
        entry = AccountRun(account.id, account.run_id, account.model_type, account.role, 0, None, account.status)
        try:
            paper = PaperAccount.from_registry(ledger, account, registry)
            entry.processed = paper.advance(now)
            parity = check_parity(paper).to_dict()
        except (ModelFileError, UserError) as exc:
            entry.error = str(exc)
            parity = None
            logger.error("%s: paper account of %s: %s", symbol, account.run_id, exc)
        state = ledger.state(account.id)
        entry.last_bar, entry.status = state.last_bar, ledger.account(account.id).status
        runs.append({**asdict(entry), "parity": parity})
        logger.info("%s: %s %s (%s): %d new bars, last bar %s%s", symbol, account.model_type, account.run_id,
                    account.role, entry.processed, entry.last_bar,
                    "" if parity is None or parity["ok"] else f"; PARITY: {parity['detail']}")
    return {"symbol": symbol, "interval": interval, "appended": sync.appended, "revisions": sync.revisions,
            "gap": sync.gap, "accounts": runs}
