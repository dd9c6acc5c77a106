"""The Yahoo source through yfinance's real code: request building, cookie/crumb handling, the 429 path,
JSON parsing, time zones and auto-adjustment all run; only the HTTP session's ``get`` is faked, by a
seeded Yahoo that answers the v8 chart API (``/v8/finance/chart/{ticker}``) like the real one."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
import yfinance as yf
from curl_cffi.requests import Response
from yfinance import base as yf_base
from yfinance import cache as yf_cache
from yfinance.data import YfData

import data_pipeline
import datafeed
from datafeed import sources

NY = "America/New_York"
CHART = "/v8/finance/chart/"

# yfinance 1.7 still passes inplace=True to pandas 3.1 (a Pandas4Warning per call): its problem, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:pandas.errors.Pandas4Warning")


def _daily_market(n: int, seed: int, start: str) -> pd.DataFrame:
    """Unadjusted daily bars stamped at the 09:30 New York open (as Yahoo does), with quarterly dividends
    and Yahoo's dividend-adjusted close ``adjclose`` (earlier bars scaled by ``1 - dividend / prev close``)."""
    bars = datafeed.generate_synthetic(n, seed=seed, start=start)
    bars.index = (bars.index.tz_localize(NY) + pd.Timedelta(hours=9, minutes=30)).tz_convert("UTC")
    dividend = np.zeros(n)
    dividend[40::63] = np.round(0.006 * bars["close"].to_numpy()[40::63], 2)
    prev_close = np.concatenate([[np.nan], bars["close"].to_numpy()[:-1]])
    step = np.where(dividend > 0, 1 - dividend / prev_close, 1.0)
    factor = np.concatenate([np.cumprod(step[::-1])[::-1][1:], [1.0]])  # a bar is scaled by later ex-dates
    bars["adjclose"] = bars["close"] * factor
    bars["dividend"] = dividend
    return bars


def _hourly_market(days: pd.DatetimeIndex, seed: int) -> pd.DataFrame:
    """Seven 1h bars per New York session (09:30 .. 15:30), stamped in UTC."""
    stamps = [d.tz_localize(NY) + pd.Timedelta(hours=9, minutes=30) + pd.Timedelta(hours=h)
              for d in days for h in range(7)]
    bars = datafeed.generate_synthetic(len(stamps), seed=seed, interval="1h")
    bars.index = pd.DatetimeIndex(stamps).tz_convert("UTC")
    bars["adjclose"] = bars["close"]
    bars["dividend"] = 0.0
    return bars


def _epoch(ts: pd.Timestamp) -> int:
    return int(ts.timestamp())


def _epochs(index: pd.DatetimeIndex) -> np.ndarray:
    """Epoch seconds of tz-aware stamps (whatever pandas' time unit is)."""
    return index.as_unit("s").asi8


def _period(day: pd.Timestamp, start: str, end: str) -> dict:
    local = day.tz_convert(NY).normalize()
    begin, stop = local + pd.Timedelta(start), local + pd.Timedelta(end)
    return {"timezone": begin.tzname(), "start": _epoch(begin), "end": _epoch(stop),
            "gmtoffset": int(begin.utcoffset().total_seconds())}


