"""The audit store: one chunked HDF5 file per audit, the single source of truth of every stage.

The schema, its versioning policy and the concurrency model are a contract, documented in docs/store.md.
In short: one writer at a time (``flock``s keyed on the file's identity, held from open to close); the HDF5 file
itself is opened only for the duration of each transaction (:mod:`spray.store.transactions`), and every write
transaction is all-or-nothing (:mod:`spray.store.journal`). Readers ask :class:`AuditStore` for values (numpy
arrays, decoded attributes, blocks of rows), never for the HDF5 file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import h5py
import numpy as np

from spray._blocks import block_rows
from spray.errors import BadInputError, SprayError, StoreError
from spray.store.encoding import (
    _as_text, _chunk_extents, _create_rows, _find_nodes, _node_arrays, _now, _prepare_node,
    _read_array, _read_rows, _replace_group, _set_attrs, _write_array, canonical, to_json,
)
from spray.store.info import _attribution_summary, store_info
from spray.store.schema import (
    _NODE_MARK, NODE_ROOTS, _attr, _attribution_group, _check_name, _checked_dataset, _damaged, _decode,
    _json_attr, _node_attrs, _node_path, _root_attrs, _sample_count,
)
from spray.store.transactions import StoreFile


class AuditStore(StoreFile):
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

    def __repr__(self) -> str:
        return f"AuditStore({str(self.path)!r}, mode={self.mode!r})"

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
            dset = self._dataset(f, path)
            return _as_text(dset, _read_rows(dset, rows), self.path)

    def _dataset(self, f: h5py.File, path: str) -> h5py.Dataset:
        dset = f.get(path.strip("/"))
        if not isinstance(dset, h5py.Dataset):
            raise StoreError(f"audit store {self.path} has no dataset {path!r}")
        return _checked_dataset(dset, f"dataset {dset.name}", self.path)

    def read_blocks(
        self, path: str, rows: np.ndarray | None = None, *, itemsize: int | None = None, whole_chunks: bool = False
    ) -> Iterator[tuple[slice | np.ndarray, np.ndarray]]:
        """The dataset at ``path`` in blocks of rows of about 64 MiB each: ``(rows, values)`` pairs.

        ``rows`` (sorted integer positions) selects rows, read in that order, and each block's ``rows`` is its
        part of them; without it every row is read in order, and each block's ``rows`` is a slice. A block
        holds 64 MiB counted at ``itemsize`` bytes a value (the dataset's own by default; a reader that converts
        the values, e.g. to float64, gives the size it converts to). ``whole_chunks``: blocks of whole HDF5
        chunks, so that no chunk is read twice. Each block is a :meth:`read`: inside :meth:`reading` all
        come from one snapshot.
        """
        with self._open() as f:
            dset = self._dataset(f, path)
            shape, chunks, size = dset.shape, dset.chunks, itemsize or dset.dtype.itemsize
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * size
        step = block_rows(row_bytes, chunks[0] if whole_chunks and chunks else None)
        if rows is None:
            for start in range(0, shape[0], step):
                block = slice(start, min(shape[0], start + step))
                yield block, self.read(path, block)
        else:
            for start in range(0, len(rows), step):
                yield rows[start : start + step], self.read(path, rows[start : start + step])

    @property
    def has_thumbnails(self) -> bool:
        """Whether the store keeps a thumbnail of every sample (``samples/thumbnail``, docs/store.md)."""
        with self._open() as f:
            return "thumbnail" in f["samples"]

    def attributions(self) -> list[str]:
        """Names of the attributions in the store."""
        with self._open() as f:
            return sorted(k for k in f["attributions"] if not k.startswith("."))

    def attribution_info(self, name: str) -> dict[str, Any]:
        """Attribution ``name`` as :meth:`info` describes it: attrs, shape, dtype, done count."""
        with self._open() as f:
            return _attribution_summary(_attribution_group(f, name, self.path), _sample_count(f, self.path), self.path)

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

    def record_dataset(self, dataset: Mapping[str, Any]) -> None:
        """Replace the dataset record (root attribute ``dataset``, set by :meth:`prepare_samples`): a resumed
        audit's image files replaced before any of their samples was written
        (``spray.data.images.check_same_files``)."""
        with self._open(write=True) as f:
            _set_attrs(f.attrs, {"dataset": to_json(dict(dataset))})

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
        ``target`` (``"label"`` or ``"prediction"``), optionally ``trace`` (dict); ``created`` and
        ``attribution_id`` are added.
        """
        _check_name(name, "attribution name")
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise BadInputError(f"relevance dtype must be float32 or float16, got {dtype!r}")
        values = dict(attrs)
        values["params"] = to_json(values.get("params", {}))
        if "trace" in values:
            values["trace"] = to_json(values["trace"])
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
            group = _attribution_group(f, name, self.path)
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
            return store_info(f, self.path)
