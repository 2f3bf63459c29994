"""The store's schema (docs/store.md), as checks on an open HDF5 file: the version, the groups every store has,
and the shape and type of each attribute and dataset a reader relies on. Content that is not what this spray
writes is reported as a damaged store (:func:`_damaged`), never read into Python objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import spray.store
from spray.errors import BadInputError, SchemaError, StoreError

NODE_ROOTS = ("analyses", "clarc")
"""Top-level groups whose contents are written with :meth:`AuditStore.write_node`."""

_GROUPS = ("samples", "attributions", *NODE_ROOTS)
_NODE_MARK = "spray_node"  # reserved attr of a node group: JSON {"written": ISO time}
_ROOT_JSON = ("model", "dataset", "label_names")
_ATTRIBUTION_JSON = ("params", "trace")


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or "\0" in name:
        raise BadInputError(
            f"{what} {name!r} is not a valid name: use a non-empty string without '/' that does not "
            "start with '.'"
        )
    return name


def _node_path(path: str) -> str:
    parts = path.strip("/").split("/")
    if len(parts) < 2 or parts[0] not in NODE_ROOTS:
        raise BadInputError(
            f"node path {path!r} must lie under one of {', '.join(f'/{r}' for r in NODE_ROOTS)}, "
            "e.g. 'analyses/default/3/knn'"
        )
    for part in parts[1:]:
        _check_name(part, f"component of node path {path!r}")
    return "/".join(parts)


def _damaged(path: Path, what: str, problem: str) -> StoreError:
    """The error for stored content that is not what this spray writes (docs/store.md)."""
    return StoreError(
        f"audit store {path}: {what} {problem}; the store is damaged or was not written by this version "
        "of spray: re-create it, or run the stage that wrote this part again"
    )


def _json_attr(raw: Any, what: str, path: Path) -> Any:
    """A JSON text attribute (as :func:`_attr` reads it), decoded; anything else is a damaged store."""
    if not isinstance(raw, str):
        raise _damaged(path, what, f"is {type(raw).__name__}, not JSON text")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _damaged(path, what, f"is not valid JSON ({exc})") from None


def _decode(
    attrs: h5py.AttributeManager, path: Path, where: str, json_keys: Sequence[str] = ()
) -> dict[str, Any]:
    """Attributes as Python values; ``json_keys`` are decoded from JSON text (``where`` names the object)."""
    out: dict[str, Any] = {}
    for key, value in _attr_items(attrs, where, path):
        if key in json_keys:
            value = _json_attr(value, f"attribute {key!r} of {where}", path)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def _expect(value: Any, kinds: type | tuple[type, ...], what: str, path: Path) -> Any:
    """``value`` if it is one of ``kinds`` (bools are not ints); else a damaged-store error naming ``what``."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise _damaged(path, what, f"is {value!r:.80}, expected {names}")
    return value


def _root_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    """Root attributes, JSON ones decoded and checked against docs/store.md."""
    root = _decode(f.attrs, path, "the root", _ROOT_JSON)
    for key in _ROOT_JSON:
        if key not in root:
            raise _damaged(path, f"root attribute {key!r}", "is missing")
    for key, fields in (("model", ("name", "hash")), ("dataset", ("name",))):
        value = _expect(root[key], (dict, type(None)), f"root attribute {key!r}", path)
        missing = [field for field in fields if value is not None and field not in value]
        if missing:
            raise _damaged(path, f"root attribute {key!r}", f"has no {missing[0]!r}")
    names = _expect(root["label_names"], list, "root attribute 'label_names'", path)
    for name in names:
        _expect(name, str, "an entry of root attribute 'label_names'", path)
    return root


# Datasets and attributes hold numbers, booleans and strings (docs/store.md); anything else (object references,
# opaque or compound data, variable-length sequences) is refused rather than read: nothing in a store becomes
# an object, and libhdf5/h5py are never asked to convert a type spray does not write (reading a damaged
# variable-length type crashes the interpreter: tests/test_store_fuzz.py).
_ARRAY_KINDS = "biufcS"


def _type_problem(obj: Any) -> str | None:
    """Why the HDF5 type of a dataset or attribute id is not one spray reads; None when it is."""
    try:
        dtype = obj.dtype
    except (TypeError, ValueError, RuntimeError) as exc:  # HDF5 types numpy has no equivalent for (bitfields)
        return f"has an HDF5 type spray never writes ({exc})"
    if h5py.check_string_dtype(dtype) is not None:
        return None
    if dtype.kind in _ARRAY_KINDS and dtype.fields is None and not dtype.shape:
        return None
    return (f"has type {dtype}: spray stores numbers, booleans and strings only and never reads objects, "
            "references or opaque data")


