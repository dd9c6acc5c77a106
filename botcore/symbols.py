"""Symbol validation: symbols become file names, so path tricks and odd characters are refused."""
from __future__ import annotations

import re

from botcore.errors import UserError

# Yahoo spellings include BRK-B, ^GSPC, EURUSD=X, BTC-USD, 7203.T
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9.\-=^_]{0,19}$")


def validate_symbol(symbol: str) -> str:
    """Return the symbol upper-cased, or raise UserError when it cannot be a ticker."""
    if not isinstance(symbol, str) or not _SYMBOL_RE.match(symbol) or ".." in symbol:
        raise UserError(
            f"invalid symbol {symbol!r}: use 1-20 characters from letters, digits and . - = ^ _ "
            "(e.g. AAPL, BRK-B, EURUSD=X, ^GSPC)"
        )
    return symbol.upper()


def safe_name(symbol: str) -> str:
    """File-name form of a validated symbol (``^`` and ``=`` are kept out of file names)."""
    return validate_symbol(symbol).replace("^", "IDX_").replace("=", "_")
