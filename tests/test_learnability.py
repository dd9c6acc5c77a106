"""The learnability suite (synthetic markets with known edges and their oracles) and model selection that does not
fool itself (best validated checkpoint, early stopping, training-split Sharpe, collapse never promoted)."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.config import DEFAULTS
from agents.registry import Registry
from evaluation.learnability import (
    FAMILIES,
    INTRADAY_PATTERN,
    PLANTED,
    SESSION_BARS,
    MarketSpec,
    RunRow,
    format_table,
    generate_market,
    positions_by_session_bar,
    prepare_market,
    reference_backtests,
    score,
    seconds_to_fraction,
    summarise,
)
from training import job as job_module
from training.job import JobSpec, default_steps, memorisation_warning, model_health, run_job

REPO = Path(__file__).resolve().parent.parent
TINY_DS = dict(hidden_size=16, batch_size=32, buffer_size=5000, learning_starts=200, target_update_interval=100)


def bench_module():
    if "bench_learnability" not in sys.modules:  # dataclasses need their module registered
        spec = importlib.util.spec_from_file_location("bench_learnability", REPO / "bench" / "learnability.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_learnability"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_learnability"]


def config(window: int = 32) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    cfg["env"]["window"] = window
    return cfg


# --- markets and oracles ----------------------------------------------------------------------------------


def test_markets_are_seeded_and_go_through_the_feature_pipeline():
    cfg = config()
    a = prepare_market(MarketSpec("vol_regime", n_bars=800), 3, cfg)
    b = prepare_market(MarketSpec("vol_regime", n_bars=800), 3, cfg)
    c = prepare_market(MarketSpec("vol_regime", n_bars=800), 4, cfg)
    assert a.splits["test"].equals(b.splits["test"]) and not a.splits["test"].equals(c.splits["test"])
    train = a.splits["train"]
    # the pipeline's features, normalised on the train split only, plus the planted state
    assert {"f_ret_1", "f_rsi_14", "f_macd", "f_state"} <= set(train.columns)
    assert abs(train["f_ret_1"].mean()) < 1e-6 and train["f_ret_1"].std(ddof=0) == pytest.approx(1.0, abs=1e-3)
    assert abs(a.splits["test"]["f_ret_1"].mean()) > 1e-6
    assert set(np.unique(train["f_state"])) == {-1.0, 1.0}
    hourly = prepare_market(MarketSpec("intraday", n_bars=1400), 0, cfg)
    assert hourly.spec.interval == "1h" and "f_tod_sin" in hourly.splits["train"]
    assert hourly.ppy == pytest.approx(252 * 6.5)
    with pytest.raises(ValueError, match="did not|unknown market family"):
        MarketSpec("nonsense")


def test_oracle_targets_are_decided_from_the_past_as_the_process_says():
    raw, truth = generate_market(MarketSpec("momentum", 0.25, n_bars=400), 0)
    last_return = np.log(raw["close"]).diff().to_numpy()
    assert np.array_equal(truth["target"].to_numpy()[1:], np.sign(last_return[1:]))
    raw, truth = generate_market(MarketSpec("mean_reversion", 0.25, n_bars=400), 0)
    assert np.array_equal(truth["target"].to_numpy()[1:], -np.sign(np.log(raw["close"]).diff().to_numpy()[1:]))
    raw, truth = generate_market(MarketSpec("intraday", n_bars=70), 0)
    hours = raw.index.hour.to_numpy()
    # decided at a bar's close for the NEXT bar: long before the 10:30 and 11:30 bars, short before 12:30, 13:30
    assert hours[0] == 9 and truth["target"].to_numpy()[0] == 1.0 and truth["target"].to_numpy()[2] == -1.0
    assert truth["target"].to_numpy()[6] == 0.0  # before the next session's first (gap) bar
    # changing the future never changes the past (bars and targets)
    raw2, truth2 = generate_market(MarketSpec("momentum", 0.25, n_bars=500), 0)
    raw1, truth1 = generate_market(MarketSpec("momentum", 0.25, n_bars=400), 0)
    assert np.allclose(raw2["close"].to_numpy()[:300], raw1["close"].to_numpy()[:300])


def test_positions_by_session_bar_read_the_oracle_pattern_and_nothing_on_daily_bars():
    """The intraday diagnostic: the oracle's mean position over each bar of the session is the planted pattern
    (flat over the session's first bar, which follows the overnight gap, and over its last, flattened by the env)."""
    market = prepare_market(MarketSpec("intraday", n_bars=1400), 0, config())
    runs = reference_backtests(market, config(), "test")
    by_bar = positions_by_session_bar(runs["oracle"])
    assert len(by_bar) == SESSION_BARS
    assert np.array_equal(np.sign(np.round(by_bar, 2)), INTRADAY_PATTERN)
    assert min(abs(v) for v, p in zip(by_bar, INTRADAY_PATTERN, strict=True) if p) > 0.8
    assert positions_by_session_bar(runs["buy_and_hold"])[0] > 0.8  # B&H re-enters before the first bar
    daily = prepare_market(MarketSpec("momentum", n_bars=400), 0, config())
    assert positions_by_session_bar(reference_backtests(daily, config(), "test")["oracle"]) == []


def test_time_of_day_effect_is_linear_in_the_time_features():
    """The cause of "no agent learns the intraday effect": the daily cycle alone (``f_tod_sin/cos``) is nearly
    monotone over a session, so a linear read of it cannot follow a drift that changes sign twice a session;
    with the harmonics a least-squares fit on the train split gets every hour's sign right on the test split."""
    market = prepare_market(MarketSpec("intraday", n_bars=7000), 1, config())

    def fitted_sign_by_hour(columns):
        def xy(split):
            frame = market.splits[split]
            x = np.c_[np.ones(len(frame)), frame[columns].to_numpy()]
            return x, np.r_[np.diff(np.log(frame["close"].to_numpy())), 0.0], frame.index.hour.to_numpy()

        x, y, _ = xy("train")
        beta = np.linalg.lstsq(x, y, rcond=None)[0]
        xt, _, hours = xy("test")
        pred = xt @ beta
        return {h: np.sign(pred[hours == h].mean()) for h in range(9, 14)}

    truth = {9: 1.0, 10: 1.0, 11: -1.0, 12: -1.0, 13: 1.0}  # the drift sign of the NEXT bar, decided at hour h
    tod = [c for c in market.splits["train"].columns if c.startswith("f_tod_")]
    assert {"f_tod_sin", "f_tod_cos", "f_tod_sin_2", "f_tod_cos_8"} <= set(tod)
    assert fitted_sign_by_hour(tod) == truth
    assert fitted_sign_by_hour(["f_tod_sin", "f_tod_cos"]) != truth


@pytest.mark.parametrize("family", FAMILIES)
def test_oracles_trade_the_planted_edge_through_the_env(family):
    cfg = config()
    market = prepare_market(MarketSpec(family), 0, cfg)
    refs = {k: score(v, market.ppy) for k, v in reference_backtests(market, cfg, "train").items()}
    oracle, bh = refs["oracle"], refs["buy_and_hold"]
    if family in PLANTED:  # net of the default costs, far above buy and hold
        assert oracle["sharpe"] > 1.5 and oracle["sharpe"] > bh["sharpe"] + 1.0 and oracle["psr"] > 0.99
    elif family == "drift":  # buy and hold is the oracle
        assert oracle["sharpe"] == pytest.approx(bh["sharpe"]) and oracle["sharpe"] > 0.5
    else:  # nothing to learn: the oracle stays flat
        assert oracle["trades"] == 0 and oracle["sharpe"] == 0.0


def test_summary_table_and_time_to_half_oracle():
    rows = [RunRow("momentum_0.3", "momentum", "deepscalper", s, test_sharpe=v, oracle_sharpe=3.0, bh_sharpe=0.2,
                   psr=0.9, trades=40, train_sharpe=2.0, val_sharpe=1.5, oracle_val_sharpe=3.0, seconds=10.0,
                   seconds_to_half_oracle=t) for s, (v, t) in enumerate([(2.0, 4.0), (1.0, math.nan)])]
    (rec,) = summarise(rows)
    assert rec["test_sharpe"] == pytest.approx(1.5) and rec["test_sharpe_sd"] == pytest.approx(math.sqrt(0.5))
    assert rec["fraction"] == pytest.approx(0.5) and rec["goal_met"] == 1 and rec["reached_half_oracle"] == 1
    assert rec["gap"] == pytest.approx(0.5)
    table = format_table([rec], markdown=True)
    assert "| momentum_0.3 | deepscalper | 2 | 1.50 ± 0.71 | 0.50 ± 0.24 |" in table and "1/2" in table
    assert seconds_to_fraction([(1.0, 100, 0.2), (2.0, 200, float("nan")), (3.0, 300, 1.6)], 1.5) == 3.0
    assert math.isnan(seconds_to_fraction([(1.0, 100, 0.2)], 1.5))


def test_default_steps_make_at_least_one_pass_over_a_long_training_split():
    """10,000 steps are 0.7 of a pass over the intraday market's 14,595 training bars (2 of 5 seeds met the goal;
    4 of 5 with 15,000): left at its default, a round trains at least ``min_passes`` passes, rounded up to whole
    validations; a daily split of 2,000 bars and every explicit step count train as given."""
    assert default_steps(10_000, 14_595, 1.0, 1000) == 15_000
    assert default_steps(10_000, 14_595, 1.0) == 14_595
    assert default_steps(10_000, 1_995, 1.0, 1000) == 10_000
    assert default_steps(2_000, 14_595, 1.0, 1000) == 2_000 and default_steps(20_000, 14_595, 1.0, 1000) == 20_000
    assert default_steps(10_000, 14_595, 0.0, 1000) == 10_000 and default_steps(10_000, 14_595, 2.0, 0) == 29_190
    assert DEFAULTS["training_params"]["min_passes"] == 1.0


def test_a_job_at_the_default_steps_trains_a_pass_over_its_training_split(workspace):
    bench = bench_module()
    cfg = config(window=8)
    market = prepare_market(MarketSpec("intraday", n_bars=15_400), 0, cfg)
    inputs = bench.job_inputs(market, cfg, "deepscalper", {})
    assert inputs.train_data.n_bars > 10_000

    def job(steps: int, min_passes: float = 1.0) -> job_module.Job:
        spec_cfg = copy.deepcopy(cfg)
        spec_cfg["training_params"]["min_passes"] = min_passes
        spec = JobSpec(symbol="SYN", interval="1h", model_type="deepscalper", algo="deepscalper", cfg=spec_cfg,
                       steps=steps, eval_every=1000, register=False, checkpoints=False, quiet=True, inputs=inputs)
        return job_module.Job(spec, job_module.StopFlag(), None)

    at_default = job(10_000)
    assert at_default.spec.steps == at_default.total_steps == -(-inputs.train_data.n_bars // 1000) * 1000
    assert job(3_000).spec.steps == 3_000 and job(10_000, min_passes=0.0).spec.steps == 10_000


# --- the small suite (make test): one strength, two seeds, few steps --------------------------------------


def test_small_learnability_suite_in_make_test(workspace):
    """The suite end to end, small enough for ``make test``: the volatility-regime market (its state is a
    feature), one strength, three seeds, 2,000 steps of a narrow DeepScalper through the real training job, scored
    on the test split (about 280 bars) net of costs. It fails when the agent does not learn the planted edge out
    of sample: an agent that stays flat scores 0, one that ignores the state scores about buy and hold. At this
    tiny budget single seeds still miss (seeds 0-7 with the three-target quantity branch: 0.86, 0.64, 0.56,
    -0.12, -0.05, 0.89, -0.01, 0.87 of the oracle, 5 of 8 above buy and hold and 0.35 of the oracle; with the
    older five targets also 5 of 8), so the test asks for 2 of 3 seeds and a mean above 0.35 of the oracle
    (deterministic: measured 3 of 3, mean 0.69)."""
    bench = bench_module()
    cfg = config(window=8)
    cfg["deepscalper"].update(hidden_size=32, learning_starts=300, target_update_interval=100, batch_size=32)
    rows = bench.run_suite([MarketSpec("vol_regime", 0.004, n_bars=2000)], ["deepscalper"], [0, 1, 2], steps=2000,
                           eval_every=500, cfg=cfg)
    assert len(rows) == 3 and all(r.steps <= 2000 and r.curve for r in rows)
    assert all(r.oracle_sharpe > 1.0 for r in rows), rows
    # out of sample, net of costs: a real share of the oracle's Sharpe, above buy and hold
    met = [r.test_sharpe > 0.35 * r.oracle_sharpe and r.test_sharpe > r.bh_sharpe for r in rows]
    assert sum(met) >= 2, rows
    assert np.mean([r.test_sharpe / r.oracle_sharpe for r in rows]) > 0.35, rows
    assert "vol_regime_0.004" in format_table(summarise(rows))


@pytest.mark.slow
def test_small_learnability_suite_deepscalper_finds_momentum(tmp_path, workspace):
    bench = bench_module()
    rows = bench.run_suite([MarketSpec("momentum", 0.3)], ["deepscalper"], [0, 1], steps=10_000,
                           eval_every=1000, cfg=config())
    assert len(rows) == 2 and all(len(r.curve) >= 5 and r.steps <= 10_000 for r in rows)
    summary = summarise(rows)
    assert "momentum_0.3" in format_table(summary)
    # out of sample (about 430 test bars), net of costs: a real share of the oracle's Sharpe in both seeds, and
    # above buy and hold on average
    for r in rows:
        assert r.test_sharpe > 0.25 * r.oracle_sharpe, r
    assert np.mean([r.test_sharpe for r in rows]) > np.mean([r.bh_sharpe for r in rows])


# --- model selection that does not fool itself -----------------------------------------------------------


def test_model_health_and_memorisation_rules():
    class Bt:
        def __init__(self, positions):
            self.positions = np.asarray(positions, dtype=float)

    assert model_health(0, Bt([0, 1, -1]))[0] == "no_updates"
    assert model_health(10, Bt([0, 0, 0]))[0] == "collapsed_flat"
    assert model_health(10, Bt([0, 0, 5, 4, 6]))[0] == "collapsed_one_side"
    assert model_health(10, Bt([0, 5, 0, 5]))[0] == "ok"
    assert model_health(None, Bt([0, -5, 5]))[0] == "ok"
    assert memorisation_warning(5.0, 0.5).startswith("memorisation")
    assert memorisation_warning(4.0, float("nan")).startswith("memorisation")
    assert memorisation_warning(3.0, 2.0) == "" and memorisation_warning(float("nan"), 1.0) == ""


def _spec(market, cfg, bench, **kw) -> JobSpec:
    inputs = bench.job_inputs(market, cfg, "deepscalper", TINY_DS)
    base = dict(symbol="SYN", interval="1d", model_type="deepscalper", algo="deepscalper", cfg=cfg, steps=4000,
                seed=0, eval_every=500, hyperparams=dict(TINY_DS), register=False, checkpoints=False, quiet=True,
                inputs=inputs)
    return JobSpec(**{**base, **kw})


def test_job_keeps_the_best_validated_checkpoint_and_stops_early(workspace, monkeypatch):
    bench = bench_module()
    cfg = config(window=8)
    cfg["training_params"]["patience"] = 2
    market = prepare_market(MarketSpec("momentum", 0.3, n_bars=700), 0, cfg)
    real = job_module.validation_score
    scripted = {500: 0.5, 1000: 1.5, 1500: 0.2, 2000: 0.1}

    def fake_score(policy, data, env_config, ppy):  # validation scores by the policy's step count
        value, backtest = real(policy, data, env_config, ppy)
        if data.n_bars == market.data("val").n_bars:
            return scripted.get(int(policy.num_timesteps), -1.0), backtest
        return value, backtest

    monkeypatch.setattr(job_module, "validation_score", fake_score)
    seen = []
    path = workspace / "kept.zip"
    result = run_job(_spec(market, cfg, bench, save_model_to=str(path)), on_validation=lambda s, v: seen.append(s))
    assert seen == [500, 1000, 1500, 2000]  # stopped early: two validations without improvement
    assert result.steps == 2000 and result.best_step == 1000 and result.val_sharpe == 1.5
    from deepscalper import DeepScalper

    assert DeepScalper.load(path).num_timesteps == 1000  # the best checkpoint, not the last
    assert math.isfinite(result.train_sharpe)


def test_a_model_without_gradient_updates_is_registered_but_never_promoted(workspace):
    bench = bench_module()
    cfg = config(window=8)
    market = prepare_market(MarketSpec("momentum", 0.3, n_bars=700), 0, cfg)
    result = run_job(_spec(market, cfg, bench, steps=150, eval_every=50, register=True))
    assert result.status == "finished" and result.model_status == "no_updates" and not result.promoted
    assert "not promoted (no_updates)" in result.promotion_reason
    registry = Registry.from_config(cfg)
    assert registry.champion("SYN", "1d", "deepscalper") is None
    meta = json.loads((Path(result.model_path).parent / "metadata.json").read_text())
    assert meta["status"] == "no_updates" and meta["training"]["gradient_updates"] == 0
    assert meta["hpo_trials"] == 3 and len(meta["training"]["validations"]) == 3  # each validation is a trial
    assert "train_sharpe" in meta
    curves = workspace / "results" / "training_curves"
    assert list(curves.glob("*/learning_curve.png")) and list(curves.glob("*/curves.csv"))
