"""Hostile input, seen as a user sees it: one clear line, the right exit code, no traceback on the terminal,
nothing already saved lost, and no secret in any file the toolkit writes."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import data_pipeline
import datafeed
import evaluate_bot
import train_bot
from agents.config import load_config
from automation.alerts import Notifier
from botcore.cli import run_guarded
from botcore.errors import ConfigError, DataError, UserError
from botcore.logsetup import setup_logging
from botcore.redact import redact
from botcore.symbols import safe_name, validate_symbol
from datafeed import sources
from datafeed.clean import clean_ohlcv

REPO = Path(__file__).resolve().parent.parent


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    assert "Traceback" not in err
    assert len(errors) == 1, err
    return errors[0]


def _data_files(workspace: Path) -> dict[str, bytes]:
    folder = workspace / "data"
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


# --- A. never a traceback on the terminal --------------------------------------------------------------

# script -> (attribute of the script module replaced by a function that raises, argv reaching it)
_SCRIPTS = {
    "data_pipeline": ("prepare_symbols", ["--symbols", "SYN", "--source", "synthetic", "--bars", "300"]),
    "train_bot": ("Session", ["--model-type", "deepscalper", "--symbol", "SYN"]),
    "evaluate_bot": ("evaluate_symbol", ["--symbol", "SYN"]),
    "automate_training": ("Automation", ["--run-once", "data"]),
}
_SECRET = "hunter2-PLANTED"


def _start(script: str, cwd: Path) -> subprocess.Popen:
    target, argv = _SCRIPTS[script]
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import {script}\n"
            "def boom(*args, **kwargs):\n"
            f"    raise RuntimeError('simulated bug\\nwith postgresql://bot:{_SECRET}@db/optuna in it')\n"
            f"{script}.{target} = boom\n"
            f"raise SystemExit({script}.main({argv!r}))\n")
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"})


def test_unexpected_errors_are_one_line_when_no_log_can_be_written(tmp_path):
    """Each script as a subprocess with a simulated bug and a logs/ that cannot be created (a file stands in its
    place: read-only even for root): one warning saying where the log would have gone, one error line."""
    runs = {}
    for script in _SCRIPTS:
        cwd = tmp_path / script
        cwd.mkdir()
        (cwd / "logs").write_text("not a folder")
        runs[script] = (cwd, _start(script, cwd))
    for script, (cwd, proc) in runs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (script, err)
        line = _one_error_line(err)
        assert "unexpected RuntimeError: simulated bug with postgresql://bot:***@db/optuna in it" in line
        assert "(no traceback saved: cannot write the log file" in line
        assert f"cannot write the log file {cwd / 'logs'}" in err and "is not a folder" in err
        assert _SECRET not in err + out
        assert (cwd / "logs").read_text() == "not a folder"


@pytest.mark.parametrize("script", list(_SCRIPTS))
def test_unexpected_errors_are_one_line_and_the_traceback_goes_to_the_log(workspace, capsys, monkeypatch, script):
    module = __import__(script)
    target, argv = _SCRIPTS[script]

    def boom(*args, **kwargs):
        raise RuntimeError(f"simulated bug\nwith postgresql://bot:{_SECRET}@db/optuna in it")

    monkeypatch.setattr(module, target, boom)
    assert module.main(argv) == 1
    err = capsys.readouterr().err
    line = _one_error_line(err)
    (log,) = (workspace / "logs").glob("*.log")
    assert line.endswith(f"unexpected RuntimeError: simulated bug with postgresql://bot:***@db/optuna in it "
                         f"(traceback in {log})")
    text = log.read_text()
    assert "Traceback" in text and "simulated bug" in text and _SECRET not in text + err


def test_a_user_error_is_one_line_even_with_verbose(workspace, capsys):
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "NONE", "--verbose"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "no prepared dataset for NONE 1d" in line


def test_out_of_memory_is_one_line_naming_what_to_shrink(caplog):
    def body() -> int:
        raise MemoryError("Unable to allocate 3.20 PiB for an array with shape (1000000000000, 900)")

    assert run_guarded(body) == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith("out of memory (MemoryError: Unable to allocate 3.20 PiB")
    assert "deepscalper.buffer_size" in record.getMessage() and "\n" not in record.getMessage()


# --- B. inputs that were accepted and should not be ---------------------------------------------------

def _config_run(workspace: Path, capsys, content: str | bytes) -> tuple[int, str]:
    path = workspace / "training_config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc = data_pipeline.main(["--symbols", "SYN", "--source", "synthetic", "--bars", "300", "--quiet"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("content, key, shown", [
    ('{"env": {"initial_cash": NaN}}', "env.initial_cash", "nan"),
    ('{"data": {"costs": {"slippage_bps": Infinity}}}', "data.costs.slippage_bps", "inf"),
    ('{"env": {"price_offsets": [0.0, -Infinity]}}', "env.price_offsets[1]", "-inf"),
    ('{"optimize": {"grid": {"learning_rate": [NaN]}}}', "optimize.grid.learning_rate[0]", "nan"),
    ('{"env": {"max_position": 1e400}}', "env.max_position", "inf"),
])
def test_non_finite_numbers_in_the_config_are_refused(workspace, capsys, content, key, shown):
    rc, err = _config_run(workspace, capsys, content)
    assert rc == 2 and not _data_files(workspace)
    assert f"training_config.json: {key} = {shown} is not a finite number" in _one_error_line(err)


@pytest.mark.parametrize("content, expected", [
    ("[" * 100_000 + "]" * 100_000, "nests objects or lists far too deeply"),
    ('{"optimize": {"grid": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}}", "more than 16 levels deep"),
    (b'{"symbols": ["GOOGL\xff"]}', "is not UTF-8 text (byte 0xff at offset 19)"),
    ('{"training_params": {"steps": 1' + "0" * 5000 + "}}", "a number with thousands of digits"),
    ('{"training_params": {"steps": 1' + "0" * 30 + "}}", "training_params.steps = 1e+30 is far too large"),
    ('{"training_params": {"seed": -1}}', "training_params.seed = -1 must be a seed between 0 and 4294967295"),
    ('{"data": {"start": "2015-13-45"}}', "data.start = '2015-13-45' is not a calendar date"),
    ('{"data": {"end": "2015-02-29"}}', "data.end = '2015-02-29' is not a calendar date"),
])
def test_hostile_config_files_are_one_line_and_exit_2(workspace, capsys, content, expected):
    rc, err = _config_run(workspace, capsys, content)
    assert rc == 2 and not _data_files(workspace)
    assert expected in _one_error_line(err)


def test_a_real_calendar_date_and_a_utf8_bom_are_accepted(workspace):
    path = workspace / "training_config.json"
    path.write_bytes(b'\xef\xbb\xbf{"data": {"start": "2016-02-29", "end": "2016-03-01 23:59"}}')
    assert load_config()["data"]["start"] == "2016-02-29"


def _csv(path: Path, rows: list[str], header: str = "Date,Open,High,Low,Close,Volume") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _good_rows(n: int = 300) -> list[str]:
    frame = datafeed.generate_synthetic(n, seed=3)
    return [f"{t:%Y-%m-%d},{r.open},{r.high},{r.low},{r.close},{r.volume}" for t, r in frame.iterrows()]


@pytest.mark.parametrize("bad, message", [
    ("inf", "line 152, column 'Close': 'inf' is not a finite number"),
    ("-Infinity", "line 152, column 'Close': '-Infinity' is not a finite number"),
    ("1e400", "line 152, column 'Close': '1e400' is not a finite number"),
])
def test_csv_infinite_prices_are_refused(tmp_path, bad, message):
    rows = _good_rows()
    date, o, h, low, _c, v = rows[150].split(",")
    rows[150] = ",".join([date, o, h, low, bad, v])
    with pytest.raises(DataError, match=message):
        sources.load_csv(_csv(tmp_path / "p.csv", rows))


def test_csv_mixing_offsets_and_naive_times_is_refused_but_all_aware_is_converted(tmp_path):
    mixed = ["2020-01-02 09:30:00-05:00,1,2,1,1.5,10", "2020-01-02 14:31:00,1,2,1,1.5,10",
             "2020-01-02 09:32:00-05:00,1,2,1,1.5,10"]
    with pytest.raises(DataError, match=r"mixes times with a UTC offset \(line 2: '2020-01-02 09:30:00-05:00'\) "
                                        r"and times without one \(line 3: '2020-01-02 14:31:00'\)"):
        sources.load_csv(_csv(tmp_path / "mixed.csv", mixed))
    aware = [mixed[0], "2020-01-02 10:31:00-04:00", "2020-01-02T14:32:00Z"]
    frame, _ = sources.load_csv(_csv(tmp_path / "aware.csv", aware))
    assert [str(t) for t in frame.index] == ["2020-01-02 14:30:00", "2020-01-02 14:31:00", "2020-01-02 14:32:00"]


def test_a_single_absurd_bar_is_refused_not_trained_on(workspace, capsys):
    good = _csv(workspace / "good.csv", _good_rows())
    assert data_pipeline.main(["--symbols", "MYCO", "--source", "csv", "--csv", str(good), "--quiet"]) == 0
    before = _data_files(workspace)
    rows = _good_rows()
    date, o, _h, low, c, v = rows[100].split(",")
    rows[100] = ",".join([date, o, "1e300", low, c, v])
    bad = _csv(workspace / "bad.csv", rows)
    assert data_pipeline.main(["--symbols", "MYCO", "--source", "csv", "--csv", str(bad), "--quiet"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"the high of the bar at {date} 00:00:00 is 1e+300, more than 1e+06 times away from the median" in line
    assert _data_files(workspace) == before


def test_clean_refuses_infinite_values_and_tiny_prices():
    frame = datafeed.generate_synthetic(50, seed=1)
    frame.iloc[10, frame.columns.get_loc("volume")] = float("inf")
    with pytest.raises(DataError, match=r"SYN: the volume of the bar at .* is inf"):
        clean_ohlcv(frame, "SYN")
    frame = datafeed.generate_synthetic(50, seed=1)
    frame.iloc[20, frame.columns.get_loc("low")] = 1e-7
    with pytest.raises(DataError, match="the low of the bar at"):
        clean_ohlcv(frame, "SYN")


def test_symbol_file_names_are_injective_and_plain_names_unchanged():
    assert safe_name("EURUSD=X") != safe_name("EURUSD_X")
    assert safe_name("^GSPC") != safe_name("IDX_GSPC")
    for plain in ("GOOGL", "AAPL", "BRK-B", "7203.T", "BTC-USD", "EURUSD"):
        assert safe_name(plain) == plain


@pytest.mark.parametrize("symbol", ["GOOGL\n", "GOO GL", "GOOGL\t", "\x00GOOGL", "GOOGL\r", "GO\u00a0OG"])
def test_symbols_with_whitespace_or_control_characters_are_refused(workspace, capsys, symbol):
    with pytest.raises(UserError, match="invalid symbol"):
        validate_symbol(symbol)
    assert data_pipeline.main(["--symbols", symbol, "--source", "synthetic", "--bars", "300", "--quiet"]) == 1
    assert "invalid symbol" in _one_error_line(capsys.readouterr().err) and not _data_files(workspace)


def test_same_file_for_two_symbols_is_impossible(workspace, capsys):
    for i, symbol in enumerate(("EURUSD=X", "EURUSD_X")):
        assert data_pipeline.main(["--symbols", symbol, "--source", "synthetic", "--seed", str(i), "--bars", "300",
                                   "--quiet"]) == 0
    manifests = sorted(p.name for p in (workspace / "data").glob("*_manifest.json"))
    assert manifests == ["EURUSD%3DX_1d_manifest.json", "EURUSD%5FX_1d_manifest.json"]


@pytest.mark.parametrize("main, argv, message", [
    (data_pipeline.main, ["--seed", "-1"], "argument --seed: -1 must be 0 or more"),
    (train_bot.main, ["--seed", "-1"], "argument --seed: -1 must be 0 or more"),
    (evaluate_bot.main, ["--symbol", "SYN", "--seed", "-1"], "argument --seed: -1 must be 0 or more"),
    (data_pipeline.main, ["--bars", "1000000000"], "argument --bars: 1,000,000,000 must be 10,000,000 or less"),
    (evaluate_bot.main, ["--symbol", "SYN", "--bars", "1000000000"], "must be 10,000,000 or less"),
    (train_bot.main, ["--steps", str(10**30)], "must be 1,000,000,000,000 or less"),
    (train_bot.main, ["--seed", "9" * 5000], "is not a whole number"),
])
def test_absurd_flags_exit_2_with_one_line(workspace, capsys, main, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]  # argparse: the usage, then one error line


def test_absurd_sizes_from_library_callers_are_refused():
    with pytest.raises(UserError, match="too long; use at most 10,000,000"):
        datafeed.generate_synthetic(10**9, seed=0)
    with pytest.raises(ConfigError, match="training_params.steps = 1e\\+30 is far too large"):
        load_config(overrides={"training_params": {"steps": 10**30}})


def test_a_text_file_as_optuna_storage_is_one_clear_line(workspace):
    from training.hpo import _storage

    (workspace / "notes.txt").write_text("shopping list\n")
    with pytest.raises(UserError, match=r"notes\.txt is not an SQLite database; give a new file or an existing "
                                        r"Optuna \.db file"):
        _storage("sqlite:///notes.txt")
    assert (workspace / "notes.txt").read_text() == "shopping list\n"
    (workspace / "folder.db").mkdir()
    with pytest.raises(UserError, match="is a folder, not a database file"):
        _storage("sqlite:///folder.db")


# --- D. one redaction for everything written, logged or alerted ----------------------------------------

def test_redact_masks_url_passwords_and_secret_keys_only():
    assert redact("postgresql://bot:pa:ss@w0rd@db:5432/optuna") == "postgresql://bot:***@db:5432/optuna"
    assert redact("redis://:tok@host/0") == "redis://:***@host/0"
    assert redact("http://host:8080/path?x=a@b") == "http://host:8080/path?x=a@b"
    assert redact("sqlite:///results/optuna.db") == "sqlite:///results/optuna.db"
    assert redact("GET /x?token=abc123&page=2") == "GET /x?token=***&page=2"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    value = {"password": "p", "api-key": "k", "smtp_password": "s", "password_env": "TRADING_BOT_SMTP_PASSWORD",
             "nested": [{"token": "t"}, ("mysql://u:x@h",)], "empty_token": "", "steps": 5}
    assert redact(value) == {"password": "***", "api-key": "***", "smtp_password": "***",
                             "password_env": "TRADING_BOT_SMTP_PASSWORD", "nested": [{"token": "***"}, ("mysql://u:***@h",)],
                             "empty_token": "", "steps": 5}
    assert value["password"] == "p"  # a copy: the caller's value is unchanged
    assert redact(redact(value)) == redact(value)
    assert redact("my secret is out", known=["secret is"]) == "my *** out"


def test_log_lines_and_alerts_are_redacted(workspace, capsys):
    setup_logging("redaction", quiet=False)
    try:
        logging.getLogger("botcore.test").warning("storage %s", f"postgresql://bot:{_SECRET}@db/optuna")
        try:
            raise ValueError(f"password={_SECRET}")
        except ValueError:
            logging.getLogger("botcore.test").exception("failed")
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_botcore", False)]:
            root.removeHandler(handler)
            handler.close()
    err = capsys.readouterr().err
    (log,) = (workspace / "logs").glob("redaction_*.log")
    text = log.read_text()
    assert _SECRET not in err + text and "postgresql://bot:***@db/optuna" in err + text
    assert "password=***" in text and "Traceback" in text and "Traceback" not in err
    notifier = Notifier({"email": {"password_env": "PW"}}, env={"PW": "envsecret"})
    assert notifier.redact(f"envsecret and mysql://u:{_SECRET}@h") == "*** and mysql://u:***@h"


def test_a_planted_password_reaches_no_file(workspace, capsys):
    """data_pipeline -> train_bot (plain and --optimize on sqlite) -> evaluate_bot with a password in the config's
    Optuna storage: no file under the workspace holds it, logs included."""
    secret = "PLANTED-s3cret-pw"
    config = {"symbols": ["SYN"], "data": {"source": "synthetic"}, "env": {"window": 8, "episode_length": 64},
              "deepscalper": {"hidden_size": 16, "batch_size": 16, "learning_starts": 32, "buffer_size": 2000,
                              "target_update_interval": 50},
              "training_params": {"steps": 96, "checkpoint_every": 48},
              "evaluation": {"bootstrap_samples": 20},
              "optimize": {"storage": f"postgresql://bot:{secret}@db.invalid:5432/optuna", "trials": 2}}
    (workspace / "training_config.json").write_text(json.dumps(config))
    assert data_pipeline.main(["--symbols", "SYN", "--seed", "5", "--bars", "500", "--quiet"]) == 0
    assert train_bot.main(["--model-type", "deepscalper", "--verbose"]) == 0
    assert train_bot.main(["--model-type", "deepscalper", "--optimize", "--storage", "sqlite:///results/optuna.db",
                           "--verbose"]) == 0
    assert evaluate_bot.main(["--symbol", "SYN"]) == 0
    said = capsys.readouterr()
    assert secret not in said.out + said.err
    written = [p for folder in ("data", "models", "results", "logs") for p in (workspace / folder).rglob("*")
               if p.is_file()]
    assert any(p.name == "metadata.json" for p in written) and any("model_comparison" in p.name for p in written)
    assert any(p.name.startswith("training_session_") for p in written)
    leaks = [str(p.relative_to(workspace)) for p in written if secret.encode() in p.read_bytes()]
    assert leaks == []
    metadata = [p.read_text() for p in written if p.name == "metadata.json"]
    assert any("postgresql://bot:***@db.invalid:5432/optuna" in text for text in metadata)  # the plain run's config