class FakeYahooHTTP:
    """Stands in for the HTTP session yfinance uses: answers Yahoo's cookie, crumb, consent, quoteSummary and
    v8 chart endpoints from seeded markets, at a fixed "now", and records every request."""

    LOOKBACK_DAYS = {"1m": 30, "2m": 60, "5m": 60, "15m": 60, "30m": 60, "90m": 60, "60m": 730, "1h": 730}

    def __init__(self, now: pd.Timestamp):
        self.now = now
        self.markets: dict[tuple[str, str], pd.DataFrame] = {}
        self.requests: list[dict] = []
        self.rate_limited = False  # every endpoint answers HTTP 429
        self.sleeps: list[float] = []  # the pipeline's retry waits (faked: instant)
        self.cache_dir: Path | None = None  # where yfinance's caches went

    def chart_calls(self, symbol: str | None = None, ranged: bool = True) -> list[dict]:
        """Chart requests (``ranged``: only those with period1/period2, i.e. not yfinance's time-zone probe)."""
        return [r for r in self.requests if r["path"].startswith(CHART)
                and (symbol is None or r["path"] == CHART + symbol) and (not ranged or "period1" in r["params"])]

    # -- the session's interface -------------------------------------------------------------------------
    def get(self, url: str, params: dict | None = None, **kwargs) -> Response:
        parts = urlsplit(url)
        self.requests.append({"host": parts.hostname, "path": parts.path, "params": dict(params or {})})
        if self.rate_limited:
            return self._respond(url, 429, "Edge: Too Many Requests", "text/plain")
        if parts.hostname == "fc.yahoo.com":
            return self._respond(url, 404, "", "text/html")
        if parts.path == "/v1/test/getcrumb":
            return self._respond(url, 200, "fAkEcRuMb.1", "text/plain")
        if parts.path.startswith(CHART):
            return self._chart(url, parts.path[len(CHART):], dict(params or {}))
        if parts.path.startswith("/v10/finance/quoteSummary/"):
            symbol = parts.path.rsplit("/", 1)[1]
            return self._json(url, 404, {"quoteSummary": {"result": None, "error": {
                "code": "Not Found", "description": f"Quote not found for symbol: {symbol}"}}})
        if parts.path == "/v7/finance/quote":
            return self._json(url, 200, {"quoteResponse": {"result": [], "error": None}})
        return self._respond(url, 404, "<html><body>Not found</body></html>", "text/html")

    def post(self, url: str, **kwargs) -> Response:
        return self.get(url, **kwargs)

    # -- answers -----------------------------------------------------------------------------------------
    @staticmethod
    def _respond(url: str, status: int, body: str, content_type: str) -> Response:
        response = Response()
        response.url, response.status_code, response.content = url, status, body.encode()
        response.ok = status < 400
        response.reason = {200: "OK", 404: "Not Found", 422: "Unprocessable Entity",
                           429: "Too Many Requests"}.get(status, "")
        response.headers["Content-Type"] = content_type
        return response

    def _json(self, url: str, status: int, payload: dict) -> Response:
        return self._respond(url, status, json.dumps(payload), "application/json;charset=utf-8")

    def _error(self, url: str, status: int, code: str, description: str) -> Response:
        return self._json(url, status, {"chart": {"result": None, "error": {"code": code, "description": description}}})

    def _chart(self, url: str, symbol: str, params: dict) -> Response:
        interval = params.get("interval", "1d")
        market = self.markets.get((symbol, interval))
        if market is None and "range" in params:  # yfinance's time-zone probe (range=1d) fits any bars
            market = next((m for (s, _), m in self.markets.items() if s == symbol), None)
        if market is None:
            return self._error(url, 404, "Not Found", "No data found, symbol may be delisted")
        market = market[market.index <= self.now]
        if "range" in params:  # yfinance's time-zone probe: range=1d
            rows = market.iloc[-1:]
        else:
            period1, period2 = int(params["period1"]), int(params["period2"])
            days = self.LOOKBACK_DAYS.get(interval)
            if days is not None and period1 < _epoch(self.now - pd.Timedelta(days=days)):
                return self._error(url, 422, "Unprocessable Entity",
                                   f"{interval} data not available for startTime={period1} and endTime={period2}. "
                                   f"The requested range must be within the last {days} days.")
            stamps = _epochs(market.index)
            rows = market[(stamps >= period1) & (stamps < period2)]
        return self._json(url, 200, {"chart": {"result": [self._result(symbol, interval, market, rows)],
                                               "error": None}})

    def _result(self, symbol: str, interval: str, market: pd.DataFrame, rows: pd.DataFrame) -> dict:
        last, clock = market.iloc[-1], _period(self.now, "0h", "0h")
        meta = {
            "currency": "USD", "symbol": symbol, "exchangeName": "NMS", "fullExchangeName": "NasdaqGS",
            "instrumentType": "EQUITY", "firstTradeDate": _epoch(market.index[0]),
            "regularMarketTime": _epoch(market.index[-1]), "hasPrePostMarketData": True,
            "gmtoffset": clock["gmtoffset"], "timezone": clock["timezone"],
            "exchangeTimezoneName": NY, "regularMarketPrice": round(float(last["close"]), 4),
            "chartPreviousClose": round(float(market["close"].iloc[-2]), 4), "priceHint": 2,
            "currentTradingPeriod": {"pre": _period(self.now, "4h", "9h30min"),
                                     "regular": _period(self.now, "9h30min", "16h"),
                                     "post": _period(self.now, "16h", "20h")},
            "dataGranularity": interval, "range": "",
            "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
        }
        if interval[-1] in "mh":
            days = pd.DatetimeIndex(rows.index.tz_convert(NY).normalize().unique())
            meta["tradingPeriods"] = [[_period(d, "9h30min", "16h")] for d in days]
        result: dict = {"meta": meta, "timestamp": _epochs(rows.index).tolist(),
                        "indicators": {"quote": [{c: rows[c].tolist() for c in ("open", "high", "low", "close")}
                                                 | {"volume": rows["volume"].astype("int64").tolist()}],
                                       "adjclose": [{"adjclose": rows["adjclose"].tolist()}]}}
        paid = rows[rows["dividend"] > 0]
        if len(paid):
            result["events"] = {"dividends": {str(_epoch(t)): {"amount": float(d), "date": _epoch(t)}
                                              for t, d in paid["dividend"].items()}}
        return result


