"""training_config.json validation, seen through data_pipeline.main: one clear line naming the key, exit 2."""
from __future__ import annotations

import json

import pytest

import data_pipeline
import datafeed
from agents.config import DEFAULTS, load_config


def _run_with_config(workspace, capsys, content, *flags: str) -> tuple[int, str]:
    path = workspace / "training_config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    rc = data_pipeline.main(["--symbols", "GOOGL", "--source", "sample", "--quiet", *flags])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("content, expected", [
    ({"training_params": {"steps": "many"}}, "training_params.steps = 'many' must be a whole number, not a string"),
    ({"training_parms": {"steps": 10}}, "unknown key 'training_parms'; did you mean 'training_params'?"),
    ({"data": {"intervall": "1h"}}, "unknown key 'data.intervall'; did you mean 'interval'?"),
    ({"training_schedule": {"daily_at": "25:00"}}, "training_schedule.daily_at = '25:00' is not a time"),
    ({"training_params": {"steps": -5}}, "training_params.steps = -5 must be greater than 0"),
    ({"monitoring": {"max_drawdown_threshold": 25.0}}, "monitoring.max_drawdown_threshold = 25.0 must be a negative"),
    ({"data": {"train_fraction": 0.8, "val_fraction": 0.3}}, "leaves no test split"),
    ('{"symbols": ["GOOGL"],\n "data": {"source": "sample",}}', "not valid JSON at line 2"),
    ("[1, 2]", "must hold a JSON object at the top level"),
])
def test_bad_config_file_is_one_line_and_exit_code_2(workspace, capsys, content, expected):
    rc, err = _run_with_config(workspace, capsys, content)
    assert rc == 2
    assert expected in err and "training_config.json" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (workspace / "data").exists() or not any((workspace / "data").iterdir())


@pytest.mark.parametrize("flags, expected", [
    (["--source", "yahooo"],
     "data.source = 'yahooo' must be one of yahoo, sample, csv, synthetic (did you mean 'yahoo'?)"),
    (["--interval", "2h"], "data.interval = '2h' must be one of"),
    (["--train-fraction", "1.5"], "data.train_fraction = 1.5 must be between 0 and 1"),
    (["--train-end", "2016-13"], "data.train_end = '2016-13' is not a date"),
    (["--train-end", "2017-01-01", "--val-end", "2016-01-01"], "data.train_end must be before data.val_end"),
])
def test_bad_flags_are_config_errors(workspace, capsys, flags, expected):
    rc = data_pipeline.main(["--symbols", "GOOGL", "--quiet", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "command line" in err


def test_missing_explicit_config_file(workspace, capsys):
    assert data_pipeline.main(["--config", "nowhere.json", "--quiet"]) == 2
    assert "nowhere.json: no such config file" in capsys.readouterr().err


def test_defaults_then_file_then_flags(workspace, capsys):
    (workspace / "training_config.json").write_text(json.dumps(
        {"symbols": ["GOOGL"], "data": {"source": "sample", "train_fraction": 0.6, "embargo_bars": 5}}))
    cfg = load_config()
    assert cfg["data"]["train_fraction"] == 0.6 and cfg["data"]["val_fraction"] == DEFAULTS["data"]["val_fraction"]
    assert load_config(overrides={"data": {"train_fraction": 0.5, "source": None}})["data"]["source"] == "sample"
    # The file decides source and embargo; the flag decides the fraction.
    assert data_pipeline.main(["--train-fraction", "0.5", "--quiet"]) == 0
    manifest = datafeed.load_manifest("GOOGL", "1d")
    assert manifest["source"] == "sample" and manifest["embargo_bars"] == 5
    assert manifest["settings"]["data"]["train_fraction"] == 0.5
    rows = {k: v["rows"] for k, v in manifest["ranges"].items()}
    usable = sum(rows.values()) + 2 * 5
    assert rows["train"] == int((usable - 10) * 0.5)
