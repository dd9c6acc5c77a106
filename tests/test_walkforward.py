"""Walk-forward: fold layout, no look-ahead across folds, the promotion rule, trial counting."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import data_pipeline
import evaluate_bot
from agents.config import load_config
from botcore.errors import UserError
from botcore.signals import StopFlag
from datafeed import generate_synthetic
from datafeed.dataset import Dataset
from datafeed.history import fit_zscore, load_history
from evaluation.promotion import PromotionRule, decide_promotion
from training.walkforward import WalkForwardSettings, lay_folds, run_walkforward


def test_folds_are_laid_from_the_start_with_embargoes_and_never_move():
    folds = lay_folds(n_bars=100, train_bars=50, test_bars=10, val_bars=10, embargo=5)
    assert [(f.fit, f.val, f.test) for f in folds[:2]] == [((0, 30), (35, 45), (50, 60)),
                                                           ((10, 40), (45, 55), (60, 70))]
    assert len(folds) == 5 and folds[-1].test == (90, 100)  # only complete test windows
    for f in folds:
        assert f.fit[1] + 5 <= f.val[0] and f.val[1] + 5 <= f.test[0]  # embargo before val and before test
        assert f.test[0] - f.fit[0] == 50
    assert lay_folds(109, 50, 10, 10, 5) == folds  # nine more bars: no new fold, nothing moved
    assert lay_folds(110, 50, 10, 10, 5)[:5] == folds  # new data only adds folds
    with pytest.raises(UserError, match="train bars"):
        lay_folds(100, 30, 10, 10, 5)


def test_promotion_rule_on_crafted_return_series():
    rule = PromotionRule(margin=0.05, p_value=0.05, bootstrap_samples=500)
    rng = np.random.default_rng(1)
    champion = rng.normal(0.0008, 0.01, 500)  # Sharpe 0.77 on these bars
    better = champion + 0.003
    significant = decide_promotion(better, champion, baseline_sharpe=0.5, periods_per_year=252, rule=rule)
    assert significant.promoted and significant.test["p_value"] < 0.05
    noisy = champion + 0.0004 + rng.normal(0, 0.004, 500)  # Sharpe 1.14: better by 0.37, not significantly
    not_significant = decide_promotion(noisy, champion, None, 252, rule)
    assert not not_significant.promoted and "not significantly" in not_significant.reason
    assert not_significant.test["difference"] > rule.margin
    worse = decide_promotion(champion, better, None, 252, rule)
    assert not worse.promoted and "below the margin" in worse.reason
    below_baseline = decide_promotion(better, None, baseline_sharpe=9.0, periods_per_year=252, rule=rule)
    assert not below_baseline.promoted and "baseline" in below_baseline.reason
    first = decide_promotion(better, None, baseline_sharpe=0.0, periods_per_year=252, rule=rule)
    assert first.promoted and "first" in first.reason
    flat = decide_promotion(np.zeros(500), None, None, 252, rule)
    assert not flat.promoted and "undefined" in flat.reason


def _prepare_csv(workspace, bars: pd.DataFrame) -> None:
    csv = workspace / "bars.csv"
    bars.to_csv(csv, index_label="date")
    assert data_pipeline.main(["--symbols", "WF", "--source", "csv", "--csv", str(csv), "--train-end", "2002-12-31",
                               "--val-end", "2003-12-31", "--quiet"]) == 0


def _walk(cfg, folds=3):
    settings = WalkForwardSettings(model_types=["deepscalper"], train_bars=500, test_bars=40, folds=folds,
                                   steps=96, quiet=True)
    return run_walkforward("WF", cfg, settings, StopFlag())


@pytest.mark.slow
def test_changing_prices_after_a_folds_test_window_changes_nothing_of_that_fold_or_earlier(workspace):
    cfg = load_config(overrides={"deepscalper": {"learning_starts": 32, "batch_size": 16},
                                 "evaluation": {"bootstrap_samples": 50}})
    bars = generate_synthetic(1300, seed=4, start="2000-01-03")
    _prepare_csv(workspace, bars)
    first = _walk(cfg, folds=0)
    assert len(first["folds"]) >= 4
    k = 2  # change every bar after fold 2's test window
    cut = pd.Timestamp(first["folds"][k - 1]["test"]["end"])
    changed = bars.copy()
    later = changed.index > cut
    changed.loc[later, ["open", "high", "low", "close"]] *= np.linspace(1.0, 1.6, int(later.sum()))[:, None]
    _prepare_csv(workspace, changed)
    second = _walk(cfg, folds=0)
    rows_a, rows_b = first["loops"][0]["rows"], second["loops"][0]["rows"]
    assert rows_a[:k] == rows_b[:k]  # validation scores, promotion, test Sharpes, trades of folds 1..k
    assert first["folds"][:k] == second["folds"][:k]
    assert rows_a[k:] != rows_b[k:]  # the change is visible after the cut


def test_each_fold_fits_its_normalisation_on_its_own_fitting_window(workspace):
    _prepare_csv(workspace, generate_synthetic(1300, seed=4, start="2000-01-03"))
    history = load_history(Dataset.open("WF", "1d"))
    folds = lay_folds(len(history), 500, 40, 80, 50)
    params = [fit_zscore(history.features.iloc[f.fit[0]:f.fit[1]]) for f in folds[:2]]
    assert params[0] != params[1]  # refitted per fold
    tampered = history.features.copy()
    tampered.iloc[folds[0].fit[1]:] = 1e6  # any bar after the fitting window, its test window included
    assert fit_zscore(tampered.iloc[folds[0].fit[0]:folds[0].fit[1]]) == params[0]


@pytest.mark.slow
def test_the_command_writes_the_report_and_counts_every_trial(workspace, capsys):
    _prepare_csv(workspace, generate_synthetic(1300, seed=4, start="2000-01-03"))
    (workspace / "training_config.json").write_text(json.dumps(
        {"deepscalper": {"learning_starts": 32}, "training_params": {"iterations": 2},
         "evaluation": {"bootstrap_samples": 50}}))
    assert evaluate_bot.main(["--symbol", "WF", "--walk-forward", "--model-type", "deepscalper", "--train-bars",
                              "500", "--test-bars", "40", "--folds", "3", "--steps", "64", "--seeds", "2",
                              "--create-plots", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "retraining" in out and "walkforward_WF_" in out
    report = json.loads(next((workspace / "results").glob("walkforward_WF_*.json")).read_text())
    assert report["n_trials"] == 3 * 2 * 2  # folds x seeds x iterations
    assert report["stitched"]["deepscalper/seed0/retrained"]["metrics"]["n_trials"] == 12
    assert len(report["verdicts"]) == 2 and report["pbo"]["n_configurations"] == 6
    assert (workspace / "results" / report["files"]["html"].split("/")[-1]).exists()
    assert evaluate_bot.main(["--symbol", "WF", "--folds", "3", "--quiet"]) == 1  # a walk-forward flag alone


@pytest.mark.slow
def test_the_folds_train_the_same_in_process_in_a_pool_and_beside_the_parent(workspace, monkeypatch):
    """The worker pool (long-lived processes at one torch thread, two folds side by side) and the shared pool
    (the calling process trains folds beside one worker process started before the folds' data is prepared)
    train the same fold models as the calling process alone: the same validation Sharpes, promotions and test
    results."""
    import training.workers as workers

    cfg = load_config(overrides={"deepscalper": {"learning_starts": 32, "batch_size": 16},
                                 "evaluation": {"bootstrap_samples": 50}})
    _prepare_csv(workspace, generate_synthetic(1300, seed=4, start="2000-01-03"))
    reports = []
    for count, in_process, shared in ((1, True, False), (2, False, False), (2, True, True)):
        monkeypatch.setattr(workers, "SINGLE_WORKER_IN_PROCESS", in_process)
        monkeypatch.setattr(workers, "SHARE_PARENT", shared)
        settings = WalkForwardSettings(model_types=["deepscalper"], train_bars=500, test_bars=40, folds=3,
                                       steps=96, workers=count, quiet=True)
        reports.append(run_walkforward("WF", cfg, settings, StopFlag()))
    for other in reports[1:]:
        assert reports[0]["loops"] == other["loops"] and reports[0]["stitched"] == other["stitched"]
