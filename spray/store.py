"""The audit store: one chunked HDF5 file per audit, the single source of truth of every stage.

The schema, its versioning policy and the concurrency model are a contract, documented in docs/store.md.
In short: one writer at a time (``flock``s keyed on the file's identity, held from open to close); the HDF5 file
itself is opened only for the duration of each transaction (a batch of attributions, one node), so
readers can open it between transactions. HDF5's own file locking keeps a reader from seeing a
transaction half-written; whoever finds the file busy retries for a bounded time. Every write transaction
is all-or-nothing (spray.journal): a writer that is killed or runs out of disk space leaves the store as
it was before that transaction.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spray._checks import check_regular_file
from spray.errors import BadInputError, SchemaError, SprayError, StoreError, StoreLockedError
from spray.journal import JournaledFile, journal_path, rollback_if_stale, try_flock

__all__ = ["MIGRATIONS", "NODE_ROOTS", "SCHEMA_VERSION", "AuditStore", "canonical", "format_info", "to_json"]

SCHEMA_VERSION = 1
"""The schema this spray writes and reads (docs/store.md)."""

MIGRATIONS: dict[int, Callable[[h5py.File], None]] = {}
"""``MIGRATIONS[v](f)`` rewrites an open store of schema ``v`` into schema ``v + 1`` (docs/store.md,
"Versioning"). A store opened for writing runs the chain up to :data:`SCHEMA_VERSION` in one transaction
(all or nothing, like any write); version 1 is the first, so there is none yet."""

NODE_ROOTS = ("analyses", "clarc")
"""Top-level groups whose contents are written with :meth:`AuditStore.write_node`."""

_GROUPS = ("samples", "attributions", *NODE_ROOTS)
_SIDECARS = {".lock": "writer lock", ".gate": "writer gate", ".journal": "write journal", ".new": "new copy"}
"""The store's own files beside it (named ``<store><suffix>``), and what each is."""
_STAGING = ".staging"  # where groups are built before they are moved into place
_NODE_MARK = "spray_node"  # reserved attr of a node group: JSON {"written": ISO time}

# Chunks along the sample axis: 64 rows, fewer when a chunk would exceed 4 MiB, more for small rows so
# that per-sample scalars (labels, the done mask) do not end up in thousands of tiny chunks.
_CHUNK_ROWS = 64
_MAX_CHUNK_BYTES = 4 << 20
_MIN_CHUNK_BYTES = 64 << 10

# h5py's locking="best-effort": HDF5 flock()s the file while it is open (shared for readers, exclusive
# for the writer's transaction) and only gives up locking where the file system cannot lock at all.
_LOCKING = "best-effort"

