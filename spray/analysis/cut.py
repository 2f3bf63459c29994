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
- Small groups (:func:`candidate_cuts`): a group of at most k samples cannot hold its members' k neighbour
  lists, so at least one in k of its edges leaves it whatever sets it apart; with ``small_neighbors`` such a
  group is cut in the graph of each sample's first ``small_neighbors`` neighbours instead, where it can be
  disconnected.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from spray.analysis._common import check_int

SCALE_NEIGHBOR = 7
"""Zelnik-Manor & Perona's choice of the neighbour that sets a sample's local scale σ_i."""
SMALL_NEIGHBORS = 5
"""The default ``small_neighbors`` (the fda node's and :func:`spray.analysis.best_cluster`'s): clusters of at most
k samples are cut in the graph of each sample's first 5 neighbours, where the benchmark's groups of 10 in classes
of 350 are cut off (docs/benchmark.md, "Small clusters cut in five neighbours")."""


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


def candidate_cuts(
    indices: np.ndarray, distances: np.ndarray, clusterings: Mapping[str, np.ndarray],
    small_neighbors: int | None = None,
) -> dict[str, dict[int, float]]:
    """``ncut`` of every cluster of every clustering ``{name: labels (n,)}`` in the locally scaled affinity of
    the kNN graph ``indices``/``distances`` (n, k), keyed ``{name: {cluster id: ncut}}``.

    With ``small_neighbors`` s < k, a cluster of at most k samples is cut in the affinity of each sample's first
    s neighbours (the kNN lists are ascending, so that graph is their first s columns): with k neighbours, a
    group of k or fewer always loses one edge in k to the rest, and its cut cannot fall below a large, bridged
    group's (docs/spray-method.md §8). Larger clusters keep the k-neighbour cut. With s ≥ k (its first s columns
    are all of the graph) or None, every cluster is cut in the k-neighbour graph.
    """
    k = indices.shape[1]
    full = local_scaling_affinity(indices, distances)
    cuts = {name: normalized_cuts(full, np.asarray(labels)) for name, labels in clusterings.items()}
    s = None if small_neighbors is None else check_int(small_neighbors, "small_neighbors", minimum=1)
    if s is None or s >= k:
        return cuts
    small = local_scaling_affinity(indices[:, :s], distances[:, :s])
    for name, labels in clusterings.items():
        labels = np.asarray(labels)
        sizes = np.bincount(labels[labels >= 0], minlength=1)
        small_cuts = normalized_cuts(small, labels)
        cuts[name].update({c: v for c, v in small_cuts.items() if sizes[c] <= k})
    return cuts
