"""Symbol validation: symbols become file names, so path tricks and odd characters are refused.

File names come from :func:`safe_name`, which is injective: two different symbols never share a file.
"""
from __future__ import annotations

import re

from botcore.errors import UserError

# Yahoo spellings include BRK-B, ^GSPC, EURUSD=X, BTC-USD, 7203.T
_SYMBOL_RE = re.compile(r"[A-Za-z0-9^][A-Za-z0-9.\-=^_]{0,19}")

# Characters kept out of file names, written as %XX (their hex code, as in URLs). "%" is never part of a
# symbol, so the mapping is injective; "_" is escaped too because file names use it to separate the symbol
# from the interval and the rest (``{name}_{interval}_train_data.csv``). Letters, digits, "." and "-" stay.
_ESCAPED = {"=": "%3D", "^": "%5E", "_": "%5F"}


def validate_symbol(symbol: str) -> str:
    """Return the symbol upper-cased, or raise UserError when it cannot be a ticker."""
    if not isinstance(symbol, str) or not _SYMBOL_RE.fullmatch(symbol) or ".." in symbol:
        raise UserError(
            f"invalid symbol {symbol!r}: use 1-20 characters from letters, digits and . - = ^ _ (no spaces or "
            "control characters), e.g. AAPL, BRK-B, EURUSD=X, ^GSPC"
        )
    return symbol.upper()


def safe_name(symbol: str) -> str:
    """File-name form of a validated symbol: ``GOOGL`` -> ``GOOGL``, ``BRK-B`` -> ``BRK-B``,
    ``EURUSD=X`` -> ``EURUSD%3DX``, ``^GSPC`` -> ``%5EGSPC``, ``MY_CO`` -> ``MY%5FCO``."""
    return "".join(_ESCAPED.get(ch, ch) for ch in validate_symbol(symbol))
