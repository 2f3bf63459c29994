"""An analysis and its ClArC runs as plain tables: ranking, cluster memberships, ClArC metrics; CSV/JSON
writers. They read the stored results through :mod:`spray.results`, as every other reader does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from spray.errors import BadInputError
from spray.outputs import active, protecting
from spray.ranking import rank_classes
from spray.results import analysis_summary, label_names, read_clarc_runs, read_class
from spray.store import AuditStore

__all__ = ["CLARC_COLUMNS", "clarc_metrics", "cluster_memberships", "export_tables", "write_table"]


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
        names = label_names(store)
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


CLARC_COLUMNS = ["run", "method", "cluster", "layer", "cav_auc", "model", "correction", "clean_accuracy",
                 "poisoned_accuracy", "everywhere_accuracy", "average_group_accuracy", "worst_group_accuracy",
                 "artifact_relevance", "relevance_density", "tcav_score", "tcav_magnitude", "tcav_layer",
                 "fda_rank", "training_seconds"]
"""The run's names, then the figures of a metrics row (docs/clarc.md §3) but its per-group accuracies (a
mapping; they are in the run's JSON)."""
_TEXT_COLUMNS = {"run", "method", "cluster", "layer", "model", "correction", "tcav_layer"}


def clarc_metrics(store_path: str | os.PathLike[str]) -> pd.DataFrame:
    """ClArC evaluation of every run: one row per run and model (``original``, ``corrected``).

    Columns :data:`CLARC_COLUMNS`; accuracies, artifact relevance and the TCAV score are fractions in [0, 1],
    the relevance density a ratio (1 = no denser inside the mask than elsewhere), the training cost in
    seconds; missing values NaN (a run recorded before a figure existed has none).
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
    numeric = [c for c in CLARC_COLUMNS if c not in _TEXT_COLUMNS]
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

    The ranking is :meth:`spray.ranking.Ranking.table` (``spray rank``'s table). Returns the paths written.
    """

    if fmt not in ("csv", "json"):
        raise BadInputError(f"table format must be 'csv' or 'json', got {fmt!r}")
    with protecting({"the audit store": store_path}) as guard:
        out = guard.directory(out_dir, "export directory")
        with AuditStore(store_path) as store:
            ranking = rank_classes(store, analysis).table()
        written = [
            write_table(ranking, out / f"ranking.{fmt}"),
            write_table(cluster_memberships(store_path, analysis), out / f"memberships.{fmt}"),
        ]
        clarc = clarc_metrics(store_path)
        if len(clarc):
            written.append(write_table(clarc, out / f"clarc.{fmt}"))
    return written
