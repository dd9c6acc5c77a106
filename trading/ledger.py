"""The paper-trading ledger: a real database through SQLAlchemy Core.

SQLite by default (one file, ``results/paper_ledger.db``); ``trading.ledger_url`` (or the environment variable
named by ``trading.ledger_url_env``, for URLs that hold a password) points it at any SQLAlchemy URL, e.g.
``postgresql+psycopg://bot@db/trading``: the tables and statements are plain SQL that both run. A URL is only
ever logged or shown through :func:`botcore.redact.redact`, which masks its password.

Tables (one row per account and bar where a bar is named; times are bar times as in the split files):

| table | rows |
|---|---|
| ``series`` | per symbol and interval: the feature columns of its stored bars |
| ``bars`` | the bars paper trading decided and filled on, as first seen (OHLCV and the feature row) |
| ``revisions`` | bars whose prices the data source later changed (a data revision), once per bar |
| ``accounts`` | one paper account per model: symbol, interval, model type, run id, role (champion or |
| | shadow), status, start bar, env settings, when it was champion, the first bar parity failed |
| ``orders`` | each order a decision produced and what became of it (pending, filled, partial, cancelled, rejected) |
| ``fills`` | each executed order: bar, units, price, commission, slippage |
| ``positions`` | units held and average entry price at each bar's close |
| ``cash`` | cash at each bar's close |
| ``equity`` | equity marked at each bar's close |
| ``decisions`` | the model's action on each bar, the order it gave and why (Q-values or action probabilities) |

Transactions: everything one account does on one bar (the fill of the pending order, the marks, the decision
and its new order) is one transaction. ``equity``, ``positions``, ``cash``, ``decisions`` and ``fills`` are
unique per (account, bar) and ``orders`` per (account, decided bar), so a crash between bars loses nothing
and a bar can never be filled twice: a restart reads the last bar of each account and continues after it.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from botcore import paths
from botcore.dburl import connect_args, sqlalchemy_url
from botcore.errors import UserError
from botcore.redact import redact

logger = logging.getLogger(__name__)

DEFAULT_FILE = "paper_ledger.db"

metadata = sa.MetaData()

series = sa.Table(
    "series", metadata,
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("interval", sa.String(8), primary_key=True),
    sa.Column("feature_names", sa.Text, nullable=False),  # JSON list
)

bars = sa.Table(
    "bars", metadata,
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("interval", sa.String(8), primary_key=True),
    sa.Column("ts", sa.String(19), primary_key=True),
    sa.Column("open", sa.Double, nullable=False),
    sa.Column("high", sa.Double, nullable=False),
    sa.Column("low", sa.Double, nullable=False),
    sa.Column("close", sa.Double, nullable=False),
    sa.Column("volume", sa.Double, nullable=False),
    sa.Column("features", sa.Text, nullable=False),  # JSON list, in the order of series.feature_names
    sa.Column("first_seen", sa.String(32), nullable=False),
)

revisions = sa.Table(
    "revisions", metadata,
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("interval", sa.String(8), primary_key=True),
    sa.Column("ts", sa.String(19), primary_key=True),
    sa.Column("detected", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # JSON: field -> [ledger value, new value]
)

accounts = sa.Table(
    "accounts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("interval", sa.String(8), nullable=False),
    sa.Column("model_type", sa.String(16), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("algo", sa.String(16), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # champion | shadow
    sa.Column("status", sa.String(16), nullable=False),  # active | retired | ruined
    sa.Column("created", sa.String(32), nullable=False),
    sa.Column("data_start", sa.String(19), nullable=False),  # first bar of its observation window
    sa.Column("start_bar", sa.String(19), nullable=False),  # its first decision bar
    sa.Column("initial_cash", sa.Double, nullable=False),
    sa.Column("env_config", sa.Text, nullable=False),  # JSON: the EnvConfig it trades with
    sa.Column("training_data_end", sa.String(19)),  # bars after it are forward data for the model
    sa.Column("champion_since", sa.String(32)),
    sa.Column("champion_until", sa.String(32)),
    sa.Column("parity_bar", sa.String(19)),  # the first bar where the backtest replay diverged, if any
    sa.UniqueConstraint("symbol", "interval", "run_id", name="uq_account_run"),
)


def _per_bar(name: str, *columns: sa.Column) -> sa.Table:
    return sa.Table(
        name, metadata,
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("bar", sa.String(19), primary_key=True),
        *columns,
    )


equity = _per_bar("equity", sa.Column("equity", sa.Double, nullable=False))
cash = _per_bar("cash", sa.Column("cash", sa.Double, nullable=False))
positions = _per_bar("positions", sa.Column("units", sa.Double, nullable=False),
                     sa.Column("avg_price", sa.Double, nullable=False))
decisions = _per_bar(
    "decisions",
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("action", sa.Text, nullable=False),  # JSON
    sa.Column("units", sa.Double, nullable=False),
    sa.Column("limit_price", sa.Double),  # null = market order (or no order)
    sa.Column("why", sa.Text, nullable=False),  # JSON: Q-values or action probabilities
    sa.Column("decided", sa.String(32), nullable=False),  # wall-clock time of the decision
)
orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("decided_bar", sa.String(19), nullable=False),
    sa.Column("fill_bar", sa.String(19)),  # the bar it was filled, cancelled or rejected in
    sa.Column("units", sa.Double, nullable=False),
    sa.Column("limit_price", sa.Double),  # null = market
    sa.Column("status", sa.String(16), nullable=False),  # pending | filled | partial | cancelled | rejected
    sa.UniqueConstraint("account_id", "decided_bar", name="uq_order_bar"),
)
fills = sa.Table(
    "fills", metadata,
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), primary_key=True),
    sa.Column("bar", sa.String(19), primary_key=True),
    sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id"), nullable=False),
    sa.Column("units", sa.Double, nullable=False),
    sa.Column("price", sa.Double, nullable=False),
    sa.Column("commission", sa.Double, nullable=False),
    sa.Column("slippage_cost", sa.Double, nullable=False),
)


def ledger_url(cfg: dict[str, Any]) -> str:
    """The ledger's SQLAlchemy URL: the environment variable named by ``trading.ledger_url_env`` when set, else
    ``trading.ledger_url``. A relative SQLite path is resolved against the workspace."""
    import os

    section = cfg["trading"]
    var = section.get("ledger_url_env")
    url = (os.environ.get(var) if var else None) or section["ledger_url"]
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise UserError(f"trading.ledger_url {redact(url)!r} is not a database URL; use e.g. "
                        "sqlite:///results/paper_ledger.db or postgresql+psycopg://user@host/db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        file = Path(parsed.database)
        if not file.is_absolute():
            file = paths.workspace() / file
        file.parent.mkdir(parents=True, exist_ok=True)
        parsed = parsed.set(database=str(file))
    return parsed.render_as_string(hide_password=False)


def ledger_exists(cfg: dict[str, Any]) -> bool:
    """Whether there is a ledger to read (for a SQLite file: whether it exists; other databases: assumed)."""
    url = sa.make_url(ledger_url(cfg))
    if url.get_backend_name() == "sqlite":
        return bool(url.database) and url.database != ":memory:" and Path(url.database).is_file()
    return True


@dataclass
class AccountState:
    """An account after its last processed bar (None when it has processed none)."""

    last_bar: str | None
    cash: float
    units: float
    avg_price: float
    equity: float
    pending: dict[str, Any] | None  # the order decided on last_bar, not filled yet


class Ledger:
    """The paper-trading database.

    :param url: a SQLAlchemy URL (see :func:`ledger_url`); the tables are created when missing.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown_url = redact(url)
        try:
            self.engine: Engine = sa.create_engine(sqlalchemy_url(url), future=True, connect_args=connect_args(url))
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            metadata.create_all(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            reason = redact(str(getattr(exc, "orig", None) or exc), known=[url])
            raise UserError(f"cannot open the paper ledger {self.shown_url}: {reason}") from None
        except ModuleNotFoundError as exc:
            raise UserError(f"the paper ledger {self.shown_url} needs the database driver {exc.name}; install it "
                            "in the venv") from None
        logger.debug("paper ledger: %s", self.shown_url)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Ledger:
        return cls(ledger_url(cfg))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back (nothing written) when it raises."""
        with self.engine.begin() as conn:
            yield conn

    # --- bars --------------------------------------------------------------------------------------

    def feature_names(self, symbol: str, interval: str) -> list[str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(series.c.feature_names).where(
                series.c.symbol == symbol, series.c.interval == interval)).first()
        return None if row is None else json.loads(row[0])

    def bars(self, symbol: str, interval: str, since: str | None = None) -> list[sa.Row]:
        """Stored bars of a series (from ``since`` on), oldest first."""
        query = sa.select(bars).where(bars.c.symbol == symbol, bars.c.interval == interval)
        if since is not None:
            query = query.where(bars.c.ts >= since)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(bars.c.ts)))

    def last_bar(self, symbol: str, interval: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(bars.c.ts)).where(
                bars.c.symbol == symbol, bars.c.interval == interval)).scalar()

    def revisions(self, symbol: str, interval: str) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(revisions).where(revisions.c.symbol == symbol,
                                                           revisions.c.interval == interval))
            return {r.ts: json.loads(r.detail) for r in rows}

    # --- accounts ----------------------------------------------------------------------------------

    def accounts(self, symbol: str | None = None, interval: str | None = None) -> list[sa.Row]:
        query = sa.select(accounts)
        if symbol is not None:
            query = query.where(accounts.c.symbol == symbol)
        if interval is not None:
            query = query.where(accounts.c.interval == interval)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(accounts.c.id)))

    def account(self, account_id: int) -> sa.Row:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).one()

    def update_account(self, account_id: int, **values: Any) -> None:
        with self.transaction() as conn:
            conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(**values))

    def state(self, account_id: int) -> AccountState:
        """The account after its last processed bar: cash, position, equity and the pending order."""
        with self.engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(equity.c.bar)).where(equity.c.account_id == account_id)).scalar()
            initial = conn.execute(sa.select(accounts.c.initial_cash).where(accounts.c.id == account_id)).scalar_one()
            if last is None:
                return AccountState(None, float(initial), 0.0, 0.0, float(initial), None)
            key = {"account_id": account_id, "bar": last}
            eq = _one(conn, equity, key).equity
            csh = _one(conn, cash, key).cash
            pos = _one(conn, positions, key)
            pending = conn.execute(sa.select(orders).where(orders.c.account_id == account_id,
                                                           orders.c.status == "pending")).first()
        return AccountState(last, csh, pos.units, pos.avg_price, eq, None if pending is None else pending._asdict())

    def series_of(self, account_id: int, table: sa.Table, column: str) -> list[tuple[str, float]]:
        """(bar, value) of one per-bar column of an account, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table.c.bar, table.c[column]).where(table.c.account_id == account_id)
                                .order_by(table.c.bar))
            return [(r[0], float(r[1])) for r in rows]

    def fills_of(self, account_id: int) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(fills).where(fills.c.account_id == account_id).order_by(fills.c.bar)))

    def last_decision(self, account_id: int) -> sa.Row | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(decisions).where(decisions.c.account_id == account_id)
                                .order_by(decisions.c.bar.desc()).limit(1)).first()

    def count(self, table: sa.Table, account_id: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)
                                    .where(table.c.account_id == account_id)).scalar_one())


def _one(conn: Connection, table: sa.Table, key: dict[str, Any]) -> sa.Row:
    return conn.execute(sa.select(table).where(*(table.c[k] == v for k, v in key.items()))).one()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """SQLite: enforce the foreign keys, wait for a concurrent writer instead of failing at once."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
