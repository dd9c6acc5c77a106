"""evaluate_bot.py end to end (registry models, baselines, JSON, plots, verdict) and evaluation.baselines / report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import datafeed
import evaluate_bot
from agents.config import load_config
from agents.registry import Registry
from evaluation import compare
from evaluation.baselines import BuyAndHold, Flat, MovingAverageCrossover, RandomPolicy, make_baselines
from evaluation.metrics import METRIC_KEYS
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.trading_env import TradingEnv

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # no numpy division warnings

SYMBOL = "SYN"
ENTRY_KEYS = {"run_id", "model_type", "algo", "is_champion", "status", "hpo_trials", "kind", "name"}


def _prepare_data(seed: int = 3) -> None:
    import data_pipeline

    assert data_pipeline.main(["--symbols", SYMBOL, "--source", "synthetic", "--seed", str(seed), "--bars", "1500",
                               "--quiet"]) == 0


def _register_ppo(name_seed: int, *, feature_columns: list[str] | None = None, hpo_trials: int = 1,
                  promote: bool = True) -> object:
    """An untrained PPO (a random network: no skill) registered through the registry API."""
    from stable_baselines3 import PPO

    from agents.sb3_agent import save_sb3

    cfg = load_config()
    train = MarketData.from_frame(datafeed.load_split(SYMBOL, "1d", "train"), SYMBOL, "1d")
    env_config = EnvConfig.from_config(cfg, action_mode="discrete", training=True)
    model = PPO("MlpPolicy", TradingEnv(train, env_config), n_steps=32, batch_size=32, seed=name_seed,
                policy_kwargs={"net_arch": [8]}, device="cpu")
    file = Path(f"ppo_{name_seed}.zip")
    save_sb3(model, "ppo", {"n_steps": 32, "batch_size": 32, "net_arch": [8]}, file)
    meta = {"model_type": "backtrader", "algo": "ppo", "symbol": SYMBOL, "interval": "1d",
            "validation": {"sharpe_ratio": 0.1 * name_seed}, "env_config": env_config.to_dict(),
            "action_mode": "discrete", "hpo_trials": hpo_trials, "trial_sharpes": [],
            "feature_columns": feature_columns or list(train.feature_names)}
    # The test stands in for the promotion rule: a model with a higher validation Sharpe than the champion wins.
    registry = Registry()
    champion = registry.champion(SYMBOL, "1d", "backtrader")
    wins = promote and (champion is None or 0.1 * name_seed > champion.score)
    record, _ = registry.register(file, meta, promote=wins, reason="higher validation Sharpe (test stand-in)")
    return record


def _latest_json(workspace: Path) -> dict:
    files = sorted((workspace / "results").glob(f"model_comparison_{SYMBOL}_*.json"))
    assert files, "no comparison JSON written"
    return json.loads(files[-1].read_text())


# --- end to end -----------------------------------------------------------------------------------------

def test_evaluation_reports_every_key_skips_a_corrupt_model_and_finds_no_edge(workspace, capsys):
    _prepare_data()
    good = _register_ppo(1)
    corrupt = _register_ppo(2, promote=False)
    with open(corrupt.model_path, "ab") as fh:  # tampered after registration: the checksum must catch it
        fh.write(b"garbage")
    unloadable_file = Path("not_a_model.zip")
    unloadable_file.write_bytes(b"this is not a zip file")
    unloadable, _ = Registry().register(unloadable_file, {
        "model_type": "backtrader", "algo": "ppo", "symbol": SYMBOL, "interval": "1d",
        "validation": {"sharpe_ratio": None}, "env_config": EnvConfig().to_dict(), "hpo_trials": 1}, promote=False)

    assert evaluate_bot.main(["--symbol", SYMBOL, "--engine", "fast", "--create-plots", "--all", "--quiet"]) == 0
    out = _latest_json(workspace)
    for key in ("symbol", "interval", "split", "split_range", "engine", "market", "periods_per_year", "models",
                "baselines", "ranking", "recommendation", "config"):
        assert key in out, key
    assert out["split"] == "test" and out["periods_per_year"] == 252
    assert set(out["split_range"]) == {"start", "end", "rows"}
    manifest = json.loads((workspace / "data" / f"{SYMBOL}_1d_manifest.json").read_text())
    assert out["split_range"]["rows"] == manifest["ranges"]["test"]["rows"]
    assert out["config"]["evaluation"]["engine"] == "fast"

    assert set(out["baselines"]) == {"buy_and_hold", "flat", "ma_crossover", "random"}
    assert set(out["models"]) == {good.run_id, corrupt.run_id, unloadable.run_id}
    for entry in [*out["models"].values(), *out["baselines"].values()]:
        missing = (set(METRIC_KEYS) | ENTRY_KEYS) - set(entry)
        assert not missing, (entry["name"], missing)

    assert out["models"][good.run_id]["status"] == "ok"
    assert out["models"][good.run_id]["is_champion"] is True
    assert out["models"][corrupt.run_id]["status"] == "checksum_failed"
    assert "sha256" in out["models"][corrupt.run_id]["error"]
    assert out["models"][unloadable.run_id]["status"] == "load_failed"
    assert out["models"][corrupt.run_id]["sharpe_ratio"] is None  # never evaluated, never a made-up number

    # numbers come from the backtest: buy and hold tracks the test split's close, net of the entry costs
    test = MarketData.from_frame(datafeed.load_split(SYMBOL, "1d", "test"), SYMBOL, "1d")
    bh = out["baselines"]["buy_and_hold"]
    first = test.n_bars - bh["n_bars"]  # the first decision bar
    price_move = 100 * (test.close[-1] / test.open[first + 1] - 1)
    assert bh["total_return_pct"] == pytest.approx(price_move, abs=0.5)
    flat = out["baselines"]["flat"]
    assert flat["total_return_pct"] == 0.0 and flat["num_trades"] == 0 and flat["sharpe_ratio"] is None

    ranked = [r["name"] for r in out["ranking"]]
    assert good.run_id in ranked and corrupt.run_id not in ranked
    sharpes = [r["sharpe_ratio"] for r in out["ranking"] if r["sharpe_ratio"] is not None]
    assert sharpes == sorted(sharpes, reverse=True)
    rec = out["recommendation"]
    assert rec["recommended"] is None
    assert "no model shows a significant edge over the baselines" in rec["text"]

    for kind in ("performance", "drawdown", "returns_distribution", "risk_return", "trades", "rolling_sharpe",
                 "rolling_volatility"):
        png = Path(out["plots"][kind])
        assert png.name.startswith(f"{kind}_{SYMBOL}_") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000
    html = Path(out["report_html"]).read_text()
    assert html.count("data:image/png;base64,") == 7 and "no model shows a significant edge" in html
    assert good.run_id in html and "checksum_failed" in html

    printed = capsys.readouterr().out
    assert "no model shows a significant edge" in printed and "results: " in printed


def test_champions_by_default_plus_the_runs_named_and_every_run_with_all(workspace):
    _prepare_data()
    champion = _register_ppo(1)
    challenger = _register_ppo(2, promote=False)
    older = _register_ppo(3, promote=False)
    registry = Registry()

    def ids(records) -> list[str]:
        return [r.run_id for r in records]

    assert ids(compare.select_models(registry, SYMBOL, "1d", None)) == [champion.run_id]
    named = compare.select_models(registry, SYMBOL, "1d", [challenger.run_id, champion.run_id, challenger.run_id])
    assert ids(named) == [champion.run_id, challenger.run_id]  # each run once, champions first
    every = ids(compare.select_models(registry, SYMBOL, "1d", None, all_runs=True))
    assert sorted(every) == sorted([champion.run_id, challenger.run_id, older.run_id])
    assert compare.select_models(registry, SYMBOL, "1h", None) == []  # another interval has no champion

    assert evaluate_bot.main(["--symbol", SYMBOL, "--engine", "fast", "--models", older.run_id, "--quiet"]) == 0
    out = _latest_json(workspace)
    assert set(out["models"]) == {champion.run_id, older.run_id}
    assert out["model_selection"] == {"all_runs": False, "named": [older.run_id]}


def test_synthetic_mode_skips_models_with_another_feature_set_and_compares_engines(workspace):
    _prepare_data()
    other = _register_ppo(3, feature_columns=["f_something_else"])  # the champion: evaluated by default
    assert evaluate_bot.main(["--symbol", SYMBOL, "--synthetic", "--seed", "5", "--bars", "1200", "--engine", "both",
                              "--quiet"]) == 0
    out = _latest_json(workspace)
    assert out["source"] == "synthetic" and out["seed"] == 5
    assert out["models"][other.run_id]["status"] == "feature_mismatch"
    gap = out["baselines"]["buy_and_hold"]["engine_gap"]
    assert gap["n_bars_fast"] == gap["n_bars_backtrader"]
    # the fast engine reimplements backtrader's broker: the two agree closely on a buy-and-hold
    assert abs(gap["final_equity_diff_pct"]) < 0.01
    assert out["baselines"]["buy_and_hold"]["engine"] == "backtrader"


def test_missing_data_and_unknown_model_are_one_line_errors(workspace, capsys):
    assert evaluate_bot.main(["--symbol", SYMBOL, "--quiet"]) == 1
    assert "data_pipeline.py" in capsys.readouterr().err
    _prepare_data()
    assert evaluate_bot.main(["--symbol", SYMBOL, "--models", "nonexistent_run", "--quiet"]) == 1
    assert "nonexistent_run" in capsys.readouterr().err
    run = _register_ppo(1)  # a path, even to a registered run, is refused: run ids only
    assert evaluate_bot.main(["--symbol", SYMBOL, "--models", str(run.path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "run ids, not paths" in err and f"train_bot.py --import-model {run.path}" in err
    assert len(err.strip().splitlines()) == 1
    assert evaluate_bot.main(["--symbol", SYMBOL, "--psr-level", "1.5", "--quiet"]) == 2  # config check


# --- the verdict ----------------------------------------------------------------------------------------

def _entry(name: str, sharpe: float, psr: float, kind: str = "model") -> dict:
    return {"name": name, "kind": kind, "status": "ok", "algo": "ppo", "sharpe_ratio": sharpe, "psr": psr,
            "dsr": psr - 0.1, "hpo_trials": 4, "total_return_pct": 1.0}


def test_recommendation_needs_both_a_better_sharpe_and_significance():
    baselines = {"buy_and_hold": _entry("buy_and_hold", 0.8, 0.9, "baseline"),
                 "flat": _entry("flat", math.nan, math.nan, "baseline")}
    strong = compare.recommend({"m1": _entry("m1", 2.0, 0.99)}, baselines, 0.95)
    assert strong["recommended"] == "m1" and strong["sharpe_margin"] == pytest.approx(1.2)
    assert "by 1.200" in strong["text"] and "by 0.040" in strong["text"]
    lucky = compare.recommend({"m1": _entry("m1", 2.0, 0.90)}, baselines, 0.95)
    assert lucky["recommended"] is None and "no model shows a significant edge" in lucky["text"]
    worse = compare.recommend({"m1": _entry("m1", 0.5, 0.99)}, baselines, 0.95)
    assert worse["recommended"] is None and "does not beat the best baseline" in worse["text"]
    none = compare.recommend({}, baselines, 0.95)
    assert none["recommended"] is None and "no model is registered" in none["text"]


def test_a_random_policy_shows_no_significant_edge(workspace):
    """The seeded random baseline, judged as if it were a model, is never recommended: five seeds (policy and
    market), each one trading, none significant."""
    from evaluation.backtest import run_backtest
    from evaluation.metrics import compute_metrics

    cfg = load_config()
    box = EnvConfig.from_config(cfg, action_mode="box", training=False)
    psrs = []
    for seed in range(5):
        data = MarketData.from_frame(_synthetic_frame(1500, seed=11 + seed), symbol=SYMBOL)
        entries = {}
        for name, policy in make_baselines(seed=seed).items():
            res = run_backtest(policy, data, box, engine="fast")
            entries[name] = {"name": name, "kind": "baseline", "status": "ok", "algo": name, "hpo_trials": 1,
                             **compute_metrics(res, 252, bootstrap_samples=50)}
        random_model = dict(entries["random"], name="random_model", kind="model")
        rec = compare.recommend({"random_model": random_model}, entries, 0.95)
        assert rec["recommended"] is None and "no model shows a significant edge" in rec["text"], seed
        assert random_model["num_trades"] > 10 and 0.0 <= random_model["psr"] < 0.95, (seed, random_model["psr"])
        psrs.append(random_model["psr"])
    assert len(set(psrs)) == 5  # five different draws, not one result five times


def _synthetic_frame(bars: int, seed: int):

    raw = datafeed.generate_synthetic(bars, seed)
    return datafeed.prepare_splits(raw, load_config(), SYMBOL, "1d")["test"]


# --- baselines ------------------------------------------------------------------------------------------

def _env(n: int = 120, action_mode: str = "box", allow_short: bool = True, seed: int = 0) -> TradingEnv:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    data = MarketData.from_arrays(close, close * 1.01, close * 0.99, close)
    return TradingEnv(data, EnvConfig(window=5, action_mode=action_mode, allow_short=allow_short,
                                      episode_length=None, random_start=False))


def _decisions(policy, env) -> list:
    obs, _ = env.reset(seed=0)
    policy.bind(env)
    out, done = [], False
    while not done:
        action, _ = policy.predict(obs)
        out.append(np.asarray(action).tolist())
        obs, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    return out


def test_baselines_map_targets_to_box_and_discrete_actions():
    assert set(map(tuple, _decisions(BuyAndHold(), _env()))) == {(1.0,)}
    assert set(map(tuple, _decisions(Flat(), _env()))) == {(0.0,)}
    assert set(_decisions(BuyAndHold(), _env(action_mode="discrete"))) == {2}  # levels -1, 0, 1
    assert set(_decisions(Flat(), _env(action_mode="discrete"))) == {1}
    assert set(_decisions(Flat(), _env(action_mode="discrete", allow_short=False))) == {0}  # levels 0, .5, 1
    # long-only Box: the env holds (a + 1) / 2, so cash is the action -1 (the action 0 would hold half long)
    assert set(map(tuple, _decisions(Flat(), _env(allow_short=False)))) == {(-1.0,)}
    assert set(map(tuple, _decisions(BuyAndHold(), _env(allow_short=False)))) == {(1.0,)}
    long_only = _decisions(RandomPolicy(4), _env(allow_short=False))
    assert {a[0] for a in long_only} == {-1.0, 1.0}  # cash or fully long, never short when shorting is off
    with pytest.raises(ValueError, match="Box or Discrete"):
        BuyAndHold().bind(_env(action_mode="multidiscrete"))


def _held_fractions(policy, env) -> np.ndarray:
    """The position the env holds after each decision, as a fraction of what max_position allows at that bar
    (units * price / (max_position * equity)), from the env's own state."""
    obs, _ = env.reset(seed=0)
    policy.bind(env)
    out, done = [], False
    while not done:
        action, _ = policy.predict(obs)
        obs, _, terminated, truncated, info = env.step(action)
        out.append(info["position"] * env.data.close[env.t] / info["equity"] / env.config.max_position)
        done = terminated or truncated
    return np.asarray(out)


