"""How the store's values are laid out in HDF5: chunked sample rows, fixed-length UTF-8 text, JSON attributes,
nodes built in a staging group and moved into place.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spray._blocks import BLOCK_BYTES, block_rows
from spray.errors import BadInputError
from spray.store.schema import _NODE_MARK, _check_name, _checked_dataset, _damaged

_STAGING = ".staging"  # where groups are built before they are moved into place

# Chunks along the sample axis: 64 rows, fewer when a chunk would exceed 4 MiB, more for small rows so
# that per-sample scalars (labels, the done mask) do not end up in thousands of tiny chunks.
_CHUNK_ROWS = 64
_MAX_CHUNK_BYTES = 4 << 20
_MIN_CHUNK_BYTES = 64 << 10

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def to_json(value: Any) -> str:
    """``value`` as the JSON text stored in attrs (keys sorted; numpy scalars and paths converted).

    Raises:
        BadInputError: if the value cannot be written as JSON.
    """
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"cannot store {value!r} as a JSON attribute: {exc}") from None


def canonical(value: Any) -> Any:
    """``value`` as it reads back from the store (tuples become lists, numpy scalars Python numbers)."""
    return json.loads(to_json(value))


def _chunk_rows(row_bytes: int, n: int) -> int:
    """Rows per chunk along the sample axis for rows of ``row_bytes`` bytes (see docs/store.md)."""
    row_bytes = max(1, int(row_bytes))
    rows = _CHUNK_ROWS if row_bytes * _CHUNK_ROWS >= _MIN_CHUNK_BYTES else _MIN_CHUNK_BYTES // row_bytes
    rows = min(rows, max(1, _MAX_CHUNK_BYTES // row_bytes))
    return max(1, min(rows, n))


def _create_rows(
    group: h5py.Group, name: str, n: int, row_shape: Sequence[int], dtype: Any, fill: Any = None
) -> h5py.Dataset:
    """An (n, *row_shape) dataset chunked along n, all chunks allocated now.

    Early allocation means a batch write later only fills raw data and never changes the file's metadata,
    so a process killed in the middle of a batch leaves, at worst, rows whose done flag is still False.
    Without ``fill`` nothing is written at creation (rows are undefined until written).
    """
    dtype = np.dtype(dtype)
    row_shape = tuple(int(s) for s in row_shape)
    rows = _chunk_rows(int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize, n)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    kwargs: dict[str, Any] = {}
    if fill is None:
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    else:
        kwargs["fillvalue"] = fill
    return group.create_dataset(
        name, shape=(n, *row_shape), dtype=dtype, chunks=(rows, *row_shape), dcpl=dcpl, **kwargs
    )


def _chunk_extents(dset: h5py.Dataset, start: int, stop: int) -> list[tuple[int, int]]:
    """File byte ranges ``[lo, hi)`` of the chunks of ``dset`` that hold rows ``start:stop``."""
    rows = dset.chunks[0]
    extents = []
    for first in range(start - start % rows, stop, rows):
        info = dset.id.get_chunk_info_by_coord((first,) + (0,) * (dset.ndim - 1))
        extents.append((info.byte_offset, info.byte_offset + info.size))
    return extents


def _read_rows(dset: h5py.Dataset, rows: Any) -> np.ndarray:
    """Rows of ``dset`` by position (any order, repeats allowed), reading whole chunk-sized blocks."""
    if rows is None:
        return dset[()]
    if isinstance(rows, slice):
        return dset[rows]
    positions = np.asarray(rows)
    if positions.ndim != 1 or not (positions.size == 0 or np.issubdtype(positions.dtype, np.integer)):
        raise BadInputError(f"rows must be a slice or a 1-D array of integer positions, got {rows!r}")
    n = dset.shape[0]
    if positions.size and (positions.min() < -n or positions.max() >= n):
        raise BadInputError(f"rows out of range for {dset.name} with {n} rows")
    positions = np.where(positions < 0, positions + n, positions).astype(np.int64)
    unique, inverse = np.unique(positions, return_inverse=True)
    out = np.empty((unique.size, *dset.shape[1:]), dtype=dset.dtype)
    block = dset.chunks[0] if dset.chunks else max(1, n)
    bounds = np.flatnonzero(np.diff(unique // block)) + 1
    for sel in np.split(np.arange(unique.size), bounds):
        if sel.size:
            lo, hi = int(unique[sel[0]]), int(unique[sel[-1]]) + 1
            out[sel] = dset[lo:hi][unique[sel] - lo]
    return out[inverse.reshape(-1)]


def _storable(name: str, array: Any) -> np.ndarray:
    value = np.asarray(array)
    if value.dtype.kind not in "biufcSU":
        raise BadInputError(
            f"array {name!r} has dtype {value.dtype}; the store holds numbers, booleans and strings "
            "only (never pickled objects)"
        )
    return value


# Text is stored as fixed-length UTF-8, never as HDF5 variable-length strings: those keep their bytes in the
# file's global heap, and a damaged global heap can make libhdf5 loop for ever while reading them
# (docs/bad-input.md, "Fuzzing"). Fixed-length text lies in the object header (attributes) or in the raw
# data (datasets). An attribute's header message holds at most 64 KiB (65,503 bytes of text for the name
# "info", measured with HDF5 2.0 and spray's file format): longer attribute text stays variable-length.
_MAX_HEADER_TEXT = 65_000  # bytes of text plus attribute name


def _utf8(texts: Any) -> np.ndarray:
    """``texts`` (a str or an array of str) as fixed-length UTF-8 of the longest one's byte length (at
    least 1); trailing NUL characters are dropped, as numpy's own str arrays drop them."""
    encoded = np.char.encode(np.asarray(texts, dtype=str), "utf-8")
    return encoded.astype(h5py.string_dtype("utf-8", length=max(1, encoded.dtype.itemsize)))


