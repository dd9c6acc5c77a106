"""Trading environments and their broker arithmetic: a fast numpy env (TradingEnv), its batched SB3 VecEnv
(TradingVecEnv) and an env over backtrader's broker (BacktraderEnv), all reading MarketData and EnvConfig.

TradingVecEnv and BacktraderEnv load on first use (they import stable-baselines3 and backtrader).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.trading_env import TradingEnv

__all__ = ["MarketData", "EnvConfig", "TradingEnv", "TradingVecEnv", "BacktraderEnv"]

_LAZY = {"TradingVecEnv": "rl_env.vec_env", "BacktraderEnv": "rl_env.backtrader_env"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rl_env' has no attribute {name!r}")
