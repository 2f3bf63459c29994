"""Boundary checks of scalar parameters: each failure is a BadInputError that names the parameter.

Shared by every part of spray that takes parameters (analysis processors, LRP rules, attribution methods);
it imports nothing heavy, so the LRP engine and the CLI can use it without loading the analysis stack.
"""

from __future__ import annotations

from numbers import Integral, Real
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
