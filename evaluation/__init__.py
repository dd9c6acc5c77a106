"""Evaluation: backtests in either engine, metrics, baselines, the comparison with its recommendation, plots
and the HTML report, and seeded synthetic markets for tests and benchmarks. ``evaluate_bot.py`` is the
command line over it."""