@pytest.fixture()
def yahoo(workspace, monkeypatch):
    """yfinance's real code over the fake HTTP session; its caches in the workspace; instant retries."""
    cache_dir = workspace / "yf-cache"
    # yfinance keeps its time-zone and cookie databases in module singletons; send them to the workspace
    # (never ~/.cache/py-yfinance) and drop the singletons so they reopen there, and again afterwards.
    for manager in (yf_cache._TzDBManager, yf_cache._CookieDBManager, yf_cache._ISINDBManager):
        monkeypatch.setattr(manager, "_cache_dir", manager._cache_dir)
    monkeypatch.setattr(yf_cache._TzCacheManager, "_tz_cache", None)
    monkeypatch.setattr(yf_cache._CookieCacheManager, "_Cookie_cache", None)
    yf.set_tz_cache_location(str(cache_dir))
    monkeypatch.setattr(yf_base, "_tz_info_fetch_ctr", 0)
    data = YfData()
    YfData.cache_get.cache_clear()  # yfinance memoises past-range chart answers per process
    fake = FakeYahooHTTP(now=pd.Timestamp("2016-10-03 21:00", tz="UTC"))
    monkeypatch.setattr(data._session, "get", fake.get)
    monkeypatch.setattr(data._session, "post", fake.post)
    for attribute, value in (("_crumb", None), ("_cookie", None), ("_cookie_strategy", "basic")):
        monkeypatch.setattr(data, attribute, value)
    monkeypatch.setattr(sources, "_utcnow", lambda: fake.now.tz_localize(None).to_pydatetime())
    monkeypatch.setattr(sources, "_sleep", fake.sleeps.append)
    fake.cache_dir = cache_dir
    yield fake
    YfData.cache_get.cache_clear()
    for manager in (yf_cache._TzDBManager, yf_cache._CookieDBManager, yf_cache._ISINDBManager):
        manager.close_db()
        manager._db = None


def _expected_store(served: pd.DataFrame) -> pd.DataFrame:
    """What auto_adjust=True makes of Yahoo's bars: OHLC scaled by adjclose / close, close = adjclose."""
    ratio = served["adjclose"] / served["close"]
    out = pd.DataFrame({c: served[c] * ratio for c in ("open", "high", "low")})
    out["close"] = served["adjclose"]
    out["volume"] = served["volume"].astype("int64").astype("float64")
    out.index = served.index.tz_convert(NY).tz_localize(None).normalize().rename("timestamp")
    return out[["open", "high", "low", "close", "volume"]]


def test_first_download_parses_yahoos_json_into_adjusted_splits(yahoo, workspace):
    market = _daily_market(450, seed=11, start="2015-01-02")
    yahoo.markets[("AAPL", "1d")] = market
    served = market[market.index <= yahoo.now]
    assert data_pipeline.main(["--symbols", "AAPL", "--update-data", "--quiet"]) == 0

    calls = yahoo.chart_calls("AAPL")
    assert len(calls) == 1 and calls[0]["params"]["interval"] == "1d"
    assert calls[0]["params"]["crumb"] == "fAkEcRuMb.1" and calls[0]["params"]["includePrePost"] is False
    assert int(calls[0]["params"]["period1"]) == _epoch(pd.Timestamp("1970-01-02", tz=NY))
    assert {r["host"] for r in yahoo.requests} <= {"fc.yahoo.com", "query1.finance.yahoo.com",
                                                    "query2.finance.yahoo.com"}
    expected = _expected_store(served)
    assert not np.allclose(expected["close"], served["close"])  # the dividends really adjust the history
    store = sources.read_store("AAPL", "1d")
    pd.testing.assert_frame_equal(store, expected, check_freq=False, rtol=1e-12)
    # The split files carry the same prices, on the exchange's dates.
    manifest = datafeed.load_manifest("AAPL", "1d")
    assert manifest["source"] == "yahoo" and manifest["source_info"]["auto_adjust"] is True
    for split in ("train", "val", "test"):
        frame = datafeed.load_split("AAPL", "1d", split)
        assert len(frame) == manifest["ranges"][split]["rows"] > 0
        pd.testing.assert_frame_equal(frame[expected.columns], expected.loc[frame.index], check_freq=False,
                                      rtol=1e-9)
    assert (yahoo.cache_dir / "tkr-tz.db").exists()  # yfinance's caches live in the workspace


