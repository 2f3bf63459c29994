"""Rank classes by how likely they hide a Clever Hans strategy (contract: `spray rank --json`).

Each analysed class is scored by its best candidate cluster (:func:`spray.analysis.best_cluster`), and
classes are compared the same way clusters are: first by the cluster's normalised cut ``ncut`` in the
locally scaled kNN affinity graph of its class (low: the group hangs on to the rest of its class by few,
weak edges, as a group explained by an artifact does; a natural style of the class grades into the rest),
then by the z-score of its Fisher separability τ against the null of random subsets of the same size, from
the null's exact mean and variance (no sampling: the ranking does not depend on the permutation seed).
Both share one scale across classes of different sizes, which τ does not.

The order does not say whether a class stands out at all; the flag does, calibrated: each class's best cut is
tested against the best cuts the same selection finds in Gaussian resamples of the class (the ``null`` node,
:class:`spray.analysis.SelectionNull`), and its contrast — its excess over those cuts with its best cluster's
separation from the rest of the class — against the other classes' contrasts (with 4 or more classes; with fewer
the resamples alone decide); Benjamini–Hochberg controls the false
discovery rate over the classes (:func:`flag_tests`; over several analyses of one store at once).
:func:`rank_analyses` ranks the classes over several analyses of one store (pixel-level and concept-level side by side): each class by
the analysis whose test of it is the strongest. docs/spray-method.md defines every number.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import pandas as pd
from scipy.stats import norm
from scipy.stats import t as student_t

from spray.errors import BadInputError
from spray.results import ClassBest, Cluster, best_clusters
from spray.store import AuditStore

__all__ = ["FlagTest", "Ranking", "RankedClass", "benjamini_hochberg", "best_of", "contrasts", "flag_tests",
           "flagged_classes", "rank_analyses", "rank_classes", "rank_found", "replace_class"]

FLAG_Q = 0.05
"""A test rejects, and its class is flagged, when its Benjamini–Hochberg q-value is at most this."""
MIN_CLASSES_FOR_EMPIRICAL_NULL = 4
"""With at least this many tested classes of one analysis, each class's contrast is judged against the other
classes' (an empirical null, in the spirit of Efron 2004); with fewer (binary and 3-class tasks) the class's
selection-null p alone decides."""
SEPARATION_FLOOR = 0.01
"""Separations below this count as this in a class's contrast (:func:`contrasts`): its log stays finite, as the
excess floors its cuts at 0.01."""
P_FLOOR = 1e-300
"""Selection-null p-values below this count as this, so every standard score Φ⁻¹(1 − p) is finite (≤ ≈ 37)."""
MEANING = ("flagged: the class holds a distinct strategy (a group the model explains differently, more distinct "
           "than in a structure-free model of the class and than the other classes' groups; Benjamini-Hochberg "
           "q <= 0.05); an expert must judge whether it is a shortcut or a legitimate sub-style of the class")
"""What a flag means, as ``spray rank`` prints it under its table (the report says it in its own words)."""

TABLE_COLUMNS = ("rank", "class", "name", "n_samples", "ncut", "score", "tau", "p_value", "outlier", "null_p_value",
                 "null_excess", "separation", "contrast", "flag_p_value", "q_value", "flagged", "clustering", "cluster",
                 "cluster_size", "skipped", "members")
"""The columns of ``spray rank --csv`` and of the exported ranking table, in their order."""


@dataclass(frozen=True)
class RankedClass:
    """One class of a ranking: its place (``rank``, from 1), its best candidate cluster and its flag.

    ``cluster`` is the class's best candidate cluster (:func:`spray.analysis.best_cluster`); a class without
    one has ``skipped``, the reason (too few samples, no candidate cluster, an unfinished analysis), instead.
    ``null_p_value`` is the class's p-value under the selection null (its best cut against the best cuts of
    Gaussian resamples of the class, docs/spray-method.md §11) and ``null_excess`` how much more strongly its
    group is cut off than theirs (:func:`spray.analysis.selection_excess`); ``separation`` how far the group lies
    from the rest of its class (:func:`spray.analysis.separation`) and ``contrast`` the two together, what the
    classes are compared on (:class:`FlagTest`); ``outlier`` the standard score of that contrast among the other
    classes' (``Φ⁻¹(1 − null_p_value)`` with fewer than 4 classes),
    ``flag_p_value`` the test's p (:class:`FlagTest`) and ``q_value`` its Benjamini–Hochberg q over every
    test of the ranking (§12). ``flagged``: ``q_value <= 0.05`` (:data:`MEANING`). All None (flag False) for
    a skipped class and a store without the null.
    ``analysis``: the analysis the cluster and the numbers are of (in a ranking over several analyses, the
    one whose test of the class is the strongest, :func:`rank_analyses`).
    """

    label: int
    name: str
    n_samples: int
    rank: int
    cluster: Cluster | None
    skipped: str | None
    outlier: float | None
    flagged: bool
    null_p_value: float | None = None
    flag_p_value: float | None = None
    q_value: float | None = None
    analysis: str = "spray"
    null_excess: float | None = None
    separation: float | None = None
    contrast: float | None = None

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

    def to_json(self, with_analysis: bool = False) -> dict[str, Any]:
        """The class as ``spray rank --json`` prints it (the contract: these keys in this order; the class
        index is ``class``, the best cluster's z-score ``score``, its id ``cluster``; a skipped class has
        nulls and no ``members``); ``with_analysis``: an ``analysis`` key first (a ranking over several)."""
        best = self.cluster
        return {**({"analysis": self.analysis} if with_analysis else {}),
            "class": self.label, "name": self.name, "n_samples": self.n_samples, "ncut": self.ncut,
            "score": self.z_score, "tau": None if best is None else best.tau, "p_value": self.p_value,
            "clustering": None if best is None else best.clustering, "cluster": None if best is None else best.id,
            "cluster_size": None if best is None else best.size, "members": [] if best is None else list(best.members),
            "skipped": self.skipped, "rank": self.rank, "outlier": self.outlier, "flagged": self.flagged,
            "null_p_value": self.null_p_value, "null_excess": self.null_excess, "separation": self.separation,
            "contrast": self.contrast, "flag_p_value": self.flag_p_value, "q_value": self.q_value,
        }


@dataclass(frozen=True)
class Ranking(Sequence[RankedClass]):
    """The classes of analysis ``analysis``, best Clever Hans candidate first, skipped classes last; a
    sequence of :class:`RankedClass` (``ranking[0]`` ranks first). A ranking over several analyses
    (:func:`rank_analyses`) has their names in ``analyses`` and ``analysis`` the first of them; each entry
    names its own."""

    analysis: str
    classes: tuple[RankedClass, ...]
    analyses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.analyses:
            object.__setattr__(self, "analyses", (self.analysis,))
        if self.analyses[0] != self.analysis:
            raise ValueError(f"ranking of analyses {self.analyses} names {self.analysis!r} first")

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
        """The best-ranked class that was not skipped (flagged or not: what a report leads with), or None."""
        return next((c for c in self.classes if c.cluster is not None), None)

    def top_flagged(self) -> RankedClass | None:
        """The best-ranked flagged class, or None: what ``--cluster top`` corrects when there is one
        (spray.clarc.cluster.resolve_cluster; with none, the top candidate, and the run warns)."""
        return next((c for c in self.classes if c.flagged), None)

    def of(self, label: int) -> RankedClass | None:
        """Class ``label``'s entry, or None if the analysis did not rank it."""
        return next((c for c in self.classes if c.label == label), None)

    def to_json(self) -> list[dict[str, Any]]:
        """``spray rank --json``: one :meth:`RankedClass.to_json` per class, in rank order (each with its
        ``analysis`` in a ranking over several)."""
        return [c.to_json(len(self.analyses) > 1) for c in self.classes]

    def table(self) -> pd.DataFrame:
        """The ranking as a table (``spray rank --csv``, the exported ranking): :data:`TABLE_COLUMNS`, members
        as space-separated dataset indices (an ``analysis`` column first in a ranking over several)."""
        columns = (["analysis"] if len(self.analyses) > 1 else []) + list(TABLE_COLUMNS)
        table = pd.DataFrame(self.to_json(), columns=columns)
        table["members"] = [" ".join(map(str, m)) for m in table["members"]]
        return table


