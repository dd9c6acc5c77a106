"""Forward promotion: a shadow challenger that beat the champion on paper, significantly, on bars neither model
trained on, and beat the best baseline there, becomes champion at the next training job (the one promotion rule,
evaluation.promotion, on forward returns). Crafted shadow ledgers play the paper results."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from test_automate_training import read_state
from test_evaluate_bot import SYMBOL, _prepare_data, _register_ppo

import automate_training as at
from agents.config import load_config
from agents.registry import Registry
from automation.runner import UnitResult
from evaluation.metrics import sharpe_ratio
from evaluation.promotion import PromotionRule, best_baseline_sharpe, judge_forward
from trading import ledger as db
from trading.forward import judge_shadow
from trading.ledger import Ledger
from trading.paper import bars_data, trade_symbol

PPY = 252.0
FORWARD = 120  # forward returns in the crafted ledgers (the rule needs 60)


def returns_with_sharpe(sharpe: float, n: int, seed: int, vol: float = 0.01) -> np.ndarray:
    """Per-bar returns whose annualised Sharpe (evaluation.metrics) is exactly ``sharpe``."""
    z = np.random.default_rng(seed).normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    out = vol * z + sharpe * vol / np.sqrt(PPY)
    assert sharpe_ratio(out, PPY) == pytest.approx(sharpe, abs=1e-9)
    return out


class TrainingRunner:
    """train_bot.py stands in: the training succeeds and registers nothing (the champion is whatever forward
    promotion made it)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, script, args, timeout, stop):
        self.calls.append(script)
        return UnitResult("ok", "", 0)


@pytest.fixture()
def paper_accounts(workspace):
    """A champion and two shadow challengers with paper accounts in the default ledger."""
    _prepare_data()
    champion = _register_ppo(3)
    challengers = [_register_ppo(1), _register_ppo(2)]
    (workspace / "training_config.json").write_text(json.dumps({"symbols": [SYMBOL], "model_types": ["backtrader"]}))
    cfg = load_config()
    ledger = Ledger.from_config(cfg)
    trade_symbol(SYMBOL, cfg, ledger)
    yield cfg, ledger, champion, challengers
    ledger.close()


def craft(ledger: Ledger, run_id: str, returns: np.ndarray) -> list[str]:
    """Replace the account's history by ``returns`` on the newest stored bars, all after its model's training
    data ended; returns the forward bars."""
    stamps = [r.ts for r in ledger.bars(SYMBOL, "1d")]
    bars = stamps[-len(returns) - 1:]
    equity = 1e5 * np.cumprod(np.r_[1.0, 1.0 + returns])
    account = next(a for a in ledger.accounts() if a.run_id == run_id)
    window = json.loads(account.env_config)["window"]
    start = stamps.index(bars[0])
    with ledger.transaction() as conn:
        for table in (db.decisions, db.fills, db.equity, db.cash, db.positions, db.orders):
            conn.execute(sa.delete(table).where(table.c.account_id == account.id))
        conn.execute(sa.insert(db.equity), [{"account_id": account.id, "bar": b, "equity": float(v)}
                                            for b, v in zip(bars, equity)])
        conn.execute(sa.insert(db.cash), [{"account_id": account.id, "bar": b, "cash": float(v)}
                                          for b, v in zip(bars, equity)])
        conn.execute(sa.insert(db.positions), [{"account_id": account.id, "bar": b, "units": 0.0, "avg_price": 0.0}
                                               for b in bars])
        conn.execute(sa.update(db.accounts).where(db.accounts.c.id == account.id).values(
            start_bar=bars[0], data_start=stamps[start - window + 1], training_data_end=stamps[start - 1]))
    return bars


def forward_baseline(ledger: Ledger, cfg: dict, bars: list[str], window: int) -> float:
    rows = ledger.bars(SYMBOL, "1d")
    stamps = [r.ts for r in rows]
    first = stamps.index(bars[0]) - window + 1
    data = bars_data(rows[first:], SYMBOL, "1d", ledger.feature_names(SYMBOL, "1d"))
    return best_baseline_sharpe(data, window, cfg, PPY)


def test_a_significantly_better_shadow_is_promoted_at_the_next_training_job(paper_accounts):
    cfg, ledger, champion, (weak, strong) = paper_accounts
    bars = craft(ledger, champion.run_id, returns_with_sharpe(0.0, FORWARD, seed=1))
    craft(ledger, weak.run_id, returns_with_sharpe(0.3, FORWARD, seed=2))
    craft(ledger, strong.run_id, returns_with_sharpe(7.0, FORWARD, seed=3))
    window = json.loads(ledger.accounts()[0].env_config)["window"]
    baseline = forward_baseline(ledger, cfg, bars, window)
    assert baseline < 7.0  # the crafted challenger beats the best baseline on these bars

    # Trading does not promote: the champion changes only at the training job.
    trade_symbol(SYMBOL, cfg, ledger)
    assert Registry().champion(SYMBOL, "1d", "backtrader").run_id == champion.run_id

    runner = TrainingRunner()
    assert at.main(["--run-once", "training", "--quiet"], runner=runner) == 0
    assert runner.calls == ["train_bot.py"]
    assert Registry().champion(SYMBOL, "1d", "backtrader").run_id == strong.run_id
    event = Registry().champion_history(f"{SYMBOL}/1d/backtrader")[-1]
    assert event["run_id"] == strong.run_id and event["previous"] == champion.run_id
    assert event["reason"].startswith(f"forward promotion over {champion.run_id} on {FORWARD + 1} paper bars")
    assert "forward Sharpe 7.000 beats the champion's 0.000" in event["reason"]
    evidence = event["evidence"]
    assert evidence["window"] == "forward" and evidence["from"] == bars[0] and evidence["to"] == bars[-1]
    assert evidence["test"]["n_returns"] == FORWARD and evidence["test"]["p_value"] < 0.05
    assert evidence["baseline_sharpe"] == pytest.approx(baseline, abs=1e-12)
    alerts = [a for a in read_state(Path.cwd())["alerts"] if a["kind"] == "forward_promotion"]
    assert len(alerts) == 1 and strong.run_id in alerts[0]["message"]

    # The trade job that followed the change gave the accounts their new roles.
    roles = {a.run_id: a.role for a in ledger.accounts()}
    assert roles[strong.run_id] == "champion" and roles[champion.run_id] == "shadow"


