"""The audit store: schema checks, the writer lock, node round-trips, concurrent readers, info()."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spray._blocks
from spray.errors import BadInputError, SchemaError, StoreError, StoreLockedError
from spray.store import SCHEMA_VERSION, AuditStore, format_info


def _filled_store(path: Path, n: int = 10, classes: int = 3) -> None:
    """A store with samples and one complete attribution written through the public writer API."""
    with AuditStore(path, "a") as store:
        store.prepare_samples(
            n, dataset={"name": "toy", "size": n}, model={"name": "net", "hash": "h1"},
            label_names=["a", "b", "c"], thumbnail_shape=(1, 2, 2),
        )
        store.create_attribution(
            "gxi", input_shape=(1, 4, 4), n_outputs=classes,
            attrs={"method": "gxi", "params": {"eps": 0.5}, "model_hash": "h1", "model_name": "net",
                   "batch_size": 4, "target": "label"},
        )
        for start in range(0, n, 4):
            rows = np.arange(start, min(n, start + 4))
            store.write_batch(
                "gxi", start,
                relevance=np.broadcast_to(rows[:, None, None, None], (len(rows), 1, 4, 4)).astype(np.float32),
                logits=np.zeros((len(rows), classes), np.float32), target=rows % classes,
                labels=rows % classes, index=rows, thumbnails=np.zeros((len(rows), 1, 2, 2), np.uint8),
            )


def _spawn(code: str) -> subprocess.Popen:
    """A Python child running ``code``; it prints 'ready' once it is set up."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


def test_new_store_has_versioned_root_attrs_and_empty_groups(tmp_path):
    path = tmp_path / "sub" / "audit.h5"
    with AuditStore(path, "a"):
        pass
    with AuditStore(path) as store:
        attrs = store.attrs()
        assert store.n_samples == 0 and store.attributions() == []
    assert attrs["schema_version"] == SCHEMA_VERSION
    assert datetime.fromisoformat(attrs["created"]).utcoffset().total_seconds() == 0
    assert attrs["model"] is None and attrs["dataset"] is None and attrs["label_names"] == []
    with h5py.File(path, "r") as f:
        assert {"samples", "attributions", "analyses", "clarc"} <= set(f)


def test_read_mode_needs_an_existing_store(tmp_path):
    with pytest.raises(StoreError, match="no audit store at .*missing.h5"):
        AuditStore(tmp_path / "missing.h5")


def test_file_that_is_not_hdf5_is_a_schema_error(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("hello")
    for mode in ("r", "a"):
        with pytest.raises(SchemaError, match=f"{path}.*not an HDF5 file"):
            AuditStore(path, mode)


def test_foreign_hdf5_file_is_not_a_spray_store(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(SchemaError, match="not a spray audit store"):
        AuditStore(path)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, SCHEMA_VERSION - 1])
def test_other_schema_versions_are_refused_naming_both(tmp_path, version):
    path = tmp_path / "audit.h5"
    with AuditStore(path, "a"):
        pass
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = version
    with pytest.raises(SchemaError, match=f"{path}.*version {version}.*{SCHEMA_VERSION}"):
        AuditStore(path)


def test_truncated_store_is_a_store_error_not_a_crash(tmp_path):
    path = tmp_path / "audit.h5"
    _filled_store(path)
    os.truncate(path, 1024)
    with pytest.raises(StoreError) as err:
        AuditStore(path).info()
    assert type(err.value) is StoreError and str(path) in str(err.value)


def test_unwritable_location_is_a_store_error_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=str(blocker / "audit.h5")):
        AuditStore(blocker / "audit.h5", "a")


def test_second_writer_in_this_process_is_locked_out_until_close(tmp_path):
    path = tmp_path / "audit.h5"
    first = AuditStore(path, "a")
    with pytest.raises(StoreLockedError, match=f"{path}.*pid {os.getpid()}"):
        AuditStore(path, "a")
    first.close()
    with AuditStore(path, "a"):
        pass


