"""DeepScalper (Sun et al., CIKM 2022): a risk-aware Branching Dueling Q-Network agent for intraday trading.

``from deepscalper import DeepScalper, DeepScalperConfig``; see ``deepscalper.agent`` for the method.
"""
from deepscalper.agent import DeepScalper
from deepscalper.config import DeepScalperConfig, training_env_overrides

__all__ = ["DeepScalper", "DeepScalperConfig", "training_env_overrides"]
