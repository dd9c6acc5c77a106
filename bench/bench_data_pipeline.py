#!/usr/bin/env python3
"""Times the data pipeline offline; every row is a ratio against a reference measured in the same run.

1. ``data_pipeline.py --source csv`` end to end on a minute-bar CSV (default 1,000,000 bars: read, dates,
   cleaning, features, splits, Parquet files, manifest) against ``pandas.read_csv`` of the same file alone.
   Each runs in a child process of its own, which also reports its peak RSS (VmHWM) and its RSS after the
   imports, so the memory the data costs is the difference (goal: under 300 MB per million rows). The two
   take turns ``--repeat`` times (default 5) and the ratio is of their medians: on a shared 2-core machine one
   run of either moves by 10-20%. The same pipeline with one thread per symbol
   (``datafeed.splits.MAX_THREADS = 1``) shows what its threads give.
2. The same run at the commit before this work (``--before-commit``, extracted with ``git archive`` into a
   temporary folder; skipped when git or the commit is not there) on a shorter CSV, against this tree on
   the same CSV: the before/after speed-up.
3. 20 symbols x 2,500 daily bars in one call: ``--workers 2`` (and the number of cores) against ``--workers 1``.
4. The vectorised ATR, ADX and CCI (datafeed.indicators) against ta's own on the same bars.

    python bench/bench_data_pipeline.py [--bars 1000000] [--repeat 5] [--before-bars 100000] [--symbols 20]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BEFORE_COMMIT = "9e3a2d6"  # the last commit with CSV split files and ta's loops (issue 16)


def _rss_mb() -> float:
    """The current resident set of this process (Linux /proc), in MB."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- child processes (one measurement each) ----------------------------------------------------------------

def child(spec: dict) -> dict:
    """Run one measurement in this (fresh) process; the imports come first and are not timed."""
    import pandas as pd

    if spec["kind"] == "pipeline":
        sys.path.insert(0, spec["code"])
        os.chdir(spec["workspace"])
        import data_pipeline  # noqa: F401 (imported before the clock starts)
        if spec.get("max_threads"):
            import datafeed.splits

            datafeed.splits.MAX_THREADS = spec["max_threads"]
    baseline = _rss_mb()
    cpu, start = _cpu_seconds(), time.perf_counter()
    if spec["kind"] == "read_csv":
        rows = len(pd.read_csv(spec["csv"]))
        rc = 0
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = data_pipeline.main(spec["argv"])
        rows = spec["rows"]
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {"seconds": seconds, "cpu": cpu, "rows": rows, "rc": rc, "baseline_mb": baseline, "peak_mb": _peak_mb()}


def _peak_mb() -> float:
    """This process's peak RSS. Linux's VmHWM, not ``ru_maxrss``: a child's ``ru_maxrss`` starts from its
    parent's RSS at the fork (kept across ``execve``), so a big parent would inflate every child's peak."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"measurement failed: {spec['kind']}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- inputs ----------------------------------------------------------------------------------------------------

def write_minute_csv(path: Path, n_bars: int) -> None:
    """A minute-bar CSV as a data vendor writes it: ``Date,Open,High,Low,Close,Volume``, 6 decimals."""
    import datafeed

    bars = datafeed.generate_synthetic(n_bars, seed=0, kind="regime", interval="1m")
    out = bars.rename(columns=str.capitalize)
    out["Volume"] = out["Volume"].astype("int64")
    out.index = out.index.strftime("%Y-%m-%d %H:%M:%S")
    out.to_csv(path, index_label="Date", float_format="%.6f")


def pipeline_spec(code: Path, workspace: Path, csv: Path, rows: int) -> dict:
    workspace.mkdir(parents=True, exist_ok=True)
    return {"kind": "pipeline", "code": str(code), "workspace": str(workspace), "rows": rows,
            "argv": ["--symbols", "BENCH", "--source", "csv", "--csv", str(csv), "--interval", "1m", "--quiet"]}


def before_code(commit: str, folder: Path) -> Path | None:
    """The toolkit at ``commit`` (read-only: ``git archive``), or None when that is not possible."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True,
                                 timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


