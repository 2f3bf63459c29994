"""KNNGraph: exact neighbours, approximate recall, symmetric adjacency, duplicates, parameter errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

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
