"""Where bars come from: Yahoo Finance (with an incremental local store), the bundled samples, a user's CSV
file, and seeded synthetic generators. Each loader returns ``(frame, info)``: the raw OHLCV frame (see the
package docstring) and a dict describing the source, its range and its freshness for the manifest.

No loader ever falls back to another source: a failure is a ``DataError`` that says which sources exist.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from botcore import paths
from botcore.atomic import atomic_path, atomic_write_json
from botcore.config import MAX_SYNTHETIC_BARS
from botcore.errors import DataError, UserError
from botcore.markets import INTERVAL_MINUTES
from botcore.symbols import safe_name

logger = logging.getLogger(__name__)

OHLCV = ["open", "high", "low", "close", "volume"]
OTHER_SOURCES = "--source sample (GOOGL 1d, EURUSD 1h), --source csv --csv FILE or --source synthetic"

# --- bundled samples ------------------------------------------------------------------------------

# Real bars from the MIT-licensed gym-anytrading package (see sample_data/LICENSE_gym-anytrading.txt).
# EURUSD's Time column is read as UTC.
_SAMPLES: dict[str, tuple[str, str]] = {"GOOGL": ("GOOGL_1d.csv", "1d"), "EURUSD": ("EURUSD_1h.csv", "1h")}


def sample_symbols() -> dict[str, str]:
    """Bundled sample symbols and their bar interval, e.g. ``{"GOOGL": "1d", "EURUSD": "1h"}``."""
    return {sym: interval for sym, (_, interval) in _SAMPLES.items()}


def load_sample(symbol: str, interval: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load a bundled sample.

    :param symbol: a symbol of :func:`sample_symbols`.
    :param interval: the interval the caller needs; ``None`` takes the sample's own interval.
    """
    listing = ", ".join(f"{s} ({i})" for s, i in sample_symbols().items())
    if symbol not in _SAMPLES:
        raise DataError(f"no bundled sample for {symbol}; samples exist for: {listing}")
    file_name, own_interval = _SAMPLES[symbol]
    if interval is not None and interval != own_interval:
        raise DataError(f"the {symbol} sample has {own_interval} bars, not {interval}; "
                        f"use --interval {own_interval} or leave --interval out (samples: {listing})")
    frame, info = load_csv(paths.SAMPLE_DATA_DIR / file_name)
    info.update(source="sample", interval=own_interval, file=file_name,
                license="MIT, gym-anytrading (sample_data/LICENSE_gym-anytrading.txt)")
    return frame, info


# --- CSV files ------------------------------------------------------------------------------------

_ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "datetime", "date time", "date", "time", "gmt time", "local time", "dt"),
    "open": ("open", "o", "open price"),
    "high": ("high", "h", "high price"),
    "low": ("low", "l", "low price"),
    "close": ("close", "c", "close price", "last", "price"),
    "adj_close": ("adj close", "adjclose", "adjusted close", "adj close price"),
    "volume": ("volume", "vol", "v", "volume usd"),
}
_DATE_FORMATS = (
    "ISO8601", "%d.%m.%Y %H:%M:%S.%f", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y",
    "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y",
    "%Y/%m/%d %H:%M:%S", "%Y/%m/%d", "%Y.%m.%d %H:%M:%S", "%Y.%m.%d", "%Y%m%d", "%d-%b-%Y", "%b %d, %Y",
)