# --- the rows -------------------------------------------------------------------------------------------------

def _row(label: str, value: str, ratio: float, reference: str) -> None:
    print(f"{label:<58} {value:<34} {ratio:>7.2f}x {reference}")


def _median_run(runs: list[dict]) -> dict:
    """The run of median wall time, with the median CPU time and the highest peak of all runs."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    middle = dict(ordered[len(ordered) // 2])
    middle["cpu"] = statistics.median(r["cpu"] for r in runs)
    middle["peak_mb"] = max(r["peak_mb"] - r["baseline_mb"] for r in runs) + middle["baseline_mb"]
    middle["range"] = f"{ordered[0]['seconds']:.2f}-{ordered[-1]['seconds']:.2f} s"
    return middle


def bench_end_to_end(n_bars: int, tmp: Path, repeat: int) -> None:
    csv = tmp / f"minute_{n_bars}.csv"
    write_minute_csv(csv, n_bars)
    refs, news = [], []
    for i in range(max(1, repeat)):  # in turns, so a slow spell of the machine hits both
        refs.append(measure({"kind": "read_csv", "csv": str(csv)}))
        news.append(measure(pipeline_spec(REPO, tmp / f"ws_new{i}", csv, n_bars)))
    one = measure({**pipeline_spec(REPO, tmp / "ws_one", csv, n_bars), "max_threads": 1})
    assert all(r["rc"] == 0 for r in news) and one["rc"] == 0, "data_pipeline.py failed on the benchmark CSV"
    ref, new = _median_run(refs), _median_run(news)
    per_million = (new["peak_mb"] - new["baseline_mb"]) / (n_bars / 1e6)
    ratios = sorted(n["seconds"] / r["seconds"] for r, n in zip(refs, news))
    _row(f"pandas.read_csv alone, {n_bars:,} minute bars (median of {len(refs)})",
         f"{ref['seconds']:.2f} s ({ref['range']}), {ref['cpu']:.2f} CPU-s", 1.0, "(the reference)")
    _row("data_pipeline.py end to end (CSV in, Parquet out)",
         f"{new['seconds']:.2f} s ({new['range']}) = {n_bars / new['seconds']:,.0f} rows/s",
         new["seconds"] / ref["seconds"], "read_csv's time (goal <= 10x)")
    _row("  each turn's own ratio", f"{', '.join(f'{x:.1f}x' for x in ratios)}", statistics.median(ratios),
         "(their median)")
    _row("  the same in CPU time", f"{new['cpu']:.2f} CPU-s = {n_bars / new['cpu']:,.0f} rows/CPU-s",
         new["cpu"] / ref["cpu"], "read_csv's CPU time")
    _row("  with one thread per symbol (MAX_THREADS = 1)", f"{one['seconds']:.2f} s, {one['cpu']:.2f} CPU-s, "
         f"peak {one['peak_mb'] - one['baseline_mb']:,.0f} MB", one["seconds"] / new["seconds"],
         "slower than with threads")
    _row("  peak RSS above the imports, per million rows", f"{per_million:,.0f} MB (peak {new['peak_mb']:,.0f} MB)",
         per_million / 300.0, "the 300 MB goal")
    _row("  peak RSS of read_csv alone", f"{ref['peak_mb'] - ref['baseline_mb']:,.0f} MB above its imports",
         (ref["peak_mb"] - ref["baseline_mb"]) / max(per_million * n_bars / 1e6, 1e-9), "the pipeline's")


def bench_before_after(n_bars: int, commit: str, tmp: Path) -> None:
    old_code = before_code(commit, tmp / "before")
    if old_code is None:
        print(f"before/after: skipped (git archive {commit} is not available here)")
        return
    csv = tmp / f"minute_{n_bars}.csv"
    if not csv.exists():
        write_minute_csv(csv, n_bars)
    new = measure(pipeline_spec(REPO, tmp / "ws_after", csv, n_bars))
    old = measure(pipeline_spec(old_code, tmp / "ws_before", csv, n_bars))
    _row(f"data_pipeline.py at {commit} (before), {n_bars:,} bars",
         f"{old['seconds']:.2f} s, peak {old['peak_mb'] - old['baseline_mb']:,.0f} MB above imports", 1.0,
         "(the reference)")
    _row("data_pipeline.py now, same CSV",
         f"{new['seconds']:.2f} s, peak {new['peak_mb'] - new['baseline_mb']:,.0f} MB above imports",
         old["seconds"] / new["seconds"], "faster than before")


def bench_workers(n_symbols: int, history: int, tmp: Path) -> None:
    import data_pipeline

    symbols = [f"SYM{i:02d}" for i in range(n_symbols)]
    argv = ["--symbols", *symbols, "--source", "synthetic", "--bars", str(history), "--quiet"]
    os.chdir(tmp)
    times = {}
    for workers in sorted({1, 2, os.cpu_count() or 1}):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = data_pipeline.main([*argv, "--workers", str(workers)])
        times[workers] = time.perf_counter() - start
        assert rc == 0
    os.chdir(REPO)
    _row(f"{n_symbols} symbols x {history:,} daily bars, --workers 1", f"{times[1]:.2f} s", 1.0, "(the reference)")
    for workers, seconds in times.items():
        if workers > 1:
            _row(f"  --workers {workers} ({os.cpu_count()} cores)", f"{seconds:.2f} s", times[1] / seconds,
                 "faster than --workers 1")


def bench_indicators(n_bars: int) -> None:
    from ta.trend import ADXIndicator, CCIIndicator
    from ta.volatility import AverageTrueRange

    import datafeed
    from datafeed import indicators

    bars = datafeed.generate_synthetic(n_bars, seed=1, interval="1m")
    h, low, c = bars["high"], bars["low"], bars["close"]
    pairs = {
        "ATR": (lambda: AverageTrueRange(h, low, c).average_true_range(),
                lambda: indicators.average_true_range(h, low, c)),
        "ADX, +DI, -DI": (lambda: [(a.adx(), a.adx_pos(), a.adx_neg()) for a in [ADXIndicator(h, low, c)]],
                          lambda: [(a.adx(), a.adx_pos(), a.adx_neg()) for a in [indicators.ADX(h, low, c)]]),
        "CCI": (lambda: CCIIndicator(h, low, c).cci(), lambda: indicators.commodity_channel_index(h, low, c)),
    }
    for name, (reference, ours) in pairs.items():
        start = time.perf_counter()
        reference()
        ref_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ours()
        our_seconds = time.perf_counter() - start
        _row(f"{name}, {n_bars:,} minute bars: datafeed.indicators", f"{our_seconds:.3f} s (ta {ref_seconds:.2f} s)",
             ref_seconds / our_seconds, "faster than ta (equal to 1e-9: tests/test_indicators.py)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=1_000_000, help="minute bars of the end-to-end CSV")
    parser.add_argument("--repeat", type=int, default=5, help="turns of read_csv and the pipeline (median)")
    parser.add_argument("--before-bars", type=int, default=100_000, help="bars of the before/after CSV (0: skip)")
    parser.add_argument("--before-commit", default=BEFORE_COMMIT)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--indicator-bars", type=int, default=100_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"{'row':<58} {'measured':<34} {'ratio':>8} against")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as folder:
        tmp = Path(folder)
        bench_end_to_end(args.bars, tmp, args.repeat)
        if args.before_bars:
            bench_before_after(args.before_bars, args.before_commit, tmp)
        (tmp / "symbols").mkdir()
        bench_workers(args.symbols, 2500, tmp / "symbols")
        bench_indicators(args.indicator_bars)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
