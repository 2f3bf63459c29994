"""Fuzzing the store readers: corrupted and foreign files give spray errors, never a crash or a hang.

Hypothesis draws batches of corruptions of a small analysed store (bit flips in its HDF5 metadata,
truncation, random bytes, datasets replaced by ones of other types and shapes, groups deleted, attributes
set to other values); the readers (`spray info`, `spray rank`, the AuditStore API, `spray report`) run over
each batch in a child process, this file run as a script, so that a segmentation fault in libhdf5 is seen as
the child dying, and a hang as a per-file faulthandler timeout, both naming the file and its corruption.
Seeded (derandomize) and bounded, so CI runs the same examples in about half a minute.

Found this way and fixed: reading an attribute whose variable-length string type is damaged (one byte)
killed the interpreter inside h5py/libhdf5; the store now checks every attribute's and dataset's type
before reading its value (``spray.store.schema._type_problem``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

FILE_TIMEOUT = 30  # seconds a child may spend on one file before faulthandler ends it (a hang)
BATCH = 25
PIPELINE = """[preprocess]
grid = 4
[knn]
n_neighbors = 5
[spectral]
n_eigenpairs = 4
[kmeans]
k_max = 3
n_init = 1
[hdbscan]
[fda]
n_permutations = 5
"""

# ---------------------------------------------------------------------------------------------- the base


@dataclass(frozen=True)
class Base:
    """The store every corruption starts from, its bytes, and where its HDF5 metadata lies."""

    path: Path
    data: bytes
    metadata: np.ndarray  # file offsets outside raw dataset storage: headers, B-trees, heaps, attributes
    objects: list[str]  # every group and dataset, by path ("" is the root)


def build_base(directory: Path) -> Base:
    """2 classes of 20 heatmaps with thumbnails, analysed, plus a ClArC result node."""
    from spray.pipeline import analyze, pipeline_from_text
    from spray.store import AuditStore
    from spray.testing import make_heatmaps

    heatmaps = make_heatmaps(n_per_class=20, n_classes=2, size=4)
    path = directory / "base.h5"
    n = heatmaps.labels.size
    with AuditStore(path, mode="a") as store:
        store.prepare_samples(n, dataset={"name": "d", "size": n}, model={"name": "m", "hash": "0" * 64},
                              label_names=["a", "b"], thumbnail_shape=(1, 4, 4))
        store.create_attribution("lrp", input_shape=(1, 4, 4), n_outputs=2, attrs={
            "method": "epsilon_plus_flat", "params": {"epsilon": 1e-6}, "model_hash": "0" * 64,
            "model_name": "m", "batch_size": n, "target": "label"})
        store.write_batch("lrp", 0, relevance=heatmaps.relevance, logits=np.eye(2, dtype=np.float32)[heatmaps.labels],
                          target=heatmaps.labels, labels=heatmaps.labels, index=np.arange(n),
                          thumbnails=np.zeros((n, 1, 4, 4), np.uint8))
    analyze(str(path), pipeline_from_text(PIPELINE), progress=False)
    with AuditStore(path, mode="a") as store:
        store.write_node("clarc/run/result", {"patch": np.ones((1, 4, 4), np.float32),
                                              "mask": np.ones((4, 4), np.float32)},
                         {"method": "pclarc", "cluster": "1:kmeans_2:0", "layer": "features", "cav_auc": 0.9,
                          "metrics": [{"model": "original", "clean_accuracy": 0.5}]})
    data = path.read_bytes()
    raw = np.zeros(len(data), bool)
    objects = [""]
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            objects.append(name)
            if isinstance(obj, h5py.Dataset):
                offset = obj.id.get_offset()
                if offset is not None:
                    raw[offset:offset + obj.id.get_storage_size()] = True
                elif obj.chunks:
                    for i in range(obj.id.get_num_chunks()):
                        chunk = obj.id.get_chunk_info(i)
                        raw[chunk.byte_offset:chunk.byte_offset + chunk.size] = True

        f.visititems(visit)
    return Base(path, data, np.flatnonzero(~raw), objects)


# ---------------------------------------------------------------------------------------------- corruptions

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_ATTR_VALUES = st.one_of(
    _JSON.map(json.dumps),  # valid JSON of any shape
    st.text(max_size=20),  # not JSON, mostly
    st.integers(-2**40, 2**40), st.floats(allow_nan=True), st.booleans(),
    st.binary(max_size=12),  # bytes, often not UTF-8
    st.lists(st.integers(-5, 5), min_size=1, max_size=4).map(np.array),
)
_DATASET_KINDS = ("int8", "uint16", "float64", "float16", "bool", "bytes", "text", "opaque", "compound",
                  "vlen_int", "empty", "scalar", "3d")


def _dataset(kind: str, n: int) -> Any:
    """A replacement dataset: ``n`` rows of a type and shape spray does (or never does) write."""
    return {
        "int8": lambda: np.arange(n, dtype=np.int8), "uint16": lambda: np.arange(n, dtype=np.uint16),
        "float64": lambda: np.linspace(-1, 1, n), "float16": lambda: np.full((n, 2), np.nan, np.float16),
        "bool": lambda: np.ones(n, bool), "bytes": lambda: np.array([b"ab"] * n),
        "text": lambda: np.array(["é"] * n, dtype=h5py.string_dtype()),
        "opaque": lambda: np.void(b"\x00\x01\x02\x03"),
        "compound": lambda: np.zeros(n, dtype=[("a", "i4"), ("b", "f4")]),
        "vlen_int": lambda: _vlen(n), "empty": lambda: np.zeros((0,)), "scalar": lambda: np.float32(3),
        "3d": lambda: np.zeros((n, 2, 3), np.float32),
    }[kind]()


def _vlen(n: int) -> Any:
    array = np.empty(n, dtype=h5py.vlen_dtype(np.int32))
    for i in range(n):
        array[i] = np.arange(i % 3, dtype=np.int32)
    return array


corruptions = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 7)), min_size=1,
                                        max_size=8)),
    st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
    st.tuples(st.just("bytes"),
              st.binary(max_size=2048) | st.binary(max_size=64).map(lambda b: b"\x89HDF\r\n\x1a\n" + b)),
    st.tuples(st.just("delete"), st.integers(1, 2**31)),
    st.tuples(st.just("dataset"), st.integers(1, 2**31), st.sampled_from(_DATASET_KINDS), st.integers(0, 50)),
    st.tuples(st.just("attr"), st.integers(0, 2**31), st.integers(0, 2**31), _ATTR_VALUES),
    st.tuples(st.just("del_attr"), st.integers(0, 2**31), st.integers(0, 2**31)),
)


def corrupt(base: Base, corruption: tuple, path: Path) -> None:
    """Write the base store with ``corruption`` applied to ``path``."""
    kind = corruption[0]
    if kind == "flip":
        data = bytearray(base.data)
        for position, bit in corruption[1]:
            data[int(base.metadata[position % base.metadata.size])] ^= 1 << bit
        path.write_bytes(data)
    elif kind == "truncate":
        path.write_bytes(base.data[: int(corruption[1] * len(base.data))])
    elif kind == "bytes":
        path.write_bytes(corruption[1])
    else:
        path.write_bytes(base.data)
        with h5py.File(path, "r+") as f:
            # the root can lose attributes, not be deleted or replaced
            objects = base.objects[1:] if kind in ("delete", "dataset") else base.objects
            name = objects[corruption[1] % len(objects)]
            if kind == "delete":
                del f[name]
            elif kind == "dataset":
                del f[name]
                f[name] = _dataset(corruption[2], corruption[3])
            else:
                attrs = f[name or "/"].attrs
                keys = sorted(attrs) + ["extra"] * (kind == "attr")
                if not keys:
                    return
                key = keys[corruption[2] % len(keys)]
                if kind == "attr":
                    attrs[key] = corruption[3]
                else:
                    del attrs[key]


# ---------------------------------------------------------------------------------------------- the child


def read_everything(path: str, report: bool) -> dict[str, Any]:
    """Run every reader on one file; what was not a spray error (exit codes other than 0/2, exceptions)."""
    import contextlib
    import io
    import traceback

    from spray.cli import main
    from spray.errors import SprayError
    from spray.ranking import rank_classes
    from spray.store import AuditStore

    problems: dict[str, Any] = {}
    commands = [["info", path], ["info", path, "--json"], ["rank", path, "--json"]]
    if report:
        commands.append(["report", path, "-o", path + ".html"])
    for argv in commands:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        if code not in (0, 2):
            problems[" ".join(argv[:1] + argv[2:])] = err.getvalue().strip().splitlines()[-4:]
    try:
        with AuditStore(path) as store:
            store.info()
            store.attrs()
            for name in store.attributions():
                info = store.attribution_info(name)
                store.read(f"attributions/{name}/relevance", rows=np.arange(min(3, info["n"]))[::-1])
            for root in ("analyses", "clarc"):
                for node in store.list_nodes(root):
                    store.read_node(node)
                    store.has_node(node, {"key": "x"})
            rank_classes(store)
    except SprayError:
        pass
    except Exception:  # noqa: BLE001 - the point: report anything that is not a spray error
        problems["api"] = traceback.format_exc().splitlines()[-4:]
    return problems


def child(paths: list[str], report: bool) -> None:
    """Read each file, printing its name first (stderr) and every file's problems as JSON at the end."""
    import faulthandler

    faulthandler.enable()
    results = {}
    for path in paths:
        print(f"FILE {path}", file=sys.stderr, flush=True)
        faulthandler.dump_traceback_later(FILE_TIMEOUT, exit=True)
        results[path] = read_everything(path, report)
        faulthandler.cancel_dump_traceback_later()
    print(json.dumps(results))


