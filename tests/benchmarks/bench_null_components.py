"""Null components benchmark: the flags with the selection null run on more of each class's principal components.

Issue 17: the selection null (docs/spray-method.md §11) runs the observed selection and its resamples on each
class's ``n_components`` (16) leading principal components. A group of m of n samples shifted by Δ adds only about
(m/n)·Δ² of variance along its direction, so at 3 % (10 of 350) that direction can lie below the 16th component,
and the observed statistic is then another group's than the one the fda node names on the full features. For every
cached case this reruns each class's null (spray.analysis.SelectionNull with the class's stored parameters and the
pipeline's own selection, spray.pipeline.nodes) with each ``n_components`` of ``--components`` (``all``: every
component, the rows up to a rotation), the stored value first and checked against the stored statistic, puts each
class's new null p and excess in place of its stored ones (spray.results.ClassBest) and ranks and flags the classes
again with the shipped rule over spray.benchmark.run.RANKED; the named clusters are the stored ones.

Prints per case the poisoned class's rank (``*``: flagged) and F1 per setting, then per split and setting: ranked
first, ranked first with F1 at least spray.benchmark.metrics.MIN_F1_SMALL, flagged, and mean F1 where the model uses
its artifact; false flags on clean classes (Wilson 95 %); the nulls' CPU seconds.

Run:  python tests/benchmarks/bench_null_components.py CACHE [CACHE ...] [--full] [--components 16,32,all]
      [--seeds 0,1,2] [--json OUT]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import bench_detection  # this folder, first on sys.path when run as a script
import spray.pipeline.nodes as nodes
from spray.analysis import SelectionNull
from spray.benchmark.cases import Case
from spray.benchmark.run import RANKED, _detect
from spray.ranking import best_of, rank_found
from spray.store import AuditStore


@dataclass(frozen=True)
class StoredClass:
    """What rerunning a class's null needs, read once: its rows of the analysis's features, its nodes' stored
    parameters and the stored observed statistic (of node ``path``/null)."""

    path: str
    features: np.ndarray
    params: dict
    statistic: float


def stored_class(store: AuditStore, analysis: str, label: int, features: np.ndarray) -> StoredClass | None:
    """Class ``label`` of ``analysis``, its rows taken from the analysis's ``features``; None for a skipped class."""
    path = f"analyses/{analysis}/{label}"
    status_arrays, status = store.read_node(f"{path}/status")
    if status["skipped"] is not None:
        return None
    params = {node: store.read_node(f"{path}/{node}")[1]["params"] for node in status["keys"]}
    return StoredClass(path, features[status_arrays["positions"]], params,
                       store.read_node(f"{path}/null")[1]["info"]["statistic"])


def rerun_null(stored: StoredClass, n_components: int | None) -> SelectionNull:
    """The class's selection null rerun with ``n_components`` (None: all) and its other stored parameters. With the
    stored ``n_components`` the stored statistic must come out again."""
    every = stored.features.shape[0]  # at least the rank of the centred rows: every component
    params = stored.params
    null = SelectionNull(**{**params["null"], "n_components": every if n_components is None else n_components}).fit(
        stored.features, nodes._selection(params))
    if n_components == params["null"]["n_components"] and not math.isclose(null.statistic_, stored.statistic,
                                                                         rel_tol=1e-9):
        raise ValueError(f"{stored.path}: the rerun null gives t = {null.statistic_}, the store {stored.statistic}")
    return null


def _setting(text: str) -> int | None:
    return None if text == "all" else int(text)


def main() -> None:
    args, seeds, size = bench_detection.sized_case_arguments(
        __doc__.split("\n\n")[0], {"--components": "comma-separated n_components to compare, 'all' for every one "
                                                   "(default: 16,all; the stored value is checked)"})
    settings = (args.components or "16,all").split(",")

    def score(case: Case, directory: Path, images: object) -> dict:
        data, _, uses = bench_detection.cached_model(case, directory, images, size)
        row = {"case": case.name, "split": case.split, "uses": uses}
        with AuditStore(directory / "audit.h5", mode="r") as store:
            found = best_of(store, RANKED)
            classes_of = {}
            for a, classes in found.items():
                features = store.read_node(f"analyses/{a}/preprocess")[0]["features"]
                classes_of[a] = {c.label: stored_class(store, a, c.label, features) for c in classes}
        for setting in settings:
            start = time.process_time()
            nulls = {a: {label: None if stored is None else rerun_null(stored, _setting(setting))
                         for label, stored in classes.items()} for a, classes in classes_of.items()}
            seconds = time.process_time() - start
            ranking = rank_found({a: [c if nulls[a][c.label] is None else
                                      replace(c, null_p_value=float(nulls[a][c.label].p_value_),
                                              null_excess=float(nulls[a][c.label].excess_)) for c in classes]
                                  for a, classes in found.items()})
            row[setting] = {**_detect(data, ranking, None)[1], "seconds": seconds}
        return row

    rows = []
    for _, row in bench_detection.scored(args.caches, seeds, score, size=size):
        rows.append(row)
        print(bench_detection.setting_line(row, settings), flush=True)
    print(bench_detection.setting_table(rows, settings, "n_components", (
        "nulls' CPU s", lambda here, s: f"{sum(r[s]['seconds'] for r in here):.0f}")))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
