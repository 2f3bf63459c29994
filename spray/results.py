"""The one reader of an audit's stored results: analyses (``analyses/<A>/...``) and ClArC runs
(``clarc/<run>/result``).

The executor (:mod:`spray.pipeline.executor`) and ClArC (:mod:`spray.clarc.run`, through :func:`write_result`)
write them; ranking, ClArC's cluster choice, the report and the exports read them here, never through an
output format. :func:`read_class` gathers one class's current analysis nodes (a node counts only if its memo
key is the one the class's ``status`` node lists, so a stale node left by an earlier pipeline is never shown).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spray.analysis.selection_null import selection_excess
from spray.errors import BadInputError, StoreError
from spray.pipeline.nodes import NODES
from spray.store import AuditStore

__all__ = [
    "CLUSTERING_NODES",
    "ClarcRun",
    "ClassAnalysis",
    "ClassBest",
    "Cluster",
    "analysis_summary",
    "best_clusters",
    "complete_analyses",
    "label_names",
    "no_analysis_error",
    "read_clarc_runs",
    "read_class",
    "result_node",
    "write_result",
]

CLUSTERING_NODES = tuple(name for name, node in NODES.items() if node.kind == "clustering")
"""The analysis nodes that hold clusterings (one label array per clustering), as the node table says."""


@dataclass(frozen=True)
class Cluster:
    """One cluster of a class's analysis and the FDA statistics the analysis stored for it
    (docs/spray-method.md defines each): the cluster ``id`` of clustering ``clustering`` of class ``label``.

    ``members`` are the cluster's samples as dataset indices, in the class's stored order. ``tau`` is the
    cluster's one-vs-rest Fisher separability τ, ``z_score`` and ``p_value`` τ's standing against random
    subsets of the same size, ``clustering_j`` the FDA score J of the whole clustering, and ``ncut`` the
    cluster's normalised cut in its class's kNN affinity graph: None for a store analysed before fda
    version 4, which stored no cuts. A statistic the analysis could not compute is NaN (or None as stored).
    """

    label: int
    clustering: str
    id: int
    members: tuple[int, ...]
    ncut: float | None
    tau: float | None
    z_score: float | None
    p_value: float | None
    clustering_j: float | None

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def reference(self) -> str:
        """``CLASS:CLUSTERING:ID``, as ``spray clarc --cluster`` names this cluster."""
        return f"{self.label}:{self.clustering}:{self.id}"


@dataclass
class ClassAnalysis:
    """One class's analysis as stored (``analyses/<A>/<label>/...``), current nodes only.

    ``positions`` (n,) are row positions in the store, ``dataset_index`` (n,) the samples' dataset
    indices; ``embedding`` (n, m) and ``eigenvalues`` (m,) come from the spectral node, ``maps`` holds
    the 2-D maps by node name (``umap``, ``tsne``), ``clusterings`` every clustering's labels by name
    (``kmeans_3``, ``hdbscan``; -1 = noise) and ``fda`` the FDA node's info (``best``; ``clusterings``: per
    clustering its score, z-score, p-value and, under ``clusters``, its clusters' size, tau, z_score and
    p_value by cluster id, from the node's arrays).
    A skipped class has ``skipped`` set and nothing else.
    """

    label: int
    name: str
    n: int
    skipped: str | None
    positions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    dataset_index: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    eigenvalues: np.ndarray | None = None
    embedding: np.ndarray | None = None
    spectral_info: dict[str, Any] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    clusterings: dict[str, np.ndarray] = field(default_factory=dict)
    fda: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any] | None:
        """The flagged cluster (FDA's ``best``: clustering, cluster, z_score, ...) or None."""
        best = self.fda.get("best") or {}
        return best if best.get("clustering") in self.clusterings else None


def _fda_info(arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> dict[str, Any]:
    """The fda node's info, each clustering with its per-cluster statistics (stored as arrays) under
    ``clusters``: ``{cluster id: {"size", "tau", "z_score", "p_value", "ncut"}}`` (no ``ncut`` in a store
    analysed before fda version 4)."""
    info = dict(attrs.get("info") or {})
    table = {name: {**row, "clusters": {}} for name, row in (info.get("clusterings") or {}).items()}
    stats = ("size", "tau", "z_score", "p_value") + (("ncut",) if "cluster_ncut" in arrays else ())
    columns = [arrays[f"cluster_{stat}"] for stat in stats]
    for name, cid, *values in zip(arrays["cluster_clustering"], arrays["cluster_id"], *columns, strict=True):
        if str(name) in table:
            table[str(name)]["clusters"][int(cid)] = {
                stat: (int(v) if stat == "size" else float(v)) for stat, v in zip(stats, values)
            }
    info["clusterings"] = table
    return info


def complete_analyses(store: AuditStore) -> list[str]:
    """The analyses whose summary is written: an analysis is complete from its first finished run on."""
    return sorted({p.split("/")[1] for p in store.list_nodes("analyses") if p.endswith("/summary")})


def no_analysis_error(store: AuditStore, analysis: str | None) -> BadInputError:
    """The error for an analysis ``analysis`` that the store lacks (complete), listing those it has: an
    analysis whose first run has not finished is named as such, and so is the process writing the store,
    if any."""
    have = complete_analyses(store)
    started = {p.split("/")[1] for p in store.list_nodes("analyses")} - set(have)
    if analysis in started:
        writer = store.writer()
        return BadInputError(
            f"analysis {analysis!r} of audit store {store.path} is not complete: "
            + (f"`spray analyze` is writing it ({writer}); run this again when it has finished" if writer else
               "its first `spray analyze` stopped before the end (interrupted, or refused: its message said "
               "why); run `spray analyze` again to complete it, with what it refused changed")
        )
    if have:
        advice = "name one of them"
    elif writer := store.writer():  # an attribution, or an analysis before its first class is written
        advice = (f"another process is writing the store ({writer}): run `spray analyze` when it has finished, "
                  "unless it is `spray analyze` itself (then run this again)")
    else:
        advice = "run `spray analyze` first"
    return BadInputError(
        f"audit store {store.path} has no analysis {analysis or ''!r} (it has: {', '.join(have) or 'none'}); "
        + advice
    )


def analysis_summary(store: AuditStore, analysis: str = "spray") -> dict[str, Any]:
    """Attrs of ``analyses/<analysis>/summary`` (pipeline, attribution, classes, ...), checked.

    Raises:
        BadInputError: the store has no such analysis (the message lists the ones it has), or the
            attribution it analysed has been replaced since (``spray attribute --overwrite``).
        StoreError: the summary is damaged, or its attribution is gone.
    """
    path = f"analyses/{analysis}/summary"
    if not store.has_node(path):
        raise no_analysis_error(store, analysis)
    summary = store.read_node(path)[1]
    with store.interpreting(f"node {path}"):
        attribution = summary["attribution"]
        if not isinstance(attribution, str) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in summary["classes"]
        ):
            raise TypeError(f"attribution {attribution!r}, classes {summary['classes']!r:.80}")
    if attribution not in store.attributions():
        raise StoreError(
            f"analysis {analysis!r} of audit store {store.path} was made from attribution {attribution!r}, "
            "which the store no longer holds; run `spray analyze` again"
        )
    made_from = summary.get("attribution_id")  # recorded since the analysis summary has it (older: trusted)
    if made_from is not None and store.attribution_info(attribution)["attribution_id"] != made_from:
        raise BadInputError(
            f"analysis {analysis!r} of audit store {store.path} was made from an earlier version of attribution "
            f"{attribution!r}, replaced since (spray attribute --overwrite); run `spray analyze` again to "
            "bring it up to date"
        )
    return summary


@dataclass(frozen=True)
class ClassBest:
    """One analysed class as the ranking needs it: its best candidate cluster as the class's fda node names
    it, or the reason it has none (too few samples, no candidate cluster, an unfinished analysis)."""

    label: int
    name: str
    n_samples: int
    cluster: Cluster | None
    skipped: str | None
    null_p_value: float | None
    """The class's p-value under the selection null (the ``null`` node, docs/spray-method.md §11); None
    for a skipped class and for a store analysed before the null existed."""
    null_excess: float | None = None
    """The class's :func:`spray.analysis.selection_excess` (its selected cut against the null's), which the flags
    compare across classes with ``separation`` (§12); None where ``null_p_value`` is."""
    separation: float | None = None
    """The best cluster's :func:`spray.analysis.separation` in the class's features (docs/spray-method.md §9);
    None for a skipped class and for a store analysed before fda version 5."""


def best_clusters(store: AuditStore, analysis: str = "spray") -> list[ClassBest]:
    """Every class of ``analysis`` that has a status node, in the summary's order (:func:`analysis_summary`
    checks the analysis first)."""
    names = label_names(store)
    found = []
    for label in analysis_summary(store, analysis)["classes"]:
        path = f"analyses/{analysis}/{label}"
        if not store.has_node(f"{path}/status"):
            continue
        status_arrays, status = store.read_node(f"{path}/status")
        with store.interpreting(f"class {label} of analysis {analysis!r}"):
            name, n = names[label] if label < len(names) else str(label), int(status["n"])
            if status["skipped"] is not None:
                best, skipped, separation = None, str(status["skipped"]), None
            elif not store.has_node(f"{path}/fda", {"key": status["keys"]["fda"]}):
                best, separation = None, None
                skipped = "analysis unfinished: run `spray analyze` again to complete it"
            else:
                best, skipped, separation = _best(store, path, int(label), status_arrays["dataset_index"])
            null_key = status["keys"].get("null") if best is not None else None
            null_p = excess = None
            if null_key is not None and store.has_node(f"{path}/null", {"key": null_key}):
                null_arrays, null = store.read_node(f"{path}/null")
                null_p = _number(null["info"]["p_value"])
                statistic = _number(null["info"]["statistic"])
                excess = selection_excess(np.nan if statistic is None else statistic, null_arrays["null_statistics"])
        found.append(ClassBest(int(label), name, n, best, skipped, null_p, excess, separation))
    return found


def _best(
    store: AuditStore, path: str, label: int, dataset_index: np.ndarray
) -> tuple[Cluster | None, str | None, float | None]:
    """``(best cluster, None, its separation)`` as the class's fda node names it (the separation None before fda
    version 5), or ``(None, the reason it has none, None)``."""
    _, attrs = store.read_node(f"{path}/fda")
    best = attrs["info"]["best"]
    if best["clustering"] is None:
        return None, str(best.get("reason", "no candidate cluster")), None
    labels = store.read_node(f"{path}/{best['node']}")[0][best["clustering"]]
    if labels.shape != dataset_index.shape or labels.dtype.kind not in "iu":
        raise ValueError(
            f"clustering {best['clustering']!r} has {labels.shape} labels for {dataset_index.shape} samples"
        )
    return Cluster(
        label=label, clustering=str(best["clustering"]), id=int(best["cluster"]),
        members=tuple(int(i) for i in dataset_index[labels == best["cluster"]]),
        ncut=_number(best.get("ncut")),  # stores analysed before fda version 4 have no cuts
        tau=_number(best["tau"]), z_score=_number(best["z_score"]), p_value=_number(best["p_value"]),
        clustering_j=_number(best["clustering_score"]),
    ), None, _number(best.get("separation"))


def _number(value: Any) -> float | None:
    """A stored score: a number or None (JSON null; NaN and infinities are written as such by json)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"score {value!r:.40} is not a number")
    return value



def label_names(store: AuditStore) -> list[str]:
    return [str(n) for n in store.attrs().get("label_names") or []]


def read_class(store: AuditStore, analysis: str, label: int, names: list[str] | None = None) -> ClassAnalysis:
    """The current analysis nodes of class ``label`` (see :class:`ClassAnalysis`).

    Raises:
        StoreError: a node does not hold what the analysis writes (shapes, dtypes, values that disagree).
    """
    names = label_names(store) if names is None else names
    name = names[label] if label < len(names) else str(label)
    path = f"analyses/{analysis}/{label}"
    if not store.has_node(f"{path}/status"):
        return ClassAnalysis(label, name, 0, "not analysed (no status node)")
    status_arrays, status = store.read_node(f"{path}/status")
    with store.interpreting(f"class {label} of analysis {analysis!r}"):
        return _class_nodes(store, path, ClassAnalysis(label, name, int(status["n"]), status["skipped"]),
                            status_arrays, status)


def _class_nodes(
    store: AuditStore, path: str, result: ClassAnalysis, status_arrays: dict[str, np.ndarray], status: dict
) -> ClassAnalysis:
    """:func:`read_class` after the status node: the class's current nodes, checked against each other."""
    if result.skipped is not None:
        result.skipped = str(result.skipped)
        return result
    result.positions = _indices(status_arrays["positions"], result.n, store.n_samples, "positions")
    result.dataset_index = _indices(status_arrays["dataset_index"], result.n, None, "dataset_index")
    keys = dict(status.get("keys") or {})

    def current(node: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        if node not in keys or not store.has_node(f"{path}/{node}", {"key": keys[node]}):
            return None
        return store.read_node(f"{path}/{node}")

    for node in keys:
        kind = NODES[node].kind if node in NODES else ""
        if node == "spectral":
            found = current(node)
            if found:
                result.eigenvalues = _floats(found[0]["eigenvalues"], 1, None, "eigenvalues")
                result.embedding = _floats(found[0]["embedding"], 2, result.n, "embedding")
                result.spectral_info = dict(found[1].get("info") or {})
        elif node == "fda":
            found = current(node)
            if found:
                result.fda = _fda_info(*found)
        elif kind == "map":
            found = current(node)
            if found:
                result.maps[node] = _floats(found[0]["embedding"], 2, result.n, f"{node} embedding")
        elif kind == "clustering":
            found = current(node)
            if found:
                result.clusterings.update(
                    {k: _indices(v, result.n, None, k, minimum=-1) for k, v in sorted(found[0].items())}
                )
    if result.embedding is None or not result.fda:
        result.skipped = "analysis unfinished: run `spray analyze` again to complete it"
    return result


def _indices(array: np.ndarray, n: int, bound: int | None, what: str, minimum: int = 0) -> np.ndarray:
    """``array`` as (n,) int64 with values in ``[minimum, bound)``; a ValueError naming ``what`` otherwise."""
    if array.shape != (n,) or array.dtype.kind not in "iu":
        raise ValueError(f"{what} has shape {array.shape} and dtype {array.dtype}, expected ({n},) integers")
    if n and (array.min() < minimum or (bound is not None and array.max() >= bound)):
        raise ValueError(f"{what} has values outside [{minimum}, {bound})")
    return array.astype(np.int64)


def _floats(array: np.ndarray, ndim: int, rows: int | None, what: str) -> np.ndarray:
    """``array`` if it is a finite float array with ``ndim`` axes (``rows`` rows); a ValueError otherwise."""
    if array.ndim != ndim or array.dtype.kind != "f" or (rows is not None and array.shape[0] != rows):
        raise ValueError(f"{what} has shape {array.shape} and dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or infinity")
    return array


@dataclass
class ClarcRun:
    """One ClArC result node ``clarc/<run>/result``: its arrays (patch, mask, example_*) and attrs
    (method, cluster ``CLASS:CLUSTERING:ID``, layer, cav_auc, metrics rows)."""

    run: str
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self.attrs.get("metrics") or []]


def read_clarc_runs(store: AuditStore) -> list[ClarcRun]:
    """Every ClArC result in the store, by run name."""
    runs = []
    for path in store.list_nodes("clarc"):
        parts = path.split("/")
        if len(parts) == 3 and parts[2] == "result":
            arrays, attrs = store.read_node(path)
            runs.append(ClarcRun(parts[1], arrays, attrs))
    return runs


def result_node(run: str) -> str:
    """The store node that records ClArC run ``run``."""
    return f"clarc/{run}/result"


def write_result(store_path: str | Path, run: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write (or replace) node ``clarc/<run>/result``: the one writer of ClArC results; docs/clarc.md lists
    the arrays and attrs that readers (report, ``spray export tables``, ``spray evaluate``) expect."""
    with AuditStore(store_path, mode="a") as store:
        store.write_node(result_node(run), arrays, attrs)