def _other_name(tmp_path, path, kind):
    """Another name of the store file ``path``: a symlink to it, a hard link, or the path through a
    symlinked directory."""
    other = tmp_path / "other"
    other.mkdir()
    if kind == "symlink":
        (other / "link.h5").symlink_to(path)
    elif kind == "hard link":
        os.link(path, other / "link.h5")
    else:
        (other / "dir").symlink_to(path.parent)
        return other / "dir" / path.name
    return other / "link.h5"


@pytest.mark.parametrize("kind", ["symlink", "hard link", "symlinked directory"])
def test_writer_lock_is_keyed_on_the_file_not_on_the_name_given(tmp_path, kind):
    path = tmp_path / "audit.h5"
    AuditStore(path, "a").close()
    other = _other_name(tmp_path, path, kind)
    with AuditStore(path, "a"):
        with pytest.raises(StoreLockedError, match=f"^audit store {other} is locked by pid {os.getpid()} "):
            AuditStore(other, "a")
    with AuditStore(other, "a"):
        with pytest.raises(StoreLockedError, match=f"^audit store {path} is locked by pid {os.getpid()} "):
            AuditStore(path, "a")


def test_sidecars_of_a_symlinked_store_lie_beside_the_file(tmp_path):
    path = tmp_path / "real" / "audit.h5"
    link = tmp_path / "link.h5"
    link.symlink_to(path)  # dangling: the store is created through it, at its target
    with AuditStore(link, "a") as store:
        store.write_node("analyses/x", {"a": np.arange(2)}, {})
    assert link.is_symlink() and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["audit.h5", "audit.h5.gate", "audit.h5.lock"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.h5", "real"]


@pytest.mark.parametrize("suffix", ["", ".lock", ".gate", ".journal", ".new"])
@pytest.mark.parametrize("mode", ["r", "a"])
def test_a_fifo_as_store_or_sidecar_is_refused_before_anything_opens_it(tmp_path, suffix, mode):
    path = tmp_path / "audit.h5"
    if suffix:
        AuditStore(path, "a").close()
    Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.mkfifo(f"{path}{suffix}")
    role = {"": "an audit store", ".lock": f"the writer lock of audit store {path}",
            ".gate": f"the writer gate of audit store {path}", ".journal": f"the write journal of audit store {path}",
            ".new": f"the new copy of audit store {path}"}[suffix]
    with pytest.raises(BadInputError) as info:
        AuditStore(path, mode)
    assert str(info.value) == (f"{path}{suffix} is a FIFO (named pipe), not {role}; spray reads and writes regular "
                               "files only: move it away or name another path")


def test_writer_lock_of_another_process_names_its_pid_and_dies_with_it(tmp_path):
    path = tmp_path / "audit.h5"
    holder = _spawn(f"""
        import time
        from spray.store import AuditStore
        store = AuditStore({str(path)!r}, "a")
        print("ready", flush=True)
        time.sleep(60)
    """)
    try:
        with pytest.raises(StoreLockedError, match=f"{path}.*pid {holder.pid}"):
            AuditStore(path, "a")
        with AuditStore(path) as reader:  # readers never take the lock
            assert reader.info()["n_samples"] == 0
            assert reader.writer().startswith(f"pid {holder.pid} on ")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with AuditStore(path) as reader:  # the killed writer's record is left; its process is gone
        assert json.loads(path.with_name(path.name + ".lock").read_text())["pid"] == holder.pid
        assert reader.writer() is None
    with AuditStore(path, "a") as store:
        assert store.writer() is None  # a writer asks no one
        store.write_node("analyses/x", {"a": np.arange(2)}, {})


def test_node_round_trip_keeps_arrays_dtypes_and_attrs(tmp_path):
    arrays = {
        "embedding/spectral": np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32),
        "index": np.arange(5, dtype=np.uint32),
        "mask": np.array([True, False, True, True, False]),
        "names": np.array(["cat", "döner", ""]),
        "scalar": np.float64(2.5),
        "empty": np.zeros((0, 4)),
    }
    attrs = {"k": 10, "eps": 1e-3, "flag": True, "none": None, "nested": {"a": [1, 2]}, "h": "ab" * 32}
    path = tmp_path / "audit.h5"
    with AuditStore(path, "a") as store:
        store.write_node("analyses/default/3/knn", arrays, attrs)
    with AuditStore(path) as store:
        got, got_attrs = store.read_node("analyses/default/3/knn")
    assert got_attrs == attrs
    assert set(got) == set(arrays)
    for name, value in arrays.items():
        assert got[name].dtype == np.asarray(value).dtype, name
        np.testing.assert_array_equal(got[name], value)