def rank_classes(store: AuditStore, analysis: str = "spray") -> Ranking:
    """Every analysed class of ``analysis``, ranked (see :class:`Ranking`, :class:`RankedClass`)."""
    return rank_found(best_of(store, [analysis]))


def rank_analyses(store: AuditStore, analyses: Sequence[str]) -> Ranking:
    """The classes of several analyses of ``store`` (e.g. ``["spray", "concept"]``) ranked together: each
    class's entry is the one of the analysis whose test of the class has the smallest flag p-value (ties: the
    first in ``analyses``; a class no analysis tested: the first analysis with a best cluster of it, else the
    first that has it), its q-value from one Benjamini–Hochberg over every class × analysis test
    (:func:`flag_tests`), so the class is flagged when any of its tests rejects. Ordered by that q-value
    (untested after tested, skipped last), then by the test's flag p-value (Benjamini–Hochberg makes runs of
    equal q; within one, the smaller p is the stronger evidence, and the cuts of different analyses are not
    on one scale), then as :func:`rank_classes` orders. One analysis: exactly :func:`rank_classes`."""
    if not analyses or len(set(analyses)) < len(analyses):
        raise BadInputError(f"analyses {','.join(analyses)!r}: name each analysis once, e.g. 'spray,concept'")
    return rank_found(best_of(store, analyses))


