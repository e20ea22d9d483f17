"""What every command-line tool does with an error: one line on stderr and an exit code.

``run_main(main)`` calls ``main()`` and turns a ``RaccnnError`` into ``error: <message>`` and its
``exit_code``, and an ``OSError`` (a full disk, a missing permission, a file where a folder should
be) into ``error: <path>: <reason>`` and exit code 2. Anything else is a bug and keeps its
traceback. ``report`` is the same line, for a tool that goes on after an error (predict's images).
"""
from __future__ import annotations

import sys
from typing import Callable

from .errors import RaccnnError
from .fileio import describe_os_error


def describe(exc: BaseException) -> str:
    """The one line for ``exc``, without the ``error:`` prefix."""
    return describe_os_error(exc) if isinstance(exc, OSError) and not isinstance(exc, RaccnnError) else str(exc)


def report(exc: BaseException, log: Callable[[str], None] | None = None) -> int:
    """Write ``error: ...`` for ``exc`` (to stderr, or through ``log``); returns its exit code."""
    line = f"error: {describe(exc)}"
    if log is not None:
        log(line)
    else:
        print(line, file=sys.stderr)
    return exc.exit_code if isinstance(exc, RaccnnError) else 2


def run_main(main: Callable[[], int], log: Callable[[BaseException], Callable[[str], None] | None] = None) -> int:
    """``main()``'s exit code, or the one line and exit code of a ``RaccnnError`` or ``OSError`` it
    raised. ``log(exc)`` may return where to write the line instead of stderr (a training's log)."""
    try:
        return main()
    except (RaccnnError, OSError) as exc:
        return report(exc, log(exc) if log else None)
