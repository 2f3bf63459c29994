"""Rank classes by how likely they hide a Clever Hans strategy (contract: `spray rank --json`).

Each analysed class is scored by its best candidate cluster (:func:`spray.analysis.best_cluster`), and
classes are compared the same way clusters are: first by the cluster's normalised cut ``ncut`` in the
locally scaled kNN affinity graph of its class (low: the group hangs on to the rest of its class by few,
weak edges, as a group explained by an artifact does; a natural style of the class grades into the rest),
then by the z-score of its Fisher separability τ against the null of random subsets of the same size, from
the null's exact mean and variance (no sampling: the ranking does not depend on the permutation seed).
Both share one scale across classes of different sizes, which τ does not. docs/spray-method.md defines
every number.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from spray.results import analysis_summary
from spray.store import AuditStore

FLAG_OUTLIER = 3.0
"""A class is *flagged* when its −log ncut (or log z-score, see :func:`_flag`) lies this many robust
standard deviations above the median class (median absolute deviation × 1.4826), i.e. when it stands out
from the other classes."""
MIN_CLASSES_FOR_OUTLIER = 4
FALLBACK_Z, FALLBACK_P = 3.0, 0.05
"""With fewer ranked classes no spread can be estimated: then a class is flagged when z ≥ 3 and p ≤ 0.05."""


def rank_classes(store: AuditStore, analysis: str = "spray") -> list[dict[str, Any]]:
    """One entry per analysed class, best Clever Hans candidate first; skipped classes last, with a reason.

    Entry keys: ``rank``, ``class`` (index), ``name``, ``n_samples``, ``ncut`` (normalised cut of the best
    cluster; None for a store analysed before fda version 4, which then ranks by z alone), ``score``
    (z-score), ``tau``, ``p_value``, ``clustering``, ``cluster``, ``cluster_size``, ``members`` (dataset
    sample indices of the best cluster), ``outlier`` (how far the class's −log ncut, or log z-score where the
    cuts cannot tell the classes apart, stands above the other classes', in robust standard deviations; None
    with fewer than 4 ranked classes), ``flagged`` (a Clever Hans candidate: ``outlier >= 3``, or
    ``z >= 3 and p <= 0.05`` without an outlier score), ``skipped``.
    """
    with store.reading():  # one snapshot: an analysis being rewritten meanwhile is seen before or after
        return _rank(store, analysis)


def _rank(store: AuditStore, analysis: str) -> list[dict[str, Any]]:
    group = f"analyses/{analysis}"
    summary = analysis_summary(store, analysis)
    names = store.attrs().get("label_names") or []
    entries = []
    for label in summary["classes"]:
        path = f"{group}/{label}"
        if not store.has_node(f"{path}/status"):
            continue
        status_arrays, status = store.read_node(f"{path}/status")
        with store.interpreting(f"class {label} of analysis {analysis!r}"):
            entry = {
                "class": int(label),
                "name": names[label] if label < len(names) else str(label),
                "n_samples": int(status["n"]),
                "ncut": None, "score": None, "tau": None, "p_value": None,
                "clustering": None, "cluster": None, "cluster_size": None, "members": [],
                "skipped": None if status["skipped"] is None else str(status["skipped"]),
            }
            if status["skipped"] is None:
                if not store.has_node(f"{path}/fda", {"key": status["keys"]["fda"]}):
                    entry["skipped"] = "analysis unfinished: run `spray analyze` again to complete it"
                else:
                    entry.update(_best(store, path, status_arrays["dataset_index"]))
        entries.append(entry)
    entries.sort(key=_order)
    for i, entry in enumerate(entries, start=1):
        entry["rank"] = i
    _flag(entries)
    return entries


def top_candidate(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best-ranked class that was not skipped (what ``--cluster top`` corrects), or None."""
    return next((e for e in entries if e["skipped"] is None), None)


