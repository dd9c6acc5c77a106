"""training_config.json: defaults in code, the file overrides them, command-line flags override the file.

``load_config(..., schema)`` returns a plain nested dict with every key present. Validation happens on load:
a wrong type, an unknown key (with a "did you mean" suggestion) or an impossible value raises
``ConfigError`` (exit code 2) with one line naming the key, e.g.::

    training_config.json: training_schedule.daily_at = '25:00' is not a time; use HH:MM (00:00-23:59)
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botcore import paths
from botcore.atomic import atomic_write_json
from botcore.errors import ConfigError

INTERVALS = ("1m", "5m", "15m", "30m", "1h", "1d")
MODEL_TYPES = ("deepscalper", "backtrader")
SB3_ALGOS = ("ppo", "a2c", "dqn")

BASE_DEFAULTS: dict[str, Any] = {
    "symbols": ["GOOGL"],
    "model_types": ["deepscalper", "backtrader"],
    "training_schedule": {
        "daily_at": "02:00",  # training
        "data_update_at": "01:00",
        "evaluation_at": "04:00",
        "timezone": "UTC",
        "weekday": None,  # null = every day; "monday".."sunday" = once a week
        "catch_up_missed": True,  # run a missed job once at start-up after downtime
        "lock_wait_seconds": 0,  # --run-once while another job holds the lock: wait this long, then exit 3
        "job_timeout_minutes": 360,
    },
    "training_params": {
        "steps": 10000,
        "episodes": 0,  # 0 = bounded by steps only
        "iterations": 1,
        "lookback_days": 0,  # train on the last N days of the train split; 0 = the whole train split
        "seed": 42,
        "checkpoint_every": 2000,
        "eval_every": 1000,  # env steps between validations (the best one is kept); 0 = once per iteration
        "patience": 8,  # stop after this many validations without improvement; 0 = never stop early
        "workers": 1,
        "algo": "ppo",  # stable-baselines3 algorithm for model type "backtrader"
        "engine": "backtrader",  # env for model type "backtrader": backtrader or fast
        "continuous_interval_minutes": 1440,
        "tensorboard": True,  # TensorBoard scalars of every registered run under results/tensorboard/<run>
        "device": "cpu",  # torch device of training: cpu | cuda | auto (cuda when torch sees a GPU)
    },
    "monitoring": {
        "min_sharpe_ratio": 0.5,
        "max_drawdown_threshold": -25.0,  # percent, negative
        "degradation_window": 5,  # compare the latest Sharpe with the mean of this many earlier evaluations
        "degradation_drop": 0.5,  # alert when the latest Sharpe is this far below that mean
        "max_data_age_days": 5,  # stale-data alert
        "psr_level": 0.95,  # recommendation needs PSR above this
        "forward_min_bars": 20,  # forward (paper) returns needed before they are judged
        "forward_psr_window": 60,  # bars of the rolling PSR of a champion's forward returns
        "forward_drawdown_factor": 1.5,  # alert when the forward drawdown is this many times the validation one
        "auto_rollback": False,  # demote a champion whose forward results are implausible to the previous one
    },
    "automation": {
        "http_port": None,  # null = off; a port number serves the read-only status page on 127.0.0.1 (0 = any free)
    },
    "data": {
        "source": "yahoo",  # yahoo | sample | csv | synthetic
        "interval": "1d",
        "start": None,
        "end": None,
        "csv": None,
        "train_fraction": 0.70,
        "val_fraction": 0.15,
        "train_end": None,  # explicit split dates override the fractions
        "val_end": None,
        "embargo_bars": None,  # null = the longest feature window
        "indicators": ["rsi", "macd", "bollinger", "atr", "obv", "stochastic", "adx", "cci", "ma_ratios"],
        "outlier_mad_threshold": 8.0,
        "seed": 0,  # synthetic source
        "workers": 1,  # symbols data_pipeline.py prepares side by side, one process each (--workers)
        "costs": {  # null = the market's default (botcore.markets.MARKET_COSTS); a number applies to every market
            "commission_rate": None,  # fraction of traded notional (equity 0.0005, fx 0, crypto 0.001)
            "commission_min": None,  # currency units per order (0 everywhere)
            "slippage_bps": None,  # equity 1.0, fx 0.5, crypto 1.0
            "spread_bps": None,  # full bid-ask spread, half paid per market order (equity 0, fx 1.0, crypto 2.0)
        },
    },
    "env": {
        "window": 32,
        "initial_cash": 100000.0,
        "allow_short": True,
        "max_position": 1.0,  # max |position value| / equity at entry
        "position_levels": 3,  # discrete mode: evenly spaced targets in [-max, max] (or [0, max] long-only)
        "price_offsets": [-1.0, -0.5, 0.0, 0.5, 1.0],  # multidiscrete: limit offsets in units of volatility
        "quantity_levels": [-1.0, -0.5, 0.0, 0.5, 1.0],  # multidiscrete: signed order sizes, fraction of max
        "reward": "equity",  # equity | log_return | risk_adjusted
        "episode_length": 256,  # training episodes; evaluation runs the whole split
        "close_at_session_end": True,  # intraday data
        "session_episodes": True,  # intraday training: an episode is one session (evaluation: the whole split)
        "vol_window": 20,  # bars of past returns in the volatility that scales limit offsets
        "margin_leverage": 2.0,  # broker buying power: opening a position needs cost / leverage in cash
        "rebalance_band": 0.05,  # discrete/box: no order unless the target moves by more than this (of max)
        "risk_aversion": 0.5,  # risk_adjusted reward: penalty per unit of new drawdown
        "ruin_fraction": 0.1,  # an episode ends when equity falls to this fraction of initial_cash
    },
    "sb3": {
        "learning_rate": 3e-4,
        "net_arch": [64, 64],
        "n_steps": 512,
        "batch_size": 64,
        "gamma": 0.99,
        "n_envs": 1,
    },
    "registry": {
        "promotion_margin": 0.05,  # validation Sharpe a challenger must add to become champion
        "promotion_p_value": 0.05,  # ... and the paired bootstrap of the difference must be significant
        "promotion_bootstrap_samples": 2000,
        "keep_backups": 5,
    },
    "walkforward": {
        "train_bars": None,  # null = the rows of the prepared train and val splits (what the daemon trains on)
        "test_bars": None,  # null = the retrain cadence of training_schedule, in bars
        "folds": 10,  # replay the last K folds (0 = every fold the history allows)
        "seeds": 1,
        "workers": 1,
    },
    "optimize": {
        "trials": 20,
        "sampler": "tpe",
        "storage": "sqlite:///results/optuna.db",
        "seeds": 1,
        "heartbeat_seconds": 60,  # running trials record a heartbeat this often in the storage (0 = off)
        "heartbeat_grace_seconds": 180,  # a running trial silent this long is failed (its worker died) and retried
        "grid": {
            "learning_rate": [1e-4, 3e-4],
            "hidden_size": [32, 64],
        },
    },
    "cluster": {
        "address": None,  # null = this machine; "auto", "ray://HOST:PORT" or "HOST:PORT" = a Ray cluster
    },
    "evaluation": {
        "engine": "fast",  # fast (proven equal to backtrader's broker) | backtrader | both
        "parity_bars": 2000,  # engine fast: replay the champions' first N bars on backtrader too (0 = off)
        "split": "test",
        "bootstrap_samples": 1000,
        "random_seed": 0,
        "ma_fast": 10,
        "ma_slow": 30,
        "device": "cpu",  # torch device the evaluated models run on: cpu | cuda | auto
    },
    "trading": {
        "enabled": True,  # the daemon paper-trades the champions (and shadow challengers) after each data update
        "ledger_url": "sqlite:///results/paper_ledger.db",  # any SQLAlchemy URL; relative SQLite paths: workspace
        "ledger_url_env": "TRADING_BOT_LEDGER_URL",  # an environment variable holding the URL (with a password)
        "shadow_challengers": 2,  # newest challengers per model type trading in shadow beside the champion
    },
    "alerts": {
        "email": {
            "enabled": False,
            "smtp_host": "localhost",
            "smtp_port": 587,
            "starttls": True,
            "from_addr": "trading-bot@localhost",
            "to_addrs": [],
            "username_env": "TRADING_BOT_SMTP_USER",
            "password_env": "TRADING_BOT_SMTP_PASSWORD",
            "timeout_seconds": 10,
        },
        "webhook": {
            "enabled": False,
            "url_env": "TRADING_BOT_WEBHOOK_URL",
            "format": "slack",  # slack ({"text": ...}) or json (the alert's fields)
            "timeout_seconds": 10,
        },
    },
}

# --- value checks -------------------------------------------------------------------------------

_TIME_RE = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?")
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Sizes beyond these are typing mistakes (or attacks), refused on load instead of ending in a MemoryError or
# OverflowError deep inside a run.
MAX_WHOLE_NUMBER = 10**12
"""The largest whole number any config key or size flag accepts (e.g. training_params.steps)."""
MAX_SEED = 2**32 - 1
"""Seeds are 0 .. 2**32 - 1 (numpy's legacy seeding, used by some libraries, takes no more)."""
MAX_SYNTHETIC_BARS = 10_000_000
"""The most bars a synthetic series may have (about 40 years of 1-minute bars round the clock)."""
MAX_WORKERS = 256
"""The most worker processes a run may start (each holds a copy of the data and a model)."""
MAX_CONFIG_DEPTH = 16
"""How deeply training_config.json may nest objects and lists (the schema needs 4 levels)."""


def check_time(v: Any) -> str | None:
    return None if isinstance(v, str) and _TIME_RE.fullmatch(v) else "is not a time; use HH:MM (00:00-23:59)"


def check_date_or_none(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _DATE_RE.fullmatch(v):
        return "is not a date; use YYYY-MM-DD or null"
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return "is not a calendar date (month 01-12, a day that month has, time up to 23:59:59); use YYYY-MM-DD"
    return None


def check_seed(v: Any) -> str | None:
    return None if 0 <= v <= MAX_SEED else f"must be a seed between 0 and {MAX_SEED}"


def check_int_range(low: int, high: int) -> Callable[[Any], str | None]:
    """A check: a number from ``low`` to ``high`` (both included)."""

    def check(v: Any) -> str | None:
        return None if low <= v <= high else f"must be between {low:,} and {high:,}"

    return check


def check_str_or_none(v: Any) -> str | None:
    return None if v is None or isinstance(v, str) else "must be a string or null"


def check_positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def check_non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def check_fraction(v: Any) -> str | None:
    return None if 0 < v < 1 else "must be between 0 and 1 (exclusive)"


def check_choice(*options: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v in options:
            return None
        hint = difflib.get_close_matches(str(v), [str(o) for o in options], n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"must be one of {', '.join(map(str, options))}{extra}"

    return check


def check_list_of(kind: type, allowed: tuple[Any, ...] | None = None, non_empty: bool = True):
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or (non_empty and not v):
            return "must be a non-empty list" if non_empty else "must be a list"
        for item in v:
            if not isinstance(item, kind) or isinstance(item, bool) and kind is not bool:
                return f"must hold only {kind.__name__} values (found {item!r})"
            if allowed is not None and item not in allowed:
                return check_choice(*allowed)(item)
        return None

    return check


def check_negative_percent(v: Any) -> str | None:
    return None if -100 <= v < 0 else "must be a negative percentage between -100 and 0, e.g. -25.0"


def check_timezone(v: Any) -> str | None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America" is a folder, too long
        hint = difflib.get_close_matches(v, sorted(zoneinfo.available_timezones()), n=1)
        return "is not a time zone; use an IANA name such as UTC or Europe/Berlin" + (
            f" (did you mean {hint[0]!r}?)" if hint else "")
    return None


def check_number_or_none(v: Any) -> str | None:
    """A number or null (a value whose null means "the default of the symbol's market")."""
    if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return None
    return f"must be a number or null (the market's default), not {_type_name(v)}"


def check_port_or_none(v: Any) -> str | None:
    """A TCP port (0 = any free port) or null (off)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        return "must be a port number from 0 to 65535, or null to turn the status page off"
    return check_int_range(0, 65535)(v)


def check_cluster_address(v: Any) -> str | None:
    """None (this machine), ``auto``, ``ray://HOST:PORT`` (Ray Client) or ``HOST:PORT`` (a head's GCS port)."""
    if v is None or v == "auto":
        return None
    host, _, port = v.removeprefix("ray://").rpartition(":") if isinstance(v, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return ('is not a Ray cluster address; use null (this machine), "auto" (the cluster started here with '
                '`ray start --head`), "ray://HOST:PORT" (Ray Client, port 10001) or "HOST:PORT" (the head\'s port)')
    return None


def check_weekday(v: Any) -> str | None:
    return None if v is None else check_choice(*_WEEKDAYS)(v)


# Dotted key -> check. Keys not listed here are checked by type only (the type of the default).
BASE_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "symbols": check_list_of(str),
    "model_types": check_list_of(str, MODEL_TYPES),
    "training_schedule.daily_at": check_time,
    "training_schedule.data_update_at": check_time,
    "training_schedule.evaluation_at": check_time,
    "training_schedule.weekday": check_weekday,
    "automation.http_port": check_port_or_none,
    "training_schedule.timezone": check_timezone,
    "training_schedule.lock_wait_seconds": check_non_negative,
    "training_schedule.job_timeout_minutes": check_positive,
    "training_params.steps": check_positive,  # and at most MAX_WHOLE_NUMBER, like every whole number
    "training_params.episodes": check_non_negative,
    "training_params.iterations": check_positive,
    "training_params.lookback_days": check_non_negative,
    "training_params.seed": check_seed,
    "training_params.checkpoint_every": check_non_negative,
    "training_params.eval_every": check_non_negative,
    "training_params.patience": check_non_negative,
    "training_params.workers": check_int_range(1, MAX_WORKERS),
    "training_params.algo": check_choice(*SB3_ALGOS),
    "training_params.engine": check_choice("backtrader", "fast"),
    "training_params.continuous_interval_minutes": check_positive,
    "monitoring.max_drawdown_threshold": check_negative_percent,
    "monitoring.degradation_window": check_positive,
    "monitoring.degradation_drop": check_non_negative,
    "monitoring.max_data_age_days": check_positive,
    "monitoring.psr_level": check_fraction,
    "monitoring.forward_min_bars": lambda v: None if v >= 2 else "must be 2 or more",
    "monitoring.forward_psr_window": lambda v: None if v >= 2 else "must be 2 or more",
    "monitoring.forward_drawdown_factor": check_positive,
    "trading.ledger_url": lambda v: None if "://" in v else "is not a database URL; use e.g. "
                                                            "sqlite:///results/paper_ledger.db",
    "trading.shadow_challengers": check_non_negative,
    "data.source": check_choice("yahoo", "sample", "csv", "synthetic"),
    "data.interval": check_choice(*INTERVALS),
    "data.start": check_date_or_none,
    "data.end": check_date_or_none,
    "data.csv": check_str_or_none,
    "data.train_fraction": check_fraction,
    "data.val_fraction": check_fraction,
    "data.train_end": check_date_or_none,
    "data.val_end": check_date_or_none,
    "data.embargo_bars": lambda v: None if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
    else "must be a whole number of bars (0 or more) or null",
    "data.indicators": check_list_of(
        str, ("rsi", "macd", "bollinger", "atr", "obv", "stochastic", "adx", "cci", "ma_ratios"), non_empty=False
    ),
    "data.outlier_mad_threshold": check_positive,
    "data.seed": check_seed,
    "data.workers": check_int_range(1, MAX_WORKERS),
    "data.costs.commission_rate": lambda v: check_number_or_none(v) or (
        None if v is None or 0 <= v < 0.1 else "must be a fraction between 0 and 0.1, or null (the market's default)"),
    "data.costs.commission_min": lambda v: check_number_or_none(v) or (None if v is None else check_non_negative(v)),
    "data.costs.slippage_bps": lambda v: check_number_or_none(v) or (None if v is None else check_non_negative(v)),
    "data.costs.spread_bps": lambda v: check_number_or_none(v) or (None if v is None else check_non_negative(v)),
    "env.window": check_positive,
    "env.initial_cash": check_positive,
    "env.max_position": lambda v: None if 0 < v <= 10 else "must be between 0 (exclusive) and 10",
    "env.position_levels": lambda v: None if v >= 2 else "must be 2 or more",
    "env.price_offsets": check_list_of(float),
    "env.quantity_levels": check_list_of(float),
    "env.reward": check_choice("equity", "log_return", "risk_adjusted"),
    "env.episode_length": check_positive,
    "env.vol_window": lambda v: None if v >= 2 else "must be 2 or more",
    "env.margin_leverage": lambda v: None if 1 <= v <= 100 else "must be between 1 and 100",
    "env.rebalance_band": lambda v: None if 0 <= v < 1 else "must be between 0 and 1 (a fraction of max_position)",
    "env.risk_aversion": check_non_negative,
    "env.ruin_fraction": lambda v: None if 0 <= v < 1 else "must be between 0 and 1 (exclusive of 1)",
    "sb3.learning_rate": check_positive,
    "sb3.net_arch": check_list_of(int),
    "sb3.n_steps": check_positive,
    "sb3.batch_size": check_positive,
    "sb3.gamma": lambda v: None if 0 <= v <= 1 else "must be between 0 and 1",
    "sb3.n_envs": check_positive,
    "registry.promotion_margin": check_non_negative,
    "registry.promotion_p_value": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
    "registry.promotion_bootstrap_samples": check_positive,
    "walkforward.train_bars": lambda v: None if v is None or (isinstance(v, int) and not isinstance(v, bool)
                                                             and v >= 50) else "must be a whole number of bars "
                                                                               "(50 or more) or null",
    "walkforward.test_bars": lambda v: None if v is None or (isinstance(v, int) and not isinstance(v, bool)
                                                            and v >= 1) else "must be a whole number of bars "
                                                                             "(1 or more) or null",
    "walkforward.folds": check_non_negative,
    "walkforward.seeds": check_positive,
    "walkforward.workers": check_positive,
    "registry.keep_backups": check_positive,
    "optimize.trials": check_positive,
    "optimize.sampler": check_choice("tpe", "grid", "random"),
    "optimize.seeds": check_positive,
    "cluster.address": check_cluster_address,
    "optimize.heartbeat_seconds": check_int_range(0, 86_400),
    "optimize.heartbeat_grace_seconds": check_int_range(1, 7 * 86_400),
    "evaluation.engine": check_choice("fast", "backtrader", "both"),
    "evaluation.parity_bars": check_non_negative,
    "evaluation.split": check_choice("train", "val", "test"),
    "evaluation.bootstrap_samples": check_positive,
    "evaluation.random_seed": check_seed,
    "evaluation.ma_fast": check_positive,
    "evaluation.ma_slow": check_positive,
    "evaluation.device": check_choice("cpu", "cuda", "auto"),
    "training_params.device": check_choice("cpu", "cuda", "auto"),
    "alerts.email.smtp_port": lambda v: None if 0 < v < 65536 else "must be a port number 1-65535",
    "alerts.email.to_addrs": check_list_of(str, non_empty=False),
    "alerts.webhook.format": check_choice("slack", "json"),
}

def _type_name(v: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(v), type(v).__name__)


@dataclass(frozen=True)
class Schema:
    """What a config file may hold: every key with its default (which also gives its type) and value checks.

    The toolkit's schema is :data:`agents.config.SCHEMA`: these base sections plus the sections the agents
    own (``deepscalper``). Keys not in ``checks`` are checked by type only.
    """

    defaults: Mapping[str, Any]
    checks: Mapping[str, Callable[[Any], str | None]]
    free_form: frozenset[str] = frozenset({"optimize.grid"})


BASE_SCHEMA = Schema(BASE_DEFAULTS, BASE_CHECKS)


def validate(cfg: Mapping[str, Any], schema: Schema, source: str = paths.CONFIG_FILE) -> None:
    """Raise ConfigError on the first problem found in a fully merged config."""
    _check_numbers(cfg, "", source)
    _validate_node(cfg, schema.defaults, "", source, schema)
    fractions = cfg["data"]["train_fraction"] + cfg["data"]["val_fraction"]
    if fractions >= 1:
        raise ConfigError(f"{source}: data.train_fraction + data.val_fraction = {fractions:g} leaves no test split; "
                          "make their sum less than 1")
    if cfg["data"]["train_end"] and cfg["data"]["val_end"] and cfg["data"]["train_end"] >= cfg["data"]["val_end"]:
        raise ConfigError(f"{source}: data.train_end must be before data.val_end")
    if cfg["evaluation"]["ma_fast"] >= cfg["evaluation"]["ma_slow"]:
        raise ConfigError(f"{source}: evaluation.ma_fast must be shorter than evaluation.ma_slow")
    heartbeat = cfg["optimize"]["heartbeat_seconds"]
    if heartbeat and cfg["optimize"]["heartbeat_grace_seconds"] <= heartbeat:
        raise ConfigError(f"{source}: optimize.heartbeat_grace_seconds must be longer than optimize.heartbeat_seconds "
                          f"({heartbeat}), e.g. three times as long; otherwise live trials are failed")


def _check_numbers(value: Any, key: str, source: str) -> None:
    """Every number anywhere (free-form sections and lists too) is finite and of a sane size: Python's json
    reads NaN, Infinity and 1e400 (= infinity), which would pass most range checks."""
    if isinstance(value, dict):
        for sub, sub_value in value.items():
            _check_numbers(sub_value, f"{key}.{sub}" if key else str(sub), source)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers(item, f"{key}[{i}]", source)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {_shown(key)} = {value!r} is not a finite number; write a plain number "
                          "(NaN, Infinity and numbers beyond 1e308 are not allowed)")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_WHOLE_NUMBER:
        raise ConfigError(f"{source}: {_shown(key)} = {value:.3g} is far too large; whole numbers in the config are "
                          f"at most {MAX_WHOLE_NUMBER:,}")


def _shown(key: str) -> str:
    """A key as the one-line message shows it (quoted when it holds a line break or another odd character)."""
    return key if key.isprintable() else repr(key)


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and dicts (without recursion: the value may be hostile)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_CONFIG_DEPTH:
                todo.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _validate_node(value: Any, default: Any, key: str, source: str, schema: Schema) -> None:
    if isinstance(default, dict) and key not in schema.free_form:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key or 'the config'} must be {_type_name(default)}, "
                              f"not {_type_name(value)}")
        for sub, sub_value in value.items():
            dotted = f"{key}.{sub}" if key else sub
            if sub not in default:
                hint = difflib.get_close_matches(sub, list(default), n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(default)}"
                raise ConfigError(f"{source}: unknown key {dotted!r}{extra}")
            _validate_node(sub_value, default[sub], dotted, source, schema)
        return
    if key in schema.free_form and not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} must be an object")
    check = schema.checks.get(key)
    if default is not None and not _same_kind(value, default):
        raise ConfigError(f"{source}: {key} = {value!r} must be {_type_name(default)}, not {_type_name(value)}")
    if check is not None:
        problem = check(value)
        if problem:
            raise ConfigError(f"{source}: {key} = {value!r} {problem}")


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in (nested dicts merged key by key)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict) and key != "grid":
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _normalise_numbers(cfg: dict[str, Any], default: dict[str, Any]) -> None:
    """Integers given where the default is a float become floats (JSON ``1`` for ``1.0``)."""
    for key, value in cfg.items():
        d = default.get(key) if isinstance(default, dict) else None
        if isinstance(value, dict) and isinstance(d, dict):
            _normalise_numbers(value, d)
        elif isinstance(d, float) and isinstance(value, int) and not isinstance(value, bool):
            cfg[key] = float(value)
        elif isinstance(d, list) and d and isinstance(d[0], float) and isinstance(value, list):
            cfg[key] = [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in value]


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None, required: bool,
                schema: Schema, assignments: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults, overridden by the config file (when it exists), overridden by ``assignments`` (``--set``),
    overridden by ``overrides`` (the dedicated flags, the most specific).

    The toolkit calls it through :func:`agents.config.load_config`, which passes the full schema.

    :param path: the config file; ``None`` means ``./training_config.json``.
    :param overrides: a nested dict from command-line flags; ``None`` values are ignored.
    :param required: raise when the file does not exist (otherwise defaults are used).
    :param assignments: ``KEY=VALUE`` texts of ``--set`` (see :func:`parse_assignments`), validated exactly
        like the file (a null here is a value, not "not given").
    """
    config_file = Path(path) if path is not None else paths.config_path()
    file_values: dict[str, Any] = {}
    if config_file.exists():
        file_values = _read_config_file(config_file)
    elif required or path is not None:
        raise ConfigError(f"{config_file}: no such config file; create one with "
                          "`python automate_training.py --create-config`")
    defaults = dict(schema.defaults)
    cfg = deep_merge(defaults, file_values)
    _normalise_numbers(cfg, defaults)
    validate(cfg, schema, source=str(config_file.name if path is None else config_file))
    if assignments:
        cfg = deep_merge(cfg, parse_assignments(assignments))
        _normalise_numbers(cfg, defaults)
        validate(cfg, schema, source="--set")
    if overrides:
        cfg = deep_merge(cfg, _drop_none(overrides))
        _normalise_numbers(cfg, defaults)
        validate(cfg, schema, source="command line")
    return cfg


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``--set`` texts (``deepscalper.learning_rate=3e-4``, ``env.window=16``, ``symbols=["AAPL","MSFT"]``) as
    one nested override dict; later items win. A value is read as JSON when it parses (numbers, true/false,
    null, lists, objects) and as a plain string otherwise (``--set data.start=2020-01-01``). Keys and values are
    checked afterwards by :func:`validate`, exactly like the file's.

    :raises ConfigError: an item without ``=`` or with an empty key part (one line, exit code 2).
    """
    tree: dict[str, Any] = {}
    for item in items:
        key, value = split_assignment(item)
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return tree


