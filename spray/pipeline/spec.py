"""Declarative pipeline files: TOML tables that name nodes of the processing graph and their parameters.

A file is parsed into a :class:`PipelineSpec`; every problem is a :class:`PipelineError` that names the
file, the line where it can be found, the table and the parameter.
"""

from __future__ import annotations

import inspect
import json
import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from spray._checks import check_regular_file
from spray.errors import PipelineError

#: Tables a caller reads besides the analysis ones: their names, or names mapped to default parameters.
ExtraTables = Collection[str] | Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed pipeline: which analysis to write, from which attribution, with which node parameters.

    ``nodes`` maps every enabled node name to its parameters (defaults filled in by the node table);
    ``extra`` holds the tables a caller allowed besides the analysis ones (e.g. ``spray run``'s ``model``).
    """

    name: str = "spray"
    attribution: str | None = None
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<defaults>"
    text: str = field(default="", repr=False, compare=False)
    """The file's TOML text, so that later errors (a parameter a processor refuses) can name the line."""

    def where(self, table: str, key: str | None = None) -> str:
        """``"<source>, line N"`` of ``[table]`` (or of ``key`` in it) for messages; the source alone if absent."""
        return where(self.source, self.text, table, key)

    def to_json(self) -> str:
        return json.dumps(
            {"name": self.name, "attribution": self.attribution, "nodes": self.nodes}, sort_keys=True
        )


def _line_of(text: str, table: str, key: str | None = None) -> int | None:
    """The 1-based line of ``[table]`` (or of ``key = `` inside it); None when it cannot be found."""
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\s*" + re.escape(table) + r"\s*\]\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return None
    if key is None:
        return start + 1
    assignment = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    for i in range(start + 1, len(lines)):
        if re.match(r"^\s*\[", lines[i]):
            break
        if assignment.match(lines[i]):
            return i + 1
    return start + 1


def where(source: str, text: str, table: str, key: str | None = None) -> str:
    """``source, line N`` for ``[table]`` (or its ``key``) in the TOML ``text``; ``source`` if not found."""
    line = _line_of(text, table, key) if text else None
    return f"{source}, line {line}" if line else source


def parse_pipeline(
    text: str,
    *,
    source: str = "<string>",
    node_params: dict[str, dict[str, Any]],
    required: frozenset[str],
    extra_tables: ExtraTables = frozenset(),
    enabled: frozenset[str] = frozenset(),
) -> PipelineSpec:
    """Parse pipeline TOML against a node table.

    ``node_params`` maps each known node to its default parameters (the valid names); nodes in
    ``required`` (and ``enabled``) run whether or not their table is present, the others only when their
    table is present. ``extra_tables`` names further tables the caller reads (into ``spec.extra``, as
    given); as a mapping to default parameters, their keys and value types are checked like a node's.
    A default that is a type (``int``, ``str``, ...) marks a parameter of that type without a default.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{source}: malformed TOML: {exc}") from None
    analysis = data.pop("analysis", {})
    if not isinstance(analysis, dict):
        raise PipelineError(f"{where(source, text, 'analysis')}: 'analysis' must be a table")
    unknown = set(analysis) - {"name", "attribution"}
    if unknown:
        key = sorted(unknown)[0]
        raise PipelineError(
            f"{where(source, text, 'analysis', key)}: unknown parameter 'analysis.{key}'; "
            "valid: name, attribution"
        )
    name = analysis.get("name", "spray")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise PipelineError(
            f"{where(source, text, 'analysis', 'name')}: analysis.name must be letters, digits and "
            f"underscores (it names an HDF5 group and a ViRelAy analysis), got {name!r}"
        )
    attribution = analysis.get("attribution")
    if attribution is not None and not isinstance(attribution, str):
        raise PipelineError(
            f"{where(source, text, 'analysis', 'attribution')}: 'analysis.attribution' must be a string, "
            f"got {attribution!r}"
        )

    nodes: dict[str, dict[str, Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    for table, params in data.items():
        if table in extra_tables:
            if isinstance(extra_tables, Mapping):
                _check_params(source, text, table, params, extra_tables[table])
            extra[table] = params
            continue
        if table not in node_params:
            raise PipelineError(
                f"{where(source, text, table)}: unknown node [{table}]; "
                f"known nodes: {', '.join(sorted(node_params))}"
            )
        _check_params(source, text, table, params, node_params[table])
        nodes[table] = {**node_params[table], **params}
    for node in required | enabled:
        nodes.setdefault(node, dict(node_params[node]))
    return PipelineSpec(name=name, attribution=attribution, nodes=nodes, extra=extra, source=source, text=text)


def _check_params(source: str, text: str, table: str, params: Any, defaults: Mapping[str, Any]) -> None:
    """``[table]`` is a table whose keys are in ``defaults`` and whose values fit their defaults' types."""
    if not isinstance(params, dict):
        raise PipelineError(f"{where(source, text, table)}: [{table}] must be a table of parameters")
    for key, value in params.items():
        if key not in defaults:
            valid = ", ".join(sorted(defaults)) or "(none)"
            raise PipelineError(
                f"{where(source, text, table, key)}: unknown parameter '{table}.{key}'; valid: {valid}"
            )
        default = defaults[key]
        if default is not None and not _same_kind(default, value):
            kind = default if isinstance(default, type) else type(default)
            if issubclass(kind, IntOrInts):
                name = "int or list of int"
            else:
                name = "list" if issubclass(kind, (list, tuple)) else kind.__name__  # TOML has arrays, no tuples
            raise PipelineError(f"{where(source, text, table, key)}: '{table}.{key}' must be {name}, got {value!r}")


