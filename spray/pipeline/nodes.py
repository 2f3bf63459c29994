"""The node table of the SpRAy processing graph: which processor each pipeline table runs, on what.

Tables of a pipeline file (docs/pipelines.md) are named after these nodes; a node's parameters are its
processor's constructor parameters. ``preprocess`` runs once over all heatmaps; every other node runs per
class on the class's preprocessed heatmaps (``inputs["features"]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from spray.analysis import (
    Agglomerative,
    DBSCANClustering,
    HDBSCANClustering,
    HeatmapPreprocessor,
    KMeansRange,
    KNNGraph,
    KNNOutlierGroups,
    PreprocessedMaps,
    SelectionNull,
    SpectralEmbedding,
    TSNEMap,
    UMAPMap,
    best_cluster,
    candidate_cuts,
    most_separable,
    propose_n_clusters,
    separabilities,
    separation,
)
from spray.errors import BadInputError
from spray.pipeline.graph import Node, NodeOutput
from spray.pipeline.spec import constructor_defaults, signature_defaults

Inputs = Mapping[str, NodeOutput]

PREPROCESS_DEFAULTS = {
    k: v for k, v in constructor_defaults(HeatmapPreprocessor).items() if k not in ("drop_nonfinite", "batch_size")
}


def _features(inputs: Inputs) -> np.ndarray:
    return inputs["features"][0]["features"]


def _adjacency(inputs: Inputs) -> sp.csr_matrix:
    arrays = inputs["knn"][0]
    n = arrays["indices"].shape[0]
    return sp.csr_matrix(
        (arrays["adjacency_data"], arrays["adjacency_indices"], arrays["adjacency_indptr"]), shape=(n, n)
    )


def _embedding(inputs: Inputs) -> np.ndarray:
    return inputs["spectral"][0]["embedding"]


def _knn(params: dict[str, Any], inputs: Inputs) -> NodeOutput:
    graph = KNNGraph(**params).fit(_features(inputs))
    adjacency = graph.adjacency_
    arrays = {
        "indices": graph.indices_,
        "distances": graph.distances_.astype(np.float32),
        "adjacency_data": adjacency.data.astype(np.float32),
        "adjacency_indices": adjacency.indices,
        "adjacency_indptr": adjacency.indptr,
    }
    info = {"method": graph.method_, "recall": float(graph.recall_), "recall_queries": graph.recall_queries_,
            "search_dims": graph.search_dims_}
    return arrays, info


def _spectral(params: dict[str, Any], inputs: Inputs) -> NodeOutput:
    spectral = SpectralEmbedding(**params).fit(_adjacency(inputs))
    proposed = propose_n_clusters(spectral.eigenvalues_)
    arrays = {"eigenvalues": spectral.eigenvalues_, "embedding": spectral.embedding_.astype(np.float32)}
    info = {
        "n_components": spectral.n_components_,
        "n_isolated": spectral.n_isolated_,
        "eigengap_n_clusters": int(proposed),
    }
    return arrays, info


def _clustering(cls: type) -> Any:
    def run(params: dict[str, Any], inputs: Inputs) -> NodeOutput:
        clusterer = cls(**params).fit(_embedding(inputs))
        return clusterer.named_labels(), {"skipped": {str(k): v for k, v in clusterer.skipped_.items()}}

    return run


def _outliers(params: dict[str, Any], inputs: Inputs) -> NodeOutput:
    """Groups of kNN-distance outliers, read from the knn node's neighbour lists (not the embedding)."""
    knn = inputs["knn"][0]
    groups = KNNOutlierGroups(**params).fit(knn["indices"], knn["distances"])
    labels = groups.named_labels()
    info = {
        "skipped": {},
        "n_outliers": {name: int(np.sum(groups.scores_ > t)) for name, t in zip(labels, groups.labels_)},
        "n_groups": {name: int(lab.max() + 1) for name, lab in labels.items()},
    }
    return labels, info


def _map(cls: type) -> Any:
    def run(params: dict[str, Any], inputs: Inputs) -> NodeOutput:
        knn = inputs["knn"][0]
        mapper = cls(**params).fit(_embedding(inputs), knn=(knn["indices"], knn["distances"]))
        fitted = ("n_neighbors_", "n_epochs_", "negative_sample_rate_", "perplexity_", "fit_samples_")
        info = {"notes": mapper.notes_, **{a.rstrip("_"): getattr(mapper, a) for a in fitted if hasattr(mapper, a)}}
        return {"embedding": mapper.embedding_.astype(np.float32)}, info

    return run


