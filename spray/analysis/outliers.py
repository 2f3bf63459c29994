"""Small-group candidates from the kNN graph: groups of samples whose k-distance is unusually large.

A group of a few per cent of a class (a stamp on 10 of 350 images) is small for the spectral clusterings:
with ``n_neighbors = 10`` most of its members' kNN edges can leave it, and then no eigenvector isolates it.
What such a group can still have is distance: where its heatmaps carry relevance the rest of the class lacks,
each member lies far from the bulk of the class — its k-th neighbour distance stands out — and nearer to the
other members than to the rest (the benchmark's frame on 10 of 100 images: mean distance 4.3 within the
group, 6.0 to the rest, 4.6 among the rest). :class:`KNNOutlierGroups` finds those samples from the kNN
graph alone and groups them; its clusters are candidates of the FDA scoring like any clustering's
(docs/spray-method.md §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from spray.analysis._common import check_int, check_matrix, check_real
from spray.errors import BadInputError

_MAD_TO_SD = 1.4826
"""MAD × 1.4826 estimates the standard deviation of a normal sample."""
_MEAN_AD_TO_SD = 1.2533
"""Mean absolute deviation × √(π/2) estimates it too: the fallback where more than half the values tie."""


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(v − median) / s`` with ``s = 1.4826 · MAD``, or ``1.2533 · mean |v − median|`` when the MAD is 0
    (more than half the values equal); all zeros when both are 0 (no spread: nothing stands out).
    ``values`` (n,) finite."""
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    deviation = np.abs(values - median)
    scale = _MAD_TO_SD * np.median(deviation)
    if scale == 0:
        scale = _MEAN_AD_TO_SD * float(deviation.mean())
    return (values - median) / scale if scale > 0 else np.zeros_like(values, dtype=np.float64)


def _thresholds(values: Any) -> list[float]:
    if not isinstance(values, (Sequence, np.ndarray)) or isinstance(values, str) or len(values) == 0:
        raise BadInputError(f"thresholds must be a non-empty list of numbers, got {values!r}")
    return sorted({check_real(v, "thresholds", minimum=0.0) for v in values})


class KNNOutlierGroups:
    """Groups of kNN-distance outliers, one labelling per threshold of ``thresholds``.

    ``fit(indices, distances)`` takes a class's kNN lists (``KNNGraph.indices_`` and ``distances_``, (n, k),
    ascending, self excluded). A sample's k-distance ``d_i`` is its distance to its ``neighbor``-th nearest
    neighbour (default: the last stored, k); its outlier score is the robust z of ``d_i`` among the class
    (:func:`robust_z`). For each threshold t, the samples with score > t are joined by the kNN edges (either
    direction) between two of them; each connected group of at least ``min_group_size`` samples is a
    cluster, every other sample is noise (−1). Fitted: ``labels_`` dict ``t -> (n,) int64``, ``scores_``
    (n,) float64, ``skipped_`` (always empty: a threshold no sample exceeds gives all noise, as HDBSCAN
    does). ``named_labels()`` names them ``outliers_<t>`` (``outliers_2``, ``outliers_2.5``).
    """

    name = "outliers"

    def __init__(self, thresholds: Sequence[float] = (1.5,), neighbor: int | None = None,
                 min_group_size: int = 3) -> None:
        self.thresholds = thresholds
        self.neighbor = neighbor
        self.min_group_size = min_group_size

    def fit(self, indices: Any, distances: Any, y: Any = None) -> KNNOutlierGroups:
        thresholds = _thresholds(self.thresholds)
        min_group = check_int(self.min_group_size, "min_group_size", minimum=1)
        ind = check_matrix(indices, "indices", dtype=np.int64)
        dist = check_matrix(distances, "distances")
        n, k = ind.shape
        if dist.shape != ind.shape:
            raise BadInputError(f"distances must have the shape of indices {ind.shape}, got {dist.shape}")
        if ind.min() < 0 or ind.max() >= n:
            raise BadInputError(f"indices must be row numbers in [0, {n}), got values in [{ind.min()}, {ind.max()}]")
        column = k if self.neighbor is None else check_int(self.neighbor, "neighbor", minimum=1)
        if column > k:
            raise BadInputError(f"neighbor={column} exceeds the {k} stored neighbours; lower neighbor")
        self.scores_ = robust_z(dist[:, column - 1])
        self.labels_, self.skipped_ = {}, {}
        for t in thresholds:
            self.labels_[t] = _groups(ind, self.scores_ > t, min_group)
        return self

    def named_labels(self) -> dict[str, np.ndarray]:
        """``labels_`` keyed ``"outliers_<t>"``, unique across clusterers."""
        return {f"{self.name}_{t:g}": labels for t, labels in self.labels_.items()}


def _groups(indices: np.ndarray, members: np.ndarray, min_size: int) -> np.ndarray:
    """Labels (n,): the connected groups of ``members`` joined by the kNN edges ``indices`` (n, k) between two
    of them (either direction), numbered from 0 in order of their first sample, when of at least ``min_size``
    samples; −1 elsewhere. Only the members' rows are read: O(members · k), whatever n is."""
    labels = np.full(members.size, -1, dtype=np.int64)
    rows = np.flatnonzero(members)
    if rows.size < min_size:
        return labels
    position = np.full(members.size, -1, dtype=np.int64)
    position[rows] = np.arange(rows.size)
    targets = position[indices[rows]]  # (m, k): the neighbour's place among the members, −1 for a non-member
    source = np.broadcast_to(np.arange(rows.size)[:, None], targets.shape)
    inside = targets >= 0
    edges = sp.csr_matrix((np.ones(int(inside.sum())), (source[inside], targets[inside])), shape=(rows.size,) * 2)
    _, component = sp.csgraph.connected_components(edges, directed=False)  # undirected: an edge either way joins
    ids, first = np.unique(component, return_index=True)
    big = ids[np.bincount(component)[ids] >= min_size]
    number = np.full(ids.size, -1, dtype=np.int64)
    number[big[np.argsort(first[big])]] = np.arange(big.size)  # by first member, not scipy's numbering
    labels[rows] = number[component]
    return labels
