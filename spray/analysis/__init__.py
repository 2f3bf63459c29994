"""SpRAy analysis processors, each usable alone with a scikit-learn-like API (params in ``__init__``, work in
``fit``/``transform``, learned attributes ending in ``_``). In pipeline order:

heatmaps -> :class:`HeatmapPreprocessor` -> :class:`KNNGraph` -> :class:`SpectralEmbedding`
-> :func:`propose_n_clusters` / clusterers (:class:`KMeansRange`, :class:`HDBSCANClustering`,
:class:`Agglomerative`, :class:`DBSCANClustering`;
:class:`KNNOutlierGroups` from the kNN graph) -> maps (:class:`UMAPMap`, :class:`TSNEMap`)
-> :class:`FisherSeparability`, :func:`normalized_cuts` in :func:`local_scaling_affinity` of the kNN graph
-> :func:`best_cluster` (and its :func:`separation`) -> :class:`SelectionNull` (the same selection rerun on a
Gaussian model of the class).

Definitions: docs/spray-method.md. umap/pynndescent are imported lazily (numba compiles on first use).
"""

from __future__ import annotations

from spray.analysis.clustering import (
    Agglomerative,
    DBSCANClustering,
    HDBSCANClustering,
    KMeansRange,
    normalize_rows,
)
from spray.analysis.cut import candidate_cuts, local_scaling_affinity, normalized_cuts
from spray.analysis.eigengap import eigengaps, propose_n_clusters
from spray.analysis.fda import FisherSeparability, best_cluster, most_separable, separabilities, separation
from spray.analysis.knn import KNNGraph, knn_adjacency
from spray.analysis.maps import TSNEMap, UMAPMap
from spray.analysis.outliers import KNNOutlierGroups, robust_z
from spray.analysis.preprocess import HeatmapPreprocessor, PreprocessedMaps
from spray.analysis.selection_null import SelectionNull, selection_excess
from spray.analysis.spectral import SpectralEmbedding

__all__ = [
    "Agglomerative",
    "DBSCANClustering",
    "HDBSCANClustering",
    "FisherSeparability",
    "HeatmapPreprocessor",
    "KMeansRange",
    "KNNGraph",
    "KNNOutlierGroups",
    "PreprocessedMaps",
    "SelectionNull",
    "selection_excess",
    "SpectralEmbedding",
    "TSNEMap",
    "UMAPMap",
    "best_cluster",
    "most_separable",
    "separabilities",
    "separation",
    "eigengaps",
    "knn_adjacency",
    "candidate_cuts",
    "local_scaling_affinity",
    "normalized_cuts",
    "normalize_rows",
    "propose_n_clusters",
    "robust_z",
]