_FDA_FIT = ("n_permutations", "random_state", "regularization")
FDA_DEFAULTS = signature_defaults(best_cluster, skip=("embedding", "clusterings", "affinity", "knn", "features"))
"""The fda node's parameters: :func:`best_cluster`'s, with the cuts of the class's kNN graph (``small_neighbors``,
default :data:`spray.analysis.cut.SMALL_NEIGHBORS`) and the best cluster's separation in the class's features."""


def _fda(params: dict[str, Any], inputs: Inputs) -> NodeOutput:
    """Separability of every clustering and of each of its clusters, each cluster's normalised cut in the
    locally scaled affinity of the class's kNN graph (small clusters in its ``small_neighbors`` graph), and
    the class's best candidate cluster with its :func:`separation` in the class's features. Per-cluster statistics
    are arrays, one row per cluster of every clustering (a class has hundreds: as JSON text they would outgrow an
    attribute, docs/store.md); per-clustering ones and ``best`` are info."""
    embedding = _embedding(inputs)
    source = {
        name: (node, labels)
        for node, (arrays, _) in inputs.items()
        if node in NODES and NODES[node].kind == "clustering"
        for name, labels in arrays.items()
    }
    fits = separabilities(embedding, {name: labels for name, (_, labels) in source.items()},
                          **{k: params[k] for k in _FDA_FIT})
    knn = inputs["knn"][0]
    cuts = candidate_cuts(knn["indices"], knn["distances"], {name: labels for name, (_, labels) in source.items()},
                          params["small_neighbors"])
    rows = [(name, c, fit) for name, fit in fits.items() for c in fit.cluster_ids_]
    arrays = {
        "cluster_clustering": np.array([name for name, _, _ in rows], dtype=str),
        "cluster_id": np.array([c for _, c, _ in rows], dtype=np.int64),
        "cluster_size": np.array([fit.cluster_sizes_[c] for _, c, fit in rows], dtype=np.int64),
        **{
            f"cluster_{stat}": np.array([getattr(fit, attr)[c] for _, c, fit in rows], dtype=np.float64)
            for stat, attr in (("tau", "cluster_scores_"), ("z_score", "cluster_z_scores_"),
                               ("p_value", "cluster_p_values_"))
        },
        "cluster_ncut": np.array([cuts[name][c] for name, c, _ in rows], dtype=np.float64),
    }
    table = {
        name: {"score": fit.score_, "z_score": fit.z_score_, "p_value": fit.p_value_, "n_clusters": fit.n_clusters_}
        for name, fit in fits.items()
    }
    name, cluster, stats = most_separable(fits, params["max_fraction"], params["min_size"], cuts)
    node = source[name][0] if name is not None else None
    if name is not None:
        stats["separation"] = separation(_features(inputs), source[name][1] == cluster)
    return arrays, {"clusterings": table, "best": {"node": node, "clustering": name, "cluster": cluster, **stats}}


NULL_CLUSTERING_OVERRIDES = {"kmeans": {"k_max": 6, "n_init": 1}}
"""What the selection null changes in a clustering node's parameters (every other node reruns as the
pipeline has it): k-means for k = k_min … min(k_max, 6), one restart — the null's cost stays below the
class's analysis (docs/spray-method.md §11). The observed statistic is recomputed the same way."""


