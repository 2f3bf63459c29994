"""The rollback journal: a store write cut off at any point, or failing at any point, leaves the old bytes."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from spray.errors import StoreError
from spray.store.journal import JournaledFile, journal_path, rollback, rollback_if_stale
from spray.store import AuditStore


def _store(path: Path) -> AuditStore:
    """A writable store holding two nodes (so a transaction overwrites old metadata and frees space)."""
    store = AuditStore(path, "a")
    store.write_nodes({
        "analyses/a/0/knn": ({"x": np.arange(3000.0), "y/z": np.array(["a", "bc"])}, {"v": 1}),
        "analyses/a/1/knn": ({"x": np.ones((40, 40), np.float32)}, {"v": 1}),
    })
    return store


def _transaction(store: AuditStore) -> None:
    """Replace one node with a bigger one, delete nothing, add a node: metadata changes everywhere."""
    store.write_nodes({
        "analyses/a/0/knn": ({"x": np.arange(5000.0), "y/z": np.array(["d"])}, {"v": 2}),
        "analyses/a/2/knn": ({"x": np.zeros(10, np.int64)}, {"v": 2}),
    })


def _apply(files: tuple[bytes, bytes], tmp: Path) -> bytes:
    """Roll back a (store, journal) snapshot written to disk; the store's bytes afterwards."""
    store, journal = tmp / "snapshot.h5", journal_path(tmp / "snapshot.h5")
    store.write_bytes(files[0])
    journal.write_bytes(files[1])
    fd = os.open(store, os.O_RDWR)
    try:
        assert rollback(fd, journal)
    finally:
        os.close(fd)
    assert not journal.exists()
    return store.read_bytes()


def _kill_snapshots(store: AuditStore, monkeypatch) -> list[tuple[bytes, bytes]]:
    """Run :func:`_transaction` and keep (store, journal) bytes as a SIGKILL would leave them before and
    in the middle of every store write, in the middle of every journal record, and just before commit."""
    snapshots: list[tuple[bytes, bytes]] = []
    store_write, journal_append, commit = (
        JournaledFile._store_write, JournaledFile._journal_append, JournaledFile.commit
    )

    def snapshot(jf: JournaledFile, write: tuple[int, bytes] | None = None, record: bytes = b"") -> None:
        data = bytearray(jf.store.read_bytes())  # the kernel keeps every completed write of a killed process
        if write is not None:
            offset, part = write
            data.extend(bytes(max(0, offset + len(part) - len(data))))
            data[offset : offset + len(part)] = part
        snapshots.append((bytes(data), jf.journal.read_bytes() + record))

    def hooked_store_write(self, data, offset):
        snapshot(self)
        snapshot(self, (offset, bytes(data[: len(data) // 2])))  # a torn write
        store_write(self, data, offset)

    def hooked_journal_append(self, record):
        snapshot(self, record=bytes(record[: len(record) // 2]))  # a torn journal record
        journal_append(self, record)

    def hooked_commit(self):
        snapshot(self)  # every write done, the journal not yet deleted
        commit(self)

    with monkeypatch.context() as patch:
        patch.setattr(JournaledFile, "_store_write", hooked_store_write)
        patch.setattr(JournaledFile, "_journal_append", hooked_journal_append)
        patch.setattr(JournaledFile, "commit", hooked_commit)
        _transaction(store)
    return snapshots


def test_a_kill_before_inside_or_after_any_write_rolls_back_to_the_old_bytes(tmp_path, monkeypatch):
    store = _store(tmp_path / "audit.h5")
    before = store.path.read_bytes()
    snapshots = _kill_snapshots(store, monkeypatch)
    assert len(snapshots) >= 30, "a node transaction makes dozens of writes"
    for i, files in enumerate(snapshots):
        assert _apply(files, tmp_path) == before, f"snapshot {i} of {len(snapshots)}"
    assert store.read_node("analyses/a/0/knn")[1] == {"v": 2}  # the uninterrupted transaction committed


@pytest.mark.parametrize("where", ["_store_write", "_journal_append"])
def test_disk_full_at_any_write_is_a_store_error_and_leaves_the_old_bytes(tmp_path, monkeypatch, where):
    store = _store(tmp_path / "audit.h5")
    before = store.path.read_bytes()
    original = getattr(JournaledFile, where)
    calls = {"n": 0, "fail": 0}

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] >= calls["fail"] > 0:  # the disk stays full once it is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, *args)

    monkeypatch.setattr(JournaledFile, where, failing)
    counted = _store(tmp_path / "count.h5")
    calls["n"] = 0
    _transaction(counted)  # how many writes one transaction makes
    total = calls["n"]
    assert total >= 10
    for fail in range(1, total + 1):
        calls.update(n=0, fail=fail)
        with pytest.raises(StoreError) as err:
            _transaction(store)
        assert str(err.value).startswith(f"no space left to write audit store {store.path} (No space left")
        assert "the store holds exactly what it held before" in str(err.value)
        assert "run the same command again" in str(err.value)
        assert store.path.read_bytes() == before, f"failure at write {fail} of {total}"
        assert not journal_path(store.path).exists()
    calls["fail"] = 0  # space is back
    _transaction(store)
    assert store.read_node("analyses/a/0/knn")[0]["x"].shape == (5000,)


def test_reader_rolls_back_a_journal_left_by_a_killed_writer(tmp_path, monkeypatch):
    store = _store(tmp_path / "audit.h5")
    old = store.read_node("analyses/a/0/knn")
    snapshots = _kill_snapshots(store, monkeypatch)
    store.close()
    store.path.write_bytes(snapshots[len(snapshots) // 2][0])  # the writer died half way
    journal_path(store.path).write_bytes(snapshots[len(snapshots) // 2][1])
    arrays, attrs = AuditStore(store.path).read_node("analyses/a/0/knn")
    assert attrs == old[1] and np.array_equal(arrays["x"], old[0]["x"])
    assert not journal_path(store.path).exists()


def test_a_live_writers_journal_is_never_rolled_back_by_a_reader(tmp_path):
    store = _store(tmp_path / "audit.h5")
    journaled = JournaledFile(store.path)  # a transaction in progress in "another process"
    try:
        with pytest.raises(BlockingIOError):
            rollback_if_stale(store.path)
        with pytest.raises(StoreError, match="stayed busy for 0.2 s"):
            AuditStore(store.path, timeout=0.2).info()
        assert journal_path(store.path).exists()
    finally:
        journaled.abort()
    assert AuditStore(store.path).read_node("analyses/a/1/knn")[1] == {"v": 1}


def test_ctrl_c_during_a_write_is_delivered_after_the_whole_transaction(tmp_path, monkeypatch):
    store = _store(tmp_path / "audit.h5")
    original = JournaledFile._store_write
    sent = []

    def interrupted(self, data, offset):
        if not sent:
            sent.append(offset)
            os.kill(os.getpid(), signal.SIGINT)
        original(self, data, offset)

    monkeypatch.setattr(JournaledFile, "_store_write", interrupted)
    # Python's own Ctrl-C handler, also where the tests were started with SIGINT ignored (a shell's `cmd &`).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _transaction(store)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert sent and store.read_node("analyses/a/2/knn")[1] == {"v": 2}
    assert not journal_path(store.path).exists()
