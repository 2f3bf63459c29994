"""Per-class analysis as tasks on a 2-worker LocalCluster: the stored nodes equal the in-process run's."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from spray.errors import BadInputError
from spray.pipeline import analyze, pipeline_from_text
from spray.store import AuditStore
from spray.testing import make_heatmaps, pipeline_text, write_store

PIPELINE = pipeline_text(agglomerative={})


def nodes(path) -> dict[str, tuple[dict[str, np.ndarray], dict]]:
    """Every analysis node's arrays and attributes (the write time left out)."""
    with AuditStore(path) as store:
        return {p: store.read_node(p) for p in store.list_nodes("analyses")}


def test_classes_on_two_worker_processes_give_the_in_process_nodes(dask_cluster, tmp_path):
    address, _ = dask_cluster
    heatmaps = make_heatmaps(n_per_class=40, n_classes=4, poisoned=2, seed=5)
    local = write_store(tmp_path / "local.h5", heatmaps)
    distributed = Path(shutil.copy(local, tmp_path / "dist.h5"))  # same attribution id, so same node keys
    analyze(str(local), pipeline_from_text(PIPELINE), progress=False)
    result = analyze(str(distributed), pipeline_from_text(PIPELINE), scheduler=address, progress=False)
    assert sorted(result.computed) == [0, 1, 2, 3]
    want, got = nodes(local), nodes(distributed)
    assert sorted(got) == sorted(want) and len(want) == 4 * 8 + 2  # 8 nodes per class (null too), preprocess, summary
    for path, (arrays, attrs) in want.items():
        assert got[path][1] == attrs, path
        assert sorted(got[path][0]) == sorted(arrays), path
        for name, array in arrays.items():
            stored = got[path][0][name]
            assert stored.dtype == array.dtype and stored.tobytes() == array.tobytes(), f"{path}/{name}"


def test_a_malformed_scheduler_is_refused_before_any_work(tmp_path):
    path = write_store(tmp_path / "audit.h5", make_heatmaps(n_per_class=20, n_classes=2))
    with pytest.raises(BadInputError, match="local:N needs N >= 1 worker processes, got 'local:0'"):
        analyze(str(path), pipeline_from_text(PIPELINE), scheduler="local:0", progress=False)
    with AuditStore(path) as store:
        assert store.list_nodes("analyses") == []
