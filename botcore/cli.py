"""The common ending of every script's ``main``: user errors are one line and an exit code,
Ctrl-C is 130, anything unexpected is a traceback in the log file and exit code 1."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from botcore.errors import UserError

logger = logging.getLogger(__name__)


def run_guarded(body: Callable[[], int]) -> int:
    try:
        return body()
    except UserError as exc:
        logger.debug("user error", exc_info=True)
        _say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:  # the unexpected: full traceback to the log, one line on the terminal
        logger.exception("unexpected failure")
        _say(f"error: unexpected {type(exc).__name__}: {exc} (traceback in logs/)")
        return 1


def _say(line: str) -> None:
    # Logged (which reaches the console handler when installed) and, when logging is not set up, printed.
    if logging.getLogger().handlers:
        logger.error(line.removeprefix("error: "))
    else:
        print(line, file=sys.stderr)