def run_batch(base: Base, batch: list[tuple], directory: Path, report: bool = False) -> None:
    """Corrupt, read in a child process, and fail naming the corruption of any file that crashed, hung or
    raised something other than a spray error."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, corruption in enumerate(batch):
        path = directory / f"{i}.h5"
        corrupt(base, corruption, path)
        files[str(path)] = corruption
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    argv = [sys.executable, __file__, *(["--report"] if report else []), *files]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=FILE_TIMEOUT * len(files) + 120)
    if result.returncode != 0:
        last = [line.split(" ", 1)[1] for line in result.stderr.splitlines() if line.startswith("FILE ")][-1:]
        what = "hung" if "Timeout" in result.stderr else f"died with exit code {result.returncode}"
        pytest.fail(f"reading {last} ({files.get(last[0]) if last else '?'}) {what}:\n{result.stderr[-3000:]}")
    problems = {p: (files[p], found) for p, found in json.loads(result.stdout.splitlines()[-1]).items() if found}
    assert problems == {}


# ---------------------------------------------------------------------------------------------- the tests

FUZZ = settings(
    derandomize=True, database=None, deadline=None, phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    return build_base(tmp_path_factory.mktemp("fuzz"))


@settings(FUZZ, max_examples=4)
@given(batch=st.lists(corruptions, min_size=BATCH, max_size=BATCH))
def test_corrupted_stores_give_spray_errors_never_crashes_or_hangs(base, tmp_path, batch):
    run_batch(base, batch, tmp_path / "batch")


@settings(FUZZ, max_examples=2)
@given(batch=st.lists(st.one_of(
    st.tuples(st.just("attr"), st.integers(0, 2**31), st.integers(0, 2**31), _ATTR_VALUES),
    st.tuples(st.just("dataset"), st.integers(1, 2**31), st.sampled_from(_DATASET_KINDS), st.integers(0, 50)),
    st.tuples(st.just("delete"), st.integers(1, 2**31)),
), min_size=6, max_size=6))
def test_reports_of_corrupted_analyses_give_spray_errors(base, tmp_path, batch):
    run_batch(base, batch, tmp_path / "batch", report=True)


def test_a_damaged_variable_length_string_type_is_refused_not_read(base, tmp_path):
    """The crash fuzzing found: one byte turns an attribute's type from a UTF-8 string into another
    variable-length type, which libhdf5/h5py crash on when the value is read. spray writes fixed-length
    text now; stores written before hold variable-length string attributes, as this copy of the base does."""
    (tmp_path / "type.h5").write_bytes(base.data)
    with h5py.File(tmp_path / "type.h5", "r+") as f:
        attrs = f["analyses/spray/0/fda"].attrs
        attrs.create("params", data=attrs["params"].decode(), dtype=h5py.string_dtype())
    data = bytearray((tmp_path / "type.h5").read_bytes())
    string_type = bytes.fromhex("19 01 01 00 10 00 00 00 10 00 00 00 01")  # vlen, string, UTF-8, of 1-byte chars
    at = data.index(string_type)
    data[at + 1] = 0x05  # type 5: not a string, not a sequence
    (tmp_path / "type.h5").write_bytes(data)
    result = subprocess.run([sys.executable, __file__, str(tmp_path / "type.h5")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {str(tmp_path / "type.h5"): {}}


if __name__ == "__main__":
    child([a for a in sys.argv[1:] if a != "--report"], report="--report" in sys.argv)
