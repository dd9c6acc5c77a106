"""The whole history of a prepared symbol for walk-forward replays, with features fitted per fold.

:func:`load_history` joins the raw OHLCV of the three prepared splits in time order (each checked against its
manifest by the one dataset reader) and recomputes the ``f_*`` features from them with the same indicator
settings, past bars only, NOT normalised: a walk-forward fold fits its own normalisation on its own training
window (:func:`fit_zscore` / :func:`apply_zscore`, the same z-score, clip and rounding as the split files).

The bars the pipeline left out as embargo between the splits are missing from the joined history: the
history has two gaps of ``embargo_bars`` bars, where one bar's return spans the gap. Features stay causal.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from botcore.errors import DataError
from datafeed.dataset import Dataset
from datafeed.features import compute_features, fill_interior_gaps
from datafeed.sources import OHLCV
from datafeed.splits import CLIP, DECIMALS, FEATURE_DTYPE, SPLITS, normalised


@dataclass
class History:
    """Raw bars and raw (unnormalised) features of one symbol, aligned on one index.

    :param bars: OHLCV, DatetimeIndex ``timestamp``.
    :param features: the ``f_*`` columns of the dataset's manifest, same index, no NaN.
    :param gaps: index positions where an embargo gap of the prepared splits was joined (the bar after it).
    """

    bars: pd.DataFrame
    features: pd.DataFrame
    gaps: list[int]

    def __len__(self) -> int:
        return len(self.bars)


def load_history(dataset: Dataset) -> History:
    """The joined history of ``dataset`` (see the module docstring); DataError when its features cannot be
    recomputed as the manifest records them."""
    parts = [dataset.split(name)[list(OHLCV)] for name in SPLITS]
    bars = pd.concat(parts)
    if not bars.index.is_monotonic_increasing or bars.index.has_duplicates:
        raise DataError(f"{dataset.symbol} {dataset.interval}: the prepared splits overlap or are out of order; "
                        f"recreate them with: {dataset.command}")
    manifest = dataset.manifest
    wanted = list(manifest.get("feature_columns") or [])
    indicators = list(((manifest.get("settings") or {}).get("data") or {}).get("indicators") or [])
    features = None
    for use_volume in (True, False):
        candidate = compute_features(bars, dataset.interval, indicators, use_volume=use_volume)
        if set(wanted) <= set(candidate.columns):
            features = candidate[wanted]
            break
    if features is None:
        raise DataError(f"{dataset.symbol} {dataset.interval}: the manifest's feature columns cannot be recomputed "
                        f"from the splits; recreate the dataset with: {dataset.command}")
    features, warmup, _ = fill_interior_gaps(features)
    bars = bars.iloc[warmup:]
    boundaries = np.cumsum([len(p) for p in parts])[:-1] - warmup
    return History(bars, features, [int(b) for b in boundaries if b > 0])


def fit_zscore(features: pd.DataFrame) -> dict[str, Any]:
    """Mean and standard deviation (ddof 0) of each column of the FITTING window only."""
    mean = features.mean()
    std = features.std(ddof=0)
    std = std.where(std > 1e-12, 1.0)
    return {"method": "zscore", "ddof": 0, "clip": CLIP, "decimals": DECIMALS, "dtype": FEATURE_DTYPE.name,
            "mean": {c: float(mean[c]) for c in features.columns}, "std": {c: float(std[c]) for c in features.columns}}


def apply_zscore(features: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """``clip((x - mean) / std, -clip, clip)`` rounded as the split files are, with ``params`` from
    :func:`fit_zscore` (fitted on another, earlier window)."""
    out = {}
    for name in features.columns:
        out[name] = normalised(features[name].to_numpy(dtype="float64", copy=True), float(params["mean"][name]),
                               float(params["std"][name]), float(params["clip"]), int(params["decimals"]))
    return pd.DataFrame(out, index=features.index, columns=features.columns, copy=False)
