"""TradingEnv.step's fused fast path and the general engine path (``_step_engine``) agree bit for bit.

``TradingEnv.step`` runs a fused copy of ``decide_order`` + ``_advance`` + ``_mark`` + reward + ``_obs``
unless a subclass overrides one of those hooks (``BacktraderEnv`` does, to use backtrader's broker); then
it runs ``_step_engine``, which calls the hooks. ``GeneralPathEnv`` below overrides ``_advance`` with the
numpy engine's own, so both envs trade on the same broker arithmetic and every observation, reward, flag,
info value and account field must be identical, down to the sign of a zero.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from evaluation.markets import random_walk_data
from rl_env import EnvConfig, MarketData, TradingEnv

MODES = ("discrete", "multidiscrete", "box")
REWARDS = ("equity", "log_return", "risk_adjusted")
SEEDS = range(5)
ACCOUNT = ("t", "t0", "t_end", "cash", "units", "avg_price", "equity", "peak")


class GeneralPathEnv(TradingEnv):
    """TradingEnv forced onto ``_step_engine`` the way BacktraderEnv is: by overriding an engine hook.

    It records every order the engine receives and what became of it, so that a scenario can check it
    exercised what it claims (limit orders that fill and that do not, forced flats, ...).
    """

    def __init__(self, data: MarketData, config: EnvConfig) -> None:
        super().__init__(data, config)
        self.orders: list[tuple[float, float, float]] = []  # (qty, limit or nan, executed)

    def _advance(self, qty: float, limit: float) -> tuple[float, float, float, float]:
        out = super()._advance(qty, limit)
        self.orders.append((qty, limit, out[0]))
        return out


def _assert_identical(fast: Any, general: Any, what: str) -> None:
    """Same type and the same bits (np.array_equal alone would take -0.0 for 0.0)."""
    assert type(fast) is type(general), f"{what}: {type(fast).__name__} vs {type(general).__name__}"
    if isinstance(fast, np.ndarray):
        assert fast.dtype == general.dtype and fast.shape == general.shape, what
        np.testing.assert_array_equal(fast, general, err_msg=what)
        assert fast.tobytes() == general.tobytes(), f"{what}: equal values, different bits (signed zero?)"
    elif isinstance(fast, float):
        assert struct.pack("<d", fast) == struct.pack("<d", general), f"{what}: {fast!r} vs {general!r}"
    else:
        assert fast == general, f"{what}: {fast!r} vs {general!r}"


def _assert_same_state(fast: TradingEnv, general: TradingEnv, when: str) -> None:
    for name in ACCOUNT:
        _assert_identical(getattr(fast, name), getattr(general, name), f"{when}: env.{name}")


def _assert_same_info(fast: dict, general: dict, when: str) -> None:
    assert list(fast) == list(general), f"{when}: info keys {list(fast)} vs {list(general)}"
    for key in fast:
        _assert_identical(fast[key], general[key], f"{when}: info[{key!r}]")


def _run_both(data: MarketData, config: EnvConfig, policy: Callable[[], Any] | Sequence[Any], *, episodes: int = 1,
              seed: int = 0, steps_after_ruin: int = 0) -> dict[str, Any]:
    """Step a fused-path and a general-path env side by side with the same actions and compare everything
    after every reset and step. ``policy`` is a list of actions (one episode) or a callable returning the
    next action; ``steps_after_ruin`` more steps run after a termination. Returns what happened, for the
    scenario's own checks."""
    fast, general = TradingEnv(data, config), GeneralPathEnv(data, config)
    assert fast._fused and not general._fused  # the two paths really are the two paths
    actions = policy if not callable(policy) else None
    seen = {"steps": 0, "filled": 0, "terminated": 0, "truncated": 0, "positions": [], "private": []}
    for episode in range(episodes):
        reset_seed = seed if episode == 0 else None  # later episodes draw their starts from np_random
        obs_f, info_f = fast.reset(seed=reset_seed)
        obs_g, info_g = general.reset(seed=reset_seed)
        when = f"episode {episode} reset"
        _assert_identical(obs_f, obs_g, f"{when}: obs")
        _assert_same_info(info_f, info_g, when)
        _assert_same_state(fast, general, when)
        after_ruin = None
        for k in range(len(actions) if actions is not None else 10**9):
            action = actions[k] if actions is not None else policy()
            out_f, out_g = fast.step(action), general.step(action)
            when = f"episode {episode} step {k} (t={general.t}, action={action!r})"
            for name, a, b in zip(("obs", "reward", "terminated", "truncated"), out_f[:4], out_g[:4]):
                _assert_identical(a, b, f"{when}: {name}")
            _assert_same_info(out_f[4], out_g[4], when)
            _assert_same_state(fast, general, when)
            terminated, truncated, info = out_f[2], out_f[3], out_f[4]
            seen["steps"] += 1
            seen["filled"] += info["filled"]
            seen["terminated"] += terminated
            seen["truncated"] += truncated
            seen["positions"].append(info["position"])
            seen["private"].append(out_f[0][-4:-1].tolist())
            if terminated and after_ruin is None:
                after_ruin = steps_after_ruin
            if truncated or fast.t >= fast.t_end or (after_ruin is not None and after_ruin <= 0):
                break
            if after_ruin is not None:
                after_ruin -= 1
    seen["orders"], seen["envs"] = general.orders, (fast, general)
    return seen


