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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import pandas as pd

from spray.results import ClassBest, Cluster, best_clusters
from spray.store import AuditStore

__all__ = ["Ranking", "RankedClass", "class_best", "rank_classes", "replace_class"]

FLAG_OUTLIER = 3.0
"""A class is *flagged* when its −log ncut (or log z-score, see :func:`_flags`) lies this many robust
standard deviations above the median class (median absolute deviation × 1.4826), i.e. when it stands out
from the other classes."""
MIN_CLASSES_FOR_OUTLIER = 4
FALLBACK_Z, FALLBACK_P = 3.0, 0.05
"""With fewer ranked classes no spread can be estimated: then a class is flagged when z ≥ 3 and p ≤ 0.05."""

TABLE_COLUMNS = ("rank", "class", "name", "n_samples", "ncut", "score", "tau", "p_value", "outlier", "flagged",
                 "clustering", "cluster", "cluster_size", "skipped", "members")
"""The columns of ``spray rank --csv`` and of the exported ranking table, in their order."""


@dataclass(frozen=True)
class RankedClass:
    """One class of a ranking: its place (``rank``, from 1), its best candidate cluster and its flag.

    ``cluster`` is the class's best candidate cluster (:func:`spray.analysis.best_cluster`); a class without
    one has ``skipped``, the reason (too few samples, no candidate cluster, an unfinished analysis), instead.
    ``outlier`` is how far the class's −log ncut, or log z-score where the cuts cannot tell the classes
    apart, stands above the other classes', in robust standard deviations: None for a skipped class and
    wherever no spread can be estimated (fewer than 4 ranked classes). ``flagged``: a Clever Hans candidate,
    ``outlier >= 3``, or ``z >= 3 and p <= 0.05`` without an outlier score.
    """

    label: int
    name: str
    n_samples: int
    rank: int
    cluster: Cluster | None
    skipped: str | None
    outlier: float | None
    flagged: bool

    def __post_init__(self) -> None:
        if (self.cluster is None) == (self.skipped is None):
            raise ValueError(f"class {self.label}: a ranked class has either a best cluster or a reason it was "
                             f"skipped, not {'both' if self.cluster else 'neither'}")
        if self.cluster is not None and self.cluster.label != self.label:
            raise ValueError(f"class {self.label}: its best cluster is {self.cluster.reference}, of another class")

    @property
    def ncut(self) -> float | None:
        """The best cluster's normalised cut (None: skipped, or a store without cuts)."""
        return None if self.cluster is None else self.cluster.ncut

    @property
    def z_score(self) -> float | None:
        """The best cluster's z-score of τ (None: skipped)."""
        return None if self.cluster is None else self.cluster.z_score

    @property
    def p_value(self) -> float | None:
        """The best cluster's permutation p-value of τ (None: skipped)."""
        return None if self.cluster is None else self.cluster.p_value

    def to_json(self) -> dict[str, Any]:
        """The class as ``spray rank --json`` prints it (the contract: these keys in this order; the class
        index is ``class``, the best cluster's z-score ``score``, its id ``cluster``; a skipped class has
        nulls and no ``members``)."""
        best = self.cluster
        return {
            "class": self.label, "name": self.name, "n_samples": self.n_samples, "ncut": self.ncut,
            "score": self.z_score, "tau": None if best is None else best.tau, "p_value": self.p_value,
            "clustering": None if best is None else best.clustering, "cluster": None if best is None else best.id,
            "cluster_size": None if best is None else best.size, "members": [] if best is None else list(best.members),
            "skipped": self.skipped, "rank": self.rank, "outlier": self.outlier, "flagged": self.flagged,
        }


@dataclass(frozen=True)
class Ranking(Sequence[RankedClass]):
    """The classes of analysis ``analysis``, best Clever Hans candidate first, skipped classes last; a
    sequence of :class:`RankedClass` (``ranking[0]`` ranks first)."""

    analysis: str
    classes: tuple[RankedClass, ...]

    @overload
    def __getitem__(self, index: int) -> RankedClass: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[RankedClass, ...]: ...
    def __getitem__(self, index: int | slice) -> RankedClass | tuple[RankedClass, ...]:
        return self.classes[index]

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[RankedClass]:
        return iter(self.classes)

    @property
    def flagged(self) -> tuple[RankedClass, ...]:
        """The flagged classes, in rank order."""
        return tuple(c for c in self.classes if c.flagged)

    def top_candidate(self) -> RankedClass | None:
        """The best-ranked class that was not skipped (what ``--cluster top`` corrects), or None."""
        return next((c for c in self.classes if c.cluster is not None), None)

    def of(self, label: int) -> RankedClass | None:
        """Class ``label``'s entry, or None if the analysis did not rank it."""
        return next((c for c in self.classes if c.label == label), None)

    def to_json(self) -> list[dict[str, Any]]:
        """``spray rank --json``: one :meth:`RankedClass.to_json` per class, in rank order."""
        return [c.to_json() for c in self.classes]

    def table(self) -> pd.DataFrame:
        """The ranking as a table (``spray rank --csv``, the exported ranking): :data:`TABLE_COLUMNS`, members
        as space-separated dataset indices."""
        table = pd.DataFrame(self.to_json(), columns=list(TABLE_COLUMNS))
        table["members"] = [" ".join(map(str, m)) for m in table["members"]]
        return table


