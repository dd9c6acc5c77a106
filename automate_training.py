"""automate_training.py: keep models fresh on a schedule, and say when they degrade.

Commands::

    python automate_training.py --create-config [--force]     # training_config.json with the defaults
    python automate_training.py --status [--json]             # daemon, runs, champions, paper accounts, alerts
    python automate_training.py --run-once data|trade|training|evaluation|all [--force]
    python automate_training.py                               # the daemon

The chain: ``data_pipeline.py --update-data`` per symbol, then ``train_bot.py`` per symbol and model type,
then ``evaluate_bot.py`` per symbol, each at its time of day from ``training_schedule`` in its time zone
(once a week when ``weekday`` is set). Every unit of work runs as a child process with a timeout
(``job_timeout_minutes``): a crash, a hang or a memory leak in training cannot take the daemon down, and
SIGTERM can end a unit cleanly. A unit whose upstream step failed in its latest run is skipped (training
after a failed data update, evaluation when no training of the symbol succeeded) and raises an alert.
With ``trading.enabled`` (the default) the trade job follows every data update (and a training that changed a
champion): each champion, and its newest challengers in shadow, decide on every new bar on paper accounts in
the ledger (``results/paper_ledger.db``), checked against a backtest replay and against their validation period.

Exit codes: 0 success (and the daemon after SIGTERM/SIGINT); 1 a unit failed, timed out or was skipped, a
daemon is already running, or another user error; 2 a bad config; 3 ``--run-once`` found the job lock
busy for ``lock_wait_seconds``; 130 ``--run-once`` interrupted (its unit was ended, state saved).

State and history: ``results/automation_state.json`` (atomic writes, survives ``kill -9``). Locks:
``results/automation_daemon.lock`` (one daemon per workspace) and ``results/automation.lock`` (one job at a
time, daemon or cron).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from agents.config import load_config, write_default_config
from automation.daemon import STOP_MESSAGE, Automation
from automation.runner import Runner
from automation.schedule import JOBS, RUN_ONCE_JOBS, Clock
from automation.status import format_status
from botcore import paths
from botcore.cli import add_set_flag, run_guarded
from botcore.errors import UserError
from botcore.logsetup import setup_logging
from botcore.signals import stop_on_signals

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="automate_training.py",
        description="Run data update -> training -> evaluation on a schedule, monitor the champions, alert.",
        epilog="Exit codes: 0 ok; 1 a unit failed/was skipped, a daemon already runs, or a user error; "
               "2 bad config; 3 --run-once found the job lock busy; 130 --run-once interrupted.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--create-config", action="store_true",
                        help="write training_config.json (or --config) with the defaults")
    action.add_argument("--status", action="store_true",
                        help="daemon, last and next runs, champions, paper accounts (champions and shadows), alerts")
    action.add_argument("--run-once", choices=[*RUN_ONCE_JOBS, "all"], metavar="JOB",
                        help="run one job now: data, trade (paper trading), training, evaluation or all (the chain), "
                             "then exit")
    parser.add_argument("--config", type=Path, help="config file (default ./training_config.json)")
    parser.add_argument("--force", action="store_true",
                        help="--create-config: overwrite; --run-once: run even when the upstream step failed")
    parser.add_argument("--json", action="store_true", help="--status as JSON")
    add_set_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only on the terminal")
    parser.add_argument("--verbose", action="store_true", help="debug output on the terminal")
    return parser


def create_config(target: Path, force: bool) -> int:
    if target.exists() and not force:
        raise UserError(f"{target} already exists; not overwriting it (use --create-config --force to replace it "
                        "with the defaults; the old file is kept as .bak)")
    if target.exists():
        shutil.copy2(target, target.with_name(target.name + ".bak"))
    write_default_config(target)
    load_config(target)  # what we wrote must load
    print(f"wrote {target} with the default settings; edit it, then check it with "
          f"`python automate_training.py --status`")
    return 0


def main(argv: Sequence[str] | None = None, runner: Runner | None = None, clock: Clock | None = None) -> int:
    """Entry point. ``runner`` and ``clock`` replace the child-process launcher and the wall clock (tests).

    :param argv: command-line arguments (default ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.create_config:
            return create_config(args.config or paths.config_path(), args.force)
        cfg = load_config(args.config, assignments=args.assignments)
        if args.status:
            st = Automation(cfg, args.config, runner=runner, clock=clock).status()
            print(json.dumps(st, indent=2, default=str) if args.json else format_status(st))
            return 0
        # The daemon runs for months: its log rotates at 10 MB, keeping 5 old files.
        log_file = setup_logging("automate_training", quiet=args.quiet, verbose=args.verbose,
                                 max_bytes=10 * 1024 * 1024, backups=5)
        logger.info("log file: %s", log_file)
        automation = Automation(cfg, args.config, runner=runner, clock=clock)
        automation.chain.plan.assignments = list(args.assignments)  # the children resolve the same config
        if args.run_once:
            jobs = list(JOBS) if args.run_once == "all" else [args.run_once]
            with stop_on_signals(automation.stop, STOP_MESSAGE):
                return automation.run_once(jobs, force=args.force)
        return automation.run_daemon()

    return run_guarded(body)


if __name__ == "__main__":
    raise SystemExit(main())
