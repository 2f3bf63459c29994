"""A full disk or a truncated store gives a clear StoreError (CLI: exit 2, the file named, what to do) and
never damages what was complete: after the failure, finished batches and nodes read back unchanged, and
the run resumes once there is space again.

Two ways to run out of space: a real file system that fills up (a 4 MiB tmpfs; mounting one needs root or
CAP_SYS_ADMIN, so those tests skip elsewhere), and a file size limit (RLIMIT_FSIZE, EFBIG), which any
POSIX process can set for itself and which fails the same writes.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kill_stages as ks
from spray.cli import main
from spray.errors import StoreError
from spray.store.journal import journal_path
from spray.store import AuditStore

HERE = Path(__file__).resolve().parent


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a file system that really fills up. Skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True, text=True) if shutil.which("mount") else None
    if mounted is None or mounted.returncode:
        reason = mounted.stderr.strip() if mounted else "no mount command"
        pytest.skip(f"cannot mount a tmpfs ({reason}): needs root or CAP_SYS_ADMIN; the RLIMIT_FSIZE tests "
                    "cover the same code paths")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk: Path) -> Path:
    """Write a file until ``disk`` has no byte left; delete it to give the space back."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(bytes(size))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def _assert_no_space_error(message: str, path: Path) -> None:
    assert message.startswith(f"no space left to write audit store {path} ("), message
    assert "the write was undone: the store holds exactly what it held before it" in message
    assert "run the same command again: it continues where it stopped" in message


def test_disk_full_during_attribution_keeps_the_finished_batches_and_resumes(small_disk, tmp_path):
    reference, store = tmp_path / "reference.h5", small_disk / "audit.h5"
    ks.attribution(reference)
    filled = []

    def fill_after_the_third_batch(start, stop):
        if stop == 24:
            filled.append(_fill(small_disk))

    with pytest.raises(StoreError) as err:
        ks.attribution(store, on_batch=fill_after_the_third_batch)
    _assert_no_space_error(str(err.value), store)
    want = ks.store_contents(reference)
    with AuditStore(store) as audit:
        info = audit.attribution_info("epsilon_plus_flat")
        relevance = audit.read("attributions/epsilon_plus_flat/relevance", rows=slice(0, 24))
    assert info["done"] == 24 and not journal_path(store).exists()
    np.testing.assert_array_equal(relevance, want[("/attributions/epsilon_plus_flat/relevance", "")][:24])
    filled[0].unlink()  # space is back
    summary = ks.attribution(store)
    assert (summary["skipped"], summary["computed"], summary["complete"]) == (24, 66, True)
    ks.assert_same_contents(ks.store_contents(store), want)


def test_disk_full_during_analysis_keeps_the_finished_nodes_and_resumes(small_disk, tmp_path):
    base = ks.synthetic_store(tmp_path / "base.h5")
    reference, store = tmp_path / "reference.h5", small_disk / "audit.h5"
    shutil.copy(base, reference)
    shutil.copy(base, store)
    ks.analysis(reference)
    filled = []

    def fill_after_the_first_class(label, node):
        if not filled:  # classes finish in any order: the first one to be stored
            filled.append((_fill(small_disk), label))

    with pytest.raises(StoreError) as err:
        ks.analysis(store, on_node=fill_after_the_first_class)
    _assert_no_space_error(str(err.value), store)
    with AuditStore(store) as audit:
        nodes = audit.list_nodes()
        kept = {path: audit.read_node(path) for path in nodes}
    filler, first = filled[0]
    assert {f"analyses/spray/{first}/{node}" for node in ("knn", "spectral", "kmeans", "hdbscan", "fda")} <= set(nodes)
    with AuditStore(reference) as audit:
        for path, (arrays, attrs) in kept.items():
            ref_arrays, ref_attrs = audit.read_node(path)
            assert attrs == ref_attrs, path
            for name in ref_arrays:
                np.testing.assert_array_equal(arrays[name], ref_arrays[name], err_msg=f"{path}/{name}")
    filler.unlink()  # space is back
    result = ks.analysis(store)
    assert str(first) not in result["computed"] and result["computed"]  # the stored class is not recomputed
    ks.assert_same_contents(ks.store_contents(store), ks.store_contents(reference))


