"""The one exception family for mistakes a user can fix: bad flags, gin bindings, files, data, run directories.

Every entry point turns a `UserError` into one ``error: ...`` line on stderr and exit status 2
(`gin_utils.run_cli`); anything else is a bug and keeps its traceback. The message must name the flag, field or
file at fault and say what to do. A traceback for a `UserError` is shown only with ``--verbose`` or
``OPTIML_VERBOSE=1``.

This module imports nothing of the project, so every layer (models, tasks, checkpoints, CLIs) can raise it.
"""
from __future__ import annotations

import os

VERBOSE_ENV = "OPTIML_VERBOSE"

# Exit statuses of the CLIs (documented in docs/faults.md).
EXIT_OK = 0
EXIT_USAGE = 2          # a UserError: nothing was changed that the user did not ask for
EXIT_NON_FINITE = 3     # training stopped on a NaN/inf loss
EXIT_PREEMPTED = 75     # sysexits' EX_TEMPFAIL: stopped on SIGTERM/SIGINT after saving; rerun to continue


class UserError(ValueError):
    """A problem with the user's input, phrased as what to fix (subclasses name the layer it comes from).

    A ValueError so that code catching ValueError around validation keeps working.
    """


def verbose_requested(argv: list[str] | None = None) -> bool:
    """True when ``--verbose`` is in ``argv`` or ``OPTIML_VERBOSE`` is set to a true value."""
    if argv is not None and "--verbose" in argv:
        return True
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line, without gin's "In call to configurable ..." trailer lines."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("In call to configurable")]
    return " ".join(lines) or type(e).__name__