def _canonical(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


def load_csv(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a user's OHLCV file.

    Accepted: a date column named Date, Datetime, Time, Timestamp (or separate Date and Time columns),
    Open/High/Low/Close in any case, an optional Adj Close (prices are then adjusted by Adj Close / Close,
    like Yahoo's ``auto_adjust``), an optional Volume (missing means 0). Dates may be ISO 8601 (with or
    without a UTC offset), ``dd.mm.yyyy HH:MM:SS.fff``, ``mm/dd/yyyy``, ``dd/mm/yyyy``, ``yyyymmdd`` or Unix
    seconds/milliseconds; naive times are taken as UTC, and a file must not mix naive times with times that
    carry an offset. Prices and volumes must be finite numbers (``inf`` is refused; empty cells are missing
    values, repaired or dropped by cleaning). Errors name the file, the line and the column.

    Speed: a file whose numbers are all plain finite numbers (no empty cells, nothing odd) is read in one pass
    with the numbers parsed by pandas' C reader (:func:`_read_typed`); any other file is read as text and
    checked cell by cell, which is what names the bad line and column. Both give the same frame.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    typed = _read_typed(path)
    raw = typed if typed is not None else _read_text(path)
    found, columns = _find_columns(raw, path)
    if raw.empty:
        raise DataError(f"{path}: has a header but no rows")
    date_column = found["timestamp"]
    combined = _canonical(date_column) == "date" and "time" in columns and columns["time"] != date_column
    plain = None if combined else _plain_iso_dates(raw[date_column])
    if plain is None:
        date_text = raw[date_column].str.strip()
        if combined:
            date_text = date_text + " " + raw[columns["time"]].str.strip()
            date_column = f"{date_column}+{columns['time']}"
    numbers: dict[str, np.ndarray] = {}
    if typed is not None:  # already numbers, checked: the text of the file can go before the dates are read
        numbers = {role: raw[found[role]].to_numpy(dtype="float64") for role in _NUMBER_ROLES if role in found}
        del raw, typed
    if plain is not None:
        index, date_format = plain, "ISO8601"
    else:
        index, date_format = _parse_dates(date_text, path, date_column)
        del date_text
    if not numbers:  # the careful reading: after the dates, so a bad date is reported first, as always
        numbers = {role: _parse_numbers(raw[found[role]], path, found[role]).to_numpy(dtype="float64")
                   for role in _NUMBER_ROLES if role in found}
    frame = pd.DataFrame(numbers, index=index, copy=False)
    if "volume" not in frame:
        frame["volume"] = 0.0
    adjusted = False
    if "adj_close" in frame:
        factor = frame["adj_close"] / frame["close"]
        broken = ~np.isfinite(factor) & frame["adj_close"].notna() & frame["close"].notna()
        if broken.any():
            row = int(np.flatnonzero(broken.to_numpy())[0])
            raise DataError(f"{path}: line {row + 2}: Adj Close / Close = {frame['adj_close'].iloc[row]!r} / "
                            f"{frame['close'].iloc[row]!r} is not a finite factor; fix that row or drop the "
                            "Adj Close column")
        if ((factor - 1).abs() > 1e-9).any():
            for col in ("open", "high", "low", "close"):
                frame[col] = frame[col] * factor
            adjusted = True
        frame = frame.drop(columns="adj_close")
    frame.index.name = "timestamp"
    info = {"source": "csv", "file": str(path), "rows_read": len(frame), "date_format": date_format,
            "adjusted_by_adj_close": adjusted, "volume_present": "volume" in found}
    return frame[OHLCV].astype("float64"), info


_READ_OPTIONS: dict[str, Any] = {"keep_default_na": False, "skipinitialspace": True}


def _read_text(path: Path) -> pd.DataFrame:
    """Every cell as text (the careful reading: each cell is then checked, and an error names it)."""
    try:
        return pd.read_csv(path, dtype=str, **_READ_OPTIONS)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({str(exc).strip().splitlines()[0]})") from exc


def _find_columns(raw: pd.DataFrame, path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The column of each role (``timestamp``, ``open``, ...) and every column by its canonical name."""
    columns = {_canonical(c): c for c in raw.columns}
    found: dict[str, str] = {}
    for role, names in _ALIASES.items():
        for name in names:
            if name in columns and columns[name] not in found.values():
                found[role] = columns[name]
                break
    missing = [r for r in ("timestamp", "open", "high", "low", "close") if r not in found]
    if missing:
        found_names = ", ".join(c if c.isprintable() else repr(c) for c in map(str, raw.columns))
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {found_names} "
                        "(expected Date/Datetime/Time/Timestamp, Open, High, Low, Close, optional Adj Close, Volume)")
    return found, columns


_NUMBER_ROLES = ("open", "high", "low", "close", "adj_close", "volume")
_EXACT_INTEGERS = 2.0**53  # below this, a whole number parses to the same float by every route


def _read_typed(path: Path) -> pd.DataFrame | None:
    """The file read once with its number columns parsed as float64 by pandas' C reader; None when the file
    needs the careful reading (:func:`_read_text`), which then decides what is read or what is wrong.

    The C reader converts a number with the same routine (``precise_xstrtod``) that ``pd.to_numeric`` uses
    on the text, so a plain number gives the same float either way. Anything where the two routes could part
    is sent to the careful reading: a cell that is not a number, an empty or missing cell (NaN), infinities,
    ``-0``, whole numbers beyond 2**53, a row the header does not describe.
    """
    # As the careful reading but for ``skipinitialspace``, which costs pandas a fifth of its time: a number cell
    # with spaces before it is still read as that number (or sent to the careful reading), and a date cell with
    # spaces misses Arrow's layout and is read by the stripping date parser.
    options = {**_READ_OPTIONS, "skipinitialspace": False}
    try:
        header = pd.read_csv(path, dtype=str, nrows=0, **options)
        found, _ = _find_columns(header, path)
        names = list(header.columns)
        numbers = [found[role] for role in _NUMBER_ROLES if role in found]
        if len(set(names)) != len(names):
            return None
        # Only the number columns get a dtype: naming ``str`` for the others costs pandas a slow conversion,
        # and text columns come out as ``str`` anyway (checked below; the careful reading takes the others).
        # pandas' own threads (as many as ``mode.max_threads``, the cores by default): the same parser and values
        # as one thread, in about half the time on two cores. Its higher peak while reading (each chunk is held
        # twice) stays below the peak of the feature stage.
        # No NA matching at all (``na_filter``): no cell is NaN here, an empty number cell fails to parse and
        # goes to the careful reading, as with ``keep_default_na`` alone, and the reading takes 20% less time.
        frame = pd.read_csv(path, dtype=dict.fromkeys(numbers, "float64"), na_filter=False, **options)
    except (ValueError, TypeError, OverflowError, DataError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError):
        return None
    if list(frame.columns) != names or not isinstance(frame.index, pd.RangeIndex) or frame.empty:
        return None
    if any(frame[name].dtype != header[name].dtype for name in names if name not in numbers):
        return None  # e.g. Unix times, read as numbers: the careful reading keeps them as the text they were
    for name in numbers:
        values = frame[name].to_numpy()
        if values.dtype != np.float64 or not (np.abs(values) < _EXACT_INTEGERS).all():  # NaN and inf fail here
            return None
        if np.signbit(values[values == 0]).any():
            return None
    return frame


_SAMPLE_ROWS = 1000
"""Dates: the candidate formats are tried on this many rows (the first half and an even spread); the column is
then parsed with each format that read the whole sample: once, in a file of one format."""
_HEAD_ROWS = 20


def _date_sample(text: pd.Series) -> pd.Series:
    n = len(text)
    if n <= _SAMPLE_ROWS:
        return text
    rows = np.unique(np.concatenate([np.arange(_SAMPLE_ROWS // 2),
                                     np.linspace(0, n - 1, _SAMPLE_ROWS // 2).astype(np.int64)]))
    return text.iloc[rows]


_PLAIN_ISO_LAYOUTS = {10: "dddd-dd-dd", 16: "dddd-dd-dd_dd:dd", 19: "dddd-dd-dd_dd:dd:dd"}
"""``YYYY-MM-DD``, optionally `` HH:MM`` or `` HH:MM:SS`` (``_``: a space or ``T``): no fraction, no offset."""


def _plain_iso_dates(text: pd.Series) -> pd.DatetimeIndex | None:
    """The dates of a column whose cells all have one of the :data:`_PLAIN_ISO_LAYOUTS`, parsed by Arrow in
    one pass over its own strings (a million rows in a few hundredths of a second, where pandas' ISO parser
    takes a quarter of a second); None for any other column (or a date Arrow refuses, such as 2021-02-29),
    which :func:`_parse_dates` then reads.

    For such a column the result is the one :func:`_parse_dates` gives, format ``ISO8601``: no other candidate
    format reads a ``YYYY-MM-DD`` date, a plain time carries no offset, and pandas and Arrow both read the
    calendar date and time as written, as UTC (tests/test_pipeline_speed_paths.py holds the two equal).
    """
    if not isinstance(text.dtype, pd.StringDtype) or not len(text):
        return None
    try:
        strings = pa.chunked_array(pa.array(text.array))
        if strings.null_count or not _all_in_layout(strings):
            return None
        stamps = pc.cast(pc.cast(strings, pa.timestamp("s")), pa.timestamp("us"))
    except (pa.ArrowException, TypeError, ValueError):  # not Arrow strings, or an impossible date
        return None
    return pd.DatetimeIndex(stamps.to_numpy())


def _all_in_layout(strings: pa.ChunkedArray) -> bool:
    """Whether every string has the same length and one of the :data:`_PLAIN_ISO_LAYOUTS`, byte for byte:
    the strings of one length lie end to end in Arrow's buffer, checked as the columns of a byte matrix."""
    large = pa.types.is_large_string(strings.type)
    if not (large or pa.types.is_string(strings.type)):
        return False
    widths = pc.min_max(pc.binary_length(strings)).as_py()
    layout = _PLAIN_ISO_LAYOUTS.get(widths["min"]) if widths["min"] == widths["max"] else None
    if layout is None:
        return False
    digits = [i for i, c in enumerate(layout) if c == "d"]
    for chunk in strings.chunks:
        if not len(chunk):
            continue
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64 if large else np.int32)
        first, end = int(offsets[chunk.offset]), int(offsets[chunk.offset + len(chunk)])
        cells = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[first:end].reshape(len(chunk), len(layout))
        if ((cells[:, digits] - ord("0")) > 9).any():  # uint8: a byte below "0" wraps above 9
            return False
        for i, c in ((i, c) for i, c in enumerate(layout) if c != "d"):
            column = cells[:, i]
            if not ((column == ord(" ")) | (column == ord("T")) if c == "_" else column == ord(c)).all():
                return False
    return True


def _to_datetime(text: pd.Series, fmt: str) -> pd.Series | None:
    try:
        return pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
    except (ValueError, TypeError):
        return None


def _parse_dates(text: pd.Series, path: Path, column: str) -> tuple[pd.DatetimeIndex, str]:
    """Unix times, or the first of :data:`_DATE_FORMATS` that reads every row (day-first and month-first both
    fitting: the reading whose dates run forward most often).

    The formats are tried on a sample first; only those that read all of it are tried on the whole column
    (usually one), which is the rule applied to the whole column: a format that fails on a sampled row fails
    on the column. A column no format reads completely is searched as a whole, to name the first bad line.
    """
    sample = _date_sample(text)
    if pd.to_numeric(sample, errors="coerce").notna().all():  # else some row is not a number: not Unix times
        numeric = pd.to_numeric(text, errors="coerce")
        if numeric.notna().all() and numeric.min() > 1e8 and not text.str.fullmatch(r"\d{8}").all():
            unit = "ms" if numeric.max() > 1e11 else "s"
            stamps = pd.to_datetime(numeric.where(np.isfinite(numeric)), unit=unit, errors="coerce")
            if stamps.isna().any():
                row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
                raise DataError(f"{path}: line {row + 2}, column {column!r}: {text.iloc[row]!r} is not a Unix time "
                                "between 1677 and 2262 (use seconds or milliseconds since 1970, or YYYY-MM-DD dates)")
            return pd.DatetimeIndex(stamps), f"unix-{unit}"
    _refuse_mixed_offsets(text, path, column)
    sampled = len(sample) < len(text)
    head = text.iloc[:_HEAD_ROWS]
    complete: list[tuple[str, pd.Series]] = []
    for fmt in _DATE_FORMATS:
        parsed = _to_datetime(head, fmt) if sampled else None  # most formats fail on the first rows, cheaply
        if parsed is None or not parsed.isna().any():
            parsed = _to_datetime(sample, fmt)
        if parsed is not None and parsed.isna().any():
            continue  # it cannot read a sampled row, so it cannot read the column
        if sampled:
            parsed = _to_datetime(text, fmt)
        if parsed is not None and not parsed.isna().any():
            complete.append((fmt, parsed))
    if not complete:
        _refuse_unreadable_dates(text, path, column)
    # Day-first and month-first can both fit; keep the reading whose dates run forward most often.
    fmt, parsed = complete[0] if len(complete) == 1 else max(
        complete, key=lambda c: int((c[1].diff().dt.total_seconds() > 0).sum()))
    return pd.DatetimeIndex(parsed.dt.tz_convert("UTC").dt.tz_localize(None)), fmt


def _refuse_unreadable_dates(text: pd.Series, path: Path, column: str) -> None:
    """No format reads every row: name the first row the best format (fewest unread rows) cannot read."""
    best: tuple[int, pd.Series] | None = None
    for fmt in _DATE_FORMATS:
        parsed = _to_datetime(text, fmt)
        if parsed is not None and (best is None or int(parsed.isna().sum()) < best[0]):
            best = (int(parsed.isna().sum()), parsed)
    parsed = best[1] if best is not None else pd.Series(pd.NaT, index=text.index)
    row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
    raise DataError(f"{path}: line {row + 2}, column {column!r}: cannot read the date {text.iloc[row]!r} "
                    "(use YYYY-MM-DD or YYYY-MM-DD HH:MM:SS, optionally with a UTC offset)")


# A time followed by a UTC offset or Z: "10:00:00+05:00", "10:00+0500", "10:00:00.5 -05", "10:00:00Z".
_OFFSET_RE = r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"
# The same for RE2 (pyarrow) on ASCII text, with Python's meaning of \d and \s spelled out.
_OFFSET_RE_ASCII = _OFFSET_RE.replace(r"\d", "[0-9]").replace(r"\s", "[ \\t\\n\\r\\f\\v]")


def _refuse_mixed_offsets(text: pd.Series, path: Path, column: str) -> None:
    """Naive times are read as UTC; next to times with an offset they are almost surely local times, and
    reading them as UTC would shift and duplicate bars. Refuse the mix rather than guess."""
    aware = _has_offset(text)
    naive = ~aware & (text.fillna("").str.len() > 0).to_numpy(dtype=bool)  # an empty date is another error
    if aware.any() and naive.any():
        with_offset, without = int(np.flatnonzero(aware)[0]), int(np.flatnonzero(naive)[0])
        raise DataError(f"{path}: column {column!r} mixes times with a UTC offset (line {with_offset + 2}: "
                        f"{text.iloc[with_offset]!r}) and times without one (line {without + 2}: "
                        f"{text.iloc[without]!r}); give every time an offset, or none (naive times are read as UTC)")


def _has_offset(text: pd.Series) -> np.ndarray:
    """Which rows end in a UTC offset: RE2 over Arrow strings when the column is ASCII (a million rows in
    milliseconds), Python's ``re`` otherwise."""
    try:
        strings = pa.array(text.array) if isinstance(text.dtype, pd.StringDtype) else None
    except (pa.ArrowException, TypeError, ValueError):
        strings = None
    if strings is not None and pc.all(pc.string_is_ascii(strings)).as_py() is not False:
        matched = pc.match_substring_regex(strings, _OFFSET_RE_ASCII).fill_null(False)
        return matched.to_numpy(zero_copy_only=False).astype(bool)
    return text.str.contains(_OFFSET_RE, regex=True, na=False).to_numpy(dtype=bool)


_MISSING = ("", "null", "NaN", "nan", "NA")


def _parse_numbers(text: pd.Series, path: Path, column: str) -> pd.Series:
    stripped = text.fillna("").str.strip()  # a short row's missing cells are NaN, not ""
    missing = stripped.isin(_MISSING)
    values = pd.to_numeric(stripped.where(~missing, None), errors="coerce")
    bad = values.isna() & ~missing
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: line {row + 2}, column {column!r}: {text.iloc[row]!r} is not a number")
    infinite = np.isinf(values.to_numpy(dtype="float64"))
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise DataError(f"{path}: line {row + 2}, column {column!r}: {text.iloc[row]!r} is not a finite number; "
                        "fix or remove that row")
    return values.astype("float64")


# --- synthetic ------------------------------------------------------------------------------------

SYNTHETIC_KINDS = ("gbm", "regime", "jump")


def generate_synthetic(n_bars: int, seed: int, kind: str = "gbm", interval: str = "1d",
                       start: str = "2000-01-03") -> pd.DataFrame:
    """Seeded synthetic OHLCV bars (for tests, benchmarks and sanity checks; never used unless asked for).

    :param n_bars: number of bars.
    :param seed: the generator's seed; the same seed gives the same bars.
    :param kind: ``gbm`` (geometric Brownian motion, 7 % drift, 20 % volatility a year), ``regime`` (a
        two-state Markov switch between a calm rising market and a turbulent falling one) or ``jump``
        (GBM plus Poisson jumps, about 5 a year, mean -2 %, sd 5 %).
    :param interval: bar interval; daily bars fall on business days, intraday bars run round the clock.
    :param start: the first timestamp.
    """
    if kind not in SYNTHETIC_KINDS:
        raise UserError(f"unknown synthetic kind {kind!r}; use one of {', '.join(SYNTHETIC_KINDS)}")
    if interval not in INTERVAL_MINUTES:
        raise UserError(f"unknown interval {interval!r}; use one of {', '.join(INTERVAL_MINUTES)}")
    if not isinstance(n_bars, (int, np.integer)) or n_bars < 2:
        raise UserError(f"synthetic history needs at least 2 bars, not {n_bars!r}")
    if n_bars > MAX_SYNTHETIC_BARS:
        raise UserError(f"synthetic history of {n_bars:,} bars is too long; use at most {MAX_SYNTHETIC_BARS:,}")
    rng = np.random.default_rng(seed)
    if interval == "1d":
        index = pd.bdate_range(start=start, periods=n_bars)
        dt = 1.0 / 252.0
    else:
        index = pd.date_range(start=start, periods=n_bars, freq=f"{INTERVAL_MINUTES[interval]}min")
        dt = INTERVAL_MINUTES[interval] / (365.0 * 1440.0)
    z = rng.standard_normal(n_bars)
    if kind == "regime":
        # state 0: calm (+15 %/yr, 12 % vol), state 1: turbulent (-25 %/yr, 40 % vol); mean stays 250/60 bars.
        mu_s, sigma_s, leave = np.array([0.15, -0.25]), np.array([0.12, 0.40]), np.array([1 / 250, 1 / 60])
        switches = rng.random(n_bars)
        state = np.empty(n_bars, dtype=np.int64)
        s = 0
        for i in range(n_bars):
            if switches[i] < leave[s]:
                s = 1 - s
            state[i] = s
        mu, sigma = mu_s[state], sigma_s[state]
    else:
        mu, sigma = np.full(n_bars, 0.07), np.full(n_bars, 0.20)
    log_ret = (mu - 0.5 * sigma**2) * dt + sigma * np.sqrt(dt) * z
    if kind == "jump":
        jumps = rng.poisson(5.0 * dt, n_bars)
        log_ret += jumps * rng.normal(-0.02, 0.05, n_bars)
    log_ret[0] = 0.0
    close = 100.0 * np.exp(np.cumsum(log_ret))
    bar_sigma = sigma * np.sqrt(dt)
    open_ = np.concatenate([[100.0], close[:-1]]) * np.exp(0.1 * bar_sigma * rng.standard_normal(n_bars))
    high = np.maximum(open_, close) * np.exp(np.abs(0.5 * bar_sigma * rng.standard_normal(n_bars)))
    low = np.minimum(open_, close) * np.exp(-np.abs(0.5 * bar_sigma * rng.standard_normal(n_bars)))
    volume = np.round(1e6 * np.exp(0.3 * rng.standard_normal(n_bars) + 2.0 * np.abs(log_ret) / bar_sigma * 0.1))
    frame = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume},
                         index=pd.DatetimeIndex(index, name="timestamp"))
    return frame.astype("float64")


