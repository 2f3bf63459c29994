"""Metadata enrichment of flagged groups: is a class's flagged group unusually often from one site, scanner, ...?

The metadata are the extra columns of a ``csv:`` source, recorded per sample in the store's dataset record
(docs/data.md). For every flagged group (a class's flagged cluster, spray.ranking), every metadata column
and every value ``v`` the group holds, a one-sided Fisher exact test asks whether ``v`` is more frequent in
the group than in the rest of its class: with ``a`` of the group's ``g`` samples and ``c`` of the class's
``n`` samples having ``v``, p = P(X >= a) for X hypergeometric (n, c, g). The p-values of all the tests are
adjusted together by Benjamini and Hochberg's (1995) step-up procedure, which controls the false discovery
rate; findings with an adjusted p (q) below ``alpha`` are reported, strongest first. Empty values are not
tested (a missing entry is no value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from spray.ranking import RankedClass

__all__ = ["Enrichment", "benjamini_hochberg", "enrichment"]


@dataclass(frozen=True)
class Enrichment:
    """Value ``value`` of column ``column`` in the flagged group of class ``label`` (``name``): ``in_group``
    of the group's ``group`` samples have it, ``in_class`` of the class's ``n_class``; ``p`` (one-sided
    Fisher exact), ``q`` (Benjamini–Hochberg adjusted over all tests)."""

    label: int
    name: str
    column: str
    value: str
    in_group: int
    group: int
    in_class: int
    n_class: int
    p: float
    q: float

    def sentence(self) -> str:
        """The finding in words, e.g. "the flagged group of class 'melanoma' is 80 % site 'B' (class: 20 %)"."""
        return (f"the flagged group of class {self.name!r} is {100 * self.in_group / self.group:.0f} % "
                f"{self.column} {self.value!r} (class: {100 * self.in_class / self.n_class:.0f} %)")


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q), in the order of ``p``: q_(i) = min over j >= i of
    p_(j) m / j for the sorted p_(1) <= ... <= p_(m), at most 1."""
    p = np.asarray(p, dtype=float)
    if p.size == 0:
        return p
    order = np.argsort(p)
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)
    adjusted = np.empty_like(q)
    adjusted[order] = q
    return adjusted


def enrichment(ranking: Sequence[RankedClass], metadata: Mapping[str, Sequence[str]], labels: np.ndarray,
               alpha: float = 0.05) -> list[Enrichment]:
    """The significant enrichments of the flagged groups of a ``ranking`` (spray.ranking: each flagged class's
    best cluster, its members as dataset indices); ``metadata``: column -> the value of every sample, in
    dataset order; ``labels``: every sample's label, in dataset order. Sorted by q, then p."""
    from scipy.stats import hypergeom

    tests = []
    for entry in ranking:
        if not entry.flagged or entry.cluster is None or not entry.cluster.members:
            continue
        members = np.asarray(entry.cluster.members, dtype=np.int64)
        in_class = np.flatnonzero(labels == entry.label)
        for column, values in metadata.items():
            values = np.asarray(values, dtype=str)
            group_values, class_values = values[members], values[in_class]
            for value in sorted(set(group_values.tolist()) - {""}):
                a, c = int((group_values == value).sum()), int((class_values == value).sum())
                p = float(hypergeom.sf(a - 1, in_class.size, c, members.size))
                tests.append((entry, column, value, a, c, in_class.size, members.size, p))
    q = benjamini_hochberg([t[-1] for t in tests])
    found = [
        Enrichment(label=entry.label, name=entry.name, column=column, value=value, in_group=a,
                   group=g, in_class=c, n_class=n, p=p, q=float(qi))
        for (entry, column, value, a, c, n, g, p), qi in zip(tests, q, strict=True) if qi < alpha
    ]
    return sorted(found, key=lambda e: (e.q, e.p))
