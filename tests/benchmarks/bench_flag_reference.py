"""Flag reference benchmark: the flags of docs/spray-method.md §12 with the other classes' excesses summarised
robustly instead of by their mean and sd.

A class is flagged when its selection excess stands out from the other classes' (spray.ranking._against_others:
their mean and sd, Student's t). Classes with real sub-styles have large excesses of their own and widen that
reference; a robust location and scale would set them aside. This ranks the benchmark's cached quick cases
(as bench_detection.py: the ranking over the pixel-level and the concept-level analysis) and any further audit
stores (``--store``, e.g. the demo's; one analysis each) again under each reference of :data:`REFERENCES`, the
rule's other steps unchanged, and prints per reference and split: the cases whose model uses the artifact that
are ranked first and flagged, the false flags on clean classes (Wilson 95 %), and each store's flagged classes
with their q-values.

Run:  python tests/benchmarks/bench_flag_reference.py CACHE [CACHE ...] [--store STORE ...] [--seeds 0,100]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

import spray.ranking as ranking
from bench_detection import cached_model, cases, wilson
from spray.benchmark.data import load_images
from spray.results import best_clusters
from spray.store import AuditStore

Reference = Callable[[float, np.ndarray], tuple[float, float, float, float]]


def robust(location_scale: Callable[[np.ndarray], tuple[float, float]], student: bool) -> Reference:
    """A reference with the signature of spray.ranking._against_others: ``location_scale(others)`` gives the
    location and scale; with ``student``, the scale is widened by √(1 + 1/m) and the tail is Student's t with
    m − 1 degrees of freedom, as the rule's; otherwise the normal tail."""

    def reference(excess: float, others: np.ndarray) -> tuple[float, float, float, float]:
        location, scale = location_scale(others)
        scale *= math.sqrt(1 + 1 / others.size) if student else 1.0
        if math.isnan(excess):
            return location, scale, math.nan, 1.0
        if not scale > 0:
            return location, scale, math.copysign(math.inf, excess - location), 0.0 if excess > location else 1.0
        outlier = (excess - location) / scale
        return location, scale, outlier, float(student_t.sf(outlier, others.size - 1) if student else norm.sf(outlier))

    return reference


def _mad(others: np.ndarray) -> tuple[float, float]:
    median = float(np.median(others))
    return median, 1.4826 * float(np.median(np.abs(others - median)))


def _iqr(others: np.ndarray) -> tuple[float, float]:
    q1, q3 = np.percentile(others, [25, 75])
    return float(np.median(others)), float(q3 - q1) / 1.349


REFERENCES: dict[str, Reference] = {
    "mean, sd, t (the rule)": ranking._against_others,
    "median, MAD, normal": robust(_mad, student=False),
    "median, MAD, t": robust(_mad, student=True),
    "median, IQR, t": robust(_iqr, student=True),
}


def harvest(case, directory: Path, images: object) -> dict:
    """What re-ranking a case needs: its classes' best clusters per analysis, its poisoned class, whether its
    model uses the artifact."""
    data, _, uses = cached_model(case, directory, images)
    with AuditStore(directory / "audit.h5", mode="r") as store:
        found = {a: best_clusters(store, a) for a in ("spray", "concept")}
    return {"split": case.split, "poisoned": None if case.is_control else data.poisoned_class, "uses": uses,
            "found": found}


def flagged(found: dict, reference: Reference) -> ranking.Ranking:
    """The ranking of ``found`` ({analysis: best clusters}) with ``reference`` as the other classes' law."""
    kept = ranking._against_others
    ranking._against_others = reference
    try:
        if len(found) == 1:
            (analysis, classes), = found.items()
            return ranking._ranked(analysis, classes)
        return ranking._combined(found)
    finally:
        ranking._against_others = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", type=Path, help="benchmark cache directories (spray benchmark --cache)")
    parser.add_argument("--store", nargs="*", type=Path, default=[], help="audit stores to rank too (analysis spray)")
    parser.add_argument("--seeds", help="comma-separated seeds to keep (default: all)")
    args = parser.parse_args()
    seeds = None if args.seeds is None else {int(s) for s in args.seeds.split(",")}
    images = load_images("mnist")
    rows = [harvest(case, directory, images) for case, directory in cases(args.caches, seeds)]
    stores = {}
    for path in args.store:
        with AuditStore(path, mode="r") as store:
            stores[path] = {"spray": best_clusters(store, "spray")}
    print("| reference | split | ranked first (uses) | flagged (uses) | false flags, clean classes [95 %] |")
    print("|---|---|---|---|---|")
    for name, reference in REFERENCES.items():
        for split in ("dev", "heldout"):
            first = flags = false = clean = used = 0
            for row in (r for r in rows if r["split"] == split):
                ranked = flagged(row["found"], reference)
                entry = ranked.of(row["poisoned"]) if row["poisoned"] is not None else None
                others = [e for e in ranked if e.cluster is not None and e.label != row["poisoned"]]
                false, clean = false + sum(e.flagged for e in others), clean + len(others)
                if row["uses"]:
                    used += 1
                    first, flags = first + bool(entry and entry.rank == 1), flags + bool(entry and entry.flagged)
            low, high = wilson(false, clean)
            print(f"| {name} | {split} | {first}/{used} | {flags}/{used} | {false}/{clean} "
                  f"[{100 * low:.1f}, {100 * high:.1f} %] |")
        for path, found in stores.items():
            top = flagged(found, reference)[:4]
            print(f"  {path}: " + ", ".join(f"class {e.label} q {e.q_value:.3f}{' flagged' * e.flagged}" for e in top))


if __name__ == "__main__":
    main()
