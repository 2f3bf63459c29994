"""The baseline without attribution: SpRAy's per-class analysis run on penultimate-layer activations.

What the scorecard compares spray against, to show what the explanations add: for each class, the
activations that enter the model's last linear layer (flattened, rows scaled to unit length) go through the
same processors the default pipeline runs on heatmaps (spray.analysis: kNN graph, spectral embedding,
k-means for k = 2 … 31, the best small cluster by normalised cut, then z-score), and classes are ordered
as spray.ranking orders them: lowest cut first, then largest z. Only k-means (the clustering that names
most flagged clusters in spray's own runs) is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spray.analysis import KMeansRange, KNNGraph, SpectralEmbedding, best_cluster, local_scaling_affinity
from spray.clarc.activations import activations
from spray.errors import BadInputError


@dataclass(frozen=True)
class BaselineClass:
    """One class's best cluster in the baseline: its dataset indices, normalised cut and z-score."""

    label: int
    members: np.ndarray
    ncut: float
    z_score: float


def penultimate_layer(model: nn.Module) -> str:
    """The module whose output enters the model's last ``nn.Linear`` (in registration order)."""
    leaves = [name for name, m in model.named_modules() if name and next(m.children(), None) is None]
    modules = dict(model.named_modules())
    linear = [i for i, name in enumerate(leaves) if isinstance(modules[name], nn.Linear)]
    if not linear or linear[-1] == 0:
        raise BadInputError("the baseline needs a model whose last linear layer follows another module")
    return leaves[linear[-1] - 1]


def activation_baseline(model: nn.Module, x: np.ndarray, y: np.ndarray) -> list[BaselineClass]:
    """The baseline on samples ``x`` (n, ...) with labels ``y`` (n,): one entry per class that has a
    candidate cluster, best candidate first (see the module docstring)."""
    features = activations(model, penultimate_layer(model), torch.from_numpy(x)).flatten(1).numpy()
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    found = []
    for label in np.unique(y):
        index = np.flatnonzero(y == label)
        graph = KNNGraph().fit(features[index])
        embedding = SpectralEmbedding(random_state=0).fit(graph.adjacency_).embedding_
        clusterings = KMeansRange().fit(embedding).named_labels()
        affinity = local_scaling_affinity(graph.indices_, graph.distances_)
        name, cluster, stats = best_cluster(embedding, clusterings, affinity=affinity)
        if name is not None:
            found.append(BaselineClass(int(label), index[clusterings[name] == cluster], float(stats["ncut"]),
                                       float(stats["z_score"])))
    return sorted(found, key=lambda c: (c.ncut, -c.z_score, c.label))
