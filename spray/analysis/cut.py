"""Normalised cuts of clusters in a locally scaled kNN affinity graph: how disconnected a group is from the rest.

A Clever Hans group is explained by something the rest of its class does not have (a stamp, a marker), so in
the graph of heatmap neighbours it hangs on to the rest of the class by few, weak edges. A natural style of a
class (a 1 with or without serif) is a large separable group too, but it grades into the rest through
intermediate samples. The normalised cut measures exactly that (Shi & Malik 2000); a Fisher separability τ
(spray.analysis.fda) does not, since it only sees the group means and the scatter around them.

- Affinity, self-tuning (Zelnik-Manor & Perona 2004): ``σ_i`` = distance from sample i to its
  ``SCALE_NEIGHBOR``-th nearest neighbour (the last one when fewer are stored); on every kNN edge (i, j), in
  either direction, ``w_ij = exp(−d_ij² / (σ_i σ_j))``. Local scales make a dense and a sparse region of the
  class comparable: an edge is weak when it is long *for both of its ends*.
- Cut of a group A (noise −1 is never a group; it belongs to the rest): with degrees ``d_i = Σ_j w_ij``,
  ``vol(A) = Σ_{i∈A} d_i`` and ``cut(A) = Σ_{i∈A, j∉A} w_ij``,
  ``ncut(A) = cut(A)/vol(A) + cut(A)/vol(Ā)`` in [0, 2]; 0 for a disconnected group.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

SCALE_NEIGHBOR = 7
"""Zelnik-Manor & Perona's choice of the neighbour that sets a sample's local scale σ_i."""


def local_scaling_affinity(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """The symmetric self-tuning affinity W (n, n) on the kNN edges ``indices`` (n, k) with Euclidean
    ``distances`` (n, k), ascending, self excluded (:class:`spray.analysis.KNNGraph`'s fitted arrays).

    A sample whose σ is 0 (k duplicates of it) gets the smallest positive σ of the class: its edges to its
    duplicates weigh 1, any other edge of it is short of nothing and weighs ~0.
    """
    n, k = indices.shape
    d = np.asarray(distances, dtype=np.float64)
    sigma = d[:, min(SCALE_NEIGHBOR, k) - 1]
    positive = sigma[sigma > 0]
    sigma = np.where(sigma > 0, sigma, positive.min() if positive.size else 1.0)
    rows = np.repeat(np.arange(n), k)
    cols = np.asarray(indices, dtype=np.int64).ravel()
    weights = np.exp(-(d.ravel() ** 2) / (sigma[rows] * sigma[cols]))
    W = sp.csr_matrix((weights, (rows, cols)), shape=(n, n))
    return W.maximum(W.T).tocsr()  # both directions of an edge have the same weight: the union of the kNN edges


def normalized_cuts(affinity: sp.spmatrix, labels: np.ndarray) -> dict[int, float]:
    """``ncut(A)`` of every non-noise cluster A of ``labels`` (n,) in the symmetric ``affinity`` (n, n),
    keyed by cluster id. A cluster of all samples, or one with no edges, has no rest to be cut from: NaN."""
    W = sp.coo_matrix(affinity)
    ids, codes = np.unique(labels, return_inverse=True)
    degree = np.bincount(W.row, weights=W.data, minlength=labels.size)
    volume = np.bincount(codes, weights=degree, minlength=ids.size)
    # The crossing edges summed directly, not vol − within: a disconnected group's cut is exactly 0, not the
    # round-off of a difference (which would order disconnected groups at random).
    crossing = codes[W.row] != codes[W.col]
    cut = np.bincount(codes[W.row[crossing]], weights=W.data[crossing], minlength=ids.size)
    rest = degree.sum() - volume
    with np.errstate(divide="ignore", invalid="ignore"):
        ncut = np.where((volume > 0) & (rest > 0), cut / volume + cut / rest, np.nan)
    return {int(c): float(v) for c, v in zip(ids, ncut) if c >= 0}