@pytest.mark.parametrize("action_mode, allow_short", [("box", True), ("box", False), ("discrete", True),
                                                      ("discrete", False)])
def test_baseline_targets_mean_what_they_say_in_every_action_mode(action_mode, allow_short):
    """Flat holds no position and buy-and-hold is fully long, whatever the action mode (issue 16: long-only Box
    mapped Flat's target 0 to the action 0, which the env holds as 50% long); the env-stepped run and the
    vectorised targets agree."""
    from evaluation.backtest import run_backtest

    env = _env(action_mode=action_mode, allow_short=allow_short)
    flat = _held_fractions(Flat(), env)
    assert flat.size > 100 and (flat == 0.0).all()
    held = _held_fractions(BuyAndHold(), env)
    assert np.abs(held - 1.0).max() < 0.03  # fully long (drifting with price and costs inside the band), not 0.5
    for policy in (Flat(), BuyAndHold(), MovingAverageCrossover(3, 8), RandomPolicy(4)):
        targets = policy.targets(env.data, env.config)
        expected = {"flat": {0.0}, "buy_and_hold": {1.0}}.get(policy.name, {0.0, 1.0} if not allow_short else
                                                               {-1.0, 0.0, 1.0})
        assert set(targets[env.window - 1:-1].tolist()) <= expected, policy.name
        stepped = run_backtest(policy, env.data, env.config, batched=False)
        vectorised = run_backtest(policy, env.data, env.config)
        assert stepped.equity.tobytes() == vectorised.equity.tobytes(), policy.name
    flat_run = run_backtest(Flat(), env.data, env.config)
    assert flat_run.n_fills == 0 and (flat_run.positions == 0).all()
    assert np.abs(run_backtest(BuyAndHold(), env.data, env.config).exposure[env.window:] - 1.0).max() < 0.03