def test_write_node_replaces_the_old_node_and_reuses_its_space(tmp_path):
    path = tmp_path / "audit.h5"
    with AuditStore(path, "a") as store:
        store.write_node("clarc/run1/cav", {"v": np.ones(100_000), "old": np.zeros(1)}, {"k": 1})
        size = path.stat().st_size
        for k in range(2, 8):
            store.write_node("clarc/run1/cav", {"v": np.full(100_000, k)}, {"k": k})
        arrays, attrs = store.read_node("clarc/run1/cav")
        assert set(arrays) == {"v"} and arrays["v"][0] == 7 and attrs == {"k": 7}
        assert store.list_nodes("clarc") == ["clarc/run1/cav"]
    assert path.stat().st_size < 2.5 * size  # not one copy per write
    with h5py.File(path, "r") as f:
        assert ".staging" not in f


def test_has_node_matches_an_attrs_subset_compared_as_json(tmp_path):
    with AuditStore(tmp_path / "audit.h5", "a") as store:
        assert not store.has_node("analyses/a/knn")
        store.write_node("analyses/a/knn", {}, {"k": np.int64(10), "shape": (2, 3), "input": "abc"})
        assert store.has_node("analyses/a/knn")
        assert store.has_node("analyses/a/knn", {"k": 10, "shape": [2, 3]})
        assert not store.has_node("analyses/a/knn", {"k": 11})
        assert not store.has_node("analyses/a/knn", {"missing": 1})
        assert not store.has_node("analyses/a")  # a group of nodes is not a node
        assert store.delete_node("analyses/a/knn") and not store.has_node("analyses/a/knn")


@pytest.mark.parametrize("path", ["samples/x", "attributions/a/relevance", "analyses", "analyses/../x",
                                  "analyses/.staging/x", "analyses//x"])
def test_nodes_live_only_under_analyses_or_clarc(tmp_path, path):
    with AuditStore(tmp_path / "audit.h5", "a") as store, pytest.raises(BadInputError):
        store.write_node(path, {"a": np.zeros(1)}, {})


def test_nodes_never_nest(tmp_path):
    with AuditStore(tmp_path / "audit.h5", "a") as store:
        store.write_node("analyses/a/knn", {"a": np.zeros(1)}, {})
        with pytest.raises(BadInputError, match="inside node"):
            store.write_node("analyses/a/knn/deeper", {}, {})
        with pytest.raises(BadInputError, match="group of nodes"):
            store.write_node("analyses/a", {}, {})


def test_object_arrays_and_unserialisable_attrs_are_refused(tmp_path):
    with AuditStore(tmp_path / "audit.h5", "a") as store:
        with pytest.raises(BadInputError, match="never pickled"):
            store.write_node("analyses/a", {"o": np.array([{}, 1], dtype=object)}, {})
        with pytest.raises(BadInputError, match="JSON"):
            store.write_node("analyses/a", {}, {"f": object()})
        assert store.list_nodes() == []


def test_read_only_store_refuses_writes(tmp_path):
    path = tmp_path / "audit.h5"
    with AuditStore(path, "a"):
        pass
    with AuditStore(path) as store, pytest.raises(StoreError, match="read-only"):
        store.write_node("analyses/a", {}, {})


def test_write_transaction_that_raises_half_way_is_rolled_back_to_the_old_bytes(tmp_path):
    path = tmp_path / "audit.h5"
    with AuditStore(path, "a") as store:
        store.write_node("analyses/a/0/knn", {"x": np.arange(50)}, {"v": 1})
        before = path.read_bytes()
        with pytest.raises(ZeroDivisionError), store._open(write=True) as f:
            f["analyses/a/0/knn/x"][:10] = -1
            f.create_group("analyses/a/1").create_dataset("half", data=np.zeros(1000))
            raise ZeroDivisionError  # any exception, after some writes
        assert path.read_bytes() == before
        assert store.read_node("analyses/a/0/knn")[0]["x"].tolist() == list(range(50))
    assert not Path(f"{path}.journal").exists()


