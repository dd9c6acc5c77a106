"""Property-based fuzzing of the two readers of user files: the CSV reader (then cleaning) and the config loader.

Property: any input either loads into a valid frame / config, or raises the toolkit's own error (a UserError
subclass) whose message is one line. Anything else (a KeyError, an OverflowError, a pandas error) is a bug
that would reach the user as "unexpected". Derandomised, no example database: CI sees the same examples.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.config import DEFAULTS, load_config
from botcore.errors import ConfigError, DataError, UserError
from datafeed import sources
from datafeed.clean import clean_ohlcv
from datafeed.sources import OHLCV, load_csv

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _one_line(exc: UserError) -> None:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, repr(message)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


# --- CSV ---------------------------------------------------------------------------------------------------

def _careful(path: Path) -> tuple[pd.DataFrame, dict] | str:
    """load_csv with the one-pass reading turned off: the frame, or the error's message."""
    fast = sources._read_typed
    sources._read_typed = lambda p: None
    try:
        return load_csv(path)
    except UserError as exc:
        return str(exc)
    finally:
        sources._read_typed = fast


def _check_csv(path: Path) -> None:
    careful = _careful(path)  # what the one-pass reading must agree with, frame or error
    try:
        frame, info = load_csv(path)
    except UserError as exc:
        assert isinstance(exc, DataError)
        _one_line(exc)
        assert careful == str(exc)
        return
    assert not isinstance(careful, str), careful
    pd.testing.assert_frame_equal(frame, careful[0], check_exact=True)
    assert info == careful[1]
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.tz is None
    assert list(frame.columns) == OHLCV and all(t == np.float64 for t in frame.dtypes)
    assert not np.isinf(frame.to_numpy()).any() and len(frame) == info["rows_read"] >= 1
    try:
        clean, report = clean_ohlcv(frame, "FUZZ")
    except UserError as exc:
        assert isinstance(exc, DataError)
        _one_line(exc)
        return
    values = clean.to_numpy()
    assert np.isfinite(values).all() and (clean[["open", "high", "low", "close"]].to_numpy() > 0).all()
    assert (clean["high"] >= clean["low"]).all() and clean.index.is_monotonic_increasing and clean.index.is_unique
    assert report["rows_out"] == len(clean) >= 2


@FUZZ
@given(content=st.one_of(st.binary(max_size=400), st.text(max_size=400).map(lambda t: t.encode("utf-8"))))
def test_csv_reader_on_arbitrary_bytes(scratch, content):
    path = scratch / "any.csv"
    path.write_bytes(content)
    _check_csv(path)


_HEADERS = ["Date", "Datetime", "Time", "timestamp", "Open", "High", "Low", "Close", "Adj Close", "Volume", "o", "c",
            "price", "Date", "x", "", "Close", '"Da\nte"', '"Clo\rse"']
_DATES = st.one_of(
    st.dates(min_value=pd.Timestamp("1900-01-01").date(), max_value=pd.Timestamp("2200-01-01").date()).map(str),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
    st.datetimes().map(lambda d: d.strftime("%d.%m.%Y %H:%M:%S.000")),
    st.sampled_from(["2020-01-02T09:30:00-05:00", "2020-01-02 14:30:00Z", "2015-13-45", "31/02/2020", "20200102",
                     "1577836800", "1577836800000", "1e20", "inf", "", "now", "2020-01-02 25:00:00"]),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
)
_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=0.01, max_value=1e4).map(lambda x: f"{x:.4f}"),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["", "NaN", "null", "NA", "inf", "-Infinity", "1e300", "1e-300", "0", "-1", "1,5", " 7 ",
                     "abc", "1e400", "0x10", "1_000"]),
)


@st.composite
def _structured_csv(draw: Any) -> str:
    header = draw(st.lists(st.sampled_from(_HEADERS), min_size=1, max_size=8))
    rows = draw(st.lists(st.lists(st.one_of(_DATES, _NUMBERS), min_size=len(header) - 1, max_size=len(header) + 1),
                         max_size=12))
    sep = draw(st.sampled_from([",", ";"]))
    return "\n".join([sep.join(header), *(sep.join(row) for row in rows)]) + draw(st.sampled_from(["", "\n"]))


