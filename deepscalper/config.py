"""DeepScalper hyperparameters: one dataclass field per setting, each with its default and a one-line docstring.

The agent owns its defaults. The fields up to ``max_target`` form the ``deepscalper`` section of
training_config.json (:data:`CONFIG_DEFAULTS`, checked on load by :data:`CONFIG_CHECKS`); the fields after it
are run settings that do not live in the config file (seed, device, logging, the micro window).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from botcore.config import check_choice, check_int_range, check_non_negative, check_positive
from botcore.errors import ConfigError


@dataclass
class DeepScalperConfig:
    """Every hyperparameter of the agent (Sun et al., CIKM 2022, with the settings of REFERENCES.md section 1)."""

    hidden_size: int = 64
    """Width of every encoder and head layer (paper: 32, 64 or 128)."""
    rnn: str = "mingru"
    """Micro encoder: "mingru" (a GRU whose gates read the current bar only, evaluated in parallel over the
    sequence: the fastest to train on a CPU), or torch's "gru" / "lstm" cells."""
    learning_rate: float = 1e-4
    """Adam step size (paper: 1e-5 .. 1e-3)."""
    gamma: float = 0.9
    """Discount factor (the reward is paid on the next bar: 0.9 looks about ten bars ahead; 0.99 made the
    bootstrapped targets long sums of noise that the network memorised)."""
    batch_size: int = 64
    """Transitions per gradient update."""
    buffer_size: int = 100000
    """Replay capacity in transitions."""
    learning_starts: int = 1000
    """Env steps collected before the first gradient update."""
    train_freq: int = 4
    """Env steps between training rounds (4: each transition is replayed about 16 times at batch 64; one
    update per step replayed a 2,000-bar training split into memorisation)."""
    gradient_steps: int = 1
    """Gradient updates per training round."""
    target_update_interval: int = 500
    """Gradient updates between target-network updates."""
    tau: float = 1.0
    """Target update: 1.0 = hard copy, < 1 = Polyak averaging target <- tau * online + (1 - tau) * target."""
    n_step: int = 1
    """Length of the n-step return in the TD target (1 = one-step Q-learning)."""
    max_grad_norm: float = 10.0
    """Global gradient norm clip."""
    scale_rewards: bool = True
    """Divide the n-step returns by their standard deviation in the replay buffer at the first update (fixed
    then, saved with the model), so Q values are in units of typical returns whatever the account size."""
    prioritized_replay: bool = True
    """Prioritized experience replay (sum tree) when true, uniform replay when false."""
    per_alpha: float = 0.6
    """Priority exponent: P(i) = p_i^alpha / sum_k p_k^alpha."""
    per_beta: float = 0.4
    """Initial importance-sampling exponent, annealed linearly to 1 over the planned training steps."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the first step."""
    exploration_final_eps: float = 0.1
    """Epsilon after the exploration fraction of the planned steps."""
    exploration_fraction: float = 0.5
    """Fraction of the planned steps over which epsilon decays linearly."""
    hindsight_weight: float = 0.1
    """w of the hindsight bonus w * (p_{t+h} - p_t) * pos_t, paid by the TRAINING env only (paper: 0.1)."""
    hindsight_horizon: int = 5
    """h of the hindsight bonus, in bars."""
    aux_weight: float = 1.0
    """eta: weight of the volatility auxiliary loss, L = L_q + eta * L_vol (paper: 1.0)."""
    vol_horizon: int = 5
    """Bars of FUTURE log returns whose standard deviation the auxiliary head predicts."""
    use_hindsight: bool = True
    """Ablation switch: false = train without the hindsight bonus (see training_env_overrides)."""
    use_aux: bool = True
    """Ablation switch: false = no volatility auxiliary task."""
    single_branch: bool = False
    """Ablation switch: one dueling head over the joint (price, quantity) actions instead of two branches."""
    quantity_branch: str = "target"
    """What the quantity branch chooses: "target" = the position to hold (the env's quantity levels up to
    ``max_target`` of the position limit, so every target is one order away from every other; the agent sends
    the limit order that moves the position there), or "order" = the paper's signed order size, added to the
    position."""
    max_target: float = 0.5
    """quantity_branch "target": the largest target, as a fraction of the position limit (0.5 with the default
    levels: targets short, flat and long half the limit, and one order of the env's largest size reverses a
    position, long to short, in one bar)."""
    # --- run settings (not in training_config.json) ---
    micro_window: int = 8
    """Most recent bars fed to the micro (recurrent) encoder; 0 = the whole window."""
    macro_window: int = 1
    """Most recent bars fed to the macro (MLP) encoder; 0 = the whole window."""
    time_left_input: bool = False
    """Feed the env's "time left in the episode" to the network. Off: a training episode (256 bars, or one
    session intraday) and an evaluation run (the whole split) give it different meanings, so a policy that
    reads it learns a clock that does not exist out of sample."""
    seed: int | None = None
    """Seeds python, numpy and torch, the env's first reset and the agent's own generator."""
    device: str = "cpu"
    """torch device."""
    torch_threads: int | None = 1
    """torch.set_num_threads during learn() (1 is fastest for these small networks); None = leave it."""
    per_eps: float = 1e-6
    """Added to |TD error| so that no transition gets priority 0."""
    log_dir: str | None = None
    """Folder for progress.csv (losses, epsilon, Q values, episode P&L); None = no CSV."""
    log_interval: int = 1000
    """Env steps between rows of progress.csv and INFO log lines."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on an impossible value."""
        checks = {
            "hidden_size": self.hidden_size > 0, "rnn": self.rnn in ("gru", "lstm", "mingru"),
            "learning_rate": self.learning_rate > 0, "gamma": 0 <= self.gamma <= 1,
            "batch_size": self.batch_size > 0, "buffer_size": self.buffer_size > 0,
            "learning_starts": self.learning_starts >= 0, "train_freq": self.train_freq > 0,
            "gradient_steps": self.gradient_steps > 0, "target_update_interval": self.target_update_interval > 0,
            "tau": 0 < self.tau <= 1, "n_step": self.n_step > 0, "max_grad_norm": self.max_grad_norm > 0,
            "per_alpha": self.per_alpha >= 0, "per_beta": 0 <= self.per_beta <= 1,
            "exploration_initial_eps": 0 <= self.exploration_initial_eps <= 1,
            "exploration_final_eps": 0 <= self.exploration_final_eps <= 1,
            "exploration_fraction": 0 < self.exploration_fraction <= 1,
            "hindsight_weight": self.hindsight_weight >= 0, "hindsight_horizon": self.hindsight_horizon > 0,
            "aux_weight": self.aux_weight >= 0, "vol_horizon": self.vol_horizon > 0,
            "quantity_branch": self.quantity_branch in ("target", "order"), "max_target": 0 < self.max_target <= 1,
            "micro_window": self.micro_window >= 0, "macro_window": self.macro_window >= 0,
            "per_eps": self.per_eps > 0, "log_interval": self.log_interval > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"deepscalper.{bad[0]} = {getattr(self, bad[0])!r} is out of range")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DeepScalperConfig:
        """Build from a dict such as ``load_config()["deepscalper"]``; unknown keys raise ConfigError."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(f"deepscalper: unknown hyperparameter {key!r}{extra}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> DeepScalperConfig:
        return DeepScalperConfig.from_dict({**self.to_dict(), **changes})


def training_env_overrides(config: DeepScalperConfig) -> dict[str, Any]:
    """The EnvConfig fields a TRAINING env needs for this config (hindsight bonus and volatility target).

    The evaluation env is built with ``EnvConfig.from_config(..., training=False)``, which sets the hindsight
    weight to 0: the bonus shapes learning only and is never part of a reported number.
    """
    return {
        "hindsight_weight": config.hindsight_weight if config.use_hindsight else 0.0,
        "hindsight_horizon": config.hindsight_horizon if config.use_hindsight else 0,
        "vol_horizon": config.vol_horizon if config.use_aux else 0,
    }


CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(DeepScalperConfig))[
    :[f.name for f in dataclasses.fields(DeepScalperConfig)].index("max_target") + 1]
CONFIG_DEFAULTS: dict[str, Any] = {name: getattr(DeepScalperConfig(), name) for name in CONFIG_KEYS}
"""The ``deepscalper`` section of training_config.json with its defaults."""


def _unit_interval(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def _half_open_unit(v: Any) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


CONFIG_CHECKS = {
    "hidden_size": check_positive, "rnn": check_choice("mingru", "gru", "lstm"), "learning_rate": check_positive,
    "gamma": _unit_interval, "batch_size": check_positive, "buffer_size": check_int_range(1, 10**8),
    "learning_starts": check_non_negative, "train_freq": check_positive, "gradient_steps": check_positive,
    "target_update_interval": check_positive, "tau": _half_open_unit, "n_step": check_positive,
    "max_grad_norm": check_positive, "per_alpha": check_non_negative, "per_beta": _unit_interval,
    "exploration_initial_eps": _unit_interval, "exploration_final_eps": _unit_interval,
    "exploration_fraction": _half_open_unit, "hindsight_weight": check_non_negative,
    "hindsight_horizon": check_positive, "aux_weight": check_non_negative, "vol_horizon": check_positive,
    "quantity_branch": check_choice("target", "order"), "max_target": _half_open_unit,
}
"""Value checks of the ``deepscalper`` section (key -> problem or None), used when the config file is loaded."""