def _reduced(node: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of clustering node ``node`` with the null's overrides: a ``k_max`` override only lowers
    k_max, never below the node's k_min (a pipeline whose k-means starts above 6 keeps its first k)."""
    reduced = {**params, **NULL_CLUSTERING_OVERRIDES.get(node, {})}
    if "k_max" in reduced and "k_max" in params:
        reduced["k_max"] = max(min(reduced["k_max"], params["k_max"]), params.get("k_min", 1))
    return reduced


def _selection(params: Mapping[str, dict[str, Any]]) -> Any:
    """The selection of the pipeline whose node parameters are ``params`` as one function of a feature matrix: the
    knn, spectral, every clustering node of ``params`` (reduced by :data:`NULL_CLUSTERING_OVERRIDES`) and fda nodes
    rerun on it, returning the selected cluster's (ncut, z-score)."""
    clusterings = sorted(n for n in params if n in NODES and NODES[n].kind == "clustering")

    def select(X: np.ndarray) -> tuple[float | None, float | None]:
        features: NodeOutput = ({"features": X.astype(np.float32)}, {})
        knn = _knn(params["knn"], {"features": features})
        inputs: dict[str, NodeOutput] = {"features": features, "knn": knn,
                                         "spectral": _spectral(params["spectral"], {"knn": knn})}
        for node in clusterings:
            inputs[node] = NODES[node].run(_reduced(node, params[node]), inputs)
        best = _fda({**params["fda"], "n_permutations": 0}, inputs)[1]["best"]
        return best.get("ncut"), best.get("z_score")

    return select


def _null(params: dict[str, Any], inputs: Inputs) -> NodeOutput:
    """The selection null of the class (:class:`SelectionNull`): the observed statistic, its null draws and
    p-values. Reads the parameters of the nodes it reruns (``inputs["params"]``)."""
    read = inputs["params"][1]
    floor = max(read["spectral"]["n_eigenpairs"], read["knn"]["n_neighbors"])
    if isinstance(params["max_samples"], int) and params["max_samples"] <= floor:
        raise BadInputError(f"max_samples must be greater than spectral.n_eigenpairs and knn.n_neighbors "
                            f"(the null reruns them on its rows), so >= {floor + 1}, got {params['max_samples']}")
    null = SelectionNull(**params).fit(_features(inputs), _selection(read))
    arrays = {"null_statistics": null.null_statistics_, "null_z_scores": null.null_z_scores_}
    info = {
        "statistic": null.statistic_, "z_score": null.z_score_, "p_value": null.p_value_,
        "empirical_p_value": null.empirical_p_value_, "gumbel_location": null.gumbel_location_,
        "gumbel_scale": null.gumbel_scale_, "n_samples": null.n_samples_, "n_components": null.n_components_,
        "shrinkage": null.shrinkage_,
    }
    return arrays, info


def _defaults(cls: type) -> dict[str, Any]:
    """A processor's constructor defaults, seeded: pipelines are reproducible unless a file says otherwise."""
    defaults = constructor_defaults(cls)
    if "random_state" in defaults and defaults["random_state"] is None:
        defaults["random_state"] = 0
    return defaults


NODES: dict[str, Node] = {
    node.name: node
    for node in (
        Node("knn", (), _knn, _defaults(KNNGraph), required=True),
        Node("spectral", ("knn",), _spectral, _defaults(SpectralEmbedding), required=True),
        Node("kmeans", ("spectral",), _clustering(KMeansRange), _defaults(KMeansRange), required=True,
             kind="clustering", unkeyed=("n_jobs",)),
        Node("hdbscan", ("spectral",), _clustering(HDBSCANClustering), _defaults(HDBSCANClustering), kind="clustering",
             default=True),
        Node("agglomerative", ("spectral",), _clustering(Agglomerative), _defaults(Agglomerative),
             kind="clustering", default=True),
        Node("dbscan", ("spectral",), _clustering(DBSCANClustering), _defaults(DBSCANClustering), kind="clustering"),
        Node("outliers", ("knn",), _outliers, _defaults(KNNOutlierGroups), kind="clustering"),
        Node("umap", ("spectral", "knn"), _map(UMAPMap), _defaults(UMAPMap), kind="map", default=True),
        Node("tsne", ("spectral", "knn"), _map(TSNEMap), _defaults(TSNEMap), kind="map", default=True),
        Node("fda", ("spectral", "knn"), _fda, FDA_DEFAULTS, required=True,
             depends_on_all="clustering", version=5),  # 2: exact-moment z-scores; 3: per-cluster arrays; 4: cuts;
        # 5: the best cluster's separation
        Node("null", ("knn", "spectral", "fda"), _null, _defaults(SelectionNull), required=True,
             depends_on_all="clustering", reads_params=True),
    )
}


def preprocess(
    params: dict[str, Any], blocks: Iterable[np.ndarray], shape: Sequence[int], *, drop_nonfinite: bool
) -> PreprocessedMaps:
    """Features of all heatmaps, of shape ``shape``, from consecutive blocks of their rows (the store's), and
    their row masks."""
    return HeatmapPreprocessor(**params, drop_nonfinite=drop_nonfinite).preprocess_blocks(blocks, shape)
