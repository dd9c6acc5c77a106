"""The promotion rule: when a newly trained model (the challenger) replaces the champion. One function, used by
train_bot.py (and so by the daemon's training job) and by the walk-forward replay of the retrain loop.

A challenger is promoted only when, on the SAME window (the validation window of the challenger's training):

1. its Sharpe ratio is defined (a policy that never trades has none);
2. it beats the best baseline's Sharpe on that window (buy and hold, flat, MA crossover, random);
3. there is no champion yet, or it beats the champion's Sharpe by at least ``registry.promotion_margin`` AND the
   difference is significant: the one-sided p-value of a paired moving-block bootstrap of the Sharpe difference
   (:func:`evaluation.significance.sharpe_difference_test`) is below ``registry.promotion_p_value``.

The same rule judges a shadow challenger on FORWARD bars (:func:`judge_forward`): the returns of its paper
account and of the champion's on the same bars after both models' training data ended (bars neither model ever
saw), with the best baseline backtested on those bars. Forward promotion needs ``registry.forward_min_bars``
returns (60 by default: about a quarter of daily bars; with fewer, a real Sharpe difference of 1 would rarely be
significant, and the moving-block bootstrap would resample fewer than 15 blocks of ``ceil(60 ** (1/3))`` = 4 bars).

The settings live in training_config.json's ``registry`` section.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from botcore.markets import infer_market
from evaluation.metrics import sharpe_ratio
from evaluation.significance import sharpe_difference_test


@dataclass(frozen=True)
class PromotionRule:
    """The rule's settings (training_config.json ``registry``)."""

    margin: float = 0.05
    """Annualised Sharpe the challenger must add over the champion."""
    p_value: float = 0.05
    """The paired bootstrap's one-sided p-value must be below this."""
    bootstrap_samples: int = 2000
    """Resamples of the paired bootstrap."""
    seed: int = 0
    """Bootstrap seed (same inputs, same decision)."""
    forward_min_bars: int = 60
    """Forward returns (bars neither model saw) needed before a shadow challenger can be judged on them."""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PromotionRule:
        reg = cfg["registry"]
        return cls(margin=float(reg["promotion_margin"]), p_value=float(reg["promotion_p_value"]),
                   bootstrap_samples=int(reg["promotion_bootstrap_samples"]),
                   seed=int(cfg["evaluation"]["random_seed"]),
                   forward_min_bars=int(reg.get("forward_min_bars", cls.forward_min_bars)))