def best_of(store: AuditStore, analyses: Sequence[str]) -> dict[str, list[ClassBest]]:
    """What a ranking over ``analyses`` is made of: per analysis, its classes' best clusters
    (:func:`spray.results.best_clusters`), read from one snapshot (an analysis being rewritten meanwhile is seen
    before or after)."""
    with store.reading():
        return {a: best_clusters(store, a) for a in analyses}


def rank_found(found: Mapping[str, Sequence[ClassBest]]) -> Ranking:
    """The ranking of ``found`` (:func:`best_of`): :func:`rank_classes`'s of one analysis, :func:`rank_analyses`'s
    of several (in the mapping's order)."""
    if len(found) == 1:
        ((analysis, classes),) = found.items()
        return _ranked(analysis, classes)
    return _combined(found)


def _combined(found: dict[str, Sequence[ClassBest]]) -> Ranking:
    """:func:`rank_analyses` of ``{analysis: its classes' best clusters}`` (in the analyses' order)."""
    analyses = tuple(found)
    tests = {(t.analysis, t.label): t for t in _tests({a: _found(classes) for a, classes in found.items()})}
    entries: dict[int, tuple[str, ClassBest, FlagTest | None]] = {}
    for analysis in analyses:  # first analysis first: ties and untested classes keep the earlier one
        for c in found[analysis]:
            t = tests.get((analysis, c.label))
            kept = entries.get(c.label)
            if kept is None or _strength(c, t) < _strength(kept[1], kept[2]):
                entries[c.label] = (analysis, c, t)
    order = sorted(entries.values(), key=lambda e: (
        e[1].cluster is None, math.inf if e[2] is None else e[2].q_value, math.inf if e[2] is None else e[2].p_value,
        *_order(e[1].label, e[1].cluster)))
    return Ranking(analyses[0], tuple(_entry(c, rank, t, a) for rank, (a, c, t) in enumerate(order, start=1)),
                   analyses)


def _strength(best: ClassBest, test: FlagTest | None) -> tuple[bool, float]:
    """How strongly a class's entry in one analysis speaks (smaller: stronger): one with a best cluster before
    one without, then the smaller flag p-value (untested: after every tested one)."""
    return best.cluster is None, math.inf if test is None else test.p_value