def _flag(entries: list[dict[str, Any]]) -> None:
    """Set ``outlier`` and ``flagged``. Every class has some cluster that is well separated and weakly cut
    (any real cluster beats random subsets), so a candidate is a class whose best cluster stands out from the
    other classes' in what the ranking compares first: the outlier score is the robust standard score of
    −log ncut (+inf for a cut of 0, a disconnected group). Where the cuts cannot tell the classes apart (a
    store analysed before fda version 4 has none; no spread, e.g. every class has a disconnected group), the
    score is that of log z, the ranking's second key."""
    scored = [e for e in entries if e["skipped"] is None and e["score"] is not None and e["score"] > 0
              and math.isfinite(e["score"])]
    outliers = None
    if all(e["ncut"] is not None and not math.isnan(e["ncut"]) for e in scored):
        with np.errstate(divide="ignore"):
            outliers = _robust_scores(-np.log([e["ncut"] for e in scored]))
    if outliers is None:
        outliers = _robust_scores(np.log([e["score"] for e in scored]))
    for entry in entries:
        entry["outlier"] = None
        entry["flagged"] = False
    if outliers is not None:
        for entry, value in zip(scored, outliers):
            entry["outlier"] = float(value)
            entry["flagged"] = entry["outlier"] >= FLAG_OUTLIER
    else:
        for entry in scored:
            entry["flagged"] = entry["score"] >= FALLBACK_Z and (entry["p_value"] or 1.0) <= FALLBACK_P


def _robust_scores(values: np.ndarray) -> np.ndarray | None:
    """``(v − median) / (1.4826 · MAD)``; None where no spread can be estimated: fewer than
    ``MIN_CLASSES_FOR_OUTLIER`` values, or a MAD that is 0 or not finite (half the values infinite)."""
    if values.size < MIN_CLASSES_FOR_OUTLIER:
        return None
    median = np.median(values)
    with np.errstate(invalid="ignore"):
        spread = 1.4826 * float(np.median(np.abs(values - median)))
    if not (math.isfinite(spread) and spread > 0):
        return None
    return (values - median) / spread


def _best(store: AuditStore, path: str, dataset_index: np.ndarray) -> dict[str, Any]:
    _, attrs = store.read_node(f"{path}/fda")
    best = attrs["info"]["best"]
    if best["clustering"] is None:
        return {"skipped": str(best.get("reason", "no candidate cluster"))}
    labels = store.read_node(f"{path}/{best['node']}")[0][best["clustering"]]
    if labels.shape != dataset_index.shape or labels.dtype.kind not in "iu":
        raise ValueError(
            f"clustering {best['clustering']!r} has {labels.shape} labels for {dataset_index.shape} samples"
        )
    members = dataset_index[labels == best["cluster"]]
    return {
        "ncut": _number(best.get("ncut")),  # stores analysed before fda version 4 have no cuts
        "score": _number(best["z_score"]),
        "tau": _number(best["tau"]),
        "p_value": _number(best["p_value"]),
        "clustering": str(best["clustering"]),
        "cluster": int(best["cluster"]),
        "cluster_size": int(members.size),
        "members": [int(i) for i in members],
    }


def _number(value: Any) -> float | None:
    """A stored score: a number or None (JSON null; NaN and infinities are written as such by json)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"score {value!r:.40} is not a number")
    return value


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf


def _order(entry: dict[str, Any]) -> tuple:
    """Ranking order: analysed classes first; the lowest cut (none, or NaN: after every cut), then the
    largest z-score (none or NaN: last), then the class index."""
    ncut = entry["ncut"]
    return (entry["skipped"] is not None, math.inf if ncut is None or math.isnan(ncut) else ncut,
            -_finite(entry["score"]), entry["class"])


def ranking_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """The ranking as a table (CSV export); members as space-separated dataset indices."""
    columns = ["rank", "class", "name", "n_samples", "ncut", "score", "tau", "p_value", "outlier", "flagged",
               "clustering", "cluster", "cluster_size", "skipped", "members"]
    table = pd.DataFrame(entries, columns=columns)
    table["members"] = [" ".join(map(str, m)) for m in table["members"]]
    return table
