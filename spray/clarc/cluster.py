"""From a flagged cluster ``CLASS:CLUSTERING:ID`` (as ``spray rank --json`` names it, or ``top``) to sample
indices.

The analysis pipeline stores, per class ``c`` of analysis ``A`` (docs/store.md): ``analyses/A/c/status``
with arrays ``positions`` (store rows) and ``dataset_index`` (indices into the user's dataset), and each
clustering node (``kmeans``, ``hdbscan``, ...) with one label array per clustering, aligned with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spray.clarc.cav import check_cav_sizes
from spray.errors import BadInputError
from spray.ranking import rank_analyses
from spray.results import CLUSTERING_NODES, analysis_summary, complete_analyses, no_analysis_error
from spray.store import AuditStore


@dataclass(frozen=True)
class ClusterSpec:
    """``label:clustering:cluster``, e.g. ``8:kmeans_3:1``."""

    label: int
    clustering: str
    cluster: int

    @classmethod
    def parse(cls, text: str | ClusterSpec) -> ClusterSpec:
        """``"8:kmeans_3:1"`` -> ``ClusterSpec(8, "kmeans_3", 1)``; a bad spec is a ``BadInputError``."""
        if isinstance(text, ClusterSpec):
            return text
        parts = str(text).split(":")
        try:
            if len(parts) != 3 or not parts[1]:
                raise ValueError
            return cls(int(parts[0]), parts[1], int(parts[2]))
        except ValueError:
            raise BadInputError(
                f"cluster {text!r} is not CLASS:CLUSTERING:ID, e.g. '8:kmeans_3:1' (see `spray rank --json`: "
                "class, clustering, cluster)"
            ) from None

    def __str__(self) -> str:
        return f"{self.label}:{self.clustering}:{self.cluster}"


@dataclass(frozen=True)
class ClusterMembers:
    """The flagged cluster's samples and the rest of its class, as dataset indices (sorted as stored)."""

    spec: ClusterSpec
    analysis: str
    artifact: np.ndarray
    rest: np.ndarray


def choose_analysis(store: AuditStore, analysis: str | None) -> str:
    """``analysis`` if the store has it; by default the only analysis, or ``"spray"`` among several."""
    have = complete_analyses(store)
    if analysis is None:
        if len(have) == 1:
            return have[0]
        if "spray" in have:
            return "spray"
    if analysis in have:
        return analysis
    raise no_analysis_error(store, analysis)


@dataclass(frozen=True)
class Target:
    """The cluster a ClArC run corrects, the analysis it is read from, and its class's standing in the ranking
    that names it (:func:`spray.ranking.rank_analyses`): ``flagged``, and ``q_value`` (None: the analysis has
    no selection null, or the ranking does not hold the class); ``analyses``: the analyses that ranking is over
    (what a verification ranks again: spray.clarc.verify)."""

    spec: ClusterSpec
    analysis: str
    flagged: bool
    q_value: float | None
    analyses: tuple[str, ...]


def resolve_cluster(store: AuditStore, cluster: str | ClusterSpec, analysis: str | None = None) -> Target:
    """``cluster`` parsed, the analysis to read it from (:func:`choose_analysis`) and its class's flag.
    ``"top"`` is the best cluster of the best-ranked *flagged* class, or, with no class flagged, of the
    best-ranked class (:meth:`~spray.ranking.Ranking.top_flagged`, :meth:`~spray.ranking.Ranking.top_candidate`;
    the target then says it is not flagged, and spray warns): of ``analysis``'s ranking when it is named or the
    store has one analysis; else of the ranking over all the store's analyses, and then the analysis is the
    one that names the cluster."""
    if cluster != "top":
        spec, analysis = ClusterSpec.parse(cluster), choose_analysis(store, analysis)
        entry = rank_analyses(store, [analysis]).of(spec.label)
        return Target(spec, analysis, bool(entry and entry.flagged), entry.q_value if entry else None, (analysis,))
    have = complete_analyses(store)
    analyses = have if analysis is None and len(have) > 1 else [choose_analysis(store, analysis)]
    ranking = rank_analyses(store, analyses)
    top = ranking.top_flagged() or ranking.top_candidate()
    if top is None:
        raise BadInputError(f"audit store {store.path} has no ranked class in analysis {', '.join(map(repr, analyses))}; "
                            "name the cluster as CLASS:CLUSTERING:ID")
    return Target(ClusterSpec(top.label, top.cluster.clustering, top.cluster.id), top.analysis, top.flagged,
                  top.q_value, tuple(analyses))