def test_random_baseline_is_seeded():
    env = _env()
    a, b, c = _decisions(RandomPolicy(1), env), _decisions(RandomPolicy(1), env), _decisions(RandomPolicy(2), env)
    assert a == b and a != c
    assert {x[0] for x in a} == {-1.0, 0.0, 1.0}


def test_ma_crossover_uses_past_closes_only():
    env = _env(seed=2)
    policy = MovingAverageCrossover(3, 8)
    base = _decisions(policy, env)
    # moving averages by hand at each decision bar t (closes up to and including t)
    close = env.data.close
    first = env.window - 1
    expected = []
    for t in range(first, first + len(base)):
        expected.append(1.0 if t + 1 >= 8 and close[t - 2: t + 1].mean() > close[t - 7: t + 1].mean() else 0.0)
    assert [x[0] for x in base] == expected
    assert 0 < sum(expected) < len(expected)
    # no look-ahead: changing the future does not change decisions taken before it
    cut = 60
    env.data.close[cut + 1:] *= 3.0
    changed = _decisions(policy, env)
    assert changed[: cut - first + 1] == base[: cut - first + 1]


def test_rolling_sharpe_matches_direct_computation():
    from evaluation.metrics import sharpe_ratio
    from evaluation.report import rolling_sharpe

    r = np.random.default_rng(0).normal(0.001, 0.01, 50)
    rs = rolling_sharpe(r, 10, 252)
    assert np.isnan(rs[:9]).all()
    for t in (9, 25, 49):
        assert rs[t] == pytest.approx(sharpe_ratio(r[t - 9: t + 1], 252))


@pytest.mark.parametrize("allow_short", [True, False])
def test_evaluation_baselines_flat_holds_nothing_and_buy_and_hold_everything(workspace, allow_short):
    """What evaluate_bot.py reports for the baselines (box mode), long-only and long-short: flat is never in
    the market, buy and hold always fully in it (before the fix, long-only flat held 50% long)."""
    cfg = load_config()
    cfg["env"]["allow_short"] = allow_short
    data = MarketData.from_frame(_synthetic_frame(1500, seed=5), symbol=SYMBOL)
    entries, results = compare.evaluate_baselines(data, cfg, 252, "fast", cfg["env"]["window"])
    flat, held = entries["flat"], entries["buy_and_hold"]
    assert flat["exposure_pct"] == 0.0 and flat["avg_abs_exposure_pct"] == 0.0 and flat["num_trades"] == 0
    assert held["n_bars"] > 50 and held["num_trades"] == 1
    # long from the close of the first decision bar (the order fills at the next bar) to the end
    assert np.abs(results["buy_and_hold"].exposure[1:] - 1.0).max() < 0.03
