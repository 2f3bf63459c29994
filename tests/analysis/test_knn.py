"""KNNGraph: exact neighbours, approximate recall, symmetric adjacency, duplicates, parameter errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from spray.analysis import knn as knn_module
from spray.analysis.knn import KNNGraph, knn_adjacency
from spray.errors import BadInputError


def _brute_force(X, k):
    D = cdist(X.astype(np.float64), X.astype(np.float64))
    np.fill_diagonal(D, np.inf)
    return np.sort(D, axis=1)[:, :k]


def test_exact_neighbours_match_brute_force():
    X = np.random.default_rng(0).normal(size=(700, 12)).astype(np.float32)
    g = KNNGraph(n_neighbors=7, method="exact").fit(X)
    assert g.indices_.shape == g.distances_.shape == (700, 7)
    assert g.indices_.dtype == np.int64 and g.method_ == "exact" and g.recall_ == 1.0
    np.testing.assert_allclose(g.distances_, _brute_force(X, 7), rtol=1e-6, atol=1e-9)
    assert not (g.indices_ == np.arange(700)[:, None]).any()
    # indices and distances agree
    np.testing.assert_allclose(np.linalg.norm(X[:, None] - X[g.indices_], axis=2), g.distances_, rtol=1e-5)


def test_exact_search_handles_duplicate_rows_without_self_loops():
    X = np.repeat(np.random.default_rng(1).normal(size=(20, 5)), 4, axis=0)  # every row four times
    g = KNNGraph(n_neighbors=5, method="exact").fit(X)
    assert not (g.indices_ == np.arange(80)[:, None]).any()
    np.testing.assert_array_equal(g.distances_[:, :3], 0.0)
    assert g.adjacency_.diagonal().sum() == 0


def _brute_force_neighbours(X, k):
    """Indices and distances of the k nearest other rows in float64, ties broken by row number."""
    D = cdist(X.astype(np.float64), X.astype(np.float64))
    np.fill_diagonal(D, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(X)), D.shape), D), axis=1)[:, :k]
    return order, np.take_along_axis(D, order, 1)


def _pruned_and_symmetric(X, k, monkeypatch):
    """_exact_neighbors through the pruned search (forced) and through the symmetric one (pruning refused)."""
    monkeypatch.setattr(knn_module, "_PRUNED_MAX_SHARE", 2.0)
    pruned = knn_module._exact_neighbors(X, k)
    monkeypatch.setattr(knn_module, "_PRUNED_MAX_SHARE", -1.0)
    return pruned, knn_module._exact_neighbors(X, k)


@pytest.mark.parametrize(("n", "d", "k"), [(1500, 40, 10), (700, 3, 7), (130, 64, 15), (12, 5, 11), (2, 3, 1)])
def test_pruned_and_symmetric_searches_equal_brute_force(blobs, monkeypatch, n, d, k):
    # Clustered rows (the pruning skips pairs) in several leaves and groups, one leaf, and n = k + 1.
    sizes = [n // 5] * 4 + [n - 4 * (n // 5)]
    X, _ = blobs(sizes, d=d, separation=4.0, seed=n)
    X = X.astype(np.float32)
    want_i, want_d = _brute_force_neighbours(X, k)
    for ind, dist in _pruned_and_symmetric(X, k, monkeypatch):
        np.testing.assert_array_equal(ind, want_i)
        np.testing.assert_allclose(dist, want_d, rtol=1e-12)


def test_pruned_search_keeps_every_tied_neighbour_distance(monkeypatch):
    # Integer grid points: many neighbours at exactly equal distances, and duplicate rows.
    X = np.random.default_rng(5).integers(0, 4, size=(900, 6)).astype(np.float32)
    _, want_d = _brute_force_neighbours(X, 8)
    for ind, dist in _pruned_and_symmetric(X, 8, monkeypatch):
        np.testing.assert_array_equal(dist, want_d)
        assert not (ind == np.arange(900)[:, None]).any()
        np.testing.assert_allclose(np.linalg.norm(X[:, None] - X[ind], axis=2), dist, rtol=1e-6)


def test_pruned_search_is_refused_where_it_would_compare_most_pairs():
    # Isotropic noise: every projected distance is below the neighbour bound, nothing is pruned.
    X = np.random.default_rng(6).normal(size=(2000, 64)).astype(np.float32)
    import torch

    mean = torch.from_numpy(X.mean(axis=0))
    assert knn_module._pruned_all_neighbors(X, 15, mean) is None


def test_pruned_search_runs_on_clustered_rows(blobs):
    X, _ = blobs([400] * 5, d=32, separation=4.0, seed=7)
    import torch

    X = X.astype(np.float32)
    best_d, best_i = knn_module._pruned_all_neighbors(X, 15, torch.from_numpy(X.mean(axis=0)))
    want_i, _ = _brute_force_neighbours(X, 15)
    np.testing.assert_array_equal(np.sort(best_i.numpy(), 1), np.sort(want_i, 1))


def test_pair_distances_equal_float64_and_do_not_depend_on_threads():
    # d = 1024: 34 query rows per block, so 101 rows reuse each thread's buffers and end on a partial block.
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 1024)).astype(np.float32)
    rows, indices = rng.permutation(300)[:101], rng.integers(0, 300, size=(101, 15))
    want = np.linalg.norm(X[indices].astype(np.float64) - X[rows].astype(np.float64)[:, None], axis=2)
    import torch

    before = torch.get_num_threads()
    try:
        got = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got[threads] = knn_module._pair_distances(X, rows, indices)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_allclose(got[1], want, rtol=1e-13)
    np.testing.assert_array_equal(got[2], got[1])


def test_approximate_recall_on_clustered_data_and_duplicates(blobs):
    X, _ = blobs([300] * 5, d=32, separation=2.0, seed=3)
    X[:40] = X[0]  # duplicates must not break NN-descent's self removal
    g = KNNGraph(n_neighbors=10, method="approximate", random_state=0).fit(X)
    assert g.method_ == "approximate"
    assert g.recall_ >= 0.9
    assert not (g.indices_ == np.arange(len(X))[:, None]).any()
    assert np.all(np.diff(g.distances_, axis=1) >= 0)
    exact = _brute_force(X, 10)
    assert np.mean(g.distances_ <= exact[:, -1:] + 1e-6) >= 0.9


@pytest.mark.parametrize("method", ["exact", "approximate"])
def test_pca_search_of_rows_in_a_subspace_finds_the_features_neighbours(method):
    # Rows in a 6-dimensional subspace of 40 features, off the origin: their scores on 6 principal directions
    # keep every distance, so the projected search finds the features' neighbours.
    rng = np.random.default_rng(4)
    basis = np.linalg.qr(rng.normal(size=(40, 6)))[0]
    X = (rng.normal(size=(900, 6)) @ basis.T + 5.0).astype(np.float32)
    g = KNNGraph(7, method=method, pca_components=6, random_state=0, recall_queries=900).fit(X)
    assert g.search_dims_ == 6 and g.recall_queries_ == 900
    full = KNNGraph(7, method="exact").fit(X)
    if method == "exact":
        np.testing.assert_array_equal(g.indices_, full.indices_)
        np.testing.assert_allclose(g.distances_, full.distances_, rtol=1e-4)
        assert g.recall_ == 1.0
    else:
        assert g.recall_ >= 0.95


def test_pca_search_recall_is_measured_in_the_features(blobs):
    # Four blobs in 2 directions plus isotropic noise in 60 others: the top 2 principal directions hold the
    # blobs, the neighbours within a blob are decided by the noise the projection drops.
    X, _ = blobs([150] * 4, d=2, separation=8.0, seed=5)
    X = np.hstack([X, np.random.default_rng(6).normal(size=(600, 60))]).astype(np.float32)
    g = KNNGraph(5, method="exact", pca_components=2, recall_queries=600).fit(X)
    exact = _brute_force(X, 5)
    got = np.linalg.norm(X[:, None].astype(np.float64) - X[g.indices_], axis=2)
    assert g.search_dims_ == 2
    assert g.recall_ == pytest.approx(np.mean(got <= exact[:, -1:] * (1 + 1e-6) + 1e-12), abs=1e-12)
    assert g.recall_ < 0.5
    assert np.all(g.distances_ <= got + 1e-4)  # distances between the scores: a projection only shortens them


def test_pca_components_at_least_the_features_searches_the_features():
    X = np.random.default_rng(7).normal(size=(300, 8)).astype(np.float32)
    g, full = KNNGraph(5, pca_components=8).fit(X), KNNGraph(5).fit(X)
    assert g.search_dims_ == full.search_dims_ == 8 and g.recall_ == 1.0
    np.testing.assert_array_equal(g.indices_, full.indices_)
    np.testing.assert_array_equal(g.distances_, full.distances_)


def test_auto_switches_to_approximate_above_exact_max_n():
    X = np.random.default_rng(2).normal(size=(50, 3))
    assert KNNGraph(3, exact_max_n=100).fit(X).method_ == "exact"


@pytest.mark.parametrize("symmetrize", ["or", "mean"])
def test_adjacency_values_follow_the_symmetrisation_rule(symmetrize):
    indices = np.array([[1], [2], [1]])  # 0->1, 1->2, 2->1 : (1,2) mutual, (0,1) one-sided
    A = knn_adjacency(indices, symmetrize).toarray()
    one_sided = 1.0 if symmetrize == "or" else 0.5
    np.testing.assert_array_equal(A, [[0, one_sided, 0], [one_sided, 0, 1], [0, 1, 0]])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 40),
    k=st.integers(1, 5),
    seed=st.integers(0, 10_000),
    symmetrize=st.sampled_from(["or", "mean"]),
)
def test_adjacency_is_symmetric_without_diagonal(n, k, seed, symmetrize):
    k = min(k, n - 1)
    X = np.random.default_rng(seed).integers(0, 3, size=(n, 2)).astype(np.float32)  # many ties/duplicates
    A = KNNGraph(k, method="exact", symmetrize=symmetrize).fit(X).adjacency_
    assert (abs(A - A.T)).max() == 0 if A.nnz else True
    assert A.diagonal().sum() == 0
    assert set(np.unique(A.data)) <= ({1.0} if symmetrize == "or" else {0.5, 1.0})
    assert np.all(np.asarray((A > 0).sum(axis=1)).ravel() >= k)


def test_too_many_neighbours_names_n_neighbors_and_n():
    with pytest.raises(BadInputError, match=r"n_neighbors=5 .* n=5"):
        KNNGraph(n_neighbors=5).fit(np.zeros((5, 2)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_neighbors": 0}, "n_neighbors"),
        ({"method": "hnsw"}, "method"),
        ({"symmetrize": "and"}, "symmetrize"),
        ({"random_state": "x"}, "random_state"),
        ({"n_neighbors": 3, "search_neighbors": 3}, "search_neighbors"),
        ({"pca_components": 0}, "pca_components"),
    ],
)
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(BadInputError, match=name):
        KNNGraph(**kwargs).fit(np.zeros((10, 2)))


def test_non_finite_rows_are_named():
    X = np.zeros((10, 2))
    X[4, 1] = np.nan
    with pytest.raises(BadInputError, match=r"X has non-finite values .*\[4\]"):
        KNNGraph(3).fit(X)


def test_nndescent_kernels_named_for_the_cache_exist_and_get_numba_s_file_cache():
    from numba.core.caching import FunctionCache
    from pynndescent import pynndescent_

    kernels = [getattr(pynndescent_, name) for name in knn_module._NNDESCENT_UNCACHED_KERNELS]
    knn_module._cache_nndescent_kernels()
    assert [type(kernel._cache) for kernel in kernels] == [FunctionCache] * len(kernels)
