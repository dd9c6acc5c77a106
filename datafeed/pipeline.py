"""Preparing symbols end to end: load from a source, clean, compute features, split, write (``data_pipeline.py``).

One symbol's failure never stops the others: :func:`prepare_symbols` reports each failure and carries on.

A refresh keeps each dataset's source: with ``reuse_recorded_source`` (the daemon's ``--update-data`` without
``--source``, ``train_bot.py --continuous``), a symbol that already has a dataset is reloaded from the source its
manifest records (the bundled sample, the same CSV file, the same synthetic generator and seed), never silently
from another one; ``data.source`` applies to symbols without a dataset, and ``--source`` switches explicitly.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from botcore.errors import DataError, UserError
from datafeed.dataset import load_manifest
from datafeed.sources import load_csv, load_sample, load_synthetic, load_yahoo, sample_symbols
from datafeed.splits import prepare, write_splits

logger = logging.getLogger(__name__)

DEFAULT_SYNTHETIC_BARS = 2500


def run_symbol(symbol: str, interval: str, cfg: dict[str, Any], *, csv_file: str | None = None,
               seed: int = 0, update: bool = False, synthetic_kind: str = "gbm",
               synthetic_bars: int = DEFAULT_SYNTHETIC_BARS) -> dict[str, Any]:
    """Load, prepare and write one symbol; return its manifest. Raises UserError subclasses on bad data."""
    data = cfg["data"]
    source = data["source"]
    if source == "sample":
        raw, info = load_sample(symbol, interval)
    elif source == "csv":
        if not csv_file:
            raise UserError("--source csv needs --csv FILE (one file per symbol)")
        raw, info = load_csv(csv_file)
    elif source == "synthetic":
        raw, info = load_synthetic(synthetic_bars, seed, synthetic_kind, interval)
    else:
        raw, info = load_yahoo(symbol, interval, start=data["start"], end=data["end"], update=update)
        max_age = cfg["monitoring"]["max_data_age_days"]
        if info.get("age_days", 0) > max_age:
            logger.warning("%s: the newest bar is %.1f days old (monitoring.max_data_age_days = %s)%s", symbol,
                           info["age_days"], max_age, "" if update else "; add --update-data to fetch new bars")
    info.update(first_bar=raw.index.min(), last_bar=raw.index.max(), bars_loaded=len(raw))
    prepared = prepare(raw, cfg, symbol, interval)
    settings = {"data": {**data, "interval": interval}, "symbol": symbol}
    if source == "synthetic":
        settings["synthetic"] = {"kind": synthetic_kind, "bars": synthetic_bars, "seed": seed}
    return write_splits(prepared, symbol, interval, info, settings)


def _describe(manifest: dict[str, Any]) -> str:
    parts = [f"{name} {r['rows']:>6,} ({r['start']} .. {r['end']})" for name, r in manifest["ranges"].items()]
    return (f"{manifest['symbol']:<10} {manifest['interval']:<4} {manifest['source']:<9} " + " | ".join(parts)
            + f" | {len(manifest['feature_columns'])} features, embargo {manifest['embargo_bars']}")


@dataclass
class RecordedSource:
    """Where an existing dataset came from (its manifest): what a refresh needs to reload the same bars."""

    source: str
    csv_file: str | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)


def recorded_source(symbol: str, interval: str) -> RecordedSource | None:
    """The source of the prepared dataset of ``symbol`` and ``interval``; None when there is none (or its
    manifest cannot be read: the refresh then follows the config and rewrites it)."""
    try:
        manifest = load_manifest(symbol, interval)
    except DataError:
        return None
    source = manifest.get("source")
    if not isinstance(source, str):
        return None
    settings = manifest.get("settings") or {}
    info = manifest.get("source_info") or {}
    return RecordedSource(source=source, csv_file=info.get("file") if source == "csv" else None,
                          synthetic=dict(settings.get("synthetic") or {}))


@dataclass
class PipelineReport:
    """What :func:`prepare_symbols` did: one manifest per prepared symbol, one message per failed symbol."""

    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [_describe(m) for m in self.manifests.values()]


def prepare_symbols(symbols: Sequence[str], cfg: dict[str, Any], *, csv_files: Sequence[str | None] | None = None,
                    update: bool = False, interval_given: bool = True, synthetic_kind: str = "gbm",
                    synthetic_bars: int = DEFAULT_SYNTHETIC_BARS, quiet: bool = False,
                    log_file: Path | None = None, reuse_recorded_source: bool = False) -> PipelineReport:
    """Prepare every symbol with the config's source; symbol ``i`` of the synthetic source gets seed
    ``data.seed + i``. The sample source takes each sample's own interval unless ``interval_given``.

    :param reuse_recorded_source: a symbol that has a dataset already is reloaded from the source its manifest
        records (see the module docstring); the caller passes False when the user named the source.
    """
    data = cfg["data"]
    files = list(csv_files) if csv_files is not None else [None] * len(symbols)
    report = PipelineReport()
    bar = tqdm(symbols, desc="data", unit="symbol", file=sys.stderr, disable=True if quiet else None)
    for i, symbol in enumerate(bar):
        bar.set_postfix_str(symbol)
        interval = data["interval"]
        if data["source"] == "sample" and not interval_given:
            interval = sample_symbols().get(symbol, interval)
        sym_cfg, csv_file, seed, kind, n_bars = cfg, files[i], data["seed"] + i, synthetic_kind, synthetic_bars
        recorded = recorded_source(symbol, interval) if reuse_recorded_source else None
        if recorded is not None:
            if recorded.source != data["source"]:
                logger.info("%s %s: refreshing from %s, the source its dataset was prepared from (data.source is "
                            "%s; data_pipeline.py --source %s switches it)", symbol, interval, recorded.source,
                            data["source"], data["source"])
            sym_cfg = {**cfg, "data": {**data, "source": recorded.source}}
            csv_file = recorded.csv_file or csv_file
            seed = int(recorded.synthetic.get("seed", seed))
            kind = str(recorded.synthetic.get("kind", kind))
            n_bars = int(recorded.synthetic.get("bars", n_bars))
        try:
            report.manifests[symbol] = run_symbol(symbol, interval, sym_cfg, csv_file=csv_file, seed=seed,
                                                  update=update, synthetic_kind=kind, synthetic_bars=n_bars)
        except UserError as exc:
            logger.debug("%s failed", symbol, exc_info=True)
            report.failures[symbol] = str(exc)
        except Exception as exc:  # one symbol's bug must not stop the others; traceback to the log
            logger.exception("%s: unexpected failure", symbol)
            where = log_file or "logs/"
            report.failures[symbol] = f"unexpected {type(exc).__name__}: {exc} (traceback in {where})"
    bar.close()
    return report
