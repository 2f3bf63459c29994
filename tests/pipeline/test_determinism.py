"""Analysis results are bit-identical whatever threads the caller holds and whichever classes ran together
(docs/pipelines.md): every node computes under one pinned BLAS/OpenMP thread count."""

from __future__ import annotations

import shutil
import threading

import h5py
import numpy as np
import numba
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from spray.analysis._common import held_threads, limited_threads, pinned_threads
from spray.pipeline import analyze, pipeline_from_text
from spray.pipeline.executor import ANALYSIS_THREADS
from spray.store import AuditStore
from spray.testing import make_heatmaps, pipeline_text, write_store


def _contents(path) -> dict[str, bytes]:
    """Every dataset's bytes and every attribute under /analyses except the node's write time."""
    out: dict[str, bytes] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()].tobytes()
            out.update({f"{name}@{k}": str(v).encode() for k, v in obj.attrs.items() if k != "spray_node"})
        f["analyses"].visititems(visit)
    return out


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.mark.slow
def test_nodes_are_bit_identical_whatever_threads_the_caller_holds_and_whichever_classes_ran_together(tmp_path):
    # 1000 samples a class: large enough that t-SNE's PCA start and UMAP's spectral start differ in their
    # last digits between one and two BLAS threads when nothing pins the count (measured).
    write_store(tmp_path / "base.h5", make_heatmaps(n_per_class=1000, n_classes=2, size=16, seed=3))
    spec = pipeline_from_text(pipeline_text("synthetic", tsne={}, umap={}))
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    shutil.copy(tmp_path / "base.h5", one)
    shutil.copy(tmp_path / "base.h5", two)
    with threadpool_limits(limits=1):
        analyze(str(one), spec, progress=False)
    with threadpool_limits(limits=2):
        analyze(str(two), spec, classes=[1], progress=False)
        assert list(analyze(str(two), spec, progress=False).computed) == [0]
    a, b = _contents(one), _contents(two)
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []
    with AuditStore(one) as store:
        threads = store.read_node("analyses/spray/summary")[1]["threads"]
    assert threads == {"blas_openmp": ANALYSIS_THREADS, "numba": numba.config.NUMBA_NUM_THREADS}


def test_a_pinned_thread_count_outlives_the_class_thread_that_set_it():
    # What each thread's BLAS then reports is OpenBLAS's business (it may keep a count per thread); that the
    # digits do not change is the analysis test above. Here: the hold is counted, not reset by the first exit.
    first_in, second_in, first_out, seen = threading.Event(), threading.Event(), threading.Event(), []

    def first() -> None:
        with pinned_threads(1):
            first_in.set()
            assert second_in.wait(timeout=30)

    def second() -> None:  # still computing when the first class thread leaves
        assert first_in.wait(timeout=30)
        with pinned_threads(2):  # joins the held count, whatever it asks for
            second_in.set()
            assert first_out.wait(timeout=30)
            seen.append(held_threads())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    threads[0].join(timeout=30)
    first_out.set()
    threads[1].join(timeout=30)
    assert seen == [1]
    assert held_threads() is None


def test_while_a_count_is_pinned_limited_threads_changes_nothing():
    before = _blas_threads()
    with pinned_threads(1), limited_threads(2):
        assert (held_threads(), _blas_threads()) == (1, {1})
    assert (held_threads(), _blas_threads()) == (None, before)
    with limited_threads(1):
        assert (held_threads(), _blas_threads()) == (None, {1})
    assert _blas_threads() == before


@pytest.mark.slow
def test_nn_descent_is_identical_for_the_same_numba_thread_count():
    # The one stated exception (docs/pipelines.md): NN-descent's neighbours depend on numba's thread count,
    # not on anything else — two runs at the same count agree exactly.
    from spray.analysis import KNNGraph

    X = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    first, second = (KNNGraph(n_neighbors=10, method="approximate", random_state=0).fit(X) for _ in range(2))
    np.testing.assert_array_equal(first.indices_, second.indices_)
    np.testing.assert_array_equal(first.distances_, second.distances_)