def split_assignment(item: str) -> tuple[str, Any]:
    """(dotted key, value) of one ``KEY=VALUE`` text (see :func:`parse_assignments`)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r} is not KEY=VALUE with a dotted key, e.g. --set env.window=16 or "
                          "--set deepscalper.learning_rate=3e-4")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        value = text
    if _depth(value) > MAX_CONFIG_DEPTH:
        raise ConfigError(f"--set {key}: the value nests more than {MAX_CONFIG_DEPTH} levels deep")
    return key, value


_RECREATE = "fix it or recreate it with `python automate_training.py --create-config --force`"


def _read_config_file(config_file: Path) -> dict[str, Any]:
    """The file's JSON object, or ConfigError with one line saying what is wrong with the file."""
    try:
        data = config_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{config_file}: cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{config_file}: is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          f"save it as UTF-8, or {_RECREATE.removeprefix('fix it or ')}") from None
    try:
        file_values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_file}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
                          f"{_RECREATE}") from None
    except RecursionError:
        raise ConfigError(f"{config_file}: nests objects or lists far too deeply (the schema needs 4 levels); "
                          f"{_RECREATE}") from None
    except ValueError:  # an integer with more digits than Python converts (4300)
        raise ConfigError(f"{config_file}: holds a number with thousands of digits; {_RECREATE}") from None
    if not isinstance(file_values, dict):
        raise ConfigError(f"{config_file}: must hold a JSON object at the top level")
    if _depth(file_values) > MAX_CONFIG_DEPTH:
        raise ConfigError(f"{config_file}: nests objects or lists more than {MAX_CONFIG_DEPTH} levels deep (the "
                          f"schema needs 4); {_RECREATE}")
    return file_values


def _drop_none(tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            sub = _drop_none(value)
            if sub:
                out[key] = sub
        elif value is not None:
            out[key] = value
    return out


def write_default_config(path: str | Path, schema: Schema) -> None:
    atomic_write_json(path, schema.defaults)
