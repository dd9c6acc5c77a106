"""The data pipeline's library: sources (yahoo, sample, csv, synthetic), cleaning, features, splits.

``data_pipeline.py`` is the command line over it. ``datafeed.dataset`` is the one reader of prepared datasets
(hash-checked) that training, evaluation and the daemon use.

Every raw frame in this package has the same shape: a tz-naive UTC ``DatetimeIndex`` named
``timestamp``, sorted, and float64 columns ``open, high, low, close, volume``.
"""
from datafeed.clean import clean_ohlcv
from datafeed.dataset import Dataset, data_command, load_manifest, load_split
from datafeed.features import compute_features
from datafeed.sources import generate_synthetic, load_csv, load_sample, load_yahoo, sample_symbols
from datafeed.splits import manifest_hash, prepare_splits, write_splits

__all__ = [
    "clean_ohlcv", "compute_features", "generate_synthetic", "load_csv", "load_sample", "load_yahoo",
    "sample_symbols", "Dataset", "data_command", "load_manifest", "load_split", "manifest_hash", "prepare_splits",
    "write_splits",
]