@st.composite
def _almost_valid_csv(draw: Any) -> str:
    """A real OHLCV file with a few cells replaced: the reader and cleaning must refuse or repair each."""
    n = draw(st.integers(min_value=2, max_value=30))
    start = pd.Timestamp("2020-01-01")
    rows = [[str((start + pd.Timedelta(days=i)).date()), "10", "11", "9", f"{10 + i % 3}", "1000"] for i in range(n)]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, 5))
        rows[i][j] = draw(_DATES if j == 0 else _NUMBERS)
    return "\n".join(["Date,Open,High,Low,Close,Volume", *(",".join(r) for r in rows)]) + "\n"


@FUZZ
@given(text=st.one_of(_structured_csv(), _almost_valid_csv()))
def test_csv_reader_on_structured_but_wrong_files(scratch, text):
    path = scratch / "structured.csv"
    path.write_text(text, encoding="utf-8")
    _check_csv(path)


# --- config ------------------------------------------------------------------------------------------------

# values that reached real bugs or sit at the edge of a check ("America" is a folder of time zones)
_EDGE_STRINGS = ["America", "x" * 300, "../../etc/passwd", "UTC\x00", "2015-13-45", "2016-02-30 12:00", "25:00",
                 "sunday ", "", "a\nb"]
_EDGE_VALUES = [*_EDGE_STRINGS, None, True, 0, -1, 10**12 + 1, 0.5, 1e308, float("nan"), [], {}, [1.5, "x"]]
_TRICKY = st.sampled_from(_EDGE_STRINGS)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), _TRICKY),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children,
                                                                               max_size=4)),
    max_leaves=12,
)


def _dotted_keys(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    keys = []
    for key, value in tree.items():
        keys.append((*prefix, key))
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, (*prefix, key)))
    return keys


_KEYS = _dotted_keys(DEFAULTS)


@st.composite
def _overrides(draw: Any) -> dict[str, Any]:
    """Nested dicts over the real keys (so value checks run, not only the unknown-key check)."""
    tree: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(_KEYS), min_size=1, max_size=4)):
        node = tree
        for part in key[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # an earlier key put a value here
                break
        else:
            node[key[-1]] = draw(_JSON)
    return tree


def _leaf_keys(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    return [k for k in _dotted_keys(tree, prefix) if not isinstance(_get(tree, k), dict) or k[-1] == "grid"]


def _get(tree: dict[str, Any], key: tuple[str, ...]) -> Any:
    for part in key:
        tree = tree[part]
    return tree


def _nest(key: tuple[str, ...], value: Any) -> dict[str, Any]:
    return {key[0]: value} if len(key) == 1 else {key[0]: _nest(key[1:], value)}


def test_every_config_key_with_every_edge_value():
    """Exhaustive where random draws are thin: each key of the schema set to each edge value."""
    for key in _leaf_keys(DEFAULTS):
        for value in _EDGE_VALUES:
            _check_config(lambda key=key, value=value: load_config(None, overrides=_nest(key, value)))


def _check_config(load: Any) -> None:
    try:
        cfg = load()
    except UserError as exc:
        assert isinstance(exc, ConfigError) and exc.exit_code == 2
        _one_line(exc)
        return
    assert set(cfg) == set(DEFAULTS)
    json.dumps(cfg, allow_nan=False)  # finite numbers only
    assert cfg["training_params"]["steps"] >= 1 and math.isfinite(cfg["env"]["initial_cash"])


@FUZZ
@given(value=st.one_of(_JSON, _overrides()))
def test_config_file_with_arbitrary_json(scratch, value):
    path = scratch / "training_config.json"
    path.write_text(json.dumps(value, allow_nan=True), encoding="utf-8")
    _check_config(lambda: load_config(path))


@FUZZ
@given(overrides=_overrides())
def test_config_overrides_merged_into_the_defaults(overrides):
    _check_config(lambda: load_config(None, overrides=overrides))  # defaults (no file in the repo) <- overrides
