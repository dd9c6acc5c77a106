"""Per-market cost defaults (botcore.markets.MARKET_COSTS): a null in data.costs takes the market's default, a
number in the config or on the command line wins, and every evaluation says which costs applied and why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import data_pipeline
import evaluate_bot
from agents.config import DEFAULTS, load_config
from botcore.errors import ConfigError
from botcore.markets import COST_KEYS, MARKET_COSTS, resolve_costs
from evaluation.backtest import evaluation_env_config
from rl_env.config import EnvConfig


def test_every_market_has_every_cost_key_and_the_config_defaults_are_null():
    for market, costs in MARKET_COSTS.items():
        assert set(costs) == set(COST_KEYS), market
    assert all(DEFAULTS["data"]["costs"][key] is None for key in COST_KEYS)
    assert MARKET_COSTS["fx"]["commission_rate"] == 0.0 and MARKET_COSTS["fx"]["spread_bps"] > 0
    assert MARKET_COSTS["crypto"]["commission_rate"] == pytest.approx(0.001)
    assert MARKET_COSTS["equity"] == {"commission_rate": 0.0005, "commission_min": 0.0, "slippage_bps": 1.0,
                                      "spread_bps": 0.0}


@pytest.mark.parametrize("market", ["equity", "fx", "crypto"])
def test_nulls_take_the_market_default_and_a_number_wins(market):
    default = resolve_costs(dict.fromkeys(COST_KEYS), market)
    assert default.values == MARKET_COSTS[market]
    assert set(default.sources.values()) == {"market default"}
    assert f"{market} default" in default.statement() and "config" not in default.statement()

    mixed = resolve_costs({**dict.fromkeys(COST_KEYS), "commission_rate": 0.0002, "spread_bps": 0}, market)
    assert mixed.values["commission_rate"] == 0.0002 and mixed.values["spread_bps"] == 0.0
    assert mixed.values["slippage_bps"] == MARKET_COSTS[market]["slippage_bps"]
    assert mixed.sources == {"commission_rate": "config", "commission_min": "market default",
                             "slippage_bps": "market default", "spread_bps": "config"}
    assert "commission 2 bp of notional (config data.costs)" in mixed.statement()


def test_env_configs_take_the_costs_of_the_data_market():
    cfg = load_config()
    for market in MARKET_COSTS:
        train = EnvConfig.from_config(cfg, "discrete", training=True, market=market)
        evaluation = evaluation_env_config(cfg, "box", market=market)
        for key, value in MARKET_COSTS[market].items():
            assert getattr(train, key) == value and getattr(evaluation, key) == value
    # a trained model's stored env keeps its window but is evaluated with the current costs of the market
    stored = EnvConfig.from_config(cfg, "discrete", window=7).to_dict()
    fx = evaluation_env_config(cfg, "discrete", trained=stored, market="fx")
    assert fx.window == 7 and fx.commission_rate == 0.0 and fx.spread_bps == MARKET_COSTS["fx"]["spread_bps"]


def test_an_explicit_config_value_wins_over_every_market(workspace):
    Path("training_config.json").write_text(json.dumps({"data": {"costs": {"commission_rate": 0.0003}}}))
    cfg = load_config()
    assert EnvConfig.from_config(cfg, market="fx").commission_rate == 0.0003
    assert EnvConfig.from_config(cfg, market="crypto").commission_rate == 0.0003
    # --set wins over the file
    cfg = load_config(assignments=["data.costs.commission_rate=0.0001", "data.costs.spread_bps=null"])
    assert EnvConfig.from_config(cfg, market="crypto").commission_rate == 0.0001
    assert EnvConfig.from_config(cfg, market="crypto").spread_bps == MARKET_COSTS["crypto"]["spread_bps"]


@pytest.mark.parametrize("value, problem", [("-1", "must be 0 or more"), ('"5bp"', "must be a number or null"),
                                            ("true", "must be a number or null")])
def test_bad_cost_values_are_refused_like_the_file(workspace, value, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(assignments=[f"data.costs.slippage_bps={value}"])
    Path("training_config.json").write_text(f'{{"data": {{"costs": {{"slippage_bps": {value}}}}}}}')
    with pytest.raises(ConfigError, match=problem):
        load_config()


def _comparison(workspace: Path) -> dict:
    files = sorted((workspace / "results").glob("model_comparison_EURUSD_*.json"))
    return json.loads(files[-1].read_text())


def test_fx_evaluation_states_its_costs_in_the_json_console_and_html(workspace, capsys):
    assert data_pipeline.main(["--symbols", "EURUSD", "--source", "sample", "--quiet"]) == 0
    assert evaluate_bot.main(["--symbol", "EURUSD", "--interval", "1h", "--engine", "fast", "--create-plots"]) == 0
    shown = capsys.readouterr().out
    costs = _comparison(workspace)["costs"]
    assert costs["market"] == "fx" and costs["commission_rate"] == 0.0
    assert set(costs["sources"].values()) == {"market default"}
    assert costs["statement"] in shown and "fx costs: commission 0 bp" in costs["statement"]
    report = next((workspace / "results").glob("report_EURUSD_*.html")).read_text()
    assert "fx costs: commission 0 bp of notional (fx default)" in report
    default_random = _comparison(workspace)["baselines"]["random"]["total_return_pct"]

    # the equity commission given explicitly applies to FX too, is announced as the config's, and costs more
    assert evaluate_bot.main(["--symbol", "EURUSD", "--interval", "1h", "--engine", "fast", "--quiet",
                              "--set", "data.costs.commission_rate=0.0005"]) == 0
    outcome = _comparison(workspace)
    assert outcome["costs"]["sources"]["commission_rate"] == "config"
    assert "commission 5 bp of notional (config data.costs)" in outcome["costs"]["statement"]
    assert outcome["baselines"]["random"]["total_return_pct"] < default_random - 5


def test_a_trained_model_records_the_costs_of_its_market(workspace):
    import train_bot
    from agents.registry import Registry

    assert data_pipeline.main(["--symbols", "EURUSD", "--source", "synthetic", "--seed", "3", "--bars", "600",
                               "--quiet"]) == 0
    assert train_bot.main(["--model-type", "deepscalper", "--symbol", "EURUSD", "--steps", "300", "--quiet",
                           "--set", "deepscalper.hidden_size=8", "--set", "data.costs.slippage_bps=0.25"]) == 0
    (record,) = Registry().runs("EURUSD")
    meta = record.metadata
    assert meta["market"] == "fx" and meta["costs"]["market"] == "fx"
    assert meta["costs"]["sources"]["slippage_bps"] == "config" and meta["costs"]["slippage_bps"] == 0.25
    for env in (meta["env_config"], meta["train_env_config"]):  # validation and training used the same costs
        assert env["commission_rate"] == 0.0 and env["spread_bps"] == MARKET_COSTS["fx"]["spread_bps"]
        assert env["slippage_bps"] == 0.25
