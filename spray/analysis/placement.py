"""A UMAP map of a large class fitted on a subsample, every other point placed along the kNN graph.

UMAP's optimisation costs in proportion to the points times the epochs; above 100k points
:func:`spray.analysis.maps._umap_schedule` already cuts the epochs and negative samples. A map of a million
points can instead be fitted on ``m`` of them and the rest placed, as long as the map still shows the kNN
graph of the features (UMAP's own ``transform`` needs a search index of the features, so a placement by it
shows neighbours in the embedding instead; docs/benchmarks.md measured its neighbour purity at a fifth).
Here everything comes from the graph:

1. UMAP's fuzzy graph ``W`` of all n points from the kNN lists (its membership strengths, fuzzy union).
2. A seeded subsample ``S`` of ``m`` points, plus the first point of every connected component of ``W`` that
   the sample missed, so that every point can be reached from ``S``.
3. The sample's own graph: ``W[S, S]`` united (``a + b − ab``) with the strongest two-step paths through
   any point, ``max_j W[s, j] W[j, t]`` — with m/n of the points sampled, few of a point's direct neighbours
   are in ``S``, but some of its neighbours' neighbours are — each row's ``n_neighbors`` strongest,
   symmetrised by the maximum, as UMAP's graphs are.
4. UMAP's layout of ``S`` on that graph (``umap.umap_.simplicial_set_embedding``, from UMAPMap's start, with
   the epochs of its schedule for m points and the negative samples of its schedule for n).
5. The other points, in rounds: each point with a placed graph neighbour goes to the ``W``-weighted mean of
   its placed neighbours' positions; repeated until every point is placed (a point ``r`` steps from ``S``
   is placed in round ``r``).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from spray.analysis._common import rng_from


def fuzzy_graph(indices: np.ndarray, distances: np.ndarray, n_neighbors: int, seed: int | None) -> sp.csr_matrix:
    """UMAP's fuzzy graph (n, n) of the kNN lists ``indices``/``distances`` (n, n_neighbors), self first."""
    from umap.umap_ import fuzzy_simplicial_set

    n = indices.shape[0]
    graph, _, _ = fuzzy_simplicial_set(np.empty((n, 1), np.float32), n_neighbors, np.random.RandomState(seed),
                                       "euclidean", knn_indices=indices, knn_dists=distances)
    return graph.tocsr()


def sample_rows(graph: sp.csr_matrix, m: int, seed: int | None) -> np.ndarray:
    """Sorted rows of the subsample: ``m`` drawn with ``seed``, plus the first row of each component not drawn."""
    drawn = rng_from(seed).choice(graph.shape[0], size=m, replace=False)
    _, component = connected_components(graph, directed=False)
    _, first = np.unique(component, return_index=True)
    missed = first[~np.isin(component[first], component[drawn])]
    return np.sort(np.concatenate([drawn, missed]))


def sample_graph(graph: sp.csr_matrix, rows: np.ndarray, keep: int) -> sp.coo_matrix:
    """The graph among ``rows`` (step 3 of the module's recipe), symmetric, (m, m)."""
    graph = graph.tocsr()
    local = np.full(graph.shape[0], -1, np.int64)
    local[rows] = np.arange(len(rows))
    target, weight = _links_kernel()(graph.indptr.astype(np.int64), graph.indices.astype(np.int64),
                                     graph.data.astype(np.float64), rows.astype(np.int64), local, keep)
    source = np.repeat(np.arange(len(rows)), keep)
    kept = target.ravel() >= 0
    links = sp.csr_matrix((weight.ravel()[kept], (source[kept], target.ravel()[kept])), shape=(len(rows),) * 2)
    return links.maximum(links.T).tocoo()


def _strongest_links(indptr, indices, data, rows, local, keep):
    """Per sampled point s (a row of ``rows``; ``local`` maps a point to its place in ``rows`` or −1): the
    ``keep`` strongest links (targets (m, keep), −1 where fewer; weights), a link to sampled t ≠ s being the
    fuzzy union ``a + b − ab`` of the direct membership ``W[s, t]`` and the strongest two-step path
    ``max_j W[s, j] W[j, t]`` (the product of the two memberships; a sum over the j would reach 1 for points
    with many common neighbours); ties: the lower t first. One pass over the two-step paths, a scratch row of m."""
    m = rows.shape[0]
    strength = np.zeros(m)
    touched = np.empty(m, np.int64)
    targets = np.full((m, keep), -1, np.int64)
    weights = np.zeros((m, keep))
    for s in range(m):
        u, count = rows[s], 0
        for a in range(indptr[u], indptr[u + 1]):
            j, first = indices[a], data[a]
            for b in range(indptr[j], indptr[j + 1]):
                t, path = local[indices[b]], first * data[b]
                if t >= 0 and t != s and path > 0:
                    if strength[t] == 0:
                        touched[count] = t
                        count += 1
                    strength[t] = max(strength[t], path)
        for a in range(indptr[u], indptr[u + 1]):
            t = local[indices[a]]
            if t >= 0 and t != s and data[a] > 0:
                if strength[t] == 0:
                    touched[count] = t
                    count += 1
                strength[t] += data[a] - strength[t] * data[a]
        for k in range(min(keep, count)):
            best = -1
            for c in range(count):
                t = touched[c]
                if strength[t] > 0 and (best < 0 or strength[t] > strength[best] or
                                        (strength[t] == strength[best] and t < best)):
                    best = t
            targets[s, k], weights[s, k] = best, strength[best]
            strength[best] = -strength[best]  # taken: skipped by the search above, restored below
        for c in range(count):
            strength[touched[c]] = 0.0
    return targets, weights


@functools.cache
def _links_kernel():
    """:func:`_strongest_links` compiled by numba (cached on disk), once per process."""
    import numba

    return numba.njit(cache=True)(_strongest_links)


def place(graph: sp.csr_matrix, rows: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """Positions (n, 2) of every point: ``layout`` for ``rows``, the others placed in rounds (step 5)."""
    n = graph.shape[0]
    positions = np.zeros((n, layout.shape[1]), np.float64)
    positions[rows] = layout
    placed = np.zeros(n, bool)
    placed[rows] = True
    while not placed.all():
        todo, anchors = np.flatnonzero(~placed), np.flatnonzero(placed)
        weights = graph[todo][:, anchors]
        total = np.asarray(weights.sum(axis=1)).ravel()
        reached = total > 0
        if not reached.any():  # cannot happen when rows meet every component (sample_rows)
            raise ValueError("points unreachable from the sample")
        positions[todo[reached]] = (weights[reached] @ positions[anchors]) / total[reached, None]
        placed[todo[reached]] = True
    return positions.astype(np.float32)