def _limit_outcomes(orders: list[tuple[float, float, float]]) -> set[str]:
    out = set()
    for qty, limit, executed in orders:
        if qty and not math.isnan(limit):
            out.add("limit filled" if executed else "limit not filled")
        elif qty:
            out.add("market filled" if executed else "market dropped")
    return out


# --- random actions -------------------------------------------------------------------------------------

def _random_policy(mode: str, space, rng: np.random.Generator) -> Callable[[], Any]:
    """Random actions, half of them repeats of the last one (holds), in every form a caller may pass."""
    last: list[Any] = [None]

    def policy() -> Any:
        if last[0] is not None and rng.random() < 0.5:
            return last[0]
        if mode == "discrete":
            k = int(rng.integers(space.n))
            action = (k, np.int64(k), np.array(k), np.array([k]))[int(rng.integers(4))]
        elif mode == "multidiscrete":
            action = rng.integers(0, space.nvec)
        else:  # outside [-1, 1] too (clipped), and exactly flat now and then
            action = np.array([0.0 if rng.random() < 0.1 else rng.uniform(-1.3, 1.3)], dtype=np.float32)
        last[0] = action
        return action

    return policy


@pytest.mark.parametrize("interval", ["1d", "1h"])
@pytest.mark.parametrize("reward", REWARDS)
@pytest.mark.parametrize("mode", MODES)
def test_random_actions_agree_bit_for_bit(mode, reward, interval):
    """Several seeds, several random-start episodes each (whole sessions on intraday data), with and without
    slippage, the hindsight bonus and future_vol on, long-short and long-only."""
    for seed in SEEDS:
        data = random_walk_data(240, seed=100 + seed, interval=interval, vol=0.02, gap_vol=0.008)
        costly = seed > 0  # seed 0: no slippage or spread (fills exactly at the open)
        config = EnvConfig(window=6, action_mode=mode, reward=reward, allow_short=seed % 2 == 0,
                           episode_length=40, commission_rate=0.001, commission_min=1.5,
                           slippage_bps=3.0 if costly else 0.0, spread_bps=4.0 if costly else 0.0,
                           max_position=1.5, hindsight_weight=0.2, hindsight_horizon=3, vol_horizon=4,
                           position_levels=3 + seed % 3)
        space = TradingEnv(data, config).action_space
        seen = _run_both(data, config, _random_policy(mode, space, np.random.default_rng(seed)),
                         episodes=10, seed=seed)
        assert seen["steps"] > 30 and seen["filled"] > 3, (seed, seen["steps"], seen["filled"])
        assert seen["truncated"] > 0
        if mode == "multidiscrete":
            assert {"limit filled", "limit not filled"} <= _limit_outcomes(seen["orders"]), seed


# --- scripted actions -----------------------------------------------------------------------------------