def rank_classes(store: AuditStore, analysis: str = "spray") -> Ranking:
    """Every analysed class of ``analysis``, ranked (see :class:`Ranking`, :class:`RankedClass`)."""
    with store.reading():  # one snapshot: an analysis being rewritten meanwhile is seen before or after
        return _rank(store, analysis)


def class_best(entry: RankedClass) -> ClassBest:
    """What the ranking was made of for ``entry``'s class: every input of its rank and flag, so that
    :func:`replace_class` ranks and flags the class as :func:`rank_classes` did."""
    return ClassBest(entry.label, entry.name, entry.n_samples, entry.cluster, entry.skipped)


def replace_class(ranking: Ranking, replacement: ClassBest) -> Ranking:
    """``ranking`` with class ``replacement.label``'s best cluster (or reason it was skipped) replaced, e.g.
    by that of another audit of the class, ranked and flagged again against the other classes as they were.
    A class the ranking does not hold is added."""
    kept = [class_best(c) for c in ranking if c.label != replacement.label]
    return _ranked(ranking.analysis, [*kept, replacement])


def _rank(store: AuditStore, analysis: str) -> Ranking:
    return _ranked(analysis, best_clusters(store, analysis))


def _ranked(analysis: str, classes: Sequence[ClassBest]) -> Ranking:
    found = sorted(classes, key=lambda c: _order(c.label, c.cluster))
    flags = _flags([c.cluster for c in found])
    return Ranking(analysis, tuple(
        RankedClass(c.label, c.name, c.n_samples, rank, c.cluster, c.skipped, outlier, flagged)
        for rank, (c, (outlier, flagged)) in enumerate(zip(found, flags), start=1)
    ))


def _flags(clusters: Sequence[Cluster | None]) -> list[tuple[float | None, bool]]:
    """``(outlier, flagged)`` of each class, from its best cluster (None: skipped). Every class has some
    cluster that is well separated and weakly cut (any real cluster beats random subsets), so a candidate is
    a class whose best cluster stands out from the other classes' in what the ranking compares first: the
    outlier score is the robust standard score of −log ncut (+inf for a cut of 0, a disconnected group).
    Where the cuts cannot tell the classes apart (a store analysed before fda version 4 has none; no spread,
    e.g. every class has a disconnected group), the score is that of log z, the ranking's second key."""
    scored = [i for i, c in enumerate(clusters) if c is not None and c.z_score is not None and c.z_score > 0
              and math.isfinite(c.z_score)]
    best = [clusters[i] for i in scored]
    outliers = None
    if all(c.ncut is not None and not math.isnan(c.ncut) for c in best):
        with np.errstate(divide="ignore"):
            outliers = _robust_scores(-np.log([c.ncut for c in best]))
    if outliers is None:
        outliers = _robust_scores(np.log([c.z_score for c in best]))
    flags: list[tuple[float | None, bool]] = [(None, False)] * len(clusters)
    for i, c in enumerate(best):
        if outliers is None:
            flags[scored[i]] = (None, c.z_score >= FALLBACK_Z and (c.p_value or 1.0) <= FALLBACK_P)
        else:
            flags[scored[i]] = (float(outliers[i]), float(outliers[i]) >= FLAG_OUTLIER)
    return flags


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


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf


def _order(label: int, best: Cluster | None) -> tuple:
    """Ranking order: analysed classes first; the lowest cut (none, or NaN: after every cut), then the
    largest z-score (none or NaN: last), then the class index."""
    ncut = None if best is None else best.ncut
    return (best is None, math.inf if ncut is None or math.isnan(ncut) else ncut,
            -_finite(None if best is None else best.z_score), label)
