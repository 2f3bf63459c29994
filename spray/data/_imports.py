"""``MOD:FACTORY`` specs: import a callable the user named (and only then: no code runs unasked)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from spray.errors import BadInputError
from spray.usercode import guarded


def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable ``FACTORY`` of module ``MOD`` for a ``MOD:FACTORY`` spec (``FACTORY`` may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BadInputError(f"{what} {spec!r} is not of the form MOD:FACTORY (e.g. mypkg.models:build)")
    # As uvicorn and gunicorn do: a module in the working directory is importable, as with `python -m`.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    with guarded(f"{what} {spec!r}"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise BadInputError(
                f"{what} {spec!r}: module {module_name!r} cannot be imported ({exc}); is it installed or on "
                "PYTHONPATH?"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
            raise BadInputError(f"{what} {spec!r}: importing module {module_name!r} failed: {exc!r}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise BadInputError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise BadInputError(f"{what} {spec!r}: {attr!r} is not callable")
    return target


def call_factory(spec: str, what: str) -> Any:
    """Import and call a ``MOD:FACTORY`` with no arguments; its own failure is reported as bad input."""
    factory = import_callable(spec, what)
    with guarded(f"{what} {spec!r}"):
        try:
            return factory()
        except Exception as exc:  # noqa: BLE001 - the user's factory failed
            raise BadInputError(f"{what} {spec!r}: the factory raised {exc!r}") from None
