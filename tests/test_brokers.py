"""Brokers: the interface (submit, cancel, positions, account), the local paper broker (the default) and the
Alpaca paper-account adapter. Alpaca is faked at its HTTP edge only: a local HTTP server on loopback that the real
alpaca-py TradingClient talks to (``trading.alpaca.base_url``), so alpaca-py's own request and parsing code runs."""
from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from test_evaluate_bot import SYMBOL, _prepare_data, _register_ppo
from test_trading import env_config, intraday_frame, open_scripted_account, scripted_frame

import automate_training as at
from agents.config import load_config
from botcore.errors import ConfigError, UserError
from rl_env.broker import account_value, market_fill_price
from trading.brokers import AlpacaBroker, PaperBroker, client_order_id, make_broker, mirror_orders
from trading.ledger import Ledger
from trading.paper import PaperAccount, sync_bars

KEY, SECRET = "PKTEST1234567890", "s3cr3t-alpaca-paper-secret-value"


class Hold:
    """A policy that never trades (discrete action 1 of 3: target flat)."""

    def predict(self, obs, deterministic=True):
        return 1, None

    def explain(self, obs):
        return {}


# --- the local paper broker -----------------------------------------------------------------------------------

def test_the_paper_broker_fills_a_submitted_order_in_the_next_bar_with_the_envs_rules(workspace):
    frame = scripted_frame()
    config = env_config("discrete")
    ledger = Ledger(f"sqlite:///{workspace / 'ledger.db'}")
    sync_bars(ledger, "SYN", "1d", frame.iloc[:50])
    account = open_scripted_account(ledger, config, start=40)
    with pytest.raises(UserError, match="has processed no bar yet"):
        PaperBroker(ledger, account.id).submit("SYN", 10.0)
    assert PaperAccount(ledger, account, Hold()).advance() == 10
    broker = PaperBroker(ledger, account.id)
    assert broker.positions() == [] and broker.account().cash == broker.account().equity == config.initial_cash

    first = broker.submit("SYN", 120.0)
    assert first.status == "pending" and first.limit_price is None
    with pytest.raises(UserError, match="already has order"):
        broker.submit("SYN", 5.0)
    with pytest.raises(UserError, match="trades SYN, not OTHER"):
        broker.submit("OTHER", 5.0)
    broker.cancel(first.id)
    with pytest.raises(UserError, match="is not pending"):
        broker.cancel(first.id)
    with pytest.raises(UserError, match="non-zero finite units"):
        broker.submit("SYN", 0.0)
    with ledger.engine.begin() as conn:  # one order per account and bar: the cancelled one holds this bar
        conn.exec_driver_sql("DELETE FROM orders WHERE status = 'cancelled'")
    broker.submit("SYN", 120.0)

    sync_bars(ledger, "SYN", "1d", frame.iloc[:51])  # the next bar arrives: the order fills at its open
    assert PaperAccount(ledger, ledger.account(account.id), Hold()).advance() == 1
    bar = frame.iloc[50]
    price = market_fill_price(True, bar["open"], bar["high"], bar["low"], config.slip_perc)
    fill = ledger.fills_of(account.id)[-1]
    assert fill.units == 120.0 and fill.price == price
    commission = max(config.commission_rate * 120.0 * price, config.commission_min)
    assert fill.commission == commission
    [position] = broker.positions()
    assert position.units == 120.0 and position.avg_price == price
    cash = config.initial_cash - 120.0 * price / config.margin_leverage - commission
    assert broker.account().cash == pytest.approx(cash, abs=1e-9)
    assert broker.account().equity == account_value(broker.account().cash, 120.0, price, bar["close"],
                                                    config.margin_leverage)


# --- Alpaca, faked at its HTTP edge ---------------------------------------------------------------------------