@dataclass(frozen=True)
class FlagTest:
    """The test of one class in one analysis (docs/spray-method.md §12): ``null_p`` under the selection
    null, the class's ``excess`` (:func:`spray.analysis.selection_excess`), its ``contrast`` (:func:`contrasts`),
    the law of the other classes' contrasts it is judged against (``location``, ``scale``; None with fewer than
    :data:`MIN_CLASSES_FOR_EMPIRICAL_NULL` classes, where ``null_p`` alone decides), its standard score
    ``outlier`` (``Φ⁻¹(1 − null_p)`` without the others), ``p_value`` (the larger of ``null_p`` and the p
    against the others: the class must stand out from both), ``q_value`` (Benjamini–Hochberg over every test
    of the call) and ``flagged`` (``q_value <= FLAG_Q``)."""

    label: int
    analysis: str
    null_p: float
    excess: float
    contrast: float
    location: float | None
    scale: float | None
    outlier: float
    p_value: float
    q_value: float
    flagged: bool


def flag_tests(store: AuditStore, analyses: Sequence[str]) -> list[FlagTest]:
    """The tests of every class with a selection null in each of ``analyses`` (e.g. ``["spray",
    "concept"]``), Benjamini–Hochberg over all class × analysis tests together: a class is a candidate when
    any of its tests rejects (:func:`flagged_classes`)."""
    return _tests({a: _found(classes) for a, classes in best_of(store, analyses).items()})


def flagged_classes(store: AuditStore, analyses: Sequence[str]) -> list[int]:
    """The classes flagged in any of ``analyses`` (:func:`flag_tests`), ascending."""
    return sorted({t.label for t in flag_tests(store, analyses) if t.flagged})


def replace_class(found: Mapping[str, Sequence[ClassBest]], replacements: Mapping[str, ClassBest]) -> Ranking:
    """The ranking of ``found`` (:func:`best_of`) with a class's best cluster (or the reason it was skipped) in
    each analysis of ``replacements`` replaced by ``replacements[analysis]``, e.g. by that of another audit of the
    class, ranked and flagged again against the other classes as they were. A class an analysis does not hold is
    added to it."""
    unknown = set(replacements) - set(found)
    if unknown:
        raise ValueError(f"replace_class: no analysis {', '.join(sorted(unknown))} in {', '.join(found)}")
    replaced = {}
    for analysis, classes in found.items():
        new = replacements.get(analysis)
        replaced[analysis] = list(classes) if new is None else [*(c for c in classes if c.label != new.label), new]
    return rank_found(replaced)


def _ranked(analysis: str, classes: Sequence[ClassBest]) -> Ranking:
    found = sorted(classes, key=lambda c: _order(c.label, c.cluster))
    tests = {t.label: t for t in _tests({analysis: _found(found)})}
    return Ranking(analysis, tuple(_entry(c, rank, tests.get(c.label), analysis)
                                   for rank, c in enumerate(found, start=1)))


def _found(classes: Sequence[ClassBest]) -> list[tuple[int, float | None, float | None, float | None]]:
    """What :func:`_tests` reads of an analysis's classes: ``(label, null p, excess, separation)``."""
    return [(c.label, c.null_p_value, c.null_excess, c.separation) for c in classes]


def _entry(c: ClassBest, rank: int, t: FlagTest | None, analysis: str) -> RankedClass:
    return RankedClass(c.label, c.name, c.n_samples, rank, c.cluster, c.skipped, t.outlier if t else None,
                       bool(t and t.flagged), c.null_p_value, t.p_value if t else None,
                       t.q_value if t else None, analysis, c.null_excess, c.separation, t.contrast if t else None)


