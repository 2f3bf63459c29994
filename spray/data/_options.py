"""Options of image sources (``SCHEME:PATH?KEY=VALUE&...``) and the class-names files they may name."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from spray.errors import BadInputError


def split_options(spec: str, rest: str, allowed: Iterable[str], example: str) -> tuple[str, dict[str, str]]:
    """``PATH?KEY=VALUE&...`` -> (PATH, options); an option not ``allowed`` or malformed is refused naming
    ``spec`` (``example``: a spec that shows the form)."""
    path, _, query = rest.partition("?")
    allowed = list(allowed)
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or not value or key not in allowed:
            raise BadInputError(
                f"data source {spec!r}: option {part!r} is not KEY=VALUE with KEY one of {', '.join(allowed)} "
                f"(e.g. {example})"
            )
        options[key] = value
    return path, options


def read_names(path: Path) -> list[str]:
    """Class names, one per line (blank lines skipped), in model output order: line i names output i."""
    if not path.exists():
        raise BadInputError(
            f"label names file {path} does not exist (names=FILE is relative to the folder of a folder: source, "
            "to the table's folder for a csv: source)"
        )
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"label names file {path} cannot be read: {exc}") from None
    names = [line.strip() for line in lines if line.strip()]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise BadInputError(f"label names file {path} names {twice!r} twice")
    if not names:
        raise BadInputError(f"label names file {path} holds no names (one per line, in model output order)")
    return names