def _same_kind(default: Any, value: Any) -> bool:
    """Whether a TOML value fits a parameter whose default is ``default`` (ints are valid floats); a
    default that is a type stands for a value of that type."""
    if isinstance(default, type):
        default = default()
    if isinstance(default, IntOrInts):
        return _is_int(value) or (isinstance(value, list) and bool(value) and all(map(_is_int, value)))
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, list)
    return isinstance(value, type(default))


def load_pipeline(path: str | Path, **kwargs: Any) -> PipelineSpec:
    """Read and parse a pipeline file (a run file when ``extra_tables`` are allowed); a missing or unreadable
    file is a :class:`PipelineError`."""
    path = Path(path)
    kind = "run file" if kwargs.get("extra_tables") else "pipeline file"
    check_regular_file(path, f"a {kind}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineError(f"cannot read {kind} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PipelineError(
            f"cannot read {kind} {path}: it is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
            f"offset {exc.start})"
        ) from None
    return parse_pipeline(text, source=str(path), **kwargs)


class IntOrInts(int):
    """The int default of a parameter annotated ``int | Sequence[int]``: a pipeline file may give one integer
    or a list of them (``[agglomerative] n_clusters = [2, 4, 8]``). Equal to, and serialised as, the int."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _takes_int_or_ints(annotation: Any) -> bool:
    """Whether a type hint is a union of ``int`` and a sequence of ints."""
    args = get_args(annotation)
    return int in args and any(get_origin(a) is Sequence and get_args(a) == (int,) for a in args)


def signature_defaults(fn: Any, skip: tuple[str, ...] = ("self",)) -> dict[str, Any]:
    """A callable's parameters and their defaults (None where there is none), less ``skip``; an int default
    of an ``int | Sequence[int]`` parameter is an :class:`IntOrInts`."""
    hints = get_type_hints(fn)
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        if _is_int(default) and _takes_int_or_ints(hints.get(name)):
            default = IntOrInts(default)
        out[name] = default
    return out


def constructor_defaults(cls: type) -> dict[str, Any]:
    """A processor's constructor parameters and their defaults (the valid names of its pipeline table)."""
    return signature_defaults(cls.__init__)