def _tests(found: dict[str, list[tuple[int, float | None, float | None, float | None]]]) -> list[FlagTest]:
    """The tests of ``{analysis: [(class, selection-null p or None: untested, its excess, its separation)]}``: per
    analysis, each class's :func:`contrasts` judged against the others' (:func:`_against_others`) or, with fewer
    than :data:`MIN_CLASSES_FOR_EMPIRICAL_NULL` tested classes, its selection-null p alone; then BH over all."""
    tests = []
    for analysis, entries in found.items():
        tested = [(label, float(p), math.nan if x is None else float(x), d)
                  for label, p, x, d in entries if p is not None and not math.isnan(p)]
        contrast = contrasts(np.array([x for _, _, x, _ in tested]), [d for *_, d in tested])
        for i, ((label, p, x, _), k) in enumerate(zip(tested, contrast)):
            others = np.delete(contrast, i)
            others = others[np.isfinite(others)]
            if len(tested) >= MIN_CLASSES_FOR_EMPIRICAL_NULL and others.size >= MIN_CLASSES_FOR_EMPIRICAL_NULL - 1:
                location, scale, outlier, p_others = _against_others(k, others)
                tests.append((label, analysis, p, x, k, location, scale, outlier, max(p, p_others)))
            else:
                tests.append((label, analysis, p, x, k, None, None, float(norm.isf(max(p, P_FLOOR))), p))
    q = benjamini_hochberg(np.array([t[-1] for t in tests]))
    return [FlagTest(*t, float(qc), bool(qc <= FLAG_Q)) for t, qc in zip(tests, q)]


def contrasts(excess: np.ndarray, separation: Sequence[float | None]) -> np.ndarray:
    """The contrasts of one analysis's tested classes, what the flags compare across classes: each class's
    ``excess + log(max(separation, SEPARATION_FLOOR))`` — how much more strongly its group is cut off than the
    selection's best in structure-free resamples of the class (:func:`spray.analysis.selection_excess`, local: a
    neighbourhood) and how far the group's mean lies from the rest of the class in the rest's spread
    (:func:`spray.analysis.separation`, global), on one log scale. An analysis in which a class has no separation
    (a store analysed before fda version 5) compares the excesses alone, so that every class of it is judged on
    the same statistic."""
    if any(d is None for d in separation):
        return excess.astype(float)
    return excess + np.log(np.maximum(np.array(separation, dtype=float), SEPARATION_FLOOR))


def _against_others(contrast: float, others: np.ndarray) -> tuple[float, float, float, float]:
    """``(location, scale, outlier, p)`` of a class's contrast against the m other classes' of its analysis:
    location and sd (ddof 1) of the others, ``scale = sd · √(1 + 1/m)``, ``outlier = (contrast − location) /
    scale`` and its one-sided p under Student's t with m − 1 degrees of freedom — the prediction interval of
    one more draw from the law of the others (normal, mean and variance estimated from them). A class without
    a contrast (NaN) gets p = 1; others without spread give p = 0 above their value and 1 at or below it."""
    location, sd = float(others.mean()), float(others.std(ddof=1))
    scale = sd * math.sqrt(1.0 + 1.0 / others.size)
    if math.isnan(contrast):
        return location, scale, math.nan, 1.0
    if not scale > 0:
        return location, scale, math.copysign(math.inf, contrast - location), 0.0 if contrast > location else 1.0
    outlier = (contrast - location) / scale
    return location, scale, outlier, float(student_t.sf(outlier, others.size - 1))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of ``p`` (m,): ``q_(i) = min_{j ≥ i} m p_(j) / j``,
    capped at 1; rejecting ``q ≤ α`` controls the false discovery rate at α for independent tests."""
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.empty(m)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf


def _order(label: int, best: Cluster | None) -> tuple:
    """Ranking order: analysed classes first; the lowest cut (none, or NaN: after every cut), then the
    largest z-score (none or NaN: last), then the class index."""
    ncut = None if best is None else best.ncut
    return (best is None, math.inf if ncut is None or math.isnan(ncut) else ncut,
            -_finite(None if best is None else best.z_score), label)