@dataclass
class PromotionDecision:
    """The outcome, with the numbers behind it (recorded in the registry's champion history)."""

    promoted: bool
    reason: str
    challenger_sharpe: float = math.nan
    champion_sharpe: float | None = None
    baseline_sharpe: float | None = None
    test: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(challenger: Sequence[float] | np.ndarray, champion: Sequence[float] | np.ndarray | None,
                     baseline_sharpe: float | None, periods_per_year: float,
                     rule: PromotionRule, window: str = "validation") -> PromotionDecision:
    """Apply the rule to per-bar returns on one window (see the module docstring).

    :param challenger: the challenger's returns on the window.
    :param champion: the champion's returns on the same bars, or None when there is no champion.
    :param baseline_sharpe: the best baseline's annualised Sharpe on the window (None: not checked).
    :param window: which bars these are (``validation`` or ``forward``), as the reason names them.
    """
    sr = sharpe_ratio(challenger, periods_per_year)
    out = PromotionDecision(False, "", challenger_sharpe=sr, baseline_sharpe=baseline_sharpe)
    if not math.isfinite(sr):
        out.reason = f"its {window} Sharpe is undefined (the policy never trades or its equity is flat)"
        return out
    if baseline_sharpe is not None and math.isfinite(baseline_sharpe) and sr <= baseline_sharpe:
        out.reason = f"{window} Sharpe {sr:.3f} does not beat the best baseline's {baseline_sharpe:.3f}"
        return out
    if champion is None:
        out.promoted = True
        out.reason = f"first model that beats the best baseline ({window} Sharpe {sr:.3f})"
        return out
    test = sharpe_difference_test(challenger, champion, periods_per_year, n_samples=rule.bootstrap_samples,
                                  seed=rule.seed)
    out.test = test
    champ_sr = sharpe_ratio(champion, periods_per_year)
    out.champion_sharpe = champ_sr
    diff, p = test["difference"], test["p_value"]
    if not (math.isfinite(diff) and diff >= rule.margin):
        out.reason = (f"{window} Sharpe {sr:.3f} vs champion {_num(champ_sr)} on the same bars: the difference "
                      f"{_num(diff)} is below the margin {rule.margin:g}")
    elif not (math.isfinite(p) and p < rule.p_value):
        out.reason = (f"{window} Sharpe {sr:.3f} beats the champion's {_num(champ_sr)} by {diff:.3f}, but not "
                      f"significantly (paired bootstrap p = {_num(p)}, needs < {rule.p_value:g})")
    else:
        out.promoted = True
        out.reason = (f"{window} Sharpe {sr:.3f} beats the champion's {_num(champ_sr)} by {diff:.3f} on the same "
                      f"bars (paired bootstrap p = {p:.3f} < {rule.p_value:g}) and the best baseline's "
                      f"{_num(baseline_sharpe)}")
    return out


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def judge_challenger(policy: Any, data: Any, env_config: Any, cfg: Mapping[str, Any], ppy: float,
                     champion: Any | None, load_champion: Any) -> PromotionDecision:
    """The rule applied to a newly trained model on its validation bars ``data``: the champion (a registry
    record, or None) and the four baselines are backtested on the same bars with the same costs.

    :param policy: the challenger (``predict(obs, deterministic=True)``), with its evaluation ``env_config``.
    :param load_champion: ``record -> policy`` (verifies the checksum); a champion that cannot be loaded or
        cannot read these bars (another feature set) is not comparable: the challenger is then judged against
        the baselines only, and the reason says so.
    """
    from evaluation.backtest import evaluation_env_config, run_backtest

    rule = PromotionRule.from_config(cfg)
    mine = run_backtest(policy, data, env_config, engine="fast", deterministic=True).returns
    market = infer_market(getattr(data, "symbol", "") or "")  # the costs of the challenger's market
    baseline = best_baseline_sharpe(data, env_config.window, cfg, ppy)
    theirs, note = None, ""
    if champion is not None:
        try:
            trained = champion.metadata.get("env_config")
            champ_config = evaluation_env_config(dict(cfg), champion.metadata.get("action_mode") or "discrete",
                                                 trained=trained if isinstance(trained, dict) else None,
                                                 market=market)
            features = champion.metadata.get("dataset", {}).get("feature_columns")
            if features and list(features) != list(data.feature_names):
                raise ValueError("it was trained on another feature set")
            theirs = run_backtest(load_champion(champion), data, champ_config, engine="fast").returns
        except Exception as exc:  # noqa: BLE001 - an unusable champion must not block training
            note = f" (the champion {champion.run_id} could not be evaluated on these bars: {exc})"
    decision = decide_promotion(mine, theirs, baseline, ppy, rule)
    decision.reason += note
    return decision


def best_baseline_sharpe(data: Any, window: int, cfg: Mapping[str, Any], ppy: float) -> float:
    """The best annualised Sharpe of the four baselines (buy and hold, flat, MA crossover, random) backtested on
    ``data`` with the costs of its symbol's market, deciding from bar ``window - 1`` on (nan when none is
    defined). Used on the validation bars (:func:`judge_challenger`) and on forward bars alike."""
    from evaluation.backtest import evaluation_env_config, run_backtest
    from evaluation.baselines import make_baselines

    ev = cfg["evaluation"]
    market = infer_market(getattr(data, "symbol", "") or "")
    base_config = evaluation_env_config(dict(cfg), "box", market=market, window=window)
    return max((sharpe_ratio(run_backtest(p, data, base_config, engine="fast").returns, ppy)
                for p in make_baselines(ev["ma_fast"], ev["ma_slow"], ev["random_seed"]).values()),
               key=lambda v: v if math.isfinite(v) else -math.inf)


def judge_forward(challenger: Sequence[float] | np.ndarray, champion: Sequence[float] | np.ndarray,
                  baseline_sharpe: float | None, periods_per_year: float, rule: PromotionRule) -> PromotionDecision:
    """The rule applied to FORWARD returns: a shadow challenger's paper returns against the champion's on the same
    bars after both models' training data ended (see the module docstring). Fewer than ``rule.forward_min_bars``
    returns: not judged yet (not promoted; the reason says how many there are)."""
    x = np.asarray(challenger, dtype=np.float64)
    y = np.asarray(champion, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"forward returns of the challenger ({x.size}) and the champion ({y.size}) must be on the "
                         "same bars")
    if x.size < rule.forward_min_bars:
        return PromotionDecision(False, f"{x.size} forward returns on bars neither model saw; the rule judges from "
                                        f"{rule.forward_min_bars} (registry.forward_min_bars)",
                                 challenger_sharpe=sharpe_ratio(x, periods_per_year), baseline_sharpe=baseline_sharpe)
    return decide_promotion(x, y, baseline_sharpe, periods_per_year, rule, window="forward")
