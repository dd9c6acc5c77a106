"""botcore plumbing: atomic writes, symbol validation, annualisation factors, CLI error mapping."""
from __future__ import annotations

import json
import logging
import os

import pytest

from botcore import atomic, markets
from botcore.cli import run_guarded
from botcore.errors import ConfigError, UserError
from botcore.symbols import safe_name, validate_symbol


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "state.json"
    atomic.atomic_write_json(target, {"a": 1, "nan": float("nan")})
    assert json.loads(target.read_text()) == {"a": 1, "nan": None}
    atomic.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_failed_write_keeps_old_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "model.bin"
    atomic.atomic_write_bytes(target, b"old")

    def crash(fh):
        fh.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_atomic_path_for_writers_that_need_a_file_name(tmp_path):
    target = tmp_path / "sub" / "out.csv"
    with atomic.atomic_path(target) as tmp:
        tmp.write_text("x,y\n1,2\n")
        assert not target.exists()
    assert target.read_text() == "x,y\n1,2\n"
    assert atomic.sha256_file(target) == atomic.sha256_file(target)


@pytest.mark.parametrize("symbol", ["AAPL", "brk-b", "EURUSD=X", "^GSPC", "7203.T", "BTC-USD"])
def test_valid_symbols(symbol):
    assert validate_symbol(symbol) == symbol.upper()


@pytest.mark.parametrize("symbol", ["../x", "a/b", "", "A B", "..", "x" * 21, "a\\b"])
def test_path_tricks_are_refused(symbol):
    with pytest.raises(UserError, match="invalid symbol"):
        validate_symbol(symbol)


def test_safe_name_has_no_special_characters():
    assert safe_name("^GSPC") == "%5EGSPC"
    assert safe_name("EURUSD=X") == "EURUSD%3DX"
    assert safe_name("GOOGL") == "GOOGL" and safe_name("brk-b") == "BRK-B" and safe_name("7203.T") == "7203.T"


@pytest.mark.parametrize(
    ("symbol", "market"),
    [("AAPL", "equity"), ("EURUSD", "fx"), ("EURUSD=X", "fx"), ("BTC-USD", "crypto"), ("GOOGL", "equity")],
)
def test_infer_market(symbol, market):
    assert markets.infer_market(symbol) == market


def test_periods_per_year_follows_interval_and_market():
    assert markets.periods_per_year("1d", "equity") == 252
    assert markets.periods_per_year("1h", "equity") == pytest.approx(252 * 6.5)
    assert markets.periods_per_year("1m", "equity") == 252 * 390
    assert markets.periods_per_year("1h", "fx") == 260 * 24
    assert markets.periods_per_year("1d", "crypto") == 365
    assert markets.periods_per_year("5m", "crypto") == 365 * 288
    with pytest.raises(ValueError):
        markets.periods_per_year("2h", "equity")


def test_run_guarded_maps_errors_to_exit_codes(caplog):
    def user_error():
        raise UserError("bad input; fix it")

    def config_error():
        raise ConfigError("training_config.json: x is wrong")

    def interrupted():
        raise KeyboardInterrupt

    def bug():
        raise ZeroDivisionError("boom")

    with caplog.at_level(logging.DEBUG):
        assert run_guarded(user_error) == 1
        assert run_guarded(config_error) == 2
        assert run_guarded(interrupted) == 130
        assert run_guarded(bug) == 1
        assert run_guarded(lambda: 0) == 0
    assert "bad input; fix it" in caplog.text
    assert "Traceback" in caplog.text  # the unexpected failure leaves its traceback in the log


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    target = tmp_path / "report.json"
    atomic.atomic_write_json(target, {})
    assert target.stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK


def test_log_file_rotates_when_asked(workspace):
    import logging

    from botcore.logsetup import setup_logging

    log_file = setup_logging("daemon", quiet=True, max_bytes=2000, backups=2)
    try:
        for i in range(200):
            logging.getLogger("botcore.test").info("line %d of a long-running daemon's log", i)
        rotated = sorted(p.name for p in log_file.parent.iterdir())
        assert rotated == [log_file.name, log_file.name + ".1", log_file.name + ".2"]
        assert log_file.stat().st_size <= 2000
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_botcore", False)]:
            root.removeHandler(handler)
            handler.close()