def rewrite_text_variable_length(path: str | os.PathLike[str]) -> None:
    """Rewrite every UTF-8 text attribute and dataset of the store file ``path`` as variable-length strings,
    kept in the file's global heap, as spray wrote them before it wrote fixed-length text (docs/store.md): a
    store of an older spray, for the tests and benchmarks that read one."""
    with h5py.File(path, "r+") as f:
        objects: list[Any] = [f]
        f.visititems(lambda name, obj: objects.append(obj))
        for obj in objects:
            for key in list(obj.attrs):
                if h5py.check_string_dtype(obj.attrs.get_id(key).dtype) is not None:
                    value = obj.attrs[key]
                    text = value.decode("utf-8") if isinstance(value, bytes) else value
                    obj.attrs.create(key, data=text, dtype=h5py.string_dtype())
            string = h5py.check_string_dtype(obj.dtype) if isinstance(obj, h5py.Dataset) else None
            if string is not None and string.encoding == "utf-8" and string.length is not None:
                name, text = obj.name, np.char.decode(obj[()], "utf-8").astype(object)
                del f[name]
                f.create_dataset(name, data=text, dtype=h5py.string_dtype())


def _set_attrs(attrs: h5py.AttributeManager, values: Mapping[str, Any]) -> None:
    """Write ``values`` as attributes: text as fixed-length UTF-8 (:func:`_utf8`) while it fits in the
    object header, as variable-length UTF-8 above that; numbers as they are."""
    for key, value in values.items():
        if not isinstance(value, str):
            attrs[key] = value
        elif len(value.encode("utf-8")) + len(key.encode("utf-8")) <= _MAX_HEADER_TEXT:
            attrs[key] = _utf8(value)
        else:
            attrs.create(key, data=value, dtype=h5py.string_dtype("utf-8"))


