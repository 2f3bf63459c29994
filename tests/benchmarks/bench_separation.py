"""Separation benchmark: the flags with the classes compared on their excess alone and on their contrast.

Issue 17: the flags compare each class with the other classes of its analysis (docs/spray-method.md §12). Up to
scoring version 34 they compared the selection excess, how much more strongly the class's selected group is cut off
in its kNN graph than the selection's best in structure-free resamples of the class: a neighbourhood statistic, on
which a clean class's writing style can stand out as much as a group of ten planted images. Since version 35 they
compare the contrast, the excess plus the log of the named cluster's separation from the rest of its class
(spray.analysis.separation: its mean difference in the rest's spread along it, spray.ranking.contrasts). For every
cached case this computes each class's separation of its stored named cluster in the analysis's stored features —
the function the fda node calls; a store analysed at fda version 5 has it stored, and the two must agree — and ranks
and flags the classes with the shipped rule over spray.benchmark.run.RANKED twice: on the excesses alone (the
separations left out: the rule before) and on the contrasts.

Prints per case the poisoned class's rank (``*``: flagged) and F1 under each rule, then per split and rule: ranked
first, ranked first with F1 at least spray.benchmark.metrics.MIN_F1_SMALL, flagged, and mean F1 where the model uses
its artifact; false flags on clean classes (Wilson 95 %).

Run:  python tests/benchmarks/bench_separation.py CACHE [CACHE ...] [--full] [--seeds 0,1,2] [--json OUT]
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

import bench_detection  # this folder, first on sys.path when run as a script
from spray.analysis import separation
from spray.benchmark.cases import Case
from spray.benchmark.run import RANKED, _detect
from spray.ranking import best_of, rank_found
from spray.results import ClassBest
from spray.store import AuditStore

RULES = ("excess", "contrast")


def separations(store: AuditStore, found: dict[str, list[ClassBest]]) -> dict[str, list[ClassBest]]:
    """``found`` (spray.ranking.best_of) with each named cluster's separation computed from the analysis's stored
    features; where the store holds one (fda version 5), the two must agree."""
    out = {}
    for analysis, classes in found.items():
        features = store.read_node(f"analyses/{analysis}/preprocess")[0]["features"]
        kept = []
        for c in classes:
            if c.cluster is not None:
                status = store.read_node(f"analyses/{analysis}/{c.label}/status")[0]
                d = separation(features[status["positions"]], np.isin(status["dataset_index"], c.cluster.members))
                if c.separation is not None and not math.isclose(d, c.separation, rel_tol=1e-9):
                    raise ValueError(f"{analysis}/{c.label}: separation {d} computed, {c.separation} stored")
                c = replace(c, separation=d)
            kept.append(c)
        out[analysis] = kept
    return out


def main() -> None:
    args, seeds, size = bench_detection.sized_case_arguments(__doc__.split("\n\n")[0])

    def score(case: Case, directory: Path, images: object) -> dict:
        data, _, uses = bench_detection.cached_model(case, directory, images, size)
        with AuditStore(directory / "audit.h5", mode="r") as store:
            found = separations(store, best_of(store, RANKED))
        row = {"case": case.name, "split": case.split, "uses": uses}
        for rule in RULES:
            ranked = found if rule == "contrast" else {
                a: [replace(c, separation=None) for c in classes] for a, classes in found.items()}
            row[rule] = _detect(data, rank_found(ranked), None)[1]
        return row

    rows = []
    for _, row in bench_detection.scored(args.caches, seeds, score, size=size):
        rows.append(row)
        print(bench_detection.setting_line(row, RULES), flush=True)
    print(bench_detection.setting_table(rows, RULES, "compared on"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
