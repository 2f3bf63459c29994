"""Boundary checks of scalar parameters and file paths: each failure is a BadInputError naming its subject.

Shared by every part of spray that takes parameters (analysis processors, LRP rules, attribution methods)
or opens a file the user named (stores and their lock and journal files, data, weights, pipeline and run
files); it imports nothing heavy, so the LRP engine and the CLI can use it without loading the analysis stack.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from spray.errors import BadInputError


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an int (bools rejected), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise BadInputError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise BadInputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(value: Any, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite float, ``>= minimum`` (``> minimum`` if ``strict``) when given."""
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
        raise BadInputError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise BadInputError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return float(value)


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise BadInputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_names(names: Sequence[str], known: Sequence[str], what: str, option: str | None = None) -> tuple[str, ...]:
    """``names`` (each once, in the order given) if each is one of ``known`` and there is one at least; else a
    BadInputError naming the unknown ones (or that none was given), the command-line ``option`` they came from, if
    any, and the choices: e.g. ``unknown split 'test' (--splits); choose from dev, heldout``."""
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise BadInputError(f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}"
                            f"{f' ({option})' if option else ''}; choose from {', '.join(known)}")
    return tuple(dict.fromkeys(names))


_KINDS = {
    stat.S_IFIFO: "FIFO (named pipe)", stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
}


def check_regular_file(path: str | os.PathLike[str], what: str) -> None:
    """Refuse ``path`` if it exists (a symlink: its target) and is not a regular file; ``what`` names the
    file, e.g. ``"an audit store"``. A FIFO, device or socket would block or stream for ever when opened or
    read (nothing ever ends it), so the type is checked before anything opens the path. A missing path
    passes: callers say what a missing file means to them."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or no permission to look: the caller's open says what that means
        return
    if stat.S_ISDIR(mode):
        raise BadInputError(f"{Path(path)} is a directory, not {what}")
    if not stat.S_ISREG(mode):
        raise BadInputError(
            f"{Path(path)} is a {_KINDS.get(stat.S_IFMT(mode), 'special file')}, not {what}; spray reads and "
            "writes regular files only: move it away or name another path"
        )