def _write_array(group: h5py.Group, name: str, value: np.ndarray) -> None:
    """Dataset ``name`` of ``group`` holding ``value``; an array larger than a block is written block by block, so
    the journaled file object sees one block at a time and a write never holds a second copy of it in memory."""
    if value.dtype.kind == "U":  # numpy's fixed-width UTF-32 has no HDF5 type: store UTF-8 strings
        group.create_dataset(name, data=_utf8(value))
    elif value.ndim and value.nbytes > BLOCK_BYTES:
        dset = group.create_dataset(name, shape=value.shape, dtype=value.dtype)
        rows = block_rows(value[0].nbytes)
        for start in range(0, len(value), rows):
            dset[start : start + rows] = value[start : start + rows]
    else:
        group.create_dataset(name, data=value)


def _read_array(dset: h5py.Dataset, path: Path) -> np.ndarray:
    """A node's array: numbers, booleans, bytes, or UTF-8 strings read as text."""
    _checked_dataset(dset, f"dataset {dset.name}", path)
    return _as_text(dset, dset[()], path)


def _as_text(dset: h5py.Dataset, values: np.ndarray, path: Path) -> np.ndarray:
    """``values`` read from ``dset``: UTF-8 strings (fixed or variable length) as str, others unchanged."""
    string = h5py.check_string_dtype(dset.dtype)
    if string is None or string.encoding != "utf-8":
        return values  # numbers, booleans, and byte strings (numpy 'S' arrays are stored as ASCII)
    try:
        if string.length is None:  # variable-length: h5py reads bytes objects
            return np.asarray([v.decode("utf-8") for v in values.ravel()], dtype=str).reshape(values.shape)
        return np.char.decode(values, "utf-8")
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"dataset {dset.name}", f"holds text that is not UTF-8 ({exc})") from None


def _dtype_name(dset: h5py.Dataset) -> str:
    """The dtype :meth:`AuditStore.info` shows: ``"str"`` for UTF-8 text, however it is stored."""
    string = h5py.check_string_dtype(dset.dtype)
    return "str" if string is not None and string.encoding == "utf-8" else str(dset.dtype)


def _node_arrays(group: h5py.Group) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    group.visititems(visit)
    return found


def _prepare_node(
    path: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Validated arrays and JSON-encoded attrs of a node, before any transaction starts."""
    encoded = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or key == _NODE_MARK:
            raise BadInputError(f"node attribute name {key!r} of node {path!r} is reserved or not a string")
        encoded[key] = to_json(value)
    encoded[_NODE_MARK] = to_json({"written": _now()})
    values = {}
    for key, array in arrays.items():
        if not isinstance(key, str):
            raise BadInputError(f"array name {key!r} of node {path!r} is not a string")
        for part in key.strip("/").split("/"):
            _check_name(part, f"array name {key!r} of node {path!r}")
        values[key.strip("/")] = _storable(key, array)
    return values, encoded


def _replace_group(f: h5py.File, path: str, build: Any) -> None:
    """Build a group under the staging area, then move it to ``path`` (replacing what was there)."""
    staging = f.require_group(_STAGING)
    tmp = staging.create_group(uuid.uuid4().hex)
    build(tmp)
    parent, _, _leaf = path.rpartition("/")
    if parent:
        f.require_group(parent)
    if path in f:
        f.move(path, f"{_STAGING}/old-{uuid.uuid4().hex}")
    f.move(tmp.name, path)
    del f[_STAGING]


def _find_nodes(f: h5py.File, prefix: str) -> list[tuple[str, h5py.Group]]:
    start = f.get(prefix)
    if not isinstance(start, h5py.Group):
        return []
    found: list[tuple[str, h5py.Group]] = []

    def walk(group: h5py.Group, path: str) -> None:
        if _NODE_MARK in group.attrs:
            found.append((path, group))
            return
        for key, child in group.items():
            if isinstance(child, h5py.Group) and not key.startswith("."):
                walk(child, f"{path}/{key}")

    walk(start, prefix)
    return sorted(found, key=lambda item: item[0])