def load_synthetic(n_bars: int, seed: int, kind: str, interval: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    frame = generate_synthetic(n_bars, seed, kind=kind, interval=interval)
    return frame, {"source": "synthetic", "kind": kind, "seed": seed, "bars": n_bars}


# --- Yahoo Finance with an incremental local store ---------------------------------------------------

# How far back Yahoo serves intraday bars (days before today) and the longest span of one request.
YAHOO_MAX_DAYS = {"1m": 29, "5m": 59, "15m": 59, "30m": 59, "1h": 729}
YAHOO_REQUEST_DAYS = {"1m": 7}
# Each update re-fetches this many days before the last stored bar: a reachable Yahoo always returns rows
# (so an empty answer means failure, never "nothing new"), and changed adjustments show up in the overlap.
OVERLAP_DAYS = {"1d": 10}
OVERLAP_DAYS_INTRADAY = 4
RETRY_DELAYS = (2.0, 4.0, 8.0)  # seconds before the 2nd, 3rd and 4th attempt (rate limits: five times longer)
AUTO_ADJUST = True  # Yahoo's OHLC adjusted for splits and dividends (its default changed in 0.2.51: be explicit)

_sleep: Callable[[float], None] = time.sleep  # tests replace it to run retries instantly


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _fetch_yfinance(symbol: str, interval: str, start: datetime, end: datetime | None) -> pd.DataFrame:
    """The one place that talks to Yahoo (tests fake this function or yfinance's ``Ticker.history``)."""
    import yfinance as yf

    if interval != "1d":  # intraday times here are naive UTC; yfinance reads naive times as exchange-local
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start
        end = end.replace(tzinfo=UTC) if end is not None and end.tzinfo is None else end
    # Daily: start is an exchange date (the store keeps exchange dates) and end is a date or None (= now).
    return yf.Ticker(symbol).history(start=start, end=end, interval=interval, auto_adjust=AUTO_ADJUST,
                                     actions=False, prepost=False, repair=False)


def _yahoo_frame(frame: pd.DataFrame, interval: str) -> pd.DataFrame:
    if isinstance(frame.columns, pd.MultiIndex):  # yf.download style (field, ticker)
        frame = frame.droplevel(-1, axis=1)
    frame = frame.rename(columns=str.lower)
    missing = [c for c in OHLCV if c not in frame.columns]
    if missing:
        raise DataError(f"Yahoo's answer lacks column(s) {', '.join(missing)}")
    index = pd.DatetimeIndex(frame.index)
    if interval == "1d":  # daily bars are stamped midnight exchange time: keep the exchange's date
        index = (index.tz_localize(None) if index.tz is not None else index).normalize()
    elif index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    out = frame[OHLCV].astype("float64").set_axis(index.rename("timestamp"))
    return out.dropna(subset=["close"])


def _fetch_with_retries(symbol: str, interval: str, start: datetime, end: datetime | None) -> pd.DataFrame:
    last_problem = "no answer"
    for attempt in range(len(RETRY_DELAYS) + 1):
        if attempt:
            delay = RETRY_DELAYS[attempt - 1] * (5 if "rate" in last_problem.lower() else 1)
            logger.info("%s: retrying Yahoo in %.0f s (%s)", symbol, delay, last_problem)
            _sleep(delay)
        try:
            frame = _fetch_yfinance(symbol, interval, start, end)
        except Exception as exc:  # network, rate limit, Yahoo API change: all worth another try
            last_problem = f"{type(exc).__name__}: {exc}"
            logger.debug("Yahoo request failed", exc_info=True)
            continue
        if frame is not None and len(frame):
            return _yahoo_frame(frame, interval)
        last_problem = "empty answer"
    raise DataError(f"Yahoo returned no data for {symbol} ({interval}, from {start:%Y-%m-%d}) after "
                    f"{len(RETRY_DELAYS) + 1} attempts ({last_problem}): offline, rate limited, or an unknown "
                    "or delisted symbol")


def raw_store_path(symbol: str, interval: str) -> Path:
    """``data/raw/{SYMBOL}_{INTERVAL}.csv``: every bar fetched from Yahoo so far."""
    return paths.data_dir() / "raw" / f"{safe_name(symbol)}_{interval}.csv"


def read_store(symbol: str, interval: str) -> pd.DataFrame | None:
    path = raw_store_path(symbol, interval)
    if not path.exists():
        return None
    try:
        frame = pd.read_csv(path, index_col="timestamp", parse_dates=["timestamp"])
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: the local store is unreadable ({exc}); delete it to download afresh") from exc
    return frame[OHLCV].astype("float64") if len(frame) else None


def _write_store(symbol: str, interval: str, frame: pd.DataFrame, meta: dict[str, Any]) -> None:
    path = raw_store_path(symbol, interval)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, date_format="%Y-%m-%d %H:%M:%S")
    atomic_write_json(path.with_suffix(".meta.json"), meta)