class FakeAlpaca:
    """The few endpoints of Alpaca's trading API v2 that the adapter calls, in memory."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.orders: dict[str, dict] = {}
        self.fail_with: tuple[int, dict] | None = None

    def order_json(self, body: dict) -> dict:
        now = "2024-05-06T13:30:00Z"
        return {"id": str(uuid.uuid4()), "client_order_id": body.get("client_order_id") or str(uuid.uuid4()),
                "created_at": now, "updated_at": now, "submitted_at": now, "order_class": "simple",
                "time_in_force": body["time_in_force"], "status": "accepted", "extended_hours": False,
                "symbol": body["symbol"], "qty": str(body["qty"]), "side": body["side"], "type": body["type"],
                "order_type": body["type"], "limit_price": body.get("limit_price"), "filled_qty": "0"}

    def handle(self, method: str, path: str, query: dict, body: dict | None, headers: dict) -> tuple[int, object]:
        self.requests.append({"method": method, "path": path, "query": query, "body": body, "headers": headers})
        if headers.get("APCA-API-KEY-ID") != KEY or headers.get("APCA-API-SECRET-KEY") != SECRET:
            return 403, {"code": 40310000, "message": f"forbidden: key {headers.get('APCA-API-KEY-ID')} unknown"}
        if self.fail_with:
            return self.fail_with
        if method == "GET" and path == "/v2/account":
            return 200, {"id": str(uuid.uuid4()), "account_number": "PA3TEST", "status": "ACTIVE", "currency": "USD",
                         "cash": "98765.43", "equity": "100123.45"}
        if method == "GET" and path == "/v2/positions":
            return 200, [{"asset_id": str(uuid.uuid4()), "symbol": "SYN", "exchange": "NASDAQ",
                          "asset_class": "us_equity", "avg_entry_price": "101.5", "qty": "-10", "side": "short",
                          "cost_basis": "-1015"}]
        if method == "POST" and path == "/v2/orders":
            cid = body.get("client_order_id")
            if cid and any(o["client_order_id"] == cid for o in self.orders.values()):
                return 422, {"code": 40010001, "message": "client_order_id must be unique"}
            order = self.order_json(body)
            self.orders[order["id"]] = order
            return 200, order
        if method == "GET" and path == "/v2/orders:by_client_order_id":
            cid = query["client_order_id"][0]
            found = [o for o in self.orders.values() if o["client_order_id"] == cid]
            return (200, found[0]) if found else (404, {"code": 40410000, "message": "order not found"})
        if method == "DELETE" and path.startswith("/v2/orders/"):
            order = self.orders.get(path.rsplit("/", 1)[1])
            if order is None:
                return 404, {"code": 40410000, "message": "order not found"}
            order["status"] = "canceled"
            return 204, None
        return 404, {"code": 40400000, "message": f"no route {method} {path}"}


@pytest.fixture()
def alpaca_server():
    fake = FakeAlpaca()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload = fake.handle(self.command, parts.path, parse_qs(parts.query), body, dict(self.headers))
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve  # noqa: N815

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture()
def credentials(monkeypatch):
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)


def alpaca_section(url: str) -> dict:
    return load_config(overrides={"trading": {"broker": "alpaca", "alpaca": {"base_url": url}}})["trading"]["alpaca"]


def test_the_alpaca_adapter_speaks_alpacas_api_through_alpaca_py(alpaca_server, credentials):
    broker = AlpacaBroker(alpaca_section(alpaca_server.url))
    buy = broker.submit("SYN", 10.5, client_order_id="tb-1")
    sell = broker.submit("SYN", -3.0, limit_price=101.23456, client_order_id="tb-2")
    posts = [r["body"] for r in alpaca_server.requests if r["method"] == "POST"]
    assert posts[0] == {"symbol": "SYN", "qty": 10.5, "side": "buy", "type": "market", "time_in_force": "day",
                        "client_order_id": "tb-1"}
    assert posts[1]["side"] == "sell" and posts[1]["type"] == "limit" and posts[1]["limit_price"] == 101.23
    assert (buy.units, buy.limit_price, buy.status) == (10.5, None, "accepted")
    assert (sell.units, sell.limit_price) == (-3.0, 101.23)
    assert broker.find("tb-2").id == sell.id and broker.find("tb-none") is None
    broker.cancel(sell.id)
    assert alpaca_server.orders[sell.id]["status"] == "canceled"
    [position] = broker.positions()
    assert (position.symbol, position.units, position.avg_price) == ("SYN", -10.0, 101.5)
    account = broker.account()
    assert (account.cash, account.equity, account.currency) == (98765.43, 100123.45, "USD")
    assert {r["headers"]["APCA-API-KEY-ID"] for r in alpaca_server.requests} == {KEY}
    assert all(r["headers"]["User-Agent"].startswith("APCA-PY") for r in alpaca_server.requests)

    with pytest.raises(UserError, match="HTTP 422: client_order_id must be unique"):
        broker.submit("SYN", 1.0, client_order_id="tb-1")


def test_missing_credentials_are_one_clear_line_and_secrets_never_leak(alpaca_server, monkeypatch, workspace):
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    cfg = load_config(overrides={"trading": {"broker": "alpaca", "alpaca": {"base_url": alpaca_server.url}}})
    with pytest.raises(UserError) as missing:
        make_broker(cfg)
    message = str(missing.value)
    assert "\n" not in message and "APCA_API_KEY_ID and APCA_API_SECRET_KEY are not set" in message
    assert "trading.broker to paper" in message
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    with pytest.raises(UserError, match="^trading.broker is alpaca but APCA_API_SECRET_KEY is not set;"):
        make_broker(cfg)
    assert make_broker(load_config()) is None  # the default: the local paper broker

    # A server that echoes the credentials in its error: the message masks them.
    monkeypatch.setenv("APCA_API_SECRET_KEY", "wrong-" + SECRET)
    with pytest.raises(UserError) as refused:
        make_broker(cfg).account()
    assert "HTTP 403" in str(refused.value) and KEY not in str(refused.value) and "***" in str(refused.value)

    with pytest.raises(ConfigError, match="did you mean 'alpaca'"):
        load_config(overrides={"trading": {"broker": "alpacca"}})
    with pytest.raises(ConfigError, match="only Alpaca paper accounts"):
        load_config(overrides={"trading": {"alpaca": {"paper": False}}})
    with pytest.raises(ConfigError, match="http"):
        load_config(overrides={"trading": {"alpaca": {"base_url": "ftp://x"}}})


def test_champion_orders_are_mirrored_to_alpaca_once(alpaca_server, credentials, workspace):
    frame = scripted_frame()
    config = env_config("multidiscrete")
    ledger = Ledger(f"sqlite:///{workspace / 'ledger.db'}")
    sync_bars(ledger, "SYN", "1d", frame)
    account = open_scripted_account(ledger, config, start=150)
    from test_trading import ObsPolicy

    PaperAccount(ledger, account, ObsPolicy("multidiscrete")).advance()
    state = ledger.state(account.id)
    assert state.pending is not None and state.last_bar == ledger.last_bar("SYN", "1d")
    summary = {"accounts": [{"account_id": account.id, "role": "champion", "status": "active", "error": None}]}
    broker = AlpacaBroker(alpaca_section(alpaca_server.url))
    [sent] = mirror_orders(ledger, broker, summary)
    cid = client_order_id(account, state.last_bar)
    assert sent["result"] == "sent" and sent["client_order_id"] == cid == f"tb-SYN-scripted-{state.last_bar}"
    [post] = [r["body"] for r in alpaca_server.requests if r["method"] == "POST"]
    assert post["qty"] == round(abs(state.pending["units"]), 9) and post["limit_price"] == round(
        state.pending["limit_price"], 2) and post["side"] == ("buy" if state.pending["units"] > 0 else "sell")
    [again] = mirror_orders(ledger, broker, summary)  # a restart: known, never sent twice
    assert again["result"] == "known" and again["order_id"] == sent["order_id"]
    assert sum(r["method"] == "POST" for r in alpaca_server.requests) == 1
    shadow = {"accounts": [{**summary["accounts"][0], "role": "shadow"}]}
    assert mirror_orders(ledger, broker, shadow) == []  # shadows trade on paper only

    # An intraday account decides two bars behind the data: too late to send.
    intraday = Ledger(f"sqlite:///{workspace / 'intraday.db'}")
    sync_bars(intraday, "SYN", "1h", intraday_frame())
    hourly = open_scripted_account(intraday, config, start=200, interval="1h")
    PaperAccount(intraday, hourly, ObsPolicy("multidiscrete")).advance()
    assert intraday.state(hourly.id).pending is not None
    [late] = mirror_orders(intraday, broker, {"accounts": [{**summary["accounts"][0], "account_id": hourly.id}]})
    assert late["result"] == "late" and sum(r["method"] == "POST" for r in alpaca_server.requests) == 1


def test_the_trade_job_with_alpaca_fails_clearly_without_credentials_and_writes_no_secret(
        alpaca_server, monkeypatch, workspace):
    _prepare_data()
    _register_ppo(3)
    (workspace / "training_config.json").write_text(json.dumps({
        "symbols": [SYMBOL], "model_types": ["backtrader"],
        "trading": {"broker": "alpaca", "alpaca": {"base_url": alpaca_server.url}}}))
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    assert at.main(["--run-once", "trade", "--quiet"]) == 1
    state = json.loads((workspace / "results" / "automation_state.json").read_text())
    assert "APCA_API_KEY_ID and APCA_API_SECRET_KEY are not set" in state["units"]["trade/SYN"]["error"]

    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    assert at.main(["--run-once", "trade", "--quiet"]) == 0
    state = json.loads((workspace / "results" / "automation_state.json").read_text())
    assert state["units"]["trade/SYN"]["outcome"] == "ok"
    ledger = Ledger.from_config(load_config())
    [champion] = [a for a in ledger.accounts() if a.role == "champion"]
    pending = ledger.state(champion.id).pending
    posts = [r["body"] for r in alpaca_server.requests if r["method"] == "POST"]
    if pending is None:  # the model held: nothing to send
        assert posts == []
    else:
        assert [p["client_order_id"] for p in posts] == [client_order_id(champion, ledger.state(champion.id).last_bar)]
    ledger.close()
    for file in workspace.rglob("*"):  # the credentials are never written: not in the state, logs, ledger, models
        if file.is_file():
            data = file.read_bytes()
            assert KEY.encode() not in data and SECRET.encode() not in data, file