def test_a_better_but_not_significant_shadow_is_kept(paper_accounts):
    cfg, ledger, champion, (weak, strong) = paper_accounts
    base = returns_with_sharpe(4.0, FORWARD, seed=4)
    craft(ledger, champion.run_id, base)
    craft(ledger, weak.run_id, returns_with_sharpe(-1.0, FORWARD, seed=5))
    # a little better on the same bars: Sharpe 4.0 -> about 4.3, far inside the bootstrap's noise
    craft(ledger, strong.run_id, base + np.random.default_rng(6).normal(0.0002, 0.002, FORWARD))
    accounts = {a.run_id: a for a in ledger.accounts()}
    verdict = judge_shadow(ledger, accounts[strong.run_id], accounts[champion.run_id], cfg, PPY)
    decision = verdict["decision"]
    assert decision["challenger_sharpe"] > decision["champion_sharpe"] + cfg["registry"]["promotion_margin"]
    assert decision["challenger_sharpe"] > decision["baseline_sharpe"]
    assert not decision["promoted"] and "but not significantly" in decision["reason"]
    assert decision["test"]["p_value"] >= 0.05

    assert at.main(["--run-once", "training", "--quiet"], runner=TrainingRunner()) == 0
    assert Registry().champion(SYMBOL, "1d", "backtrader").run_id == champion.run_id
    assert all(not e["reason"].startswith("forward") for e in Registry().champion_history())


def test_a_shadow_worse_than_the_best_baseline_is_kept(paper_accounts):
    cfg, ledger, champion, (weak, strong) = paper_accounts
    window = json.loads(ledger.accounts()[0].env_config)["window"]
    stamps = [r.ts for r in ledger.bars(SYMBOL, "1d")]
    baseline = forward_baseline(ledger, cfg, stamps[-FORWARD - 1:], window)
    craft(ledger, champion.run_id, returns_with_sharpe(baseline - 9.0, FORWARD, seed=7))
    craft(ledger, weak.run_id, returns_with_sharpe(baseline - 9.0, FORWARD, seed=8))
    craft(ledger, strong.run_id, returns_with_sharpe(baseline - 0.5, FORWARD, seed=9))
    accounts = {a.run_id: a for a in ledger.accounts()}
    decision = judge_shadow(ledger, accounts[strong.run_id], accounts[champion.run_id], cfg, PPY)["decision"]
    assert decision["baseline_sharpe"] == pytest.approx(baseline, abs=1e-12)
    assert not decision["promoted"] and "does not beat the best baseline" in decision["reason"]
    # the same returns against the champion alone (no baseline) are significant: the baseline kept it
    mine = returns_with_sharpe(baseline - 0.5, FORWARD, seed=9)
    theirs = returns_with_sharpe(baseline - 9.0, FORWARD, seed=7)
    assert judge_forward(mine, theirs, None, PPY, PromotionRule.from_config(cfg)).promoted

    assert at.main(["--run-once", "training", "--quiet"], runner=TrainingRunner()) == 0
    assert Registry().champion(SYMBOL, "1d", "backtrader").run_id == champion.run_id


def test_too_few_forward_bars_or_an_unknown_training_end_are_not_judged(paper_accounts):
    cfg, ledger, champion, (weak, strong) = paper_accounts
    craft(ledger, champion.run_id, returns_with_sharpe(0.0, 30, seed=1))
    craft(ledger, strong.run_id, returns_with_sharpe(9.0, 30, seed=3))
    accounts = {a.run_id: a for a in ledger.accounts()}
    decision = judge_shadow(ledger, accounts[strong.run_id], accounts[champion.run_id], cfg, PPY)["decision"]
    assert not decision["promoted"]
    assert decision["reason"] == "30 forward returns on bars neither model saw; the rule judges from 60 " \
                                 "(registry.forward_min_bars)"
    with ledger.transaction() as conn:  # a model whose training data end is unknown has no known forward bars
        conn.execute(sa.update(db.accounts).where(db.accounts.c.run_id == strong.run_id)
                     .values(training_data_end=None))
    accounts = {a.run_id: a for a in ledger.accounts()}
    verdict = judge_shadow(ledger, accounts[strong.run_id], accounts[champion.run_id], cfg, PPY)
    assert verdict["bars"] == 0 and "training data end of a model is unknown" in verdict["decision"]["reason"]