def load_yahoo(symbol: str, interval: str, start: str | None = None, end: str | None = None,
               update: bool = True, now: datetime | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Bars from the local store, updated from Yahoo Finance first when ``update`` (or when there is no store).

    Only what is new is fetched (from a few days before the last stored bar) and appended, deduplicated, so
    intraday history grows beyond Yahoo's 30/60/730-day windows when updates run often enough. When Yahoo
    fails and the store has bars, the store is used and a warning says how stale it is.

    :param start: first date wanted for a first download (``None``: all Yahoo has).
    :param end: last date wanted (inclusive; ``None``: up to now).
    :param now: the current UTC time (tests fix it).
    """
    now = now or _utcnow()
    store = read_store(symbol, interval)
    store_file = raw_store_path(symbol, interval)
    info: dict[str, Any] = {"source": "yahoo", "store": str(store_file.relative_to(paths.workspace())),
                            "auto_adjust": AUTO_ADJUST}
    if store is not None and not update:
        age = (now - store.index[-1]).total_seconds() / 86400
        logger.info("%s: using the local store (%d bars, last %s, %.1f days old; --update-data fetches new bars)",
                    symbol, len(store), store.index[-1], age)
        return store, {**info, "updated": False, "last_bar": store.index[-1], "age_days": round(age, 2)}

    earliest = now - timedelta(days=YAHOO_MAX_DAYS[interval]) if interval in YAHOO_MAX_DAYS else None
    if store is not None:
        overlap = OVERLAP_DAYS.get(interval, OVERLAP_DAYS_INTRADAY)
        fetch_start = store.index[-1].to_pydatetime() - timedelta(days=overlap)
    else:
        fetch_start = pd.Timestamp(start).to_pydatetime() if start else datetime(1970, 1, 2)
    if earliest is not None and fetch_start < earliest:
        if store is None and start:
            logger.warning("%s: Yahoo keeps %s bars for only %d days; fetching from %s, not %s (run updates "
                           "regularly to grow a longer history in %s)", symbol, interval, YAHOO_MAX_DAYS[interval],
                           f"{earliest:%Y-%m-%d}", start, info["store"])
        fetch_start = earliest
    fetch_end = (pd.Timestamp(end) + pd.Timedelta(days=1)).to_pydatetime() if end else None

    try:
        fresh = _fetch_span(symbol, interval, fetch_start, fetch_end, now)
    except DataError as exc:
        if store is None:
            raise DataError(f"{symbol}: {exc}; no local store at {info['store']} to fall back on. "
                            f"Other sources: {OTHER_SOURCES}") from exc
        age = (now - store.index[-1]).total_seconds() / 86400
        logger.warning("%s: Yahoo failed (%s); using the local store instead: %d bars, the last from %s, "
                       "%.1f days old", symbol, exc, len(store), store.index[-1], age)
        return store, {**info, "updated": False, "update_failed": str(exc), "last_bar": store.index[-1],
                       "age_days": round(age, 2)}

    merged, new_rows = _merge_into_store(symbol, store, fresh)
    meta = {"symbol": symbol, "interval": interval, "auto_adjust": AUTO_ADJUST, "last_fetch_utc": now,
            "rows": len(merged), "first": merged.index[0], "last": merged.index[-1], "new_rows": new_rows}
    _write_store(symbol, interval, merged, meta)
    age = (now - merged.index[-1]).total_seconds() / 86400
    logger.info("%s: Yahoo gave %d bars, %d new; the store holds %d (%s .. %s)", symbol, len(fresh), new_rows,
                len(merged), merged.index[0], merged.index[-1])
    return merged, {**info, "updated": True, "new_rows": new_rows, "fetched_at": now,
                    "last_bar": merged.index[-1], "age_days": round(age, 2)}


def _fetch_span(symbol: str, interval: str, start: datetime, end: datetime | None, now: datetime
                ) -> pd.DataFrame:
    """Bars from ``start`` to ``end`` (``None``: up to ``now``, UTC), in requests no longer than Yahoo allows."""
    step = YAHOO_REQUEST_DAYS.get(interval)
    if step is None:
        return _fetch_with_retries(symbol, interval, start, end)
    end = end or now
    parts, errors = [], []
    cursor = start
    while cursor < end:
        stop = min(cursor + timedelta(days=step), end)
        try:
            parts.append(_fetch_with_retries(symbol, interval, cursor, stop))
        except DataError as exc:  # a week without bars (holidays) is not a failure unless all are empty
            errors.append(str(exc))
        cursor = stop
    if not parts:
        raise DataError(errors[-1] if errors else f"Yahoo returned no data for {symbol}")
    return pd.concat(parts)


def _merge_into_store(symbol: str, store: pd.DataFrame | None, fresh: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    fresh = fresh[~fresh.index.duplicated(keep="last")].sort_index()
    if store is None:
        return fresh, len(fresh)
    common = store.index.intersection(fresh.index)
    if len(common):
        first = common[0]
        ratio = fresh.at[first, "close"] / store.at[first, "close"]
        if abs(ratio - 1) > 1e-4:
            # Yahoo's adjusted prices shift backwards after a split or dividend: keep the store consistent.
            older = store.index < first
            store = store.copy()
            store.loc[older, ["open", "high", "low", "close"]] *= ratio
            logger.warning("%s: Yahoo's adjusted prices changed since the last update (split or dividend, "
                           "factor %.6f); rescaled %d stored bars", symbol, ratio, int(older.sum()))
    else:
        logger.warning("%s: the new bars start %s but the store ends %s: a gap Yahoo can no longer fill",
                       symbol, fresh.index[0], store.index[-1])
    new_rows = int((~fresh.index.isin(store.index)).sum())
    merged = pd.concat([store[~store.index.isin(fresh.index)], fresh]).sort_index()
    merged.index.name = "timestamp"
    return merged, new_rows