def test_incremental_update_asks_from_just_before_the_last_bar(yahoo, workspace):
    market = _daily_market(520, seed=12, start="2014-10-01")
    yahoo.markets[("MSFT", "1d")] = market
    first_now = yahoo.now
    yahoo.now = first_now - pd.Timedelta(days=30)
    assert data_pipeline.main(["--symbols", "MSFT", "--update-data", "--quiet"]) == 0
    before = sources.read_store("MSFT", "1d")
    yahoo.now = first_now
    YfData.cache_get.cache_clear()
    yahoo.requests.clear()
    assert data_pipeline.main(["--symbols", "MSFT", "--update-data", "--quiet"]) == 0

    calls = yahoo.chart_calls("MSFT")
    assert len(calls) == 1
    last_stored = before.index[-1]
    assert int(calls[0]["params"]["period1"]) == _epoch((last_stored - pd.Timedelta(days=10)).tz_localize(NY))
    store = sources.read_store("MSFT", "1d")
    expected = _expected_store(market[market.index <= yahoo.now])
    assert store.index.is_unique and store.index.is_monotonic_increasing and len(store) > len(before)
    pd.testing.assert_frame_equal(store, expected, check_freq=False, rtol=1e-12)
    meta = json.loads(sources.raw_store_path("MSFT", "1d").with_suffix(".meta.json").read_text())
    assert meta["new_rows"] == len(store) - len(before) > 0


@pytest.mark.parametrize("failure", ["unknown symbol", "rate limited"])
def test_yahoo_refusal_fails_in_one_line_naming_other_sources(yahoo, workspace, capsys, failure):
    if failure == "rate limited":
        yahoo.markets[("ZZZZ", "1d")] = _daily_market(100, seed=1, start="2016-05-02")
        yahoo.rate_limited = True
    assert data_pipeline.main(["--symbols", "ZZZZ", "--update-data", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: ZZZZ: Yahoo returned no data for ZZZZ")
    assert "--source sample" in err[0] and "--source csv" in err[0] and "--source synthetic" in err[0]
    probes = yahoo.chart_calls("ZZZZ", ranged=False)
    if failure == "rate limited":
        # yfinance retries a 429 once with its other cookie strategy, then raises YFRateLimitError (from its
        # time-zone probe, before any ranged request); the pipeline then waits five times longer.
        assert len(probes) >= 4 and not yahoo.chart_calls("ZZZZ")
        assert yahoo.sleeps == [5 * d for d in sources.RETRY_DELAYS] and "Too Many Requests" in err[0]
    else:
        # Yahoo's 404 makes yfinance log "possibly delisted" (to the log file only) and return no rows.
        assert probes and not yahoo.chart_calls("ZZZZ") and yahoo.sleeps == list(sources.RETRY_DELAYS)
    assert not (workspace / "data" / "ZZZZ_1d_manifest.json").exists()
    assert not sources.raw_store_path("ZZZZ", "1d").exists()


def test_hourly_request_stays_inside_yahoos_730_day_window(yahoo, workspace):
    days = pd.bdate_range(end=yahoo.now.tz_localize(None).normalize(), periods=800)
    yahoo.markets[("AAPL", "1h")] = _hourly_market(days, seed=5)
    assert data_pipeline.main(["--symbols", "AAPL", "--interval", "1h", "--start", "2010-01-01",
                               "--update-data", "--quiet"]) == 0
    calls = yahoo.chart_calls("AAPL")
    assert len(calls) == 1 and calls[0]["params"]["interval"] == "1h"
    period1 = int(calls[0]["params"]["period1"])
    window_start = _epoch(yahoo.now - pd.Timedelta(days=730))
    assert window_start <= period1 <= window_start + 2 * 86400  # as far back as Yahoo allows, no further
    store = sources.read_store("AAPL", "1h")
    served = yahoo.markets[("AAPL", "1h")]
    served = served[(_epochs(served.index) >= period1) & (served.index <= yahoo.now)]
    assert len(store) == len(served)
    assert (store.index == served.index.tz_localize(None)).all()  # UTC bar starts, as Yahoo stamps them
    np.testing.assert_allclose(store["close"], served["close"], rtol=1e-12)
