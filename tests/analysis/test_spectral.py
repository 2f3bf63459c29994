"""SpectralEmbedding: spectrum of L_sym, orthonormal eigenvectors, components, isolated nodes, solvers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from spray.analysis.knn import KNNGraph
import spray.analysis.spectral as spectral_module
from spray.analysis.spectral import SpectralEmbedding
from spray.errors import BadInputError


def _dense_laplacian(A):
    A = np.asarray(A.todense() if sp.issparse(A) else A, dtype=np.float64)
    d = A.sum(axis=1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
    L = np.eye(len(A)) - inv[:, None] * A * inv[None, :]
    L[d == 0, d == 0] = 0.0  # isolated node: eigenvalue 0 by our convention (as with a self-loop)
    return L


def _cliques(sizes):
    return sp.block_diag([np.ones((s, s)) - np.eye(s) for s in sizes]).tocsr()


def _random_graph(n, p, seed):
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n, n)) < p, 1)
    return sp.csr_matrix((upper | upper.T).astype(float))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 50), p=st.floats(0.0, 0.6), m=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_eigenpairs_of_random_graphs_are_orthonormal_ascending_and_in_range(n, p, m, seed):
    m = min(m, n - 1)
    A = _random_graph(n, p, seed)
    se = SpectralEmbedding(m, random_state=0).fit(A)
    lam, V = se.eigenvalues_, se.embedding_
    assert lam.shape == (m,) and V.shape == (n, m) and np.isfinite(V).all()
    assert np.all(np.diff(lam) >= -1e-12) and lam.min() >= 0 and lam.max() <= 2
    np.testing.assert_allclose(V.T @ V, np.eye(m), atol=1e-8)
    L = _dense_laplacian(A)
    np.testing.assert_allclose(L @ V, V * lam, atol=1e-7)
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(L)[:m], atol=1e-6)
    assert int(np.sum(lam < 1e-9)) == min(m, se.n_components_)


@pytest.mark.parametrize("sizes", [(5, 6, 7), (300, 310, 320)])  # dense path and ARPACK path
def test_three_disconnected_cliques_give_three_zero_eigenvalues(sizes):
    se = SpectralEmbedding(6, random_state=0).fit(_cliques(sizes))
    assert se.n_components_ == 3
    np.testing.assert_allclose(se.eigenvalues_[:3], 0.0, atol=1e-10)
    assert se.eigenvalues_[3] > 0.5
    # the null space is spanned by the component indicators (scaled by sqrt(degree), constant here)
    comp = np.repeat(np.arange(3), sizes)
    for j in range(3):
        col = se.embedding_[:, j]
        support = np.unique(comp[np.abs(col) > 1e-12])
        assert len(support) == 1 and np.allclose(col[comp == support[0]], col[comp == support[0]][0])


def test_isolated_nodes_give_zero_eigenvalues_and_no_nan():
    A = sp.block_diag([np.ones((20, 20)) - np.eye(20), np.zeros((2, 2))]).tocsr()
    se = SpectralEmbedding(4).fit(A)
    assert np.isfinite(se.embedding_).all() and se.n_isolated_ == 2 and se.n_components_ == 3
    np.testing.assert_allclose(se.eigenvalues_[:3], 0.0, atol=1e-12)


def test_the_dense_solver_falls_back_to_divide_and_conquer_where_lapacks_mrrr_stops(blobs, monkeypatch):
    # scipy 1.17's OpenBLAS 0.3.30 stops syevr with "Internal Error" on some matrices; emulated for every subset
    X, _ = blobs([60, 60], d=8, separation=1.0, seed=2)
    A = KNNGraph(8, method="exact").fit(X).adjacency_
    expected = SpectralEmbedding(6, solver="dense").fit(A)
    eigh = spectral_module.scipy.linalg.eigh

    def stops(a, *args, subset_by_index=None, **kwargs):
        if subset_by_index is not None:
            raise np.linalg.LinAlgError("Internal Error.")
        return eigh(a, *args, **kwargs)

    monkeypatch.setattr(spectral_module.scipy.linalg, "eigh", stops)
    found = SpectralEmbedding(6, solver="dense").fit(A)
    np.testing.assert_allclose(found.eigenvalues_, expected.eigenvalues_, atol=1e-12)
    assert found.eigenvalues_[0] < 1e-12 and np.all(np.diff(found.eigenvalues_) >= 0)
    gaps = np.minimum(np.diff(found.eigenvalues_, prepend=-1), np.diff(found.eigenvalues_, append=3))
    assert (gaps > 1e-4).sum() >= 5  # the same sign convention: equal eigenvectors where they are unique
    np.testing.assert_allclose(found.embedding_[:, gaps > 1e-4], expected.embedding_[:, gaps > 1e-4], atol=1e-8)


def test_arpack_agrees_with_dense_solver_on_knn_graph(blobs):
    X, _ = blobs([250, 250, 250], d=8, separation=1.0, seed=4)
    A = KNNGraph(8, method="exact").fit(X).adjacency_
    a = SpectralEmbedding(10, solver="arpack", random_state=0).fit(A)
    b = SpectralEmbedding(10, solver="dense").fit(A)
    np.testing.assert_allclose(a.eigenvalues_, b.eigenvalues_, atol=1e-6)
    assert a.n_components_ == 1 and a.eigenvalues_[0] < 1e-10
    # non-degenerate eigenvectors agree up to round-off (same sign convention)
    gaps = np.minimum(np.diff(b.eigenvalues_, prepend=-1), np.diff(b.eigenvalues_, append=3))
    ok = gaps > 1e-4
    np.testing.assert_allclose(a.embedding_[:, ok], b.embedding_[:, ok], atol=1e-5)


def test_float32_lanczos_with_float64_refinement_matches_float64_arpack(blobs):
    X, _ = blobs([400, 300, 300], d=8, separation=1.0, seed=5)
    A = KNNGraph(8, method="exact").fit(X).adjacency_
    a = SpectralEmbedding(12, solver="arpack32", random_state=0).fit(A)
    b = SpectralEmbedding(12, solver="arpack", random_state=0).fit(A)
    assert a.n_components_ == 1
    np.testing.assert_allclose(a.eigenvalues_, b.eigenvalues_, atol=1e-8)
    np.testing.assert_allclose(a.embedding_.T @ a.embedding_, np.eye(12), atol=1e-10)
    L = _dense_laplacian(A)
    assert np.abs(L @ a.embedding_ - a.embedding_ * a.eigenvalues_).max() < 1e-4
    gaps = np.minimum(np.diff(b.eigenvalues_, prepend=-1), np.diff(b.eigenvalues_, append=3))
    ok = gaps > 1e-3
    assert ok.sum() >= 4
    np.testing.assert_allclose(a.embedding_[:, ok], b.embedding_[:, ok], atol=1e-4)


def test_auto_solver_runs_float32_lanczos_on_components_above_the_threshold(monkeypatch):
    A = _random_graph(400, 0.05, 3)
    forced = SpectralEmbedding(6, solver="arpack32", random_state=0).fit(A)
    monkeypatch.setattr("spray.analysis.spectral._FLOAT32_MIN_N", 399)
    auto = SpectralEmbedding(6, random_state=0).fit(A)
    np.testing.assert_array_equal(auto.embedding_, forced.embedding_)
    monkeypatch.setattr("spray.analysis.spectral._FLOAT32_MIN_N", 400)
    below = SpectralEmbedding(6, random_state=0).fit(A)
    np.testing.assert_array_equal(below.embedding_, SpectralEmbedding(6, solver="arpack", random_state=0).fit(A).embedding_)


def test_sign_convention_makes_the_embedding_independent_of_random_state():
    A = _random_graph(400, 0.05, 1)
    a = SpectralEmbedding(5, solver="arpack", random_state=1).fit(A).embedding_
    b = SpectralEmbedding(5, solver="arpack", random_state=2).fit(A).embedding_
    np.testing.assert_allclose(a, b, atol=1e-6)
    lead = np.abs(a).argmax(axis=0)
    assert np.all(a[lead, np.arange(5)] > 0)


def test_too_many_eigenpairs_names_n_eigenpairs():
    with pytest.raises(BadInputError, match=r"n_eigenpairs=5 .* n=5"):
        SpectralEmbedding(5).fit(_cliques((5,)))


@pytest.mark.parametrize(
    ("adjacency", "match"),
    [
        (sp.csr_matrix(np.array([[0, 1.0], [0, 0]])), "symmetric"),
        (sp.csr_matrix(np.array([[0, -1.0], [-1, 0]])), "non-negative"),
        (np.ones((2, 3)), "square"),
    ],
)
def test_bad_adjacency_is_reported(adjacency, match):
    with pytest.raises(BadInputError, match=match):
        SpectralEmbedding(1).fit(adjacency)


@pytest.mark.parametrize(("kwargs", "name"), [({"n_eigenpairs": 0}, "n_eigenpairs"), ({"solver": "lobpcg"}, "solver"),
                                              ({"tol": -1.0}, "tol"), ({"n_threads": 0}, "n_threads")])
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(BadInputError, match=name):
        SpectralEmbedding(**kwargs).fit(_cliques((6,)))
