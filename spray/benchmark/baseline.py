"""The baselines without attribution: what the scorecard compares spray against, to show what explanations add.

Each baseline names, per class, one candidate group of training samples and orders the classes (best candidate
first), as ``spray rank`` names a cluster per class and orders the classes; the scorecard scores the group and
the order like spray's (rank of the poisoned class, F1 of its group). All three read the model's penultimate
layer (the activations that enter its last linear layer, flattened, rows scaled to unit length) or its output:

- ``activation``: SpRAy's per-class analysis on the activations instead of heatmaps (spray.analysis: kNN graph,
  spectral embedding, k-means for k = 2 … 31, the best small cluster by normalised cut — a cluster of at most 10
  samples cut in 5 neighbours, as the fda node's ``small_neighbors`` — then z-score); classes ordered as
  spray.ranking orders them: lowest cut first, then largest z. Only k-means (the clustering that names most
  flagged clusters in spray's own runs) is used.
- ``knn_outlier``: per class, each sample's mean distance to its 10 nearest same-class neighbours in the
  activations (spray.analysis.KNNGraph); the group is the samples whose robust z-score of that distance,
  ``(d − median) / (1.4826 · MAD)``, is at least 3; classes ordered by the group's share of the class, then by
  the largest z. What an outlier detector in the embedding reports.
- ``error_slice``: per class, the training samples the model gets wrong or nearly wrong: softmax margin
  ``p_true − max p_other`` below 0.5; classes ordered by the slice's share of the class, then by its mean
  margin. What a slice-discovery tool that starts from errors reports.

A class without a group (no candidate cluster, no outlier, no low-margin sample) is not listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spray.analysis import KMeansRange, KNNGraph, SpectralEmbedding, best_cluster
from spray.analysis.cut import SMALL_NEIGHBORS
from spray.clarc.activations import activations
from spray.errors import BadInputError


OUTLIER_Z = 3.0
"""knn_outlier: a sample is in its class's group at a robust z-score of its kNN distance of at least 3."""
MARGIN = 0.5
"""error_slice: a sample is in its class's slice below this softmax margin (misclassified: below 0)."""


@dataclass(frozen=True)
class BaselineClass:
    """One class's group in a baseline: its dataset indices, and the key the classes are ordered by (ascending;
    the class index breaks ties)."""

    label: int
    members: np.ndarray
    key: tuple[float, ...]


def penultimate_layer(model: nn.Module) -> str:
    """The module whose output enters the model's last ``nn.Linear`` (in registration order)."""
    leaves = [name for name, m in model.named_modules() if name and next(m.children(), None) is None]
    modules = dict(model.named_modules())
    linear = [i for i, name in enumerate(leaves) if isinstance(modules[name], nn.Linear)]
    if not linear or linear[-1] == 0:
        raise BadInputError("the baseline needs a model whose last linear layer follows another module")
    return leaves[linear[-1] - 1]


def penultimate_features(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The activations entering the last linear layer of ``model`` for ``x`` (n, ...): (n, d), rows of unit length."""
    features = activations(model, penultimate_layer(model), torch.from_numpy(x)).flatten(1).numpy()
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _ordered(found: list[BaselineClass]) -> list[BaselineClass]:
    return sorted(found, key=lambda c: (*c.key, c.label))


def activation_baseline(model: nn.Module, x: np.ndarray, y: np.ndarray,
                        small_neighbors: int | None = SMALL_NEIGHBORS) -> list[BaselineClass]:
    """``activation`` on samples ``x`` (n, ...) with labels ``y`` (n,): one entry per class that has a
    candidate cluster, best candidate first (see the module docstring). ``small_neighbors``: as the fda node's
    (None: every cluster cut in the 10-neighbour graph, the rule before scoring version 33)."""
    features = penultimate_features(model, x)
    found = []
    for label in np.unique(y):
        index = np.flatnonzero(y == label)
        graph = KNNGraph().fit(features[index])
        embedding = SpectralEmbedding(random_state=0).fit(graph.adjacency_).embedding_
        clusterings = KMeansRange().fit(embedding).named_labels()
        name, cluster, stats = best_cluster(embedding, clusterings, knn=(graph.indices_, graph.distances_),
                                            small_neighbors=small_neighbors)
        if name is not None:
            found.append(BaselineClass(int(label), index[clusterings[name] == cluster],
                                       (float(stats["ncut"]), -float(stats["z_score"]))))
    return _ordered(found)


def knn_outlier_baseline(model: nn.Module, x: np.ndarray, y: np.ndarray) -> list[BaselineClass]:
    """``knn_outlier`` on ``x`` (n, ...) with labels ``y`` (n,) (see the module docstring)."""
    features = penultimate_features(model, x)
    found = []
    for label in np.unique(y):
        index = np.flatnonzero(y == label)
        distance = KNNGraph().fit(features[index]).distances_.mean(1)
        median = np.median(distance)
        spread = 1.4826 * float(np.median(np.abs(distance - median)))
        if spread <= 0:
            continue
        z = (distance - median) / spread
        group = z >= OUTLIER_Z
        if group.any():
            found.append(BaselineClass(int(label), index[group], (-float(group.mean()), -float(z.max()))))
    return _ordered(found)


def error_slice_baseline(model: nn.Module, x: np.ndarray, y: np.ndarray) -> list[BaselineClass]:
    """``error_slice`` on ``x`` (n, ...) with labels ``y`` (n,) (see the module docstring)."""
    with torch.no_grad():
        probabilities = torch.softmax(model.eval()(torch.from_numpy(x)), dim=1).numpy()
    rows = np.arange(len(y))
    true = probabilities[rows, y]
    probabilities[rows, y] = -np.inf
    margin = true - probabilities.max(1)
    found = []
    for label in np.unique(y):
        index = np.flatnonzero(y == label)
        low = margin[index] < MARGIN
        if low.any():
            found.append(BaselineClass(int(label), index[low], (-float(low.mean()), float(margin[index][low].mean()))))
    return _ordered(found)


BASELINES = {"activation": activation_baseline, "knn_outlier": knn_outlier_baseline,
             "error_slice": error_slice_baseline}
"""The baselines by name, in the scorecard's order: ``baseline(model, x, y) -> classes, best group first``."""
