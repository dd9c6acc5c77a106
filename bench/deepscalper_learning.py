"""Does DeepScalper really learn? A planted, learnable pattern versus a pure random walk, out of sample.

Data (seeded): a hidden regime s_t in {-1, +1} switches with probability ``switch_prob`` per bar; the next
bar's log return is ``drift * s_t + sigma * noise``; bars open at the previous close. Two features per bar:
the regime s_t (known at bar t's close, so it predicts the NEXT return: a planted, learnable signal) and the
bar's own standardised log return. The random-walk control has ``drift = 0``: the regime feature is then
useless and there is nothing to learn.

The agent trains on one series (random 200-bar episodes, hindsight bonus and volatility target on, costs of
the project's defaults: commission 5 bp, slippage 1 bp) and is evaluated greedily on a FRESH series from the
same process (different seed) in an env without hindsight (reward == P&L), from its first bar to its last.
Reported: annualised Sharpe (252 bars a year, ddof=1) of the agent's equity returns net of costs, its
t-statistic (per-bar mean / standard error), total return, and buy-and-hold over the same bars.

    .venv/bin/python bench/deepscalper_learning.py [--steps 6000] [--seeds 0 1 2] [--variants full no_aux ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.planted import VARIANTS, run  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["full"], choices=list(VARIANTS),
                        help="the full agent and/or the paper's ablations")
    args = parser.parse_args(argv)
    print(f"{'variant':<15}{'series':<12}{'seed':>5}{'Sharpe':>9}{'t-stat':>8}{'return %':>10}{'B&H %':>9}"
          f"{'B&H Sharpe':>12}{'secs':>7}")
    for variant in args.variants:
        for pattern in (True, False):
            for seed in args.seeds:
                t0 = time.perf_counter()
                r = run(pattern, args.steps, seed, **VARIANTS[variant])
                print(f"{variant:<15}{'planted' if pattern else 'random walk':<12}{seed:>5}{r['sharpe']:>9.2f}"
                      f"{r['t_stat']:>8.2f}{r['total_return_pct']:>10.1f}{r['bh_return_pct']:>9.1f}"
                      f"{r['bh_sharpe']:>12.2f}{time.perf_counter() - t0:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