def _attr(attrs: h5py.AttributeManager, key: str, what: str, path: Path) -> Any:
    """Attribute ``key``, read only after its type is checked (see :func:`_type_problem`); a text scalar
    comes back as str whether it is stored with fixed or variable length (invalid UTF-8 replaced)."""
    problem = _type_problem(attrs.get_id(key))
    if problem:
        raise _damaged(path, what, problem)
    value = attrs[key]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _attr_items(attrs: h5py.AttributeManager, where: str, path: Path) -> Iterator[tuple[str, Any]]:
    for key in attrs:
        yield key, _attr(attrs, key, f"attribute {key!r} of {where}", path)


def _checked_dataset(obj: Any, what: str, path: Path) -> h5py.Dataset:
    """``obj`` if it is a dataset of a type spray writes; a damaged-store error otherwise."""
    if not isinstance(obj, h5py.Dataset):
        raise _damaged(path, what, "is missing" if obj is None else "is a group, not a dataset")
    problem = _type_problem(obj)
    if problem:
        raise _damaged(path, what, problem)
    return obj


def _rows_dataset(
    group: h5py.Group, name: str, n: int | None, kinds: str, ndim: int | None, where: str, path: Path
) -> h5py.Dataset:
    """Dataset ``name`` of ``group``: ``n`` rows (any when None), a dtype kind in ``kinds``, ``ndim`` axes."""
    what = f"dataset {where}/{name}"
    dset = _checked_dataset(group.get(name), what, path)
    shape = dset.shape
    if not shape or (len(shape) != ndim if ndim is not None else len(shape) < 2):
        want = f"{ndim} axes" if ndim is not None else "at least 2 axes"
        raise _damaged(path, what, f"has shape {shape}, expected {want}")
    if n is not None and shape[0] != n:
        raise _damaged(path, what, f"has {shape[0]} rows, but the store has {n} samples")
    if dset.dtype.kind not in kinds:
        raise _damaged(path, what, f"has dtype {dset.dtype}")
    return dset


def _sample_count(f: h5py.File, path: Path) -> int:
    """Number of samples (0 before the first attribution run), after checking ``/samples``' datasets."""
    samples = f["samples"]
    if "label" not in samples:
        return 0
    n = _rows_dataset(samples, "label", None, "iu", 1, "/samples", path).shape[0]
    _rows_dataset(samples, "index", n, "iu", 1, "/samples", path)
    if "thumbnail" in samples:
        _rows_dataset(samples, "thumbnail", n, "u", 4, "/samples", path)
    return int(n)


def _node_attrs(group: h5py.Group, path: Path) -> dict[str, Any]:
    """A node's attributes, each decoded from its JSON text (the reserved mark left out)."""
    return {
        key: _json_attr(value, f"attribute {key!r} of node {group.name}", path)
        for key, value in _attr_items(group.attrs, f"node {group.name}", path)
        if key != _NODE_MARK
    }


def _node_written(group: h5py.Group, path: Path) -> Any:
    what = f"attribute {_NODE_MARK!r} of node {group.name}"
    mark = _json_attr(_attr(group.attrs, _NODE_MARK, what, path), what, path)
    return _expect(mark, dict, f"attribute {_NODE_MARK!r} of node {group.name}", path).get("written")


def _attribution_group(f: h5py.File, name: str, path: Path) -> h5py.Group:
    group = f["attributions"].get(name)
    if group is not None and not isinstance(group, h5py.Group):
        raise _damaged(path, f"attribution {name!r}", "is a dataset, not a group")
    if group is None:
        have = ", ".join(sorted(f["attributions"])) or "none"
        raise StoreError(f"audit store {path} has no attribution {name!r} (it has: {have})")
    return group


def _schema_version(f: h5py.File, path: Path) -> int:
    if "schema_version" not in f.attrs:
        raise SchemaError(
            f"{path} is not a spray audit store: it has no 'schema_version' attribute (an HDF5 file "
            "written by something else?)"
        )
    found = _attr(f.attrs, "schema_version", "attribute 'schema_version'", path)
    try:
        return int(found)
    except (TypeError, ValueError):
        raise SchemaError(f"{path}: schema_version {found!r} is not an integer") from None


def _check_schema(f: h5py.File, path: Path, *, older_ok: bool = False) -> None:
    # Read from the package when a store is opened: a version or migration set there (docs/store.md,
    # "Versioning") is the one every module sees.
    current, migrations = spray.store.SCHEMA_VERSION, spray.store.MIGRATIONS
    version = _schema_version(f, path)
    if version > current:
        raise SchemaError(
            f"{path} has store schema version {version}, newer than the {current} this spray "
            "supports: upgrade spray to read it"
        )
    migratable = all(v in migrations for v in range(version, current))
    if version < current and not (older_ok and migratable):
        raise SchemaError(
            f"{path} has store schema version {version}, older than the {current} this spray supports"
            + (f": run `spray migrate {path}` to migrate it in place" if migratable
               else ", and there is no migration for it: re-create the store with this spray")
        )
    if version < current:
        return  # the migration brings its groups up to date
    missing = [g for g in _GROUPS if not isinstance(f.get(g), h5py.Group)]
    if missing:
        raise SchemaError(f"{path} claims schema version {version} but lacks groups {missing}")
