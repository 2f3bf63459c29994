"""Spectral embedding of a graph: the smallest eigenpairs of its symmetric normalised Laplacian.

``L_sym = I − D^{-1/2} A D^{-1/2}``. We never form L: the smallest eigenvalues λ of L are ``1 − μ`` for the
largest *algebraic* eigenvalues μ of ``M = D^{-1/2} A D^{-1/2}``, which ARPACK's Lanczos (``eigsh``,
``which="LA"``) finds fast without factorising anything. (``which="LM"`` — largest magnitude, CoRelAy's
choice — also returns eigenpairs near μ = −1, i.e. λ near 2, which are not the smallest; sklearn's
``spectral_embedding`` uses shift-invert, which factorises the shifted Laplacian: far costlier than Lanczos
on the operator for these graphs.) Large components run Lanczos in float32 and refine its Ritz pairs in
float64 (:func:`_refined_float32_eigenpairs`): ARPACK's time there is memory traffic over its n × ncv basis,
which float32 halves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh

from spray.analysis._common import check_choice, check_int, check_real, limited_threads, rng_from
from spray.errors import BadInputError

_DENSE_MIN_N = 256  # components at most this large are solved densely (faster than ARPACK's overhead)
_FLOAT32_MIN_N = 50_000  # "auto": components larger than this run float32 Lanczos + float64 refinement
_FLOAT32_TOL = 1e-5  # ARPACK's relative accuracy in float32 (its rounding, ≈ 6e-8 · ‖M‖, allows no less)


def _check_adjacency(adjacency: Any) -> sp.csr_matrix:
    A = sp.csr_matrix(adjacency, dtype=np.float64) if not sp.issparse(adjacency) else adjacency.tocsr()
    A = A.astype(np.float64)
    A.eliminate_zeros()  # stored zeros would count as edges for connected_components
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise BadInputError(f"adjacency must be a square matrix, got shape {A.shape}")
    if A.shape[0] < 2:
        raise BadInputError(f"adjacency needs at least 2 nodes, got {A.shape[0]}")
    if A.nnz and not np.isfinite(A.data).all():
        raise BadInputError("adjacency has non-finite entries")
    if A.nnz and A.data.min() < 0:
        raise BadInputError(f"adjacency must be non-negative, found an entry {A.data.min():g}")
    asym = abs(A - A.T)
    scale = abs(A).max() if A.nnz else 0.0
    if asym.nnz and asym.max() > 1e-10 * max(scale, 1.0):
        raise BadInputError(
            f"adjacency must be symmetric (max |A − Aᵀ| = {asym.max():g}); symmetrise it, e.g. (A + A.T) / 2"
        )
    return A


def _top_eigenpairs(M: sp.csr_matrix, k: int, solver: str, tol: float, rng: np.random.Generator):
    """Largest-algebraic ``k`` eigenpairs of the symmetric ``M`` (descending μ)."""
    n = M.shape[0]
    if solver == "auto":
        solver = "dense" if n <= _DENSE_MIN_N or n < 5 * k else "arpack32" if n > _FLOAT32_MIN_N else "arpack"
    if solver == "dense" or k >= n - 1:
        mu, vec = _dense_top_eigenpairs(M.toarray(), k)
    elif solver == "arpack32":
        mu, vec = _refined_float32_eigenpairs(M, k, rng.uniform(-1.0, 1.0, size=n))
    else:
        mu, vec = eigsh(M, k=k, which="LA", tol=tol, v0=rng.uniform(-1.0, 1.0, size=n))
    order = np.argsort(-mu, kind="stable")
    return mu[order], vec[:, order]


def _refined_float32_eigenpairs(M: sp.csr_matrix, k: int, v0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``k`` largest-algebraic eigenpairs of the symmetric float64 ``M``: Lanczos (ARPACK) on a float32 copy
    to relative accuracy ``_FLOAT32_TOL``, then one Rayleigh–Ritz step in float64 on ``span[V, R]``, with V the
    float32 Ritz vectors and ``R = MV − V diag(θ)`` their residuals (one block-Krylov step beyond V).

    A Ritz value's error is bounded by ‖r‖² / gap (Parlett, *The Symmetric Eigenvalue Problem*, §11.7), so
    residuals ≈ 1e-5 give eigenvalues to ≈ 1e-9 for the gaps of kNN graphs; eigenvectors are accurate to
    ‖r‖ / gap, which still fixes every spectral cluster's subspace. At n = 100k (one thread): 4.7 s CPU
    against 9.5 s for float64 ARPACK at tol 1e-10, eigenvalues equal to 1.3e-9.
    """
    theta, V = eigsh(M.astype(np.float32), k=k, which="LA", tol=_FLOAT32_TOL, v0=v0.astype(np.float32))
    # Filled in place and factorised in place: at n = 1M each n x 2k float64 block is 0.5 GB.
    basis = np.empty((M.shape[0], 2 * k))
    basis[:, :k] = V
    basis[:, k:] = M @ basis[:, :k]
    basis[:, k:] -= basis[:, :k] * theta
    Q = scipy.linalg.qr(basis, mode="economic", overwrite_a=True)[0]
    del basis
    T = Q.T @ (M @ Q)
    mu, W = _dense_top_eigenpairs((T + T.T) / 2, k)
    return mu, Q @ W