def test_a_staging_group_left_by_another_program_goes_with_the_next_node_write(tmp_path):
    path = tmp_path / "audit.h5"
    with AuditStore(path, "a"):
        pass
    with h5py.File(path, "r+") as f:
        f.create_group(".staging/abc").create_dataset("half", data=np.zeros(3))
    with AuditStore(path, "a") as store:
        assert store.list_nodes() == [] and store.info()["analyses"] == {}
        store.write_node("analyses/a", {}, {})
    with h5py.File(path, "r") as f:
        assert ".staging" not in f


def test_info_is_json_and_lists_samples_attributions_and_nodes(tmp_path):
    path = tmp_path / "audit.h5"
    _filled_store(path)
    with AuditStore(path, "a") as store:
        store.write_node("analyses/default/0/knn", {"indices": np.zeros((3, 2), np.int64)}, {"k": 2})
        store.write_node("clarc/run/cav", {"v": np.ones(4)}, {"layer": "features.3"})
        info = store.info()
    assert json.loads(json.dumps(info)) == info
    assert info["n_samples"] == 10 and info["label_names"] == ["a", "b", "c"]
    assert info["model"] == {"name": "net", "hash": "h1"} and info["dataset"] == {"name": "toy", "size": 10}
    a = info["attributions"]["gxi"]
    assert a["params"] == {"eps": 0.5} and a["shape"] == [10, 1, 4, 4] and a["dtype"] == "float32"
    assert (a["done"], a["n"], a["complete"], a["target"], a["model_hash"]) == (10, 10, True, "label", "h1")
    assert info["analyses"]["analyses/default/0/knn"]["attrs"] == {"k": 2}
    assert info["clarc"]["clarc/run/cav"]["arrays"] == {"v": {"shape": [4], "dtype": "float64"}}
    text = format_info(info)
    for needle in ("gxi", "complete", "10 samples", "analyses/default/0/knn", "clarc/run/cav", "features.3"):
        assert needle in text


def test_info_summarises_the_input_share_of_done_rows_only(tmp_path):
    path = tmp_path / "audit.h5"
    _filled_store(path)
    with AuditStore(path, "a") as store:
        assert store.info()["attributions"]["gxi"]["input_share"] == {"n": 0}
        assert "    input share (sum R / f): no finite value yet" in format_info(store.info()).splitlines()
        share = np.array([0.5, 0.97, 1.0, np.nan], np.float32)
        store.write_batch("gxi", 4, relevance=np.zeros((4, 1, 4, 4), np.float32),
                          logits=np.zeros((4, 3), np.float32), target=np.arange(4, 8) % 3,
                          labels=np.arange(4, 8) % 3, index=np.arange(4, 8), input_share=share)
        info = store.info()
    assert info["attributions"]["gxi"]["input_share"] == {
        "n": 3, "min": 0.5, "p05": 0.547, "median": 0.97, "p95": 0.997, "max": 1.0, "within_5pct": 2,
    }
    assert ("    input share (sum R / f): median 0.97, 5-95% 0.547 .. 0.997, range 0.5 .. 1, within 5% of 1: 2/3"
            in format_info(info).splitlines())


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("files", 5, "field 'files' of root attribute 'dataset' is 5, expected list"),
    ("transform", "resize", "field 'transform' of root attribute 'dataset' is 'resize', expected dict"),
])
def test_info_refuses_a_damaged_image_record_naming_its_field(tmp_path, field, value, expected):
    path = tmp_path / "audit.h5"
    _filled_store(path)
    record = {"name": "toy", "size": 10, "root": "/x", "transform": {}, "files": [], "skipped": [], "metadata": {},
              field: value}
    with h5py.File(path, "a") as f:
        f.attrs["dataset"] = json.dumps(record)
    with AuditStore(path, "r") as store, pytest.raises(StoreError) as info:
        store.info()
    assert str(info.value).startswith(f"audit store {path}: {expected}; the store is damaged")