def _config(mode: str, reward: str = "equity", **kw: Any) -> EnvConfig:
    base = dict(window=3, action_mode=mode, reward=reward, episode_length=None, random_start=False,
                commission_rate=0.001, commission_min=1.0, slippage_bps=5.0, spread_bps=2.0)
    base.update(kw)
    return EnvConfig(**base)


@pytest.mark.parametrize("reward", REWARDS)
@pytest.mark.parametrize("mode,script", [
    # levels -1, 0, 1: hold long, flip short, hold, go flat, stay flat, long, flip, flat
    ("discrete", [2, 2, 2, 0, 0, 0, 1, 1, 2, 0, 2, 1, 1, 0, 0, 2]),
    # (offset index, quantity index), offsets -1..1 vol, quantities -1..1: far-away buy limits that do not
    # fill, marketable ones that do, sells, reversals clipped to the limit, no-order actions
    ("multidiscrete", [[0, 4], [4, 4], [4, 4], [0, 0], [4, 0], [2, 0], [0, 2], [2, 2], [0, 4], [4, 3], [4, 4],
                       [2, 4], [0, 0], [0, 1], [4, 1], [2, 3]]),
    # targets: long, hold, within the band (no order), flip short, clipped below -1, flat, partial, long
    ("box", [[1.0], [1.0], [0.97], [-1.0], [-5.0], [0.0], [0.0], [0.4], [-0.3], [1.2], [1.0], [0.0]]),
], ids=MODES)
def test_scripted_actions_agree_bit_for_bit(mode, script, reward):
    for interval in ("1d", "1h"):
        data = random_walk_data(40, seed=3, interval=interval, vol=0.02, gap_vol=0.01)
        seen = _run_both(data, _config(mode, reward), script * 4)  # longer than the data: runs to the end
        assert seen["filled"] >= 4, interval
        outcomes = _limit_outcomes(seen["orders"])
        if mode == "multidiscrete":
            assert {"limit filled", "limit not filled"} <= outcomes, (interval, outcomes)
        else:
            assert any(qty == 0.0 for qty, _, _ in seen["orders"])  # holds and in-band targets send nothing
        for env in seen["envs"]:  # the episode is over on both paths
            with pytest.raises(RuntimeError, match="after the episode ended"):
                env.step(script[0])


@pytest.mark.parametrize("mode,long_action", [("discrete", 2), ("multidiscrete", [4, 4]), ("box", [1.0])],
                         ids=MODES)
def test_session_ends_force_flat_identically(mode, long_action):
    """Intraday data, 7 bars a session: the env orders flat before each session's last bar whatever the
    action; both paths send the same forced orders and land flat at the same bars."""
    data = random_walk_data(50, seed=9, interval="1h")
    config = _config(mode, window=2)
    env = TradingEnv(data, config)
    forced = np.flatnonzero(env.force_flat)
    seen = _run_both(data, config, [long_action] * 48)
    assert seen["steps"] == 48 and len(forced) >= 6
    closing = 0
    for t in forced[forced <= 48]:  # the decision at bar t is step t - t0: a market order to flat
        qty, limit, executed = seen["orders"][t - 1]
        assert qty <= 0 and math.isnan(limit) and executed == qty and seen["positions"][t - 1] == 0.0, t
        closing += qty < 0
    assert closing >= 6  # (bar 47 closes the last session, the data's last bar 49 is a session of its own)


def _trend(n: int, step: float) -> MarketData:
    """A steady trend of ``step`` per bar, opens at the previous close, a little intrabar range."""
    close = 100.0 * (1.0 + step) ** np.arange(n)
    open_ = np.r_[close[0], close[:-1]]
    return MarketData.from_arrays(open_, np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999, close)


@pytest.mark.parametrize("reward", REWARDS)
@pytest.mark.parametrize("mode,short_action", [("discrete", 0), ("multidiscrete", [2, 0]), ("box", [-1.0])],
                         ids=MODES)
def test_ruin_and_negative_equity_agree_bit_for_bit(mode, short_action, reward):
    """A short at ten times equity into a 15 %-a-bar rally: equity goes below zero, the episode terminates,
    and stepping on past the ruin (equity <= 0 branches of sizing, rewards and observation) still agrees."""
    data = _trend(12, 0.15)
    config = _config(mode, reward, window=1, max_position=10.0, allow_short=True)
    seen = _run_both(data, config, [short_action] * 11, steps_after_ruin=3)
    assert seen["terminated"] >= 1
    assert seen["steps"] >= 4  # ruin, then three steps past it