def read_cluster(store: AuditStore, cluster: str | ClusterSpec, analysis: str | None = None) -> ClusterMembers:
    """Members of ``cluster`` and the rest of its class, read from the store's analysis."""
    spec = ClusterSpec.parse(cluster)
    analysis = choose_analysis(store, analysis)
    group = f"analyses/{analysis}"
    status_path = f"{group}/{spec.label}/status"
    if not store.has_node(status_path):
        analysed = sorted(int(p.split("/")[2]) for p in store.list_nodes(group) if p.endswith("/status"))
        raise BadInputError(
            f"class {spec.label} was not analysed in analysis {analysis!r} of {store.path}; analysed classes: "
            f"{', '.join(map(str, analysed)) or 'none'} (run `spray analyze` for it, or pick one of these)"
        )
    analysis_summary(store, analysis)  # refuses an analysis of an attribution replaced since
    status_arrays, status = store.read_node(status_path)
    if status.get("skipped"):
        raise BadInputError(
            f"class {spec.label} was skipped by analysis {analysis!r} ({status['skipped']}); it has no clusters"
        )
    with store.interpreting(f"class {spec.label} of analysis {analysis!r}"):
        labels = _labels(store, f"{group}/{spec.label}", spec)
        index = status_arrays["dataset_index"]
        if index.dtype.kind not in "iu" or index.ndim != 1:
            raise ValueError(f"dataset_index has shape {index.shape} and dtype {index.dtype}")
        index = index.astype(np.int64)
    if labels.shape != index.shape:
        raise BadInputError(
            f"clustering {spec.clustering!r} of class {spec.label} has {labels.size} labels for {index.size} "
            "samples; the analysis is stale, run `spray analyze` again"
        )
    valid = sorted(c for c in set(labels.tolist()) if c >= 0)
    choose = (f"valid ids: {', '.join(map(str, valid))} (e.g. {spec.label}:{spec.clustering}:{valid[0]})" if valid
              else "it has no cluster, only noise: pick another clustering")
    if spec.cluster < 0:  # HDBSCAN's and DBSCAN's -1: the samples in no cluster, which share no one pattern
        raise BadInputError(
            f"cluster {spec.cluster} of clustering {spec.clustering!r} of class {spec.label} is the noise label "
            f"(the samples the clustering put in no cluster), not a cluster: ClArC needs one cluster; {choose}"
        )
    if spec.cluster not in valid:
        raise BadInputError(
            f"clustering {spec.clustering!r} of class {spec.label} has no cluster {spec.cluster}; {choose}"
        )
    members = labels == spec.cluster
    # Refused here, before a run directory is made for it.
    check_cav_sizes(int(members.sum()), int((~members).sum()), label=spec.label, cluster=str(spec))
    return ClusterMembers(spec, analysis, index[members], index[~members])


def _labels(store: AuditStore, path: str, spec: ClusterSpec) -> np.ndarray:
    """The label array named ``spec.clustering``: in the FDA's best node first, else any clustering node."""
    nodes: list[str] = []
    if store.has_node(f"{path}/fda"):
        best = store.read_node(f"{path}/fda")[1].get("info", {}).get("best", {})
        if best.get("clustering") == spec.clustering and best.get("node"):
            nodes.append(best["node"])
    nodes += [n for n in CLUSTERING_NODES if n not in nodes]
    names: list[str] = []
    for node in nodes:
        if not store.has_node(f"{path}/{node}"):
            continue
        arrays, _ = store.read_node(f"{path}/{node}")
        if spec.clustering in arrays:
            return np.asarray(arrays[spec.clustering]).astype(np.int64)
        names += sorted(arrays)
    raise BadInputError(
        f"class {spec.label} has no clustering {spec.clustering!r}; valid clusterings: "
        f"{', '.join(names) or 'none (run `spray analyze`)'}"
    )
