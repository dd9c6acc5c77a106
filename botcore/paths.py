"""Workspace layout. Every path resolves against the current working directory, so independent
workspaces can live side by side; nothing is resolved against the code's own folder except the
bundled sample data."""
from __future__ import annotations

from pathlib import Path

from botcore.symbols import safe_name

CODE_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA_DIR = CODE_ROOT / "sample_data"
CONFIG_FILE = "training_config.json"


def workspace() -> Path:
    return Path.cwd()


def data_dir() -> Path:
    return workspace() / "data"


def models_dir() -> Path:
    return workspace() / "models"


def results_dir() -> Path:
    return workspace() / "results"


def logs_dir() -> Path:
    return workspace() / "logs"


def config_path() -> Path:
    return workspace() / CONFIG_FILE


def split_path(symbol: str, interval: str, split: str, file_format: str = "parquet") -> Path:
    """``data/{SYMBOL}_{INTERVAL}_{split}_data.parquet`` (split is train, val or test); ``file_format="csv"``:
    the CSV export (``data_pipeline.py --export-csv``) or a split of a dataset prepared before Parquet."""
    return data_dir() / f"{safe_name(symbol)}_{interval}_{split}_data.{file_format}"


def manifest_path(symbol: str, interval: str) -> Path:
    return data_dir() / f"{safe_name(symbol)}_{interval}_manifest.json"
