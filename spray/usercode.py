"""Calls into the user's code: an exit there is an error, never success.

Model and data factories, a model's ``forward``, a dataset's ``__getitem__`` and its transforms are the
user's code. One that calls ``sys.exit()`` (or ``exit()``, or raises ``SystemExit``) would otherwise end
the command with the exit code it chose, 0 included, after writing nothing: a script trusting the exit
code would believe the audit ran. :func:`guarded` turns such an exit into :class:`UserCodeExit`, a
``BadInputError`` (exit code 2) that names the function that exited, as ``MODULE:QUALNAME``, and its
file and line. ``KeyboardInterrupt`` is left alone: an interrupt stays an interrupt (exit code 130).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from spray.errors import BadInputError


class UserCodeExit(BadInputError):
    """User code called ``sys.exit()`` (raised ``SystemExit``) while spray was running it."""


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """Run user code; a ``SystemExit`` it raises becomes a :class:`UserCodeExit` naming ``what`` and where."""
    try:
        yield
    except SystemExit as exc:
        raise UserCodeExit(
            f"{what}: user code exited with sys.exit({exc.code!r}) in {_exit_site(exc.__traceback__)}; spray "
            "treats an exit as a failure, not as success: return, or raise an exception that says what went wrong"
        ) from None


def _exit_site(tb: TracebackType | None) -> str:
    """``MODULE:QUALNAME (FILE:LINE)`` of the innermost frame of ``tb``: where the exit was raised."""
    if tb is None:
        return "unknown code"
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame, code = tb.tb_frame, tb.tb_frame.f_code
    return f"{frame.f_globals.get('__name__', '?')}:{code.co_qualname} ({code.co_filename}:{tb.tb_lineno})"