def test_labels_of_another_dataset_are_refused(tmp_path):
    path = tmp_path / "audit.h5"
    _filled_store(path)
    clash = "sample 1 has label 0 in the dataset but 1 in the store"
    with AuditStore(path, "a") as store, pytest.raises(StoreError, match=clash):
        store.write_batch(
            "gxi", 0, relevance=np.zeros((4, 1, 4, 4), np.float32), logits=np.zeros((4, 3), np.float32),
            target=np.zeros(4, np.int64), labels=np.zeros(4, np.int64), index=np.arange(4),
        )


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.integers(-150, 149), max_size=60))
def test_read_rows_in_any_order_equals_numpy_indexing(tmp_path_factory, rows):
    path = tmp_path_factory.getbasetemp() / "rows.h5"
    if not path.exists():
        with AuditStore(path, "a") as store:
            store.write_node("analyses/rows", {"x": np.arange(150 * 3).reshape(150, 3)}, {})
        with h5py.File(path, "r+") as f:  # re-chunk so that rows span several chunks
            data = f["analyses/rows/x"][()]
            del f["analyses/rows/x"]
            f.create_dataset("analyses/rows/x", data=data, chunks=(16, 3))
    with AuditStore(path) as store:
        full = store.read("analyses/rows/x")
        picked = store.read("analyses/rows/x", rows=np.array(rows, dtype=np.int64))
        np.testing.assert_array_equal(picked, full[rows])
        np.testing.assert_array_equal(store.read("analyses/rows/x", rows=slice(3, 40, 7)), full[3:40:7])


def test_read_blocks_bounds_the_bytes_of_each_block_and_returns_the_rows_read(tmp_path, monkeypatch):
    path = tmp_path / "audit.h5"
    data = np.arange(150 * 3).reshape(150, 3)
    with AuditStore(path, "a") as store:
        store.write_node("analyses/rows", {"x": data}, {})
    with h5py.File(path, "r+") as f:  # chunks of 16 rows
        del f["analyses/rows/x"]
        f.create_dataset("analyses/rows/x", data=data, chunks=(16, 3))
    monkeypatch.setattr(spray._blocks, "BLOCK_BYTES", 40 * 3 * 8)  # 40 rows of int64
    with AuditStore(path) as store:
        blocks = list(store.read_blocks("analyses/rows/x"))
        assert [(rows.start, rows.stop) for rows, _ in blocks] == [(0, 40), (40, 80), (80, 120), (120, 150)]
        np.testing.assert_array_equal(np.concatenate([values for _, values in blocks]), data)
        sizes = [(rows.start, rows.stop) for rows, _ in store.read_blocks("analyses/rows/x", whole_chunks=True)]
        assert sizes == [(0, 32), (32, 64), (64, 96), (96, 128), (128, 150)]
        assert [rows.stop for rows, _ in store.read_blocks("analyses/rows/x", itemsize=4)] == [80, 150]
        picked = np.arange(1, 150, 2)
        blocks = list(store.read_blocks("analyses/rows/x", picked))
        assert [rows.tolist() for rows, _ in blocks] == [picked[:40].tolist(), picked[40:].tolist()]
        np.testing.assert_array_equal(np.concatenate([values for _, values in blocks]), data[picked])
        with pytest.raises(StoreError, match="has no dataset 'analyses/rows/y'"):
            next(store.read_blocks("analyses/rows/y"))
        assert not store.has_thumbnails


def test_concurrent_reader_never_sees_a_done_row_without_its_data(tmp_path):
    path = tmp_path / "audit.h5"
    n = 4000
    writer = _spawn(f"""
        import time
        import numpy as np
        from spray.store import AuditStore
        store = AuditStore({str(path)!r}, "a")
        store.prepare_samples({n}, dataset={{"name": "d", "size": {n}}}, model={{"name": "m", "hash": "h"}})
        store.create_attribution("a", input_shape=(64,), n_outputs=2, attrs={{"method": "m", "params": {{}},
            "model_hash": "h", "model_name": "m", "batch_size": 20, "target": "label"}})
        print("ready", flush=True)
        for s in range(0, {n}, 20):
            rows = np.arange(s, s + 20)
            store.write_batch("a", s, relevance=np.repeat(rows[:, None], 64, 1).astype(np.float32) + 1,
                logits=np.zeros((20, 2), np.float32), target=rows % 2, labels=rows % 2, index=rows)
            time.sleep(0.002)  # leave readers a chance between transactions
    """)
    reads, partial = 0, 0
    try:
        while True:
            exited = writer.poll() is not None  # then this read must see every row done
            with AuditStore(path, timeout=10) as reader, reader.reading():
                done = reader.read("attributions/a/done")
                relevance = reader.read("attributions/a/relevance")
            reads += 1
            rows = np.flatnonzero(done)
            assert (relevance[rows] == rows[:, None] + 1).all()
            partial += 0 < rows.size < n
            if done.all():
                break
            assert not exited, writer.stderr.read()
            time.sleep(0.005)
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0, writer.stderr.read()
    assert partial >= 1, f"{reads} reads, none while the writer was half way"