def _spray_with_file_size_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    """``spray ARGS`` in a child that may not write files beyond ``limit`` bytes (EFBIG past it)."""
    code = f"""
        import resource, signal, sys
        sys.path.insert(0, {str(HERE)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from spray.cli import main
        sys.exit(main({list(args)!r}))
    """
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(HERE), os.environ.get("PYTHONPATH", "")])})


def test_file_size_limit_during_spray_analyze_exits_2_and_the_rerun_completes(tmp_path):
    base = ks.synthetic_store(tmp_path / "base.h5")
    reference, store = tmp_path / "reference.h5", tmp_path / "audit.h5"
    shutil.copy(base, reference)
    shutil.copy(base, store)
    ks.analysis(reference)
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(ks.ANALYSIS_PIPELINE)
    half_way = base.stat().st_size + (reference.stat().st_size - base.stat().st_size) // 2
    child = _spray_with_file_size_limit(half_way, "analyze", str(store), "--pipeline", str(pipeline))
    assert child.returncode == 2, child.stderr
    last = child.stderr.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: "), child.stderr
    _assert_no_space_error(last.removeprefix("error: "), store)
    assert "(File too large)" in last
    with AuditStore(store) as audit:
        assert 0 < len(audit.list_nodes()) < len(AuditStore(reference).list_nodes())
    assert main(["analyze", str(store), "--pipeline", str(pipeline)]) == 0
    ks.assert_same_contents(ks.store_contents(store), ks.store_contents(reference))


def test_file_size_limit_at_the_start_of_spray_attribute_exits_2_and_the_rerun_completes(tmp_path):
    reference, store = tmp_path / "reference.h5", tmp_path / "audit.h5"
    ks.attribution(reference)
    args = ["attribute", "--model", "kill_stages:tiny_model", "--data", "kill_stages:tiny_images",
            "--store", str(store), "--batch-size", "8"]
    child = _spray_with_file_size_limit(reference.stat().st_size // 2, *args)
    assert child.returncode == 2, child.stderr
    last = child.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), child.stderr
    _assert_no_space_error(last.removeprefix("error: "), store)
    with AuditStore(store) as audit:  # the store was created; allocating the attribution did not fit
        assert audit.attributions() == []
    assert main(args) == 0
    want = ks.store_contents(reference)
    got = ks.store_contents(store)
    # The CLI names model and data by their specs; everything else is the same attribution.
    names = {("/", "model"), ("/", "dataset"), ("/attributions/epsilon_plus_flat", "model_name")}
    assert ks.assert_same_contents({k: v for k, v in got.items() if k not in names},
                                   {k: v for k, v in want.items() if k not in names}) > 10


TRUNCATE_AT = [0, 1, 8, 100, 511, 2048, 0.25, 0.5, 0.75, -1]


@pytest.fixture(scope="module")
def analysed_store(tmp_path_factory):
    path = ks.synthetic_store(tmp_path_factory.mktemp("truncated") / "audit.h5")
    ks.analysis(path)
    return path


@pytest.mark.parametrize("at", TRUNCATE_AT)
def test_truncated_store_is_a_clear_error_for_readers_and_writers(analysed_store, tmp_path, capsys, at):
    path = tmp_path / "audit.h5"
    shutil.copy(analysed_store, path)
    size = path.stat().st_size
    offset = size - 1 if at == -1 else int(at * size) if isinstance(at, float) else at
    os.truncate(path, offset)
    for command in (["info", str(path)], ["rank", str(path)], ["report", str(path), "-o", str(tmp_path / "r.html")],
                    ["analyze", str(path)]):
        assert main(command) == 2, command
        message = capsys.readouterr().err
        assert message.startswith("error: ") and str(path) in message, (command, message)
        if offset < 8:  # not even HDF5's signature is left
            assert f"is not a spray audit store: it is not an HDF5 file (only {offset} bytes: cut short?)" in message
        else:
            assert "corrupt, truncated" in message and "move it away and run again" in message, message
    assert not journal_path(path).exists()
