"""From champion to trades: signals, the paper broker and its ledger, parity with the backtest, shadow accounts,
forward monitoring, the trade job in the daemon.

Models are untrained networks registered through the registry API (no skill, but real files, real loading and
real decisions); scripted tests use a policy that is a fixed function of the observation, so that a restart
decides exactly as the run it replaces.
"""
from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from test_automate_training import BERLIN, berlin, read_state, simulated_time  # noqa: F401 (a fixture)
from test_evaluate_bot import SYMBOL, _prepare_data, _register_ppo

import automate_training as at
import data_pipeline
import evaluate_bot
from agents.config import load_config
from agents.registry import Registry
from automation.daemon import Automation
from automation.runner import UnitResult
from datafeed.dataset import Dataset, load_split
from evaluation.backtest import run_backtest
from evaluation.markets import random_walk_data
from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.trading_env import TradingEnv
from trading import ledger as db
from trading.forward import describe, forward_report
from trading.ledger import Ledger
from trading.paper import PaperAccount, check_parity, sync_bars, trade_symbol
from trading.signals import ForwardPolicy, compute_signals, decide_on_last_bar

# --- helpers ---------------------------------------------------------------------------------------------


class ObsPolicy:
    """A scripted policy: the action is a fixed function of the observation (so a restart repeats it).

    :param mode: the env's action mode; ``crash_at``: raise on that call (1-based), once.
    """

    def __init__(self, mode: str, crash_at: int | None = None) -> None:
        self.mode, self.crash_at, self.calls = mode, crash_at, 0

    def predict(self, obs, deterministic=True):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash in the middle of a bar")
        code = int(abs(float(obs[0])) * 1e4 + abs(float(obs[-4])) * 1e3)
        if self.mode == "discrete":
            return code % 3, None
        return np.array([code % 5, (code // 5) % 5]), None

    def explain(self, obs):
        return {"kind": "scripted"}


def scripted_frame(n: int = 160, seed: int = 1) -> pd.DataFrame:
    """Daily bars laid out as a split file (random walk with gaps and ranges, noise features)."""
    data = random_walk_data(n, seed=seed, n_features=3)
    frame = pd.DataFrame({"open": data.open, "high": data.high, "low": data.low, "close": data.close,
                          "volume": data.volume}, index=pd.DatetimeIndex(data.timestamps, name="timestamp"))
    for i in range(data.n_features):
        frame[f"f_{i}"] = data.features[:, i]
    return frame


def open_scripted_account(ledger: Ledger, config: EnvConfig, start: int, run_id: str = "scripted",
                          interval: str = "1d") -> object:
    rows = ledger.bars("SYN", interval)
    with ledger.transaction() as conn:
        conn.execute(sa.insert(db.accounts).values(
            symbol="SYN", interval=interval, model_type="deepscalper", run_id=run_id, algo="deepscalper",
            role="champion", status="active", created="2024-01-01T00:00:00+00:00",
            data_start=rows[start - config.window + 1].ts, start_bar=rows[start].ts,
            initial_cash=config.initial_cash, env_config=json.dumps(config.to_dict())))
    return next(a for a in ledger.accounts() if a.run_id == run_id)


def env_config(mode: str, **overrides) -> EnvConfig:
    return EnvConfig(window=8, action_mode=mode, episode_length=None, random_start=False, commission_min=0.5,
                     spread_bps=2.0, **overrides)


def intraday_frame(n: int = 260, seed: int = 1) -> pd.DataFrame:
    """Hourly bars in sessions (dates) of seven bars, every fifth session cut short after three (an early close),
    weekends skipped: the prices of :func:`scripted_frame`."""
    frame = scripted_frame(n, seed)
    stamps, day, k = [], pd.Timestamp("2024-01-02"), 0
    while len(stamps) < n:
        if day.weekday() < 5:
            for hour in range(3 if k % 5 == 4 else 7):
                stamps.append(day + pd.Timedelta(hours=14, minutes=30) + pd.Timedelta(hours=hour))
            k += 1
        day += pd.Timedelta(days=1)
    frame.index = pd.DatetimeIndex(stamps[:n], name="timestamp")
    return frame


def env_fills(frame: pd.DataFrame, config: EnvConfig, first: int, last: int, mode: str,
              interval: str = "1d") -> list[tuple]:
    """The fused-path env run on the same bars (from the account's data start) with the same policy:
    ``(bar, units, price, commission)`` per fill and the equity per bar, up to bar ``last``. Intraday, the env
    holds every bar of ``frame`` (its session ends come from the dates of the bars that follow)."""
    stop = len(frame) if interval != "1d" else last + 1
    data = random_walk_data(len(frame), seed=1, n_features=3).slice(first - config.window + 1, stop)
    data = MarketData(data.symbol, interval, frame.index.to_numpy()[first - config.window + 1: stop], data.open,
                      data.high, data.low, data.close, data.volume, data.features, data.feature_names)
    env, policy = TradingEnv(data, config), ObsPolicy(mode)
    obs, info = env.reset(seed=0)
    fills, equity = [], [info["equity"]]
    truncated = False
    while not truncated and env.t < last - first + config.window - 1:
        action, _ = policy.predict(obs)
        obs, _, _, truncated, info = env.step(action)
        equity.append(info["equity"])
        if info["filled"]:
            fills.append((env.t, info["fill_qty"], info["fill_price"], info["commission"]))
    return fills, equity


# --- the broker and the ledger ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["discrete", "multidiscrete"])
def test_paper_fills_equal_the_envs_on_scripted_bars(workspace, mode):
    """Market (discrete) and limit (multidiscrete) orders, long and short: the paper broker's fills, cash and
    equity are the env's, bit for bit, and the parity check through run_backtest agrees."""
    frame = scripted_frame()
    ledger = Ledger(f"sqlite:///{workspace / 'ledger.db'}")
    sync_bars(ledger, "SYN", "1d", frame)
    config = env_config(mode)
    account = open_scripted_account(ledger, config, start=40)
    paper = PaperAccount(ledger, account, ObsPolicy(mode))
    assert paper.advance() == len(frame) - 40

    fills, equity = env_fills(frame, config, 40, len(frame) - 1, mode)
    stamps = [r.ts for r in ledger.bars("SYN", "1d")]
    first = 40 - config.window + 1
    ledger_fills = [(stamps.index(f.bar) - first, f.units, f.price, f.commission) for f in ledger.fills_of(account.id)]
    assert ledger_fills == fills  # exact: the same arithmetic in the same order
    assert [v for _, v in ledger.series_of(account.id, db.equity, "equity")] == equity
    units = [u for _, u in ledger.series_of(account.id, db.positions, "units")]
    assert min(units) < 0 < max(units)  # long and short
    statuses = {o.status for o in _orders(ledger, account.id)}
    assert "filled" in statuses
    if mode == "multidiscrete":
        assert "cancelled" in statuses  # limits the next bar never reached
        assert all(o.limit_price is not None for o in _orders(ledger, account.id))
    else:
        assert all(o.limit_price is None for o in _orders(ledger, account.id))

    paper.policy = ObsPolicy(mode)  # the replay starts from the first bar: a fresh policy state
    report = check_parity(paper)
    assert report.ok and report.max_equity_diff == 0.0 and report.fills_ledger == report.fills_backtest == len(fills)
    assert report.pnl_ledger == pytest.approx(report.pnl_backtest, abs=1e-9)


@pytest.mark.parametrize("mode", ["discrete", "multidiscrete"])
def test_intraday_paper_trading_flattens_at_every_session_end_as_the_backtest_does(workspace, mode):
    """Hourly sessions (one in five cut short): the bars arrive in uneven batches, some one at a time; each
    account decides on bar t once bar t+2 is stored, so its fills, positions and equity are the env's bit for bit,
    it is flat over the last bar of every session, and the parity replay through run_backtest agrees to 1e-9."""
    frame = intraday_frame()
    config = env_config(mode)
    ledger = Ledger(f"sqlite:///{workspace / 'ledger.db'}")
    sync_bars(ledger, "SYN", "1h", frame.iloc[:60])
    account = open_scripted_account(ledger, config, start=40, interval="1h")
    processed, cut = [], 60
    for size in (1, 1, 1, 5, 1, 23, 2, 7, 1, 1, 40, 3, 1, 200):
        cut = min(cut + size, len(frame))
        sync_bars(ledger, "SYN", "1h", frame.iloc[:cut])
        paper = PaperAccount(ledger, ledger.account(account.id), ObsPolicy(mode))
        processed.append(paper.advance())
        assert ledger.state(account.id).last_bar == ledger.bars("SYN", "1h")[cut - 3].ts  # two bars behind
    assert sum(processed) == 60 - 40 - 2 + (len(frame) - 60)  # every bar decided once: none twice, none skipped

    last = len(frame) - 3
    fills, equity = env_fills(frame, config, 40, last, mode, interval="1h")
    stamps = [r.ts for r in ledger.bars("SYN", "1h")]
    first = 40 - config.window + 1
    ledger_fills = [(stamps.index(f.bar) - first, f.units, f.price, f.commission) for f in ledger.fills_of(account.id)]
    assert ledger_fills == fills
    assert [v for _, v in ledger.series_of(account.id, db.equity, "equity")] == equity

    # flat through the last bar of every session, in a position at other times
    days = frame.index.normalize()
    session_last = {stamps[i] for i in range(len(frame) - 1) if days[i + 1] != days[i]}
    positions = dict(ledger.series_of(account.id, db.positions, "units"))
    closing = [bar for bar in positions if bar in session_last]
    assert len(closing) >= 30 and all(positions[bar] == 0.0 for bar in closing)
    assert any(units != 0.0 for units in positions.values())

    paper = PaperAccount(ledger, ledger.account(account.id), ObsPolicy(mode))
    report = check_parity(paper)
    assert report.ok and report.max_equity_diff == 0.0 and report.fills_backtest == len(fills)
    assert report.pnl_ledger == pytest.approx(report.pnl_backtest, abs=1e-9) and report.commissions_backtest is None

    # A data revision of a traded bar is caught by the parity replay, which names the bar.
    bad = stamps[last - 30]
    with ledger.transaction() as conn:
        conn.execute(sa.update(db.bars).where(db.bars.c.ts == bad).values(open=db.bars.c.open * 1.02,
                                                                             high=db.bars.c.high * 1.02))
    paper = PaperAccount(ledger, ledger.account(account.id), ObsPolicy(mode))
    report = check_parity(paper)
    assert not report.ok and report.first_bad_bar is not None and report.first_bad_bar >= bad


def _register_hourly_ppo(seed: int) -> object:
    """An untrained PPO on the hourly SYN data, registered (champion when it is the first)."""
    from stable_baselines3 import PPO

    from agents.sb3_agent import save_sb3

    cfg = load_config(overrides={"data": {"interval": "1h"}})
    train = MarketData.from_frame(load_split(SYMBOL, "1h", "train"), SYMBOL, "1h")
    config = EnvConfig.from_config(cfg, action_mode="discrete", training=True)
    model = PPO("MlpPolicy", TradingEnv(train, config), n_steps=32, batch_size=32, seed=seed,
                policy_kwargs={"net_arch": [8]}, device="cpu")
    save_sb3(model, "ppo", {"n_steps": 32, "batch_size": 32, "net_arch": [8]}, Path(f"ppo_1h_{seed}.zip"))
    meta = {"model_type": "backtrader", "algo": "ppo", "symbol": SYMBOL, "interval": "1h",
            "validation": {"sharpe_ratio": 0.1 * seed}, "env_config": config.to_dict(), "action_mode": "discrete",
            "feature_columns": list(train.feature_names)}
    record, _ = Registry().register(Path(f"ppo_1h_{seed}.zip"), meta, promote=seed == 3, reason="test stand-in")
    return record


def test_intraday_trade_job_with_registered_models_keeps_parity(workspace):
    """trade_symbol on hourly bars (sessions of 24 bars) with a registered champion and a shadow: accounts open
    two bars behind the newest, every later bar is decided once, and the replay through run_backtest agrees."""
    assert data_pipeline.main(["--symbols", SYMBOL, "--source", "synthetic", "--interval", "1h", "--bars", "1100",
                               "--seed", "3", "--quiet"]) == 0
    champion, shadow = _register_hourly_ppo(3), _register_hourly_ppo(1)
    cfg = load_config(overrides={"model_types": ["backtrader"], "data": {"interval": "1h"}})
    ledger = Ledger.from_config(cfg)
    first = trade_symbol(SYMBOL, cfg, ledger)
    stamps = [r.ts for r in ledger.bars(SYMBOL, "1h")]
    assert {a["run_id"]: a["role"] for a in first["accounts"]} == {champion.run_id: "champion",
                                                                   shadow.run_id: "shadow"}
    assert {a.start_bar for a in ledger.accounts()} == {stamps[-3]}  # the newest decidable bar
    _move_starts_back(ledger, 72, interval="1h")
    second = trade_symbol(SYMBOL, cfg, ledger)
    assert {a["processed"] for a in second["accounts"]} == {71}  # up to two bars before the newest
    assert all(a["parity"]["ok"] and a["parity"]["max_equity_diff"] <= 1e-9 for a in second["accounts"])
    days = [s[:10] for s in stamps]
    session_last = {stamps[i] for i in range(len(stamps) - 1) if days[i + 1] != days[i]}
    held = []
    for run in second["accounts"]:
        positions = dict(ledger.series_of(run["account_id"], db.positions, "units"))
        closing = [positions[b] for b in positions if b in session_last]
        assert len(closing) >= 2 and closing == [0.0] * len(closing)  # flat over each session's last bar
        held += [u for u in positions.values() if u]
    assert held  # and in a position at other times
    ledger.close()


def _orders(ledger: Ledger, account_id: int) -> list:
    with ledger.engine.connect() as conn:
        return list(conn.execute(sa.select(db.orders).where(db.orders.c.account_id == account_id)))


def test_crash_between_bars_then_restart_loses_nothing_and_never_fills_twice(workspace):
    frame = scripted_frame()
    config = env_config("multidiscrete")
    clean = Ledger(f"sqlite:///{workspace / 'clean.db'}")
    sync_bars(clean, "SYN", "1d", frame)
    PaperAccount(clean, open_scripted_account(clean, config, 40), ObsPolicy("multidiscrete")).advance()

    ledger = Ledger(f"sqlite:///{workspace / 'crashed.db'}")
    sync_bars(ledger, "SYN", "1d", frame)
    account = open_scripted_account(ledger, config, 40)
    with pytest.raises(RuntimeError, match="simulated crash"):
        # the 30th decision raises after that bar's fill and marks were written in its transaction
        PaperAccount(ledger, account, ObsPolicy("multidiscrete", crash_at=30)).advance()
    assert len(ledger.series_of(account.id, db.equity, "equity")) == 29  # bar 30 rolled back whole
    assert PaperAccount(ledger, account, ObsPolicy("multidiscrete")).advance() == len(frame) - 40 - 29
    assert PaperAccount(ledger, account, ObsPolicy("multidiscrete")).advance() == 0  # nothing left, nothing redone

    for table, column in ((db.equity, "equity"), (db.cash, "cash"), (db.positions, "units")):
        assert ledger.series_of(account.id, table, column) == clean.series_of(1, table, column)
    assert [tuple(f)[1:] for f in ledger.fills_of(account.id)] == [tuple(f)[1:] for f in clean.fills_of(1)]
    with pytest.raises(sa.exc.IntegrityError):  # one fill per account and bar, enforced by the database
        with ledger.transaction() as conn:
            f = ledger.fills_of(account.id)[0]
            conn.execute(sa.insert(db.fills).values(account_id=account.id, bar=f.bar, order_id=f.order_id, units=1.0,
                                                    price=1.0, commission=0.0, slippage_cost=0.0))


# --- signals, parity, shadows, status ----------------------------------------------------------------------

def test_signal_on_the_newest_bar_is_the_backtests_decision_there(workspace, capsys):
    _prepare_data()
    record = _register_ppo(1)
    cfg = load_config()
    out = compute_signals(SYMBOL, cfg, now=datetime(2005, 10, 2, tzinfo=UTC))
    newest = load_split(SYMBOL, "1d", "test").index[-1].strftime("%Y-%m-%d")
    assert out["bar"] == newest and out["stale"] is False and out["data_age_days"] == 2.0
    model = out["models"][0]
    assert model["run_id"] == record.run_id and model["is_champion"]
    assert model["decision"]["order_type"] in ("market", "none") and len(model["decision"]["why"]["values"]) == 3

    # The backtest's decision on bar k (run over the whole split) equals the signal computed when k was newest.
    from agents import load_registered
    from rl_env.data import MarketData
    from trading.signals import model_env_config

    data = MarketData.from_frame(load_split(SYMBOL, "1d", "test"), SYMBOL, "1d")
    config = model_env_config(record, cfg)
    policy = ForwardPolicy(load_registered(Registry(), record))
    seen = []

    class Recording:
        def predict(self, obs, deterministic=True):
            action, state = policy.predict(obs)
            seen.append(int(action))
            return action, state

    result = run_backtest(Recording(), data, config)
    first = config.window - 1
    for k in (first + 5, first + 60, data.n_bars - 2):
        decision = decide_on_last_bar(policy, data.slice(0, k + 1), config)
        assert decision.action == seen[k - first]
        assert decision.position_units == result.positions[k - first]
        assert decision.equity == result.equity[k - first]
    assert model["decision"]["action"] == decide_on_last_bar(policy, data, config).action

    capsys.readouterr()
    assert evaluate_bot.main(["--symbol", SYMBOL, "--signal", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bar"] == out["bar"] and printed["stale"] is True  # the 2005 data is old today
    assert evaluate_bot.main(["--symbol", SYMBOL, "--signal", "--model", record.run_id]) == 0
    text = capsys.readouterr().out
    assert "STALE" in text and record.run_id in text and "why (action_probabilities)" in text
    assert evaluate_bot.main(["--symbol", SYMBOL, "--json"]) == 1  # --json needs --signal


def test_shadow_challengers_trade_the_same_bars_and_parity_catches_revisions_and_bugs(workspace):
    _prepare_data()
    champion = _register_ppo(3)
    challengers = [_register_ppo(1), _register_ppo(2)]  # lower validation Sharpe: stay challengers
    cfg = load_config(overrides={"model_types": ["backtrader"]})
    ledger = Ledger.from_config(cfg)
    assert (workspace / "results" / "paper_ledger.db").is_file()
    first = trade_symbol(SYMBOL, cfg, ledger)
    roles = {a["run_id"]: a["role"] for a in first["accounts"]}
    assert roles == {champion.run_id: "champion", **{c.run_id: "shadow" for c in challengers}}

    # New bars arrive: every account decides on each of them; their ledgers agree with a backtest replay.
    _move_starts_back(ledger, 60)
    second = trade_symbol(SYMBOL, cfg, ledger)
    assert {a["processed"] for a in second["accounts"]} == {61}
    assert all(a["parity"]["ok"] and a["parity"]["max_equity_diff"] <= 1e-9 for a in second["accounts"])
    bars = {tuple(b for b, _ in ledger.series_of(a["account_id"], db.equity, "equity")) for a in second["accounts"]}
    assert len(bars) == 1  # the same bars for champion and shadows

    # A data revision of a traded bar: named in an alert, recorded once.
    automation = Automation(cfg)
    frame = Dataset.open(SYMBOL, "1d").split("test")
    revised = frame.copy()
    revised.iloc[-10, revised.columns.get_loc("close")] *= 1.01
    revised.iloc[-10, revised.columns.get_loc("high")] *= 1.01
    found = sync_bars(ledger, SYMBOL, "1d", revised)
    bar = frame.index[-10].strftime("%Y-%m-%d")
    assert [r["bar"] for r in found.revisions] == [bar]
    assert sync_bars(ledger, SYMBOL, "1d", revised).revisions == []  # once
    automation.monitor.check_paper({"symbol": SYMBOL, "interval": "1d", "revisions": found.revisions, "gap": None,
                                    "accounts": []}, ledger, Registry())
    alert = automation.store.data["alerts"][-1]
    assert alert["kind"] == "data_revision" and f"bar {bar}" in alert["message"]

    # A bug (an equity row that is not what the broker computed): the replay names the bar.
    account_id = second["accounts"][0]["account_id"]
    bad = ledger.series_of(account_id, db.equity, "equity")[20][0]
    with ledger.transaction() as conn:
        conn.execute(sa.update(db.equity).where(db.equity.c.account_id == account_id, db.equity.c.bar == bad)
                     .values(equity=db.equity.c.equity + 0.01))
    report = trade_symbol(SYMBOL, cfg, ledger)["accounts"][0]["parity"]
    assert not report["ok"] and report["first_bad_bar"] == bad
    automation.monitor.check_paper(trade_symbol(SYMBOL, cfg, ledger), ledger, Registry())
    parity = [a for a in automation.store.data["alerts"] if a["kind"] == "parity"]
    assert len(parity) == 1 and f"bar {bad}" in parity[0]["message"]


def _move_starts_back(ledger: Ledger, bars_back: int, interval: str = "1d") -> None:
    """Restart every account ``bars_back`` bars earlier with an empty history, as if it had been opened then
    (the stored bars after it play the bars that arrived since)."""
    stamps = [r.ts for r in ledger.bars(SYMBOL, interval)]
    with ledger.transaction() as conn:
        for account in ledger.accounts():
            for table in (db.decisions, db.fills, db.equity, db.cash, db.positions, db.orders):
                conn.execute(sa.delete(table).where(table.c.account_id == account.id))
            window = json.loads(account.env_config)["window"]
            start = len(stamps) - 1 - bars_back
            conn.execute(sa.update(db.accounts).where(db.accounts.c.id == account.id).values(
                start_bar=stamps[start], data_start=stamps[start - window + 1]))


def test_run_once_trade_and_status_json(workspace, capsys):
    _prepare_data()
    champion = _register_ppo(3)
    _register_ppo(1)
    (workspace / "training_config.json").write_text(json.dumps({"symbols": [SYMBOL], "model_types": ["backtrader"]}))
    assert at.main(["--run-once", "trade", "--quiet"]) == 0
    state = read_state(workspace)
    assert state["units"]["trade/SYN"]["outcome"] == "ok" and state["jobs"]["trade"]["outcome"] == "ok"
    capsys.readouterr()
    assert at.main(["--status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["paper"]["enabled"] and set(st["paper"]["symbols"]) == {SYMBOL}
    accounts = st["paper"]["symbols"][SYMBOL]
    assert [a["role"] for a in accounts] == ["champion", "shadow"] and accounts[0]["run_id"] == champion.run_id
    assert set(accounts[0]) >= {"equity", "return_pct", "sharpe", "position", "last_decision", "start_bar", "forward",
                                "status", "model_type", "parity_bar", "pending_order"}
    assert set(accounts[0]["forward"]) >= {"sharpe", "max_drawdown_pct", "rolling_psr", "sharpe_implausible",
                                           "drawdown_implausible", "p_above_validation_low"}
    assert "trade" in st["jobs"]
    assert at.main(["--status"]) == 0
    text = capsys.readouterr().out
    assert "paper trading (sqlite:///" in text and f"champion backtrader  {champion.run_id}" in text


# --- forward monitoring -------------------------------------------------------------------------------------

def test_forward_monitoring_flags_a_crafted_degradation_and_rolls_back(workspace):
    monitoring = load_config()["monitoring"]
    validation = {"sharpe_ratio": 1.5, "sharpe_ci_low": 0.5, "max_drawdown_pct": -8.0}
    days = [f"2024-01-{d:02d}" for d in range(1, 32)] + [f"2024-02-{d:02d}" for d in range(1, 30)]
    rng = np.random.default_rng(0)
    healthy = 1e5 * np.cumprod(1 + rng.normal(0.002, 0.01, len(days)))
    report = forward_report(list(zip(days, healthy)), "2024-01-10", 252.0, validation, monitoring)
    assert report["judged"] and not report["sharpe_implausible"] and not report["drawdown_implausible"]
    assert report["from"] == "2024-01-11" and report["returns"] == len(days) - 11

    falling = 1e5 * np.cumprod(1 + rng.normal(-0.006, 0.01, len(days)))
    report = forward_report(list(zip(days, falling)), "2024-01-10", 252.0, validation, monitoring)
    assert report["sharpe_implausible"] and report["p_above_validation_low"] < 0.05
    assert report["drawdown_implausible"] and report["max_drawdown_pct"] < report["drawdown_limit_pct"] == -12.0
    kinds = dict(describe(report))
    assert "below the validation Sharpe's bootstrap CI lower bound 0.50" in kinds["forward_sharpe"]
    assert "deeper than -12.00%" in kinds["forward_drawdown"]
    early = forward_report(list(zip(days[:15], falling[:15])), "2024-01-10", 252.0, validation, monitoring)
    assert not early["judged"] and not early["sharpe_implausible"]  # 4 returns are too few to judge

    # In the daemon: the champion's paper account degrades, an alert says so in numbers, auto_rollback demotes it.
    _prepare_data()
    old = _register_ppo(1)
    cfg = load_config(overrides={"model_types": ["backtrader"], "monitoring": {"auto_rollback": True}})
    ledger = Ledger.from_config(cfg)
    trade_symbol(SYMBOL, cfg, ledger)
    new = _register_ppo(3)  # promoted: the old champion's account becomes a shadow, with its champion period
    trade_symbol(SYMBOL, cfg, ledger)
    account = next(a for a in ledger.accounts() if a.run_id == new.run_id)
    meta_file = new.path / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["validation"].update(sharpe_ci_low=0.5, max_drawdown_pct=-8.0)
    meta_file.write_text(json.dumps(meta))
    with ledger.transaction() as conn:  # its paper account lost steadily after its training data ended
        for table in (db.equity, db.cash, db.positions):
            conn.execute(sa.delete(table).where(table.c.account_id == account.id))
        conn.execute(sa.insert(db.equity), [{"account_id": account.id, "bar": d, "equity": float(v)}
                                            for d, v in zip(days, falling)])
        conn.execute(sa.insert(db.cash), [{"account_id": account.id, "bar": d, "cash": float(v)}
                                          for d, v in zip(days, falling)])
        conn.execute(sa.insert(db.positions), [{"account_id": account.id, "bar": d, "units": 0.0, "avg_price": 0.0}
                                               for d in days])
        conn.execute(sa.update(db.accounts).where(db.accounts.c.id == account.id).values(training_data_end=days[9]))
    automation = Automation(cfg)
    run = {"account_id": account.id, "run_id": new.run_id, "model_type": "backtrader", "role": "champion",
           "status": "active", "error": None, "parity": None}
    automation.monitor.check_paper({"symbol": SYMBOL, "interval": "1d", "revisions": [], "gap": None,
                                    "accounts": [run]}, ledger, Registry())
    kinds = [a["kind"] for a in automation.store.data["alerts"]]
    assert kinds == ["forward_sharpe", "forward_drawdown", "champion_rollback"]
    assert Registry().champion(SYMBOL, "1d", "backtrader").run_id == old.run_id
    assert "P(forward Sharpe >= 0.50)" in automation.store.data["alerts"][0]["message"]


# --- 30 simulated days of the daemon ------------------------------------------------------------------------

class MarketRunner:
    """The child scripts for a month of the daemon: data appends the day's bar to a CSV source and runs the real
    data_pipeline.py on it; training registers a model (an untrained network) on Mondays only, the weekly
    retrain, and does nothing otherwise; evaluation writes a report without champions."""

    def __init__(self, clock, csv: Path, fail_data_on: int, fail_training_on: int) -> None:
        self.clock, self.csv = clock, csv
        self.fail_data_on, self.fail_training_on = fail_data_on, fail_training_on
        self.trained = 0

    def __call__(self, script, args, timeout, stop):
        today = self.clock.now().astimezone(BERLIN).date()
        if script == "data_pipeline.py":
            _append_bars(self.csv, today)
            if today.day == self.fail_data_on:
                return UnitResult("failed", "exit code 1: error: the source was down", 1)
            code = data_pipeline.main(["--symbols", SYMBOL, "--source", "csv", "--csv", str(self.csv), "--quiet"])
            return UnitResult("ok" if code == 0 else "failed", "" if code == 0 else f"exit code {code}", code)
        if script == "train_bot.py":
            if today.day == self.fail_training_on:
                return UnitResult("failed", "exit code 1: error: training diverged", 1)
            if today.weekday() == 0:
                self.trained += 1
                _register_ppo(10 + self.trained)  # a higher validation Sharpe each week: promoted
            return UnitResult("ok", "", 0)
        Path("results").mkdir(exist_ok=True)  # evaluation: a report without champions (nothing to check)
        Path(f"results/model_comparison_{SYMBOL}_{today:%Y%m%d}.json").write_text(json.dumps({"models": {}}))
        return UnitResult("ok", "", 0)


def _append_bars(csv: Path, today) -> None:
    """The source gains every bar up to yesterday (a day the update failed is fetched the day after)."""
    frame = pd.read_csv(csv, index_col="Date", parse_dates=["Date"])
    rng = np.random.default_rng(len(frame))
    day = frame.index[-1] + pd.Timedelta(days=1)
    while day.date() < today:
        close = frame["Close"].iloc[-1] * math.exp(rng.normal(0.0, 0.01))
        open_ = frame["Close"].iloc[-1] * math.exp(rng.normal(0.0, 0.003))
        frame.loc[day] = [open_, max(open_, close) * 1.004, min(open_, close) * 0.996, close,
                          1e6 * (1.0 + rng.random())]
        day += pd.Timedelta(days=1)
    frame.to_csv(csv, index_label="Date")


@pytest.mark.slow
def test_thirty_days_of_the_daemon_trade_daily_retrain_weekly(workspace, simulated_time):  # noqa: F811
    start = berlin(2024, 3, 25, 0, 30)  # a Monday; summer time starts on Sunday 31 March (02:00 does not exist)
    rng = np.random.default_rng(7)
    days = pd.date_range(end=start.date() - timedelta(days=1), periods=420, freq="D")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(days))))
    csv = workspace / "prices.csv"
    volume = 1e6 * (1.0 + rng.random(len(days)))
    pd.DataFrame({"Open": close, "High": close * 1.005, "Low": close * 0.995, "Close": close, "Volume": volume},
                 index=pd.Index(days, name="Date")).to_csv(csv)
    (workspace / "training_config.json").write_text(json.dumps({
        "symbols": [SYMBOL], "model_types": ["backtrader"],
        "data": {"source": "csv", "indicators": ["rsi", "macd"]},
        "env": {"window": 8},
        "training_schedule": {"timezone": "Europe/Berlin", "data_update_at": "01:00", "daily_at": "02:00",
                              "evaluation_at": "04:00"}}))
    assert data_pipeline.main(["--symbols", SYMBOL, "--source", "csv", "--csv", str(csv), "--quiet"]) == 0
    _register_ppo(5)
    clock = simulated_time(start, start + timedelta(days=30))
    runner = MarketRunner(clock, csv, fail_data_on=12, fail_training_on=19)
    assert at.main(["--quiet"], runner=runner, clock=clock) == 0

    state = read_state(workspace)
    trades = [h for h in state["history"] if h["unit"] == "trade/SYN"]
    assert len(trades) >= 30 and all(h["outcome"] == "ok" for h in trades)  # after every data update and promotion
    kinds = [a["kind"] for a in state["alerts"]]
    assert kinds.count("job_failed") == 2 and "parity" not in kinds and "data_revision" not in kinds
    assert runner.trained == 5  # the five Mondays from 25 March to 22 April, once each across the DST switch

    ledger = Ledger.from_config(load_config())
    stamps = [r.ts for r in ledger.bars(SYMBOL, "1d")]
    accounts = ledger.accounts()
    assert len({a.run_id for a in accounts}) == 6 and sum(a.role == "champion" for a in accounts) == 1
    assert sum(a.status == "active" for a in accounts) == 3  # the champion and its two newest challengers
    for account in accounts:  # continuous: one equity row on every stored bar from its start to its last bar
        bars = [b for b, _ in ledger.series_of(account.id, db.equity, "equity")]
        assert bars == stamps[stamps.index(account.start_bar): stamps.index(bars[-1]) + 1]
        paper = PaperAccount.from_registry(ledger, account, Registry())
        assert check_parity(paper).ok
    newest = max(accounts, key=lambda a: a.id)  # promoted on 22 April: traded its first bars that week
    # 30 x 24 hours from 00:30 winter time end at 01:30 summer time on 24 April: that day's update ran
    assert newest.role == "champion" and ledger.state(newest.id).last_bar == stamps[-1] == "2024-04-23"


def test_the_ledger_url_password_is_never_shown(workspace, monkeypatch, caplog):
    monkeypatch.setenv("TRADING_BOT_LEDGER_URL", "postgresql+nosuchdriver://bot:hunter2-secret@db.invalid/trading")
    cfg = load_config()
    with pytest.raises(Exception) as failure:
        Ledger.from_config(cfg)
    assert "hunter2-secret" not in str(failure.value) and "bot:***@db.invalid" in str(failure.value)
    assert "hunter2-secret" not in caplog.text
    monkeypatch.delenv("TRADING_BOT_LEDGER_URL")
    ledger = Ledger.from_config(cfg)  # the default: SQLite in the workspace
    assert ledger.shown_url == f"sqlite:///{workspace / 'results' / 'paper_ledger.db'}"