@pytest.mark.parametrize("mode,all_in", [("discrete", 2), ("multidiscrete", [2, 4]), ("box", [1.0])], ids=MODES)
def test_ruin_exactly_at_the_threshold(mode, all_in):
    """All in at 100 without costs or margin, then a close of 10: equity is exactly ruin_fraction *
    initial_cash, which terminates the episode (``<=``) on both paths."""
    close = np.array([100.0, 10.0, 10.0])
    data = MarketData.from_arrays(np.full(3, 100.0), np.full(3, 100.0), close, close)
    config = _config(mode, window=1, margin_leverage=1.0, commission_rate=0.0, commission_min=0.0,
                     slippage_bps=0.0, spread_bps=0.0)
    seen = _run_both(data, config, [all_in])
    fast = seen["envs"][0]
    assert seen["terminated"] == 1 and fast.units == 1000.0 and fast.equity == 0.1 * config.initial_cash


@pytest.mark.parametrize("mode,script,band", [("discrete", [4, 3, 3], 0.5), ("box", [[1.0], [0.75], [0.75]], 0.25)],
                         ids=["discrete", "box"])
def test_target_exactly_at_the_rebalance_band(mode, script, band):
    """A target exactly ``rebalance_band`` away from the position (binary fractions, flat prices, no costs:
    every number exact) sends no order (``<=``) on both paths."""
    flat = np.full(5, 100.0)
    data = MarketData.from_arrays(flat, flat, flat, flat)
    config = _config(mode, window=1, position_levels=5, rebalance_band=band, commission_rate=0.0,
                     commission_min=0.0, slippage_bps=0.0, spread_bps=0.0)
    seen = _run_both(data, config, script)
    assert [qty for qty, _, _ in seen["orders"]] == [1000.0, 0.0, 0.0]  # all in, then 1 - band: hold


def test_cash_rule_drops_the_same_orders():
    """margin_leverage 1 and a position limit near 1: gap-up opens make buys sized at the close
    unaffordable; both paths drop the same opening parts."""
    data = random_walk_data(80, seed=4, vol=0.02, gap_vol=0.02)
    config = _config("box", window=2, margin_leverage=1.0, max_position=1.0, commission_rate=0.002,
                     rebalance_band=0.0)
    script = [[1.0] if k % 3 else [-1.0] for k in range(78)]
    seen = _run_both(data, config, script)
    assert "market dropped" in _limit_outcomes(seen["orders"])


@pytest.mark.parametrize("mode,script", [("discrete", [2, 1, 0, 1, 2, 1, 0, 1]),
                                         ("box", [[1.0], [0.0], [-1.0], [0.0], [1.0], [0.0], [-1.0], [0.0]])],
                         ids=["discrete", "box"])
def test_observation_clipping_agrees_bit_for_bit(mode, script):
    """Positions of 1.9 x equity into crashes and explosions, flat in between (every open is 100, no
    costs): equity near zero sends the position and cash cells past the observation bound (+-1e4), a
    10^5-fold price the unrealised P&L cell; both paths clip them identically. The last short ruins the
    account (equity < 0) and the final step runs on past the ruin."""
    close = np.array([100.0, 47.3685, 100.0, 152.63, 100.0, 1e7, 100.0, 1e7, 100.0])
    open_ = np.full_like(close, 100.0)
    data = MarketData.from_arrays(open_, np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999, close)
    config = _config(mode, window=1, max_position=1.9, ruin_fraction=0.0, commission_rate=0.0, commission_min=0.0,
                     slippage_bps=0.0, spread_bps=0.0)
    seen = _run_both(data, config, script, steps_after_ruin=1)
    assert seen["steps"] == len(script) and seen["terminated"] == 1
    position, unrealised, cash = np.array(seen["private"]).T  # the three cells of every step's observation
    assert {1e4, -1e4} <= set(position) and {1e4, -1e4} <= set(unrealised) and 1e4 in cash