# Writes of larger arrays go in blocks of this size: the journaled file object sees one block at a time,
# so a write never holds a second copy of a large array in memory.
_WRITE_BLOCK = 64 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it.

    A KeyboardInterrupt raised while HDF5 is calling into the journaled file object would take HDF5 down
    an error path that is not safe; after the transaction it interrupts the program as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread only
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


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
    if value.dtype.kind == "U":  # numpy's fixed-width UTF-32 has no HDF5 type: store UTF-8 strings
        group.create_dataset(name, data=_utf8(value))
    elif value.ndim and value.nbytes > _WRITE_BLOCK:
        dset = group.create_dataset(name, shape=value.shape, dtype=value.dtype)
        rows = max(1, _WRITE_BLOCK // max(1, value[0].nbytes))
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


_ROOT_JSON = ("model", "dataset", "label_names")
_ATTRIBUTION_JSON = ("params",)


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


class _WriterLock:
    """The one-writer lock, keyed on the store file's identity, not on the name it was given.

    Two exclusive ``flock``s, dropped by the OS when the holder dies: ``<real path>.lock`` beside the
    store's resolved path (every symlink to the store finds the same lock; it works before the file exists
    and, on a shared file system, across hosts), and, once the file exists, ``<dev>-<ino>.lock`` in a
    per-user folder of the temporary directory (a hard link is another name of the same inode: this lock
    finds it, on this host). Lock files are never removed: removing one while another process opens it
    would let two writers lock two files of the same name.
    """

    def __init__(self, store: Path, file: Path) -> None:
        self.store = store  # as given, for messages
        self.path = file.with_name(file.name + ".lock")
        self._fds: list[int] = []

    def acquire(self) -> None:
        self._flock(self.path)

    def acquire_identity(self, file: Path) -> None:
        """The second lock, on ``file``'s device and inode; taken once the store file exists."""
        info = os.stat(file)
        folder = Path(tempfile.gettempdir()) / f"spray-locks-{os.getuid()}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of writer locks {folder}: {exc.strerror}") from None
        self._flock(folder / f"{info.st_dev}-{info.st_ino}.lock")

    def _flock(self, path: Path) -> None:
        check_regular_file(path, f"the writer lock of audit store {self.store}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the writer lock {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(f"cannot lock {path}: {exc.strerror}") from None
            try:
                who = json.loads(holder)
                desc = f"pid {who['pid']} on {who['host']} (since {who['since']})"
            except (ValueError, KeyError, TypeError):
                desc = "another process (pid unknown)"
            raise StoreLockedError(
                f"audit store {self.store} is locked by {desc}: one process writes a store at a time; wait "
                "for it to finish or stop it (the lock is released when it exits)"
            ) from None
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()})
        with suppress(OSError):  # who holds the lock is for messages only: a full disk must not stop us
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        self._fds.append(fd)

    @staticmethod
    def holder(file: Path) -> str | None:
        """Who writes the store at ``file`` now, as "pid N on HOST (since T)", or None: read from the lock's
        record without touching the lock (a probe by flock could make a writer starting that moment fail).
        A record left by a killed writer names a process that is gone on this host, and counts as none."""
        try:
            who = json.loads((file.with_name(file.name + ".lock")).read_text(errors="replace"))
            pid, host, since = int(who["pid"]), str(who["host"]), str(who["since"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if host == socket.gethostname():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass  # alive, another user's
        return f"pid {pid} on {host} (since {since})"

    def release(self) -> None:
        while self._fds:
            fd = self._fds.pop()
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


class AuditStore:
    """An audit store (HDF5, schema in docs/store.md), used as a context manager.

    Args:
        path: the ``.h5`` file.
        mode: ``"r"`` to read (the file must exist), ``"a"`` to read and write: creates the file (and its
            directory) if missing and takes the store's exclusive writer lock until :meth:`close`.
        timeout: seconds a read or a write waits while another process has the HDF5 file open.

    ``lock_wait_s`` is the wall time this store's transactions have spent waiting for other processes
    (the writers-first gate and the file's lock, retries included) and ``lock_waits`` how many waits there
    were; with ``SPRAY_LOCK_STATS=1`` in the environment a writer prints both on stderr when it closes.

    Raises:
        StoreLockedError: another process holds the writer lock (mode ``"a"``).
        SchemaError: the file is not a spray store, or its schema version is not :data:`SCHEMA_VERSION`.
        StoreError: the file is missing (mode ``"r"``), unwritable (mode ``"a"``), corrupt or truncated.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "r", *, timeout: float = 60.0) -> None:
        if mode not in ("r", "a"):
            raise BadInputError(f"store mode must be 'r' or 'a', got {mode!r}")
        self.path = Path(path)  # as given, for messages
        try:
            # The file's own path, symlinks resolved: its lock, gate, journal and new copy lie beside it, so
            # that every name of the store finds them.
            self._file = self.path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise StoreError(f"cannot resolve audit store path {self.path}: {exc}") from None
        self.mode = mode
        self.timeout = float(timeout)
        self._lock: _WriterLock | None = None
        self._snapshot: h5py.File | None = None  # the open file of a reading() block
        self.migrated_from: int | None = None  # the schema version a writer found, when it migrated the store
        self.lock_wait_s = 0.0
        self.lock_waits = 0
        check_regular_file(self.path, "an audit store")
        for suffix, role in _SIDECARS.items():
            check_regular_file(self._sidecar(suffix), f"the {role} of audit store {self.path}")
        if mode == "r":
            with self._open():
                pass
            return
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of audit store {self.path}: {exc}") from None
        self._lock = _WriterLock(self.path, self._file)
        self._lock.acquire()
        try:
            if not self._file.exists():
                self._create()
            self._lock.acquire_identity(self._file)
            self.migrated_from = self._migrate()
            with self._open():  # checks the schema; rolls back a transaction a killed writer left
                pass
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release the writer lock (no HDF5 handle stays open between transactions)."""
        if self._lock is not None:
            if os.environ.get("SPRAY_LOCK_STATS"):
                print(f"spray: the writer of audit store {self.path} waited {self.lock_wait_s:.3f} s for locks "
                      f"({self.lock_waits} waits)", file=sys.stderr)
            self._lock.release()
            self._lock = None

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit; the OS drops the lock anyway
            pass

    def __repr__(self) -> str:
        return f"AuditStore({str(self.path)!r}, mode={self.mode!r})"

    @property
    def writable(self) -> bool:
        return self._lock is not None

    def _migrate(self) -> int | None:
        """Bring a store of an older schema up to :data:`SCHEMA_VERSION` through :data:`MIGRATIONS`, in one
        write transaction; the version it had, or None if it was current."""
        with self._open(older_ok=True) as f:
            version = _schema_version(f, self.path)
        if version == SCHEMA_VERSION:
            return None
        with self._open(write=True, older_ok=True) as f:
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](f)
                f.attrs["schema_version"] = step + 1
        return version

    def _sidecar(self, suffix: str) -> Path:
        """``<real path><suffix>``: a file of the store's own beside its resolved path (:data:`_SIDECARS`)."""
        return self._file.with_name(self._file.name + suffix)

    def _create(self) -> None:
        """Write a new, empty store next to its path and rename it into place (a kill leaves no half file).

        Written through a journaled file like every other write, so a full disk is reported here and
        never reaches HDF5's error paths.
        """
        from spray import __version__

        new = self._sidecar(".new")  # ours: we hold the writer lock of the path
        journaled = None
        try:
            new.write_bytes(b"")
            journaled = JournaledFile(new)
            with _interrupts_deferred():
                # fs_persist keeps track of space freed by replaced nodes across sessions so it is reused.
                # The default libver gives superblock v2: v3 would mark the file "open for writing" and
                # make it unopenable (without h5clear) after a writer is killed.
                with h5py.File(journaled, "w", fs_strategy="fsm", fs_persist=True) as f:
                    _set_attrs(f.attrs, {
                        "schema_version": SCHEMA_VERSION, "spray_version": __version__, "created": _now(),
                        "model": to_json(None), "dataset": to_json(None), "label_names": to_json([]),
                    })
                    for group in _GROUPS:
                        f.create_group(group)
                journaled.commit()
            os.replace(new, self._file)
        except OSError as exc:
            if journaled is not None:
                journaled.abort()
            with suppress(OSError):
                new.unlink()
            if exc.errno in _NO_SPACE:
                raise StoreError(
                    f"cannot create audit store {self.path}: no space left ({os.strerror(exc.errno)}); free "
                    "disk space and run again"
                ) from None
            raise StoreError(f"cannot create audit store {self.path}: {exc}") from None

    # ------------------------------------------------------------------ transactions

    def _h5file(self, write: bool) -> tuple[h5py.File, JournaledFile | None]:
        """The file open for one transaction, and its journal when writing; waits up to ``timeout`` while
        another process has it open."""
        deadline = time.monotonic() + self.timeout
        try:
            with self._gate(write, deadline):
                return self._waiting(lambda: self._open_once(write), deadline, write)
        except FileNotFoundError:
            raise StoreError(f"no audit store at {self.path}") from None
        except PermissionError:
            if not write and journal_path(self._file).exists():
                raise StoreError(f"cannot read audit store {self.path}:{self._journal_hint()}") from None
            action = "write" if write else "read"
            raise StoreError(f"cannot {action} audit store {self.path}: permission denied") from None
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise self._write_error(exc, None) from None
            try:
                is_hdf5 = h5py.is_hdf5(self.path)
            except OSError:
                is_hdf5 = False
            if not is_hdf5:
                size = self.path.stat().st_size
                short = f" (only {size} bytes: cut short?)" if size < len(_HDF5_SIGNATURE) else ""
                raise SchemaError(
                    f"{self.path} is not a spray audit store: it is not an HDF5 file{short}"
                ) from None
            raise StoreError(
                f"cannot open audit store {self.path}: the file is corrupt, truncated or open in "
                f"an incompatible way in this process (HDF5: {exc}); if it is damaged, move it "
                "away and run again"
            ) from None

    def _waiting(self, attempt: Callable[[], Any], deadline: float, write: bool) -> Any:
        """``attempt()`` again, with backoff, while it raises BlockingIOError, until ``deadline``; the time
        from the first attempt on, if that one failed, counts into ``lock_wait_s``."""
        wait, start, blocked = 0.01, time.monotonic(), False
        try:
            while True:
                try:
                    return attempt()
                except BlockingIOError:
                    blocked = True
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"audit store {self.path} stayed busy for {self.timeout:g} s: another program "
                            "keeps it open; close it (HDF viewers, notebooks) and retry"
                            + (self._journal_hint() if not write else "")
                        ) from None
                    time.sleep(wait)
                    wait = min(2 * wait, 0.2)
        finally:
            if blocked:
                self.lock_wait_s += time.monotonic() - start
                self.lock_waits += 1

    @contextmanager
    def _gate(self, write: bool, deadline: float) -> Iterator[None]:
        """Writers first: a writer holds ``<store>.gate`` exclusively while it waits for the file, and
        readers pass the gate (shared, for an instant) before they open it. Without the gate, ``flock``
        lets a stream of overlapping readers keep a writer out for ever (measured: a 5 s analysis pass took
        88 s under 4 readers). No gate file yet, or none that can be opened: no writer waits, go ahead."""
        gate = self._sidecar(".gate")
        try:
            fd = os.open(gate, os.O_RDWR | os.O_CREAT, 0o644) if write else os.open(gate, os.O_RDONLY)
        except OSError:
            yield
            return
        try:
            self._waiting(lambda: try_flock(fd, exclusive=write), deadline, write)
            yield  # readers: the store's own lock is taken inside; the gate is released right after
        finally:
            os.close(fd)

    def _open_once(self, write: bool) -> tuple[h5py.File, JournaledFile | None]:
        """Open for writing through a new journal (exclusive lock), or for reading (HDF5's shared lock)
        after rolling back a journal a killed writer left; BlockingIOError while the file is in use."""
        if write:
            journaled = JournaledFile(self._file)
            try:
                return h5py.File(journaled, "r+"), journaled
            except BaseException:
                journaled.abort()
                raise
        journal = journal_path(self._file)
        if journal.exists():
            rollback_if_stale(self._file)  # BlockingIOError while its writer is alive
        if not journal.exists():
            f = h5py.File(self._file, "r", locking=_LOCKING)
            if not journal.exists():  # else its writer was killed between the check and the open
                return f, None
            f.close()
        raise BlockingIOError(errno.EWOULDBLOCK, "a write transaction is unfinished")

    def _journal_hint(self) -> str:
        journal = journal_path(self._file)
        if not journal.exists():
            return ""
        return (
            f" it holds an unfinished write (journal {journal}) that this process cannot roll back (no "
            "file locking, or no permission to write the store); any spray command that writes the store "
            "rolls it back"
        )

    def _write_error(self, exc: BaseException, journaled: JournaledFile | None) -> StoreError:
        cause = journaled.failure if journaled is not None and journaled.failure is not None else exc
        undone = "the write was undone: the store holds exactly what it held before it"
        if isinstance(cause, OSError) and cause.errno in _NO_SPACE:
            return StoreError(
                f"no space left to write audit store {self.path} ({os.strerror(cause.errno)}); {undone}. "
                "Free disk space (or raise the quota or file size limit) and run the same command again: "
                "it continues where it stopped"
            )
        return StoreError(
            f"error reading or writing audit store {self.path} ({cause}); {undone}; if the file is "
            "damaged, move it away and run again"
        )

    @contextmanager
    def _open(self, write: bool = False, *, older_ok: bool = False) -> Iterator[h5py.File]:
        """One transaction: the file is open for the block (read-only unless ``write``). ``older_ok``: a
        store of an older schema is opened too (to migrate it)."""
        if write:
            with self._transaction(older_ok=older_ok) as (f, _):
                yield f
            return
        if self._snapshot is not None:  # inside reading(): the same open file, the same state
            yield self._snapshot
            return
        f, _ = self._h5file(write=False)
        try:
            _check_schema(f, self.path, older_ok=older_ok)
            yield f
        except (OSError, RuntimeError) as exc:  # how h5py reports damaged files
            with suppress(Exception):
                f.close()
            raise StoreError(
                f"error reading audit store {self.path} (corrupt or truncated?): {exc}; if the file is "
                "damaged, move it away and run again"
            ) from None
        except KeyError as exc:  # h5py's report of damaged metadata (B-trees, attributes)
            with suppress(Exception):
                f.close()
            raise StoreError(
                f"audit store {self.path} is damaged: HDF5 cannot read its structure ({exc}); move it away "
                "and re-create it, or restore a copy"
            ) from None
        except BaseException:
            with suppress(Exception):
                f.close()
            raise
        f.close()

    @contextmanager
    def _transaction(self, *, older_ok: bool = False) -> Iterator[tuple[h5py.File, JournaledFile]]:
        """A write transaction: kept only if the block ends without an exception and every write reached
        the file; otherwise rolled back (spray.journal), whatever went wrong."""
        if not self.writable:
            raise StoreError(f"audit store {self.path} is open read-only; open it with mode='a' to write")
        if self._snapshot is not None:
            raise RuntimeError("a write inside AuditStore.reading() would wait for its own read lock")
        with _interrupts_deferred():
            f, journaled = self._h5file(write=True)
            assert journaled is not None
            try:
                _check_schema(f, self.path, older_ok=older_ok)
                yield f, journaled
                f.close()
                if journaled.failure is not None:
                    raise journaled.failure
            except BaseException as exc:
                with suppress(Exception):
                    f.close()
                self._abort(journaled, exc)
                if isinstance(exc, (OSError, RuntimeError)):  # how h5py reports I/O errors, damaged files
                    raise self._write_error(exc, journaled) from None
                raise
            journaled.commit()

    def _abort(self, journaled: JournaledFile, exc: BaseException) -> None:
        try:
            journaled.abort()
        except OSError as failed:
            raise StoreError(
                f"a write to audit store {self.path} failed ({journaled.failure or exc}) and could not be "
                f"undone ({failed}); the journal {journaled.journal} is kept and is rolled back when the "
                "store is next opened"
            ) from None

    @contextmanager
    def reading(self) -> Iterator[h5py.File]:
        """The HDF5 file, read-only, for many reads with one open: a snapshot. The store's own reads in the
        block (``read_node``, ``read``, ``info``, ...) use it too, so together they see one state of the
        store, never part of a write made meanwhile. Keep the block short: writers wait for it."""
        if self._snapshot is not None:
            yield self._snapshot
            return
        with self._open() as f:
            self._snapshot = f
            try:
                yield f
            finally:
                self._snapshot = None

    @contextmanager
    def interpreting(self, what: str) -> Iterator[None]:
        """Read ``what`` (stored content, e.g. a class's analysis nodes) into values inside this block.

        Readers index into node arrays and JSON attrs as their stage wrote them; a ``KeyError``,
        ``IndexError``, ``TypeError``, ``ValueError`` or ``AttributeError`` raised while doing so means the
        content is not what that stage writes, and is reported as a :class:`StoreError` naming the store and
        ``what``. Keep the block to reading and checking: computation belongs outside it.
        """
        try:
            yield
        except SprayError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise _damaged(self.path, what, f"does not hold what spray writes ({type(exc).__name__}: {exc})") from exc

    # ------------------------------------------------------------------ reading

    def attrs(self) -> dict[str, Any]:
        """Root attributes, JSON ones decoded (``model``, ``dataset``, ``label_names``)."""
        with self._open() as f:
            return _root_attrs(f, self.path)

    @property
    def n_samples(self) -> int:
        """Number of samples (0 before the first attribution run)."""
        with self._open() as f:
            return _sample_count(f, self.path)

    def read(self, path: str, rows: slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """The dataset at ``path`` (e.g. ``"samples/label"``), all of it or ``rows`` along its first axis.

        ``rows`` is a slice or integer positions in any order (repeats allowed); chunk-sized blocks are
        read, so selecting one class's samples costs no more than reading the chunks that hold them.
        """
        with self._open() as f:
            dset = f.get(path.strip("/"))
            if not isinstance(dset, h5py.Dataset):
                raise StoreError(f"audit store {self.path} has no dataset {path!r}")
            values = _read_rows(_checked_dataset(dset, f"dataset {dset.name}", self.path), rows)
            return _as_text(dset, values, self.path)

    def writer(self) -> str | None:
        """Which process holds the store's writer lock now ("pid N on HOST (since T)"), None if none; from
        the lock's record, for messages (a reader meeting an unfinished write says who is writing)."""
        return None if self._lock is not None else _WriterLock.holder(self._file)

    def attributions(self) -> list[str]:
        """Names of the attributions in the store."""
        with self._open() as f:
            return sorted(k for k in f["attributions"] if not k.startswith("."))

    def attribution_info(self, name: str) -> dict[str, Any]:
        """Attribution ``name`` as :meth:`info` describes it: attrs, shape, dtype, done count."""
        with self._open() as f:
            return _attribution_summary(self._attribution(f, name), _sample_count(f, self.path), self.path)

    def _attribution(self, f: h5py.File, name: str) -> h5py.Group:
        group = f["attributions"].get(name)
        if group is not None and not isinstance(group, h5py.Group):
            raise _damaged(self.path, f"attribution {name!r}", "is a dataset, not a group")
        if group is None:
            have = ", ".join(sorted(f["attributions"])) or "none"
            raise StoreError(f"audit store {self.path} has no attribution {name!r} (it has: {have})")
        return group

    # ------------------------------------------------------------------ nodes (/analyses, /clarc)

    def write_node(self, path: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """Write a node's outputs as group ``path``, replacing any node there, atomically.

        Args:
            path: under ``analyses/`` or ``clarc/``, e.g. ``"analyses/default/3/knn"``; not inside
                another node, and not a group that holds nodes.
            arrays: name -> array (numbers, booleans or strings); a ``/`` in a name makes a subgroup.
            attrs: JSON-serialisable values (parameters, input hashes); each is stored as JSON text.

        The node is built under a staging name and moved into place in one transaction, so a reader sees
        the old node or the new one, and a killed writer leaves no half-written node behind.
        """
        self.write_nodes({path: (arrays, attrs)})

    def write_nodes(self, nodes: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
        """:meth:`write_node` for several nodes ``{path: (arrays, attrs)}`` in one transaction."""
        prepared = {
            _node_path(path): _prepare_node(path, arrays, attrs) for path, (arrays, attrs) in nodes.items()
        }
        with self._open(write=True) as f:
            for path, (values, encoded) in prepared.items():
                self._check_node_place(f, path)

                def build(group: h5py.Group, values: dict = values, encoded: dict = encoded) -> None:
                    for key, value in values.items():
                        _write_array(group, key, value)
                    _set_attrs(group.attrs, encoded)

                _replace_group(f, path, build)

    def _check_node_place(self, f: h5py.File, path: str) -> None:
        parts = path.split("/")
        for i in range(2, len(parts)):
            above = f.get("/".join(parts[:i]))
            if isinstance(above, h5py.Group) and _NODE_MARK in above.attrs:
                raise BadInputError(f"cannot write node {path!r} inside node {'/'.join(parts[:i])!r}")
        there = f.get(path)
        if there is not None and not (isinstance(there, h5py.Group) and _NODE_MARK in there.attrs):
            raise BadInputError(
                f"{path!r} in audit store {self.path} is a group of nodes, not a node; delete_node it first"
            )

    def read_node(self, path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """A node's ``(arrays, attrs)`` as written by :meth:`write_node`."""
        path = _node_path(path)
        with self._open() as f:
            group = f.get(path)
            if not isinstance(group, h5py.Group) or _NODE_MARK not in group.attrs:
                raise StoreError(f"audit store {self.path} has no node {path!r}")
            arrays = {name: _read_array(dset, self.path) for name, dset in _node_arrays(group).items()}
            return arrays, _node_attrs(group, self.path)

    def has_node(self, path: str, expected_attrs: Mapping[str, Any] | None = None) -> bool:
        """Whether node ``path`` exists and its attrs include ``expected_attrs`` (compared as JSON)."""
        path = _node_path(path)
        with self._open() as f:
            group = f.get(path)
            if not isinstance(group, h5py.Group) or _NODE_MARK not in group.attrs:
                return False
            for key, value in (expected_attrs or {}).items():
                if key not in group.attrs:
                    return False
                what = f"attribute {key!r} of node {group.name}"
                stored = _json_attr(_attr(group.attrs, key, what, self.path), what, self.path)
                if stored != canonical(value):
                    return False
            return True

    def list_nodes(self, under: str = "analyses") -> list[str]:
        """Paths of the nodes under ``under`` (a node root or a group below one), sorted."""
        prefix = under.strip("/")
        if prefix.split("/")[0] not in NODE_ROOTS:
            raise BadInputError(f"nodes live under {', '.join(NODE_ROOTS)}, not {under!r}")
        with self._open() as f:
            return [p for p, _ in _find_nodes(f, prefix)]

    def delete_node(self, path: str) -> bool:
        """Remove node (or group of nodes) ``path``; returns whether there was one."""
        path = _node_path(path)
        with self._open(write=True) as f:
            if path not in f:
                return False
            del f[path]
            return True

    # ------------------------------------------------------------------ samples and attributions (runner)

    def prepare_samples(
        self,
        n: int,
        *,
        dataset: Mapping[str, Any],
        model: Mapping[str, Any],
        label_names: Sequence[str] | None = None,
        thumbnail_shape: Sequence[int] | None = None,
    ) -> None:
        """Create ``/samples`` for ``n`` samples, or check that the store's samples number ``n``.

        ``dataset`` is ``{"name", "size"}`` and ``model`` ``{"name", "hash"}`` (root attrs, set when the
        samples are created; the model when none is recorded yet). Thumbnails, shape ``(C, h, w)``, are
        only created together with the samples. ``label_names`` given are recorded.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise BadInputError(f"a store needs at least one sample, got n={n!r}")
        with self._open(write=True) as f:
            samples = f["samples"]
            root = _root_attrs(f, self.path)
            if "label" in samples:
                have = samples["label"].shape[0]
                if have != n:
                    name = root["dataset"] or {}
                    raise StoreError(
                        f"audit store {self.path} holds {have} samples of dataset "
                        f"{name.get('name')!r}, but the dataset given has {n}: one store audits one "
                        "dataset; use another store path"
                    )
            else:
                _create_rows(samples, "label", n, (), np.int64, fill=-1)
                _create_rows(samples, "index", n, (), np.int64, fill=-1)
                if thumbnail_shape is not None:
                    _create_rows(samples, "thumbnail", n, thumbnail_shape, np.uint8)
                _set_attrs(f.attrs, {"dataset": to_json(dict(dataset))})
            if root["model"] is None:
                _set_attrs(f.attrs, {"model": to_json(dict(model))})
            if label_names is not None:
                _set_attrs(f.attrs, {"label_names": to_json([str(x) for x in label_names])})

    def create_attribution(
        self,
        name: str,
        *,
        input_shape: Sequence[int],
        n_outputs: int,
        dtype: str = "float32",
        attrs: Mapping[str, Any],
    ) -> None:
        """(Re)create attribution ``name`` with nothing done, replacing one of that name.

        ``attrs``: ``method``, ``params`` (dict), ``model_hash``, ``model_name``, ``batch_size``,
        ``target`` (``"label"`` or ``"prediction"``); ``created`` and ``attribution_id`` are added.
        """
        _check_name(name, "attribution name")
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise BadInputError(f"relevance dtype must be float32 or float16, got {dtype!r}")
        values = dict(attrs)
        values["params"] = to_json(values.get("params", {}))
        values["created"] = _now()
        values["attribution_id"] = uuid.uuid4().hex
        with self._open(write=True) as f:
            if "label" not in f["samples"]:
                raise StoreError(f"audit store {self.path} has no samples yet; call prepare_samples first")
            n = f["samples/label"].shape[0]

            def build(group: h5py.Group) -> None:
                _create_rows(group, "relevance", n, input_shape, dtype)
                _create_rows(group, "logits", n, (n_outputs,), np.float32)
                _create_rows(group, "target", n, (), np.int64)
                _create_rows(group, "done", n, (), np.bool_, fill=False)
                _create_rows(group, "input_share", n, (), np.float32)
                _set_attrs(group.attrs, values)

            _replace_group(f, f"attributions/{name}", build)
            # The root model is the audited one; it follows a replacement that leaves no attribution of it.
            root = _root_attrs(f, self.path)["model"] or {}
            hashes = {
                _decode(g.attrs, self.path, f"attribution {g.name}").get("model_hash")
                for g in f["attributions"].values()
            }
            if root.get("hash") not in hashes:
                model = {"name": values.get("model_name"), "hash": values.get("model_hash")}
                _set_attrs(f.attrs, {"model": to_json(model)})

    def write_batch(
        self,
        name: str,
        start: int,
        *,
        relevance: np.ndarray,
        logits: np.ndarray,
        target: np.ndarray,
        labels: np.ndarray,
        index: np.ndarray,
        thumbnails: np.ndarray | None = None,
        input_share: np.ndarray | None = None,
    ) -> None:
        """Write rows ``start:start+len(labels)`` of attribution ``name`` and mark them done.

        ``input_share`` (Σ input relevance / explained logit per sample; NaN when not given) is written
        where the attribution has that dataset (not in attributions created before it existed).

        One transaction (all of it or nothing is kept), one slice assignment per dataset. Sample rows
        (label, index, thumbnail) are written by the first attribution that reaches them; later ones
        check that the labels agree.

        Raises:
            StoreError: the store holds different labels for these rows (a different dataset).
        """
        stop = start + len(labels)
        with self._transaction() as (f, journaled):
            group = self._attribution(f, name)
            samples = f["samples"]
            stored = samples["label"][start:stop]
            fresh = stored < 0
            clash = np.flatnonzero(~fresh & (stored != labels))
            if clash.size:
                i = clash[0]
                raise StoreError(
                    f"audit store {self.path}: sample {int(index[i])} has label {int(labels[i])} in the "
                    f"dataset but {int(stored[i])} in the store: the store was made from another "
                    "dataset; use another store path"
                )
            if fresh.any():
                edges = np.flatnonzero(np.diff(np.concatenate(([0], fresh.view(np.int8), [0]))))
                for lo, hi in zip(edges[::2], edges[1::2], strict=True):
                    rows = slice(start + lo, start + hi)
                    samples["label"][rows] = labels[lo:hi]
                    samples["index"][rows] = index[lo:hi]
                    if thumbnails is not None and "thumbnail" in samples:
                        samples["thumbnail"][rows] = thumbnails[lo:hi]
            share = np.full(len(labels), np.nan, np.float32) if input_share is None else input_share
            rows = {"relevance": relevance, "logits": logits, "target": target, "input_share": share}
            for key, value in rows.items():
                if key not in group:
                    continue
                # Rows that are not done are undefined, so their old bytes need no journal (the bulk
                # of a batch); the other rows of their chunks are rewritten with the bytes they hold.
                for lo, hi in _chunk_extents(group[key], start, stop):
                    journaled.exclude(lo, hi)
                group[key][start:stop] = value
            group["done"][start:stop] = True

    # ------------------------------------------------------------------ summary

    def info(self) -> dict[str, Any]:
        """What the store holds, JSON-serialisable (``spray info --json``)."""
        with self._open() as f:
            root = _root_attrs(f, self.path)
            samples = f["samples"]
            n = _sample_count(f, self.path)
            attributions = {
                name: _attribution_summary(self._attribution(f, name), n, self.path)
                for name in sorted(f["attributions"])
                if not name.startswith(".")
            }
            nodes: dict[str, dict[str, Any]] = {}
            for root_name in NODE_ROOTS:
                nodes[root_name] = {
                    path: {
                        "written": _node_written(group, self.path),
                        "attrs": _node_attrs(group, self.path),
                        "arrays": {
                            k: {"shape": list(d.shape), "dtype": _dtype_name(d)}
                            for k, d in _node_arrays(group).items()
                        },
                    }
                    for path, group in _find_nodes(f, root_name)
                }
            return {
                "path": str(self.path),
                "schema_version": root.get("schema_version"),
                "spray_version": root.get("spray_version"),
                "created": root.get("created"),
                "model": root.get("model"),
                "dataset": root.get("dataset"),
                "n_samples": n,
                "label_names": root.get("label_names"),
                "thumbnails": list(samples["thumbnail"].shape[1:]) if "thumbnail" in samples else None,
                "attributions": attributions,
                "analyses": nodes["analyses"],
                "clarc": nodes["clarc"],
            }


def _attribution_summary(group: h5py.Group, n: int, path: Path) -> dict[str, Any]:
    """:meth:`AuditStore.attribution_info`, after checking the attribution against docs/store.md."""
    where = group.name
    attrs = _decode(group.attrs, path, f"attribution {where}", _ATTRIBUTION_JSON)
    _expect(attrs.get("params"), dict, f"attribute 'params' of attribution {where}", path)
    _expect(attrs.get("method"), str, f"attribute 'method' of attribution {where}", path)
    if attrs.get("target") not in ("label", "prediction"):
        raise _damaged(path, f"attribute 'target' of attribution {where}", f"is {attrs.get('target')!r}")
    relevance = _rows_dataset(group, "relevance", n, "f", None, where, path)
    if relevance.dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise _damaged(path, f"dataset {where}/relevance", f"has dtype {relevance.dtype}, not float32/float16")
    logits = _rows_dataset(group, "logits", n, "f", 2, where, path)
    if logits.shape[1] < 1:
        raise _damaged(path, f"dataset {where}/logits", f"has shape {logits.shape}")
    _rows_dataset(group, "target", n, "iu", 1, where, path)
    mask = _rows_dataset(group, "done", n, "b", 1, where, path)[()]
    done = int(np.count_nonzero(mask))
    summary = {
        "method": attrs.get("method"),
        "params": attrs.get("params"),
        "target": attrs.get("target"),
        "model_hash": attrs.get("model_hash"),
        "model_name": attrs.get("model_name"),
        "batch_size": attrs.get("batch_size"),
        "shape": list(relevance.shape),
        "dtype": str(relevance.dtype),
        "n_outputs": int(logits.shape[1]),
        "done": done,
        "n": int(n),
        "complete": done == n,
        "created": attrs.get("created"),
        "attribution_id": attrs.get("attribution_id"),
    }
    if "input_share" in group:  # attributions made before spray stored it have none (docs/store.md)
        share = _rows_dataset(group, "input_share", n, "f", 1, where, path)[()][mask.astype(bool)]
        summary["input_share"] = _distribution(share)
    return summary


def _distribution(values: np.ndarray) -> dict[str, Any]:
    """Quantiles of a per-sample ratio over its finite values, and how many lie within 5% of 1."""
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size == 0:
        return {"n": 0}
    q = np.quantile(finite, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {
        "n": int(finite.size),
        **{key: round(float(v), 6) for key, v in zip(("min", "p05", "median", "p95", "max"), q, strict=True)},
        "within_5pct": int(np.count_nonzero(np.abs(finite - 1.0) <= 0.05)),
    }


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
    version = _schema_version(f, path)
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has store schema version {version}, newer than the {SCHEMA_VERSION} this spray "
            "supports: upgrade spray to read it"
        )
    migratable = all(v in MIGRATIONS for v in range(version, SCHEMA_VERSION))
    if version < SCHEMA_VERSION and not (older_ok and migratable):
        raise SchemaError(
            f"{path} has store schema version {version}, older than the {SCHEMA_VERSION} this spray supports"
            + (f": run `spray migrate {path}` to migrate it in place" if migratable
               else ", and there is no migration for it: re-create the store with this spray")
        )
    if version < SCHEMA_VERSION:
        return  # the migration brings its groups up to date
    missing = [g for g in _GROUPS if not isinstance(f.get(g), h5py.Group)]
    if missing:
        raise SchemaError(f"{path} claims schema version {version} but lacks groups {missing}")


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


def format_info(info: Mapping[str, Any]) -> str:
    """A human-readable rendering of :meth:`AuditStore.info` (``spray info``)."""
    lines = [
        f"audit store {info['path']}  (schema {info['schema_version']}, spray {info['spray_version']}, "
        f"created {info['created']})"
    ]
    model, dataset = info.get("model"), info.get("dataset")
    lines.append(f"model     {model['name']}  sha256 {str(model['hash'])[:16]}" if model else "model     -")
    names = info.get("label_names") or []
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} classes)" if len(names) > 8 else "")
    if dataset:
        lines.append(f"dataset   {dataset['name']}  {info['n_samples']} samples")
    else:
        lines.append("dataset   - (no attribution run yet)")
    if names:
        lines.append(f"labels    {shown}")
    if info.get("thumbnails"):
        lines.append(f"thumbnails {'x'.join(map(str, info['thumbnails']))} uint8")
    attributions = info.get("attributions") or {}
    lines.append(f"attributions ({len(attributions)})")
    for name, a in attributions.items():
        state = "complete" if a["complete"] else f"{a['done']}/{a['n']} done"
        params = json.dumps(a["params"], sort_keys=True)
        lines.append(
            f"  {name}: {a['method']} {params}, target={a['target']}, {state}, relevance "
            f"{tuple(a['shape'])} {a['dtype']}, model {str(a['model_hash'])[:16]}, batch {a['batch_size']}"
        )
        share = a.get("input_share")
        if share is not None:
            lines.append(
                f"    input share (sum R / f): median {share['median']:.4g}, 5-95% {share['p05']:.4g} .. "
                f"{share['p95']:.4g}, range {share['min']:.4g} .. {share['max']:.4g}, within 5% of 1: "
                f"{share['within_5pct']}/{share['n']}"
                if share["n"] else "    input share (sum R / f): no finite value yet"
            )
    for root in NODE_ROOTS:
        nodes = info.get(root) or {}
        lines.append(f"{root} ({len(nodes)} nodes)")
        for i, (path, node) in enumerate(nodes.items()):
            if i == 20:
                lines.append(f"  ... {len(nodes) - 20} more (spray info --json lists all)")
                break
            params = json.dumps(node["attrs"], sort_keys=True)
            if len(params) > 100:
                params = params[:97] + "..."
            lines.append(f"  {path}  {params}")
    return "\n".join(lines)
