"""Markets and bar intervals: which market a symbol trades in and how many bars make a year.

Annualisation follows the data's bar interval and market, never a fixed 252:
- equity: 252 trading days, sessions of 6.5 hours (390 minutes);
- fx: about 260 trading days of 24 hours (the market is closed at weekends);
- crypto: 365 days of 24 hours.
"""
from __future__ import annotations

_CURRENCIES = {"USD", "EUR", "JPY", "GBP", "CHF", "AUD", "CAD", "NZD", "SEK", "NOK", "DKK", "HKD", "SGD",
               "CNY", "CNH", "MXN", "ZAR", "TRY", "PLN", "INR", "KRW", "BRL"}
_CRYPTO = {"BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "LTC", "BNB", "DOT", "AVAX"}

INTERVAL_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "1d": 1440}
_DAYS_PER_YEAR = {"equity": 252.0, "fx": 260.0, "crypto": 365.0}
_MINUTES_PER_SESSION = {"equity": 390.0, "fx": 1440.0, "crypto": 1440.0}


def infer_market(symbol: str) -> str:
    """``"fx"`` for currency pairs (EURUSD, EURUSD=X), ``"crypto"`` for BTC-USD and the like, else ``"equity"``."""
    s = symbol.upper()
    if s.endswith("=X"):
        return "fx"
    base = s.split("-")[0]
    if base in _CRYPTO or s.endswith("-USDT"):
        return "crypto"
    if len(s) == 6 and s[:3] in _CURRENCIES and s[3:] in _CURRENCIES:
        return "fx"
    return "equity"


def bars_per_day(interval: str, market: str) -> float:
    """Bars in one trading day (1 for daily bars; 6.5 for hourly equity bars)."""
    if interval == "1d":
        return 1.0
    return _MINUTES_PER_SESSION[market] / INTERVAL_MINUTES[interval]


def periods_per_year(interval: str, market: str) -> float:
    """Bars per year for the annualisation of returns, volatility and Sharpe ratios."""
    if interval not in INTERVAL_MINUTES:
        raise ValueError(f"unknown interval {interval!r}; use one of {', '.join(INTERVAL_MINUTES)}")
    if market not in _DAYS_PER_YEAR:
        raise ValueError(f"unknown market {market!r}; use equity, fx or crypto")
    return _DAYS_PER_YEAR[market] * bars_per_day(interval, market)


def is_intraday(interval: str) -> bool:
    return interval != "1d"
