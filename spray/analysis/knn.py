"""The k-nearest-neighbour affinity graph SpRAy's spectral analysis runs on (Euclidean distance).

Built directly as a sparse graph: exact blockwise top-k for moderate n (O(n² d) flops, O(block · n) memory),
approximate NN-descent (pynndescent) for large n. CoRelAy's dense n × n distance matrix is never formed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from spray.analysis._common import check_choice, check_int, check_matrix, rng_from, seed_from
from spray.errors import BadInputError

_BLOCK_BYTES = 128 * 2**20  # distance block (float32) held at once by the exact search


def _exact_neighbors(
    X: np.ndarray, k: int, queries: np.ndarray | None = None, exclude_self: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``X`` for each query row (default: every row), self excluded.

    ``queries`` are row positions into ``X``. Candidates come from squared distances
    ``‖x‖² + ‖y‖² − 2 x·y`` in float32 (torch matmul, on mean-centred data to limit cancellation); the
    returned distances are then recomputed directly in float64 and the k neighbours sorted by them.
    Returns ``(indices int64 (q, k), distances float64 (q, k))``, Euclidean (not squared), ascending.
    """
    import torch

    n = X.shape[0]
    q_idx = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    Xc = X - X.mean(axis=0)
    data = torch.from_numpy(np.ascontiguousarray(Xc, dtype=np.float32))
    sq = (data * data).sum(dim=1)
    block = max(1, min(len(q_idx), _BLOCK_BYTES // (4 * n)))
    indices = np.empty((len(q_idx), k), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(q_idx), block):
            rows = torch.from_numpy(q_idx[start : start + block])
            d2 = sq[rows, None] + sq[None, :] - 2.0 * (data[rows] @ data.T)
            if exclude_self:
                d2[torch.arange(len(rows)), rows] = float("inf")
            indices[start : start + block] = torch.topk(d2, k, dim=1, largest=False).indices.numpy()
    distances = _pair_distances(Xc, q_idx, indices)
    order = np.argsort(distances, axis=1, kind="stable")
    return np.take_along_axis(indices, order, 1), np.take_along_axis(distances, order, 1)


def _pair_distances(X: np.ndarray, rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Float64 Euclidean distances ``‖X[rows[i]] − X[indices[i, j]]‖``, in blocks of bounded memory."""
    q, k = indices.shape
    out = np.empty((q, k), dtype=np.float64)
    step = max(1, (32 * 2**20) // (8 * max(1, k * X.shape[1])))
    for start in range(0, q, step):
        r, ind = rows[start : start + step], indices[start : start + step]
        diff = X[r, None, :].astype(np.float64) - X[ind].astype(np.float64)
        out[start : start + step] = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
    return out


def _approximate_neighbors(
    X: np.ndarray, k: int, search: int, random_state: Any
) -> tuple[np.ndarray, np.ndarray]:
    """k approximate nearest neighbours by NN-descent keeping ``search`` per point, self excluded, ascending."""
    from pynndescent import NNDescent  # lazy: numba compiles on first use

    n = X.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba/pynndescent chatter about threading layers and seeds
        index = NNDescent(
            np.ascontiguousarray(X, dtype=np.float32),
            metric="euclidean",
            n_neighbors=min(n, search),
            random_state=seed_from(random_state),
            low_memory=True,
            compressed=True,
        )
        ind, dist = index.neighbor_graph
    ind, dist = np.asarray(ind, dtype=np.int64), np.asarray(dist, dtype=np.float64)
    # Drop each row's self (with duplicate rows it need not come first) and missing entries (-1): both get
    # an infinite distance and sort last.
    dist = np.where((ind < 0) | (ind == np.arange(n)[:, None]), np.inf, dist)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ind, dist = np.take_along_axis(ind, order, 1), np.take_along_axis(dist, order, 1)
    missing = ~np.isfinite(dist).all(axis=1)
    if missing.any():  # rare: NN-descent left a row short; fill those rows exactly
        rows = np.flatnonzero(missing)
        ind[rows], dist[rows] = _exact_neighbors(X, k, queries=rows)
    # Report float64 distances, as the exact search does (NN-descent's are float32).
    dist = _pair_distances(X, np.arange(n), ind)
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(ind, order, 1), np.take_along_axis(dist, order, 1)


def estimate_recall(X: np.ndarray, indices: np.ndarray, n_queries: int, random_state: Any) -> float:
    """Recall@k of ``indices`` against exact neighbours, on ``min(n, n_queries)`` random query rows.

    A returned neighbour counts as correct when its distance is within the exact k-th neighbour distance
    (plus 1e-6 relative slack), so ties and duplicate rows are not counted as misses.
    """
    n, k = indices.shape
    q = min(n, n_queries)
    rows = np.sort(rng_from(random_state).choice(n, size=q, replace=False))
    _, exact_d = _exact_neighbors(X, k, queries=rows)
    got_d = _pair_distances(X, rows, indices[rows])
    radius = exact_d[:, -1:] * (1 + 1e-6) + 1e-12
    return float(np.mean(got_d <= radius))


class KNNGraph:
    """Symmetric k-nearest-neighbour affinity graph of the rows of ``X`` (Euclidean distance).

    ``B[i, j] = 1`` when j is one of the ``n_neighbors`` nearest neighbours of i (i itself excluded);
    ``symmetrize="or"`` gives the binary ``A = max(B, Bᵀ)``, ``"mean"`` gives ``(B + Bᵀ)/2`` (entries 1 for
    mutual neighbours, 1/2 for one-sided ones, as CoRelAy's SparseKNN). The diagonal is 0.

    ``method="auto"`` uses the exact search for ``n <= exact_max_n``, NN-descent otherwise. NN-descent keeps
    ``search_neighbors`` candidates per point (default ``3k + 1``, self included) and returns the best k: its
    recall grows with that degree — recall@10 on 10k well separated Gaussian blobs in d = 1024 (a hard case):
    0.87 / 0.96 / 0.99 at 21 / 31 / 41 candidates, for 1.5 / 3.9 / 6.0 s.

    Fitted attributes: ``adjacency_`` (scipy.sparse CSR, float64, symmetric), ``indices_`` (n, k) int64 and
    ``distances_`` (n, k) float64 Euclidean distances, ascending, self excluded; ``method_`` ("exact" or
    "approximate"); ``recall_``: 1.0 for exact, otherwise recall@k estimated against exact neighbours on
    ``min(n, recall_queries)`` random rows (NaN when ``recall_queries=0``).
    """

    def __init__(
        self,
        n_neighbors: int = 10,
        method: str = "auto",
        symmetrize: str = "or",
        random_state: Any = None,
        exact_max_n: int = 20000,
        recall_queries: int = 1000,
        search_neighbors: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.method = method
        self.symmetrize = symmetrize
        self.random_state = random_state
        self.exact_max_n = exact_max_n
        self.recall_queries = recall_queries
        self.search_neighbors = search_neighbors

    def fit(self, X: Any, y: Any = None) -> KNNGraph:
        k = check_int(self.n_neighbors, "n_neighbors", minimum=1)
        check_choice(self.method, "method", ("auto", "exact", "approximate"))
        check_choice(self.symmetrize, "symmetrize", ("or", "mean"))
        check_int(self.exact_max_n, "exact_max_n", minimum=0)
        check_int(self.recall_queries, "recall_queries", minimum=0)
        search = 3 * k + 1 if self.search_neighbors is None else self.search_neighbors
        search = check_int(search, "search_neighbors", minimum=k + 1)
        rng = rng_from(self.random_state)
        X = check_matrix(X, "X", dtype=np.float32)
        n = X.shape[0]
        if k >= n:
            raise BadInputError(
                f"n_neighbors={k} must be smaller than the number of samples n={n}; lower n_neighbors"
            )
        method = self.method
        if method == "auto":
            method = "exact" if n <= self.exact_max_n else "approximate"

        if method == "exact":
            self.indices_, self.distances_ = _exact_neighbors(X, k)
            self.recall_ = 1.0
        else:
            self.indices_, self.distances_ = _approximate_neighbors(X, k, search, rng)
            self.recall_ = (
                estimate_recall(X, self.indices_, self.recall_queries, rng) if self.recall_queries else np.nan
            )
        self.method_ = method
        self.adjacency_ = knn_adjacency(self.indices_, self.symmetrize)
        self.n_samples_ = n
        return self


def knn_adjacency(indices: np.ndarray, symmetrize: str = "or") -> sp.csr_matrix:
    """Symmetric sparse adjacency from neighbour lists ``indices`` (n, k) (self excluded); see KNNGraph."""
    check_choice(symmetrize, "symmetrize", ("or", "mean"))
    n, k = indices.shape
    B = sp.csr_matrix(
        (np.ones(n * k), (np.repeat(np.arange(n), k), indices.ravel())), shape=(n, n), dtype=np.float64
    )
    B.sum_duplicates()
    B.data[:] = 1.0
    A = B.maximum(B.T) if symmetrize == "or" else (B + B.T) * 0.5
    A = sp.csr_matrix(A)
    A.setdiag(0)
    A.eliminate_zeros()
    A.sort_indices()
    return A