def _in_thread(fn):
    """Start ``fn`` in a thread; the returned list gets its result (or exception) when it ends."""
    import threading

    box: list = []

    def run():
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_reads_inside_reading_see_one_snapshot_while_a_writer_waits(tmp_path):
    path = tmp_path / "audit.h5"
    with AuditStore(path, "a") as writer:
        writer.write_node("analyses/a/0/knn", {"x": np.zeros(3)}, {"v": 1})
        reader = AuditStore(path)
        with reader.reading():
            first = reader.read_node("analyses/a/0/knn")[1]
            thread, box = _in_thread(lambda: writer.write_node("analyses/a/0/knn", {"x": np.ones(3)}, {"v": 2}))
            time.sleep(0.3)
            assert not box, "the writer waits for the snapshot"
            assert reader.read_node("analyses/a/0/knn")[1] == first == {"v": 1}
            assert reader.info()["analyses"]["analyses/a/0/knn"]["attrs"] == {"v": 1}
        thread.join(10)
        assert box == [None] and reader.read_node("analyses/a/0/knn")[1] == {"v": 2}
        with writer.reading(), pytest.raises(RuntimeError, match="inside AuditStore.reading"):
            writer.write_node("analyses/a/1/knn", {}, {})  # would wait for its own read lock


def test_lock_wait_is_counted_and_printed_when_a_writer_closes(tmp_path, monkeypatch, capsys):
    path = tmp_path / "audit.h5"
    monkeypatch.setenv("SPRAY_LOCK_STATS", "1")
    writer = AuditStore(path, "a")
    writer.write_node("analyses/a/0/knn", {"x": np.zeros(3)}, {"v": 1})
    assert (writer.lock_wait_s, writer.lock_waits) == (0.0, 0)  # nobody in the way
    reader = AuditStore(path)
    with reader.reading():
        thread, box = _in_thread(lambda: writer.write_node("analyses/a/0/knn", {"x": np.ones(3)}, {"v": 2}))
        time.sleep(0.5)
    thread.join(10)
    assert box == [None]
    assert writer.lock_waits == 1 and 0.3 <= writer.lock_wait_s < 10  # the snapshot held it 0.5 s
    assert reader.lock_waits == 0
    wait = writer.lock_wait_s
    writer.close()
    assert capsys.readouterr().err == (
        f"spray: the writer of audit store {path} waited {wait:.3f} s for locks (1 waits)\n"
    )


def test_a_waiting_writer_goes_before_readers_that_come_after_it(tmp_path):
    path = tmp_path / "audit.h5"
    with AuditStore(path, "a") as writer:
        writer.write_node("analyses/a/0/knn", {}, {"v": 1})
        first_reader = AuditStore(path)
        with first_reader.reading():  # a read in progress: the writer must wait for it
            wrote, write_box = _in_thread(lambda: writer.write_node("analyses/a/0/knn", {}, {"v": 2}))
            gate = os.open(f"{path}.gate", os.O_RDONLY)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the writer holds the gate
                try:
                    fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(gate, fcntl.LOCK_UN)
                    time.sleep(0.01)
                except BlockingIOError:
                    break
            os.close(gate)
            read, read_box = _in_thread(lambda: AuditStore(path).read_node("analyses/a/0/knn")[1])
            time.sleep(0.3)
            assert not read_box and not write_box, "the later reader queues behind the waiting writer"
        wrote.join(10)
        read.join(10)
    assert write_box == [None] and read_box == [{"v": 2}]
