"""Markets and bar intervals: which market a symbol trades in and how many bars make a year.

Annualisation follows the data's bar interval and market, never a fixed 252:
- equity: 252 trading days, sessions of 6.5 hours (390 minutes);
- fx: about 260 trading days of 24 hours (the market is closed at weekends);
- crypto: 365 days of 24 hours.

Trading costs default per market too (:data:`MARKET_COSTS`, :func:`resolve_costs`): FX pays a spread and no
commission, crypto a taker fee, equities a commission; a number in ``data.costs`` overrides them.
"""
from __future__ import annotations

from collections.abc import Mapping

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


# --- trading costs ---------------------------------------------------------------------------------------

COST_KEYS = ("commission_rate", "commission_min", "slippage_bps", "spread_bps")
"""The keys of ``data.costs`` in training_config.json (and the cost fields of rl_env.config.EnvConfig)."""

MARKET_COSTS: dict[str, dict[str, float]] = {
    # US equities and ETFs through a retail or small institutional broker: 5 bp of notional per fill covers
    # commission plus regulatory fees conservatively; spread and impact of a liquid large cap: 1 bp slippage.
    "equity": {"commission_rate": 0.0005, "commission_min": 0.0, "slippage_bps": 1.0, "spread_bps": 0.0},
    # Spot FX majors: dealers charge no commission, they earn the spread. About 1 pip on EURUSD (1 pip = 0.0001
    # at ~1.10, i.e. 0.9 bp; JPY crosses alike in basis points) is a typical retail spread for the majors, half
    # of it paid per market order, plus 0.5 bp slippage on an hourly bar's open.
    "fx": {"commission_rate": 0.0, "commission_min": 0.0, "slippage_bps": 0.5, "spread_bps": 1.0},
    # Crypto spot on a large exchange: a 0.10% taker fee at the base tier, a 2 bp quoted spread on BTC or ETH,
    # 1 bp slippage.
    "crypto": {"commission_rate": 0.001, "commission_min": 0.0, "slippage_bps": 1.0, "spread_bps": 2.0},
}
"""Cost defaults per market: a ``data.costs`` value of null means "this market's default"; a number in the
config (or ``--set data.costs.KEY=VALUE``) applies to every market instead. Reasoning in the guide."""

MARKET_DEFAULT = "market default"
FROM_CONFIG = "config"


class Costs:
    """The trading costs that apply to one market and where each value came from.

    :param market: equity, fx or crypto.
    :param values: ``commission_rate`` (fraction of notional), ``commission_min`` (currency per fill),
        ``slippage_bps`` and ``spread_bps`` (basis points; half the spread is paid per market order).
    :param sources: per key, ``market default`` or ``config``.
    """

    def __init__(self, market: str, values: dict[str, float], sources: dict[str, str]):
        self.market, self.values, self.sources = market, values, sources

    def statement(self) -> str:
        """One line for reports, e.g. ``fx costs: commission 0 bp (fx default), minimum 0 (fx default), ...``."""
        def origin(key: str) -> str:
            return f"{self.market} default" if self.sources[key] == MARKET_DEFAULT else "config data.costs"

        v = self.values
        parts = [f"commission {v['commission_rate'] * 1e4:g} bp of notional ({origin('commission_rate')})",
                 f"minimum commission {v['commission_min']:g} per fill ({origin('commission_min')})",
                 f"slippage {v['slippage_bps']:g} bp ({origin('slippage_bps')})",
                 f"spread {v['spread_bps']:g} bp, half paid per market order ({origin('spread_bps')})"]
        return f"{self.market} costs: " + ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """For results files: the market, the values, their sources and the statement."""
        return {"market": self.market, **self.values, "sources": dict(self.sources), "statement": self.statement()}


def resolve_costs(configured: Mapping[str, float | None], market: str) -> Costs:
    """The costs of ``market``: each ``data.costs`` value that is a number wins (an explicit choice, for every
    market), each null takes the market's default from :data:`MARKET_COSTS`."""
    if market not in MARKET_COSTS:
        raise ValueError(f"unknown market {market!r}; use equity, fx or crypto")
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for key in COST_KEYS:
        given = configured.get(key)
        values[key] = float(MARKET_COSTS[market][key] if given is None else given)
        sources[key] = MARKET_DEFAULT if given is None else FROM_CONFIG
    return Costs(market, values, sources)