def _dense_top_eigenpairs(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenpairs of the dense symmetric ``a`` (ascending μ): LAPACK's MRRR (syevr) on that
    subset, or, where it stops with its "Internal Error", divide and conquer (syevd) on all of them. The
    OpenBLAS 0.3.30 of scipy 1.17's wheels stops so on some kNN graphs' matrices (a 40 × 40 one of the
    benchmark's digits, k = 32, while k = 30 or 35 and the whole spectrum succeed): a LAPACK failure, not the
    graph's."""
    n = a.shape[0]
    try:
        return scipy.linalg.eigh(a, subset_by_index=[n - k, n - 1])
    except np.linalg.LinAlgError:
        mu, vec = scipy.linalg.eigh(a, driver="evd")
        return mu[n - k :], vec[:, n - k :]


class SpectralEmbedding:
    """The ``n_eigenpairs`` smallest eigenpairs of ``L_sym = I − D^{-1/2} A D^{-1/2}`` of a graph.

    ``fit(adjacency)`` takes a symmetric non-negative (sparse) adjacency, e.g. ``KNNGraph().fit(X).adjacency_``.

    Fitted attributes:

    - ``eigenvalues_`` (m,) float64, ascending, in [0, 2] (round-off outside is clipped);
    - ``embedding_`` (n, m) float64: the plain (orthonormal) eigenvectors of ``L_sym``, column j for
      ``eigenvalues_[j]`` — not rescaled by ``D^{-1/2}`` (the random-walk eigenvectors) and not row-normalised
      (the clusterers do that where wanted). Sign convention: each column's largest-magnitude entry (first
      one on ties) is positive;
    - ``n_components_``: connected components of the graph; ``component_labels_`` (n,) their labels;
    - ``n_isolated_``: nodes with degree 0.

    Disconnected graphs: the spectrum of a block-diagonal L is the union of the blocks' spectra, so each
    connected component is solved on its own and the m smallest eigenpairs of the union are kept (eigenvectors
    zero outside their component). This is exact and avoids Lanczos' difficulty with the multiple eigenvalue
    0 (one per component). An isolated node (degree 0) is its own component; we give it eigenvalue 0 with the
    indicator vector as eigenvector — as if it had a self-loop — so "one zero eigenvalue per connected
    component" holds without exception and no 0/0 appears.

    ``solver``: ``"auto"`` solves a component densely (``scipy.linalg.eigh``) when it has at most 256 nodes
    or fewer than 5·m, with ``"arpack32"`` when it has more than 50k nodes, and with ``"arpack"``,
    ``eigsh(M, k, which="LA", tol=tol)``, otherwise; ``"arpack"`` / ``"arpack32"`` / ``"dense"`` force one.
    ``"arpack32"`` runs Lanczos on a float32 copy of M (relative accuracy 1e-5; ``tol`` is not used) and
    refines its Ritz pairs by one float64 Rayleigh–Ritz step (:func:`_refined_float32_eigenpairs`): half
    the time of ``"arpack"`` at 100k nodes, eigenvalues equal to ≈ 1e-9, eigenvectors of nearly equal
    eigenvalues (gaps below ≈ 1e-4) less stable under ``random_state`` than at ``tol=1e-10``.
    ``random_state`` seeds ARPACK's start vector. ``n_threads`` caps the BLAS threads (``None``: library
    default). Why 1: ARPACK's dense steps are small level-2 BLAS calls on n × ncv blocks, and multi-threaded
    OpenBLAS spends most of their time spin-waiting — 32 eigenpairs of a 19.4k-node kNN graph took 13.8 s CPU
    (64 s wall on busy cores) with 2 threads and 1.35 s CPU (load-independent) with one.
    """

    def __init__(
        self,
        n_eigenpairs: int = 32,
        random_state: Any = None,
        tol: float = 1e-10,
        solver: str = "auto",
        n_threads: int | None = 1,
    ) -> None:
        self.n_eigenpairs = n_eigenpairs
        self.random_state = random_state
        self.tol = tol
        self.solver = solver
        self.n_threads = n_threads

    def fit(self, adjacency: Any, y: Any = None) -> SpectralEmbedding:
        m = check_int(self.n_eigenpairs, "n_eigenpairs", minimum=1)
        tol = check_real(self.tol, "tol", minimum=0.0)
        check_choice(self.solver, "solver", ("auto", "arpack", "arpack32", "dense"))
        if self.n_threads is not None:
            check_int(self.n_threads, "n_threads", minimum=1)
        rng = rng_from(self.random_state)
        A = _check_adjacency(adjacency)
        n = A.shape[0]
        if m >= n:
            raise BadInputError(
                f"n_eigenpairs={m} must be smaller than the number of nodes n={n}; lower n_eigenpairs"
            )

        degree = np.asarray(A.sum(axis=1)).ravel()
        n_comp, comp = connected_components(A, directed=False)
        inv_sqrt = np.zeros(n)
        inv_sqrt[degree > 0] = 1.0 / np.sqrt(degree[degree > 0])
        M = sp.csr_matrix(sp.diags(inv_sqrt) @ A @ sp.diags(inv_sqrt))

        values, vectors = [], []  # per component: λ (ascending) and (rows, eigenvector block)
        order = np.argsort(comp, kind="stable")
        bounds = np.searchsorted(comp[order], np.arange(n_comp + 1))
        with limited_threads(self.n_threads):
            for c in range(n_comp):
                rows = order[bounds[c] : bounds[c + 1]]
                if len(rows) == 1:
                    lam, vec = np.zeros(1), np.ones((1, 1))
                else:
                    k = min(m, len(rows))
                    block = M if len(rows) == n else M[rows][:, rows]  # one component: no copy of M
                    mu, vec = _top_eigenpairs(block, k, self.solver, tol, rng)
                    lam = 1.0 - mu
                values.append(lam)
                vectors.append((rows, vec))

        # Keep the m smallest over all components; ties (e.g. the zeros) by component order.
        all_lam = np.concatenate(values)
        owner = np.concatenate([np.full(len(v), c) for c, v in enumerate(values)])
        col = np.concatenate([np.arange(len(v)) for v in values])
        pick = np.lexsort((col, owner, all_lam))[:m]
        embedding = np.zeros((n, m))
        for j, p in enumerate(pick):
            rows, vec = vectors[owner[p]]
            embedding[rows, j] = vec[:, col[p]]

        # Deterministic signs: the largest-magnitude entry of each eigenvector is positive.
        lead = np.abs(embedding).argmax(axis=0)
        embedding *= np.where(embedding[lead, np.arange(m)] < 0, -1.0, 1.0)

        self.eigenvalues_ = np.clip(all_lam[pick], 0.0, 2.0)
        self.embedding_ = embedding
        self.n_components_ = int(n_comp)
        self.component_labels_ = comp.astype(np.int64)
        self.n_isolated_ = int(np.sum(degree == 0))
        return self

    def fit_transform(self, adjacency: Any, y: Any = None) -> np.ndarray:
        return self.fit(adjacency).embedding_
