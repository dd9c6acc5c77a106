"""Trading environments: a fast numpy env (TradingEnv), its batched SB3 VecEnv (TradingVecEnv), an env over
backtrader's broker (BacktraderEnv), and run_backtest to run any policy over a split in either engine.

TradingVecEnv, BacktraderEnv, run_backtest and BacktestResult load on first use (they import
stable-baselines3 and backtrader).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.trading_env import TradingEnv

__all__ = ["MarketData", "EnvConfig", "TradingEnv", "TradingVecEnv", "BacktraderEnv", "run_backtest",
           "BacktestResult"]

_LAZY = {"TradingVecEnv": "rl_env.vec_env", "BacktraderEnv": "rl_env.backtrader_env",
         "run_backtest": "rl_env.backtest", "BacktestResult": "rl_env.backtest"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rl_env' has no attribute {name!r}")
