"""The common ending of every script's ``main``: user errors are one line and an exit code,
Ctrl-C is 130, anything unexpected is one line on the terminal, its traceback in the log file, exit code 1.

Each script installs its logging (:func:`botcore.logsetup.setup_logging`) inside ``body``, so that a
failure of the set-up itself is guarded too. Whatever happens, the terminal gets exactly one error line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from botcore.config import MAX_SEED, MAX_WHOLE_NUMBER, split_assignment
from botcore.errors import ConfigError, UserError
from botcore.logsetup import console_installed, traceback_hint
from botcore.redact import redact

logger = logging.getLogger(__name__)


def run_guarded(body: Callable[[], int]) -> int:
    try:
        return body()
    except UserError as exc:
        _say(str(exc), exc)
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted", None)
        return 130
    except MemoryError as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        _say(f"out of memory ({detail}); reduce the sizes in training_config.json or the flags (e.g. "
             f"deepscalper.buffer_size, env.window, --bars) ({traceback_hint()})", exc)
        return 1
    except Exception as exc:  # the unexpected: one line on the terminal, the traceback in the log file
        _say(f"unexpected {type(exc).__name__}: {exc} ({traceback_hint()})", exc)
        return 1


def _say(message: str, exc: BaseException | None) -> None:
    """One line: logged with the traceback (the terminal's handler shows the line only), or printed when
    logging is not set up (printing never shows a traceback)."""
    line = " ".join(message.split()) if "\n" in message or "\r" in message else message
    if not console_installed():
        print(f"error: {redact(line)}" if exc is not None else redact(line), file=sys.stderr)
        if not logging.getLogger().handlers:
            return  # Python's last-resort handler would print the traceback
    logger.error("%s", line, exc_info=exc)


def whole_number(minimum: int, maximum: int = MAX_WHOLE_NUMBER, what: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` to ``maximum``; argparse turns a refusal into one
    line and exit code 2, e.g. ``argument --seed: -1 must be 0 or more (a seed is 0 to 4,294,967,295)``."""
    span = f" ({what} is {minimum:,} to {maximum:,})" if what else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            shown = text if len(text) <= 30 else text[:27] + "..."
            raise argparse.ArgumentTypeError(f"{shown!r} is not a whole number{span}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value:,} must be {minimum:,} or more{span}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{value:,} must be {maximum:,} or less{span}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in some messages
    return parse


seed_number = whole_number(0, MAX_SEED, "a seed")
"""The argparse type of every ``--seed``."""


def add_set_flag(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable), the same in every script: any training_config.json key by its dotted
    path, validated exactly like the file (see :func:`botcore.config.parse_assignments`)."""
    parser.add_argument("--set", dest="assignments", action="append", default=[], type=_assignment,
                        metavar="KEY=VALUE",
                        help="override one training_config.json key, e.g. --set deepscalper.learning_rate=3e-4 "
                             "--set env.window=16 (repeatable; JSON values, else text; checked like the file)")


def _assignment(text: str) -> str:
    """An argparse type: refuses a ``--set`` text that is not KEY=VALUE (one line, exit code 2)."""
    try:
        split_assignment(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--set ")) from None
    return text
