"""Continuous mode (``train_bot.py --continuous``): refresh data, train, validate, promote or keep, sleep, repeat.

One failed cycle never ends the loop; SIGINT/SIGTERM end the sleep at once and the loop after the current job.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from botcore.errors import DataError, UserError
from botcore.signals import StopFlag
from datafeed.pipeline import prepare_symbols
from training.job import JobResult
from training.session import Session, now_iso

logger = logging.getLogger(__name__)


def refresh_data(symbols: Sequence[str], cfg: dict[str, Any], quiet: bool = False) -> None:
    """Bring the datasets up to date the way ``data_pipeline.py --update-data`` does (same library, same config):
    each existing dataset from the source it was made from, a new one from ``data.source``."""
    report = prepare_symbols(symbols, cfg, quiet=quiet, update=True, reuse_recorded_source=True)
    if report.failures:
        first = next(iter(report.failures.values()))
        failed = " ".join(report.failures)
        raise DataError(f"data refresh failed for {', '.join(report.failures)}: {first} (prepare it once with "
                        f"python data_pipeline.py --symbols {failed} --source yahoo|sample|csv|synthetic; later "
                        "refreshes reuse that source)")


def continuous(symbols: Sequence[str], cfg: dict[str, Any], session: Session, stop: StopFlag,
               train_once: Callable[[], list[JobResult]], max_cycles: int | None = None,
               quiet: bool = False) -> int:
    """Run cycles every ``training_params.continuous_interval_minutes`` until stopped (or ``max_cycles``);
    exit code 1 when every cycle failed, else 0."""
    interval_s = 60.0 * cfg["training_params"]["continuous_interval_minutes"]
    cycle, failures = 0, 0
    while not stop.requested:
        cycle += 1
        started = time.monotonic()
        record: dict[str, Any] = {"cycle": cycle, "started": now_iso()}
        logger.info("continuous mode: cycle %d", cycle)
        try:
            refresh_data(symbols, cfg, quiet)
            results = train_once()
            record["jobs"] = [r.to_dict() for r in results]
            failed = [r for r in results if r.status == "failed"]
            record["status"] = "failed" if failed else "stopped" if stop.requested else "ok"
            if failed:
                record["error"] = "; ".join(f"{r.symbol} {r.model_type}: {r.error}" for r in failed)
        except Exception as exc:  # noqa: BLE001 - one failed cycle never ends the loop
            logger.error("cycle %d failed: %s", cycle, exc, exc_info=not isinstance(exc, UserError))
            record.update(status="failed", error=str(exc))
        record["finished"] = now_iso()
        failures += record["status"] == "failed"
        session.data["cycles"].append(record)
        session.save()
        if max_cycles and cycle >= max_cycles:
            break
        wait = max(0.0, interval_s - (time.monotonic() - started))
        logger.info("continuous mode: next cycle in %.0f s", wait)
        stop.wait(wait)
    logger.info("continuous mode: ended after %d cycle(s), %d failed", cycle, failures)
    return 1 if failures == cycle else 0
