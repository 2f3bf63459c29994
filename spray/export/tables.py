"""An analysis and its ClArC runs as plain tables: cluster memberships, ClArC metrics; CSV/JSON writers.

Also the readers the report and the ViRelAy export share: :func:`read_class` gathers one class's current
analysis nodes (a node counts only if its memo key is the one the class's ``status`` node lists, so a
stale node left by an earlier pipeline is never shown), :func:`read_clarc_runs` the ClArC results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spray.errors import BadInputError, StoreError
from spray.outputs import active, protecting
from spray.store import AuditStore

__all__ = [
    "CLARC_COLUMNS",
    "ClassAnalysis",
    "ClarcRun",
    "analysis_summary",
    "clarc_metrics",
    "cluster_memberships",
    "export_tables",
    "read_clarc_runs",
    "read_class",
    "write_table",
]


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
    analysis whose first run has not finished is named as such, and so is the process writing the store, if any."""
    have = complete_analyses(store)
    started = {p.split("/")[1] for p in store.list_nodes("analyses")} - set(have)
    if analysis in started:
        writer = store.writer()
        return BadInputError(
            f"analysis {analysis!r} of audit store {store.path} is not complete: "
            + (f"`spray analyze` is writing it ({writer}); run this again when it has finished" if writer else
               "its first `spray analyze` stopped before the end; run `spray analyze` again to complete it")
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


def _label_names(store: AuditStore) -> list[str]:
    return [str(n) for n in store.attrs().get("label_names") or []]


def read_class(store: AuditStore, analysis: str, label: int, names: list[str] | None = None) -> ClassAnalysis:
    """The current analysis nodes of class ``label`` (see :class:`ClassAnalysis`).

    Raises:
        StoreError: a node does not hold what the analysis writes (shapes, dtypes, values that disagree).
    """
    names = _label_names(store) if names is None else names
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
    from spray.pipeline.nodes import NODES  # the node table says which nodes are clusterings and maps

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


def cluster_memberships(
    store_path: str | os.PathLike[str], analysis: str = "spray", clusterings: list[str] | None = None
) -> pd.DataFrame:
    """Every sample's cluster in every clustering of every analysed class, one row each.

    Columns: ``class`` (label), ``class_name``, ``clustering`` (e.g. ``kmeans_4``, ``hdbscan``),
    ``cluster`` (id; -1 = noise), ``dataset_index``, ``flagged`` (the cluster is its class's Clever Hans
    candidate, the one ``spray rank`` reports). ``clusterings`` keeps only the named clusterings.
    """
    with AuditStore(store_path) as store:
        summary = analysis_summary(store, analysis)
        names = _label_names(store)
        parts = []
        for label in summary["classes"]:
            cls = read_class(store, analysis, int(label), names)
            if cls.skipped is not None:
                continue
            best = cls.best
            for cname, labels in cls.clusterings.items():
                if clusterings is not None and cname not in clusterings:
                    continue
                flagged = best is not None and best["clustering"] == cname
                parts.append(pd.DataFrame({
                    "class": np.full(labels.size, cls.label, dtype=np.int64),
                    "class_name": cls.name,
                    "clustering": cname,
                    "cluster": labels,
                    "dataset_index": cls.dataset_index,
                    "flagged": (labels == best["cluster"]) if flagged else np.zeros(labels.size, bool),
                }))
    columns = ["class", "class_name", "clustering", "cluster", "dataset_index", "flagged"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            columns, ["int64", "object", "object", "int64", "int64", "bool"], strict=True)})
    return pd.concat(parts, ignore_index=True)[columns]


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


CLARC_COLUMNS = ["run", "method", "cluster", "layer", "cav_auc", "model", "clean_accuracy",
                 "poisoned_accuracy", "everywhere_accuracy", "artifact_relevance", "fda_rank"]


def clarc_metrics(store_path: str | os.PathLike[str]) -> pd.DataFrame:
    """ClArC evaluation of every run: one row per run and model (``original``, ``corrected``).

    Columns :data:`CLARC_COLUMNS`; accuracies and artifact relevance are fractions in [0, 1], missing
    values NaN.
    """
    with AuditStore(store_path) as store:
        runs = read_clarc_runs(store)
    rows = [
        {"run": r.run, "method": r.attrs.get("method"), "cluster": r.attrs.get("cluster"),
         "layer": r.attrs.get("layer"), "cav_auc": r.attrs.get("cav_auc"), **row}
        for r in runs
        for row in r.metrics
    ]
    frame = pd.DataFrame(rows, columns=CLARC_COLUMNS)
    numeric = ["cav_auc", "clean_accuracy", "poisoned_accuracy", "everywhere_accuracy", "artifact_relevance",
               "fda_rank"]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    return frame


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` as CSV (``.csv``) or a JSON list of records (``.json``; NaN as null)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise BadInputError(f"table file {path} must end in .csv or .json")
    if suffix == ".csv":
        return active().write(path, "table file", lambda tmp: frame.to_csv(tmp, index=False))
    return active().write(path, "table file",
                          lambda tmp: frame.to_json(tmp, orient="records", indent=1, force_ascii=False))


def export_tables(
    store_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], analysis: str = "spray",
    fmt: str = "csv",
) -> list[Path]:
    """Write ``ranking``, ``memberships`` and (when the store has ClArC runs) ``clarc`` tables to ``out_dir``.

    The ranking is :func:`spray.ranking.ranking_table` (``spray rank``'s table). Returns the paths written.
    """
    from spray.ranking import rank_classes, ranking_table

    if fmt not in ("csv", "json"):
        raise BadInputError(f"table format must be 'csv' or 'json', got {fmt!r}")
    with protecting({"the audit store": store_path}) as guard:
        out = guard.directory(out_dir, "export directory")
        with AuditStore(store_path) as store:
            ranking = ranking_table(rank_classes(store, analysis))
        written = [
            write_table(ranking, out / f"ranking.{fmt}"),
            write_table(cluster_memberships(store_path, analysis), out / f"memberships.{fmt}"),
        ]
        clarc = clarc_metrics(store_path)
        if len(clarc):
            written.append(write_table(clarc, out / f"clarc.{fmt}"))
    return written
