"""Does DeepScalper really learn? The agent and the paper's ablations on the learnability suite's markets.

A thin front to ``bench/learnability.py`` for the agent alone: every market of :mod:`evaluation.learnability`
(planted momentum, mean reversion, volatility regimes, an intraday time-of-day effect, and the drifting and
driftless random walks), each through the real feature pipeline, each agent trained through the toolkit's
training job with its defaults, scored on the test split net of costs as a fraction of the oracle's Sharpe.

    .venv/bin/python bench/deepscalper_learning.py [--steps 10000] [--seeds 2]
        [--variants deepscalper ds_no_hindsight ds_no_aux ds_single_branch] [--markets momentum vol_regime random_walk]
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import learnability  # noqa: E402

VARIANTS = ("deepscalper", "ds_no_hindsight", "ds_no_aux", "ds_single_branch")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--variants" in argv:
        argv[argv.index("--variants")] = "--agents"
    elif "--agents" not in argv:
        argv += ["--agents", *VARIANTS]
    if "--out" not in argv:
        argv += ["--out", "results/deepscalper_learning"]
    if "--seeds" not in argv:  # a few minutes (make bench); the guide's table used --seeds 5 on every market
        argv += ["--seeds", "2"]
    if "--markets" not in argv:
        argv += ["--markets", "momentum", "vol_regime", "random_walk"]
    return learnability.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
