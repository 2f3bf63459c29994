"""Small groups (3 % of a class): why the ranking misses them, and two variants of the cut that were measured.

A diagnostic for issue 17 on cached benchmark cases (`spray benchmark --cache`). For the poisoned class of each
case and each analysis of spray.benchmark.run.RANKED it prints what sets the planted group (the two-class set:
the poisoned class's minority group) apart, in that analysis's stored features: ``probe``, ``purity`` and
``ncut`` of the planted set as bench_group_separation.py defines them (is it linearly separable, a neighbourhood,
cut off in the locally scaled kNN affinity?), ``snn``, its normalised cut in a shared-nearest-neighbour affinity
of the stored kNN graph (``w_ij`` = the share of the k + 1 neighbours, self included, that i and j share, on the
union of the kNN edges), and ``best F1``, the best F1 of any stored cluster with it (an oracle: what the
clusterings hold) with that cluster's size.

Then the class-level selection excess (docs/spray-method.md §12) of every class, as the ranking compares them:
``any``, the shipped selection (candidates up to half the class; the excess its null node stored), and
``small``, the same selection and its selection null restricted to candidates of at most ``--small`` (default 0.1)
of the class — a null for small groups, whose best cut in a structure-free class is worse than a large
cluster's. Printed: the poisoned class's excess, its rank among the classes by excess, and the range of the other
classes'.

Run:  python tests/benchmarks/bench_small_groups.py CACHE [CACHE ...] [--full] [--seeds 0,100] [--json OUT]
(``--full``: the cache holds full-size cases, not ``--quick`` ones).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

import bench_detection  # this folder, first on sys.path when run as a script
from bench_group_separation import separation
from spray.analysis.cut import normalized_cuts
from spray.analysis.selection_null import SelectionNull
from spray.benchmark import run as benchmark_run
from spray.benchmark.cases import Case, Size, make_case
from spray.benchmark.metrics import detection
from spray.errors import BadInputError
from spray.pipeline import pipeline_from_text
from spray.pipeline.nodes import _selection
from spray.ranking import rank_classes
from spray.store import AuditStore


def shared_neighbour_affinity(indices: np.ndarray) -> sp.csr_matrix:
    """``w_ij`` = |N⁺(i) ∩ N⁺(j)| / (k + 1) on the union of the kNN edges, N⁺ a sample's k neighbours and
    itself."""
    n, k = indices.shape
    rows = np.repeat(np.arange(n), k)
    edges = sp.csr_matrix((np.ones(n * k), (rows, indices.ravel())), shape=(n, n))
    lists = edges + sp.eye(n, format="csr")
    shared = (lists @ lists.T).tocsr()
    return edges.maximum(edges.T).multiply(shared).tocsr() / (k + 1)


def labelings(group: h5py.Group) -> dict[str, np.ndarray]:
    """Every stored clustering of a class's analysis ``group``: name -> labels (−1 noise)."""
    return {name: group[node][name][:] for node in ("kmeans", "agglomerative", "hdbscan", "outliers")
            for name in group.get(node, {})}


def f1(members: np.ndarray, planted: np.ndarray) -> float:
    """The benchmark's F1 (spray.benchmark.metrics.detection) of the boolean group ``members`` with ``planted``."""
    return detection(np.flatnonzero(members).tolist(), np.flatnonzero(planted).tolist())[2]


def best_cluster(found: dict[str, np.ndarray], planted: np.ndarray) -> tuple[float, int]:
    """(F1, size) of the cluster of the labelings ``found`` of best F1 with ``planted`` (bool)."""
    return max(((f1(labels == cluster, planted), int(np.sum(labels == cluster)))
                for labels in found.values() for cluster in np.unique(labels[labels >= 0])), default=(0.0, 0))


def small_members(group: h5py.Group, found: dict[str, np.ndarray], small: float) -> np.ndarray | None:
    """The members (bool over the class's samples) of the cluster the best-cluster rule (docs/spray-method.md §9:
    lowest cut, then largest z) names among the stored candidates of at most ``small`` · n: what a small selection
    would name; None when no candidate is that small."""
    fda, n = group["fda"], group["status/dataset_index"].shape[0]
    sizes, cuts, z = fda["cluster_size"][:], fda["cluster_ncut"][:], fda["cluster_z_score"][:]
    allowed = np.flatnonzero((sizes >= 2) & (sizes <= small * n) & np.isfinite(cuts))
    if allowed.size == 0:
        return None
    chosen = allowed[np.lexsort((-z[allowed], cuts[allowed]))[0]]
    return found[fda["cluster_clustering"][chosen].decode()] == int(fda["cluster_id"][chosen])


def small_nulls(features: h5py.Dataset, store: h5py.File, analysis: str, classes: int,
                small: float) -> list[SelectionNull]:
    """Every class's selection null with the selection (observed and resampled) restricted to candidates of at
    most ``small`` · n, fitted as the store's null node was (same parameters, same seed: the same resamples)."""
    spec = pipeline_from_text(bench_detection.PIPELINES[analysis], source=f"benchmark {analysis} pipeline")
    restricted = copy.deepcopy(spec.nodes)
    restricted["fda"]["max_fraction"] = small
    return [SelectionNull(**spec.nodes["null"]).fit(
        features[store[f"analyses/{analysis}/{label}/status/positions"][:]], _selection(restricted)
    ) for label in range(classes)]


def score(case: Case, directory: Path, images: object, size: Size, small: float) -> dict:
    """One case's row: per analysis, the planted set's separation and cuts and the classes' excesses."""
    if case.is_control:
        raise BadInputError("the control plants nothing")
    data = make_case(case, images, size)
    row: dict = {"case": case.name}
    with AuditStore(directory / "audit.h5", mode="r") as audit:
        shipped = {analysis: {entry.label: entry.null_excess for entry in rank_classes(audit, analysis).classes}
                   for analysis in benchmark_run.RANKED}
    with h5py.File(directory / "audit.h5", "r") as store:
        for analysis in benchmark_run.RANKED:
            group = store[f"analyses/{analysis}/{data.poisoned_class}"]
            index = group["status/dataset_index"][:]
            planted = np.isin(index, data.planted)
            features = store[f"analyses/{analysis}/preprocess/features"]
            rows = features[group["status/positions"][:]].astype(np.float64)
            snn = shared_neighbour_affinity(group["knn/indices"][:])
            found = labelings(group)
            best_f1, best_size = best_cluster(found, planted)
            members = small_members(group, found, small)
            small_f1, small_size = (0.0, 0) if members is None else (f1(members, planted), int(members.sum()))
            classes = range(len(data.label_names))
            excess = {"any": [shipped[analysis][label] for label in classes],
                      "small": [float(null.excess_) for null in small_nulls(features, store, analysis, len(classes),
                                                                             small)]}
            summary = {}
            for key, values in excess.items():
                own = values[data.poisoned_class]
                others = [v for i, v in enumerate(values) if i != data.poisoned_class]
                summary[key] = {"excess": own, "rank": 1 + sum(v > own for v in others),
                                "others": [min(others), max(others)]}
            row[analysis] = {**separation(rows, planted, case.seed),
                             "snn": normalized_cuts(snn, np.where(planted, 0, -1))[0],
                             "best_f1": best_f1, "best_size": best_size,
                             "small_f1": small_f1, "small_size": small_size, **summary}
    return row


def line(row: dict) -> str:
    parts = [row["case"]]
    for analysis in benchmark_run.RANKED:
        a = row[analysis]
        parts.append(f"  {analysis}: probe {a['probe']:.2f} purity {a['purity']:.2f} ncut {a['ncut']:.3f} "
                     f"snn {a['snn']:.3f} best F1 {a['best_f1']:.2f} ({a['best_size']}) "
                     f"small named F1 {a['small_f1']:.2f} ({a['small_size']})"
                     + "".join(f" | {key}: excess {a[key]['excess']:.2f} rank {a[key]['rank']} "
                               f"(others {a[key]['others'][0]:.2f} to {a[key]['others'][1]:.2f})"
                               for key in ("any", "small")))
    return "\n".join(parts)


def run_small(description: str, score: Callable[..., dict], line: Callable[[dict], str],
              summary: Callable[[list[dict]], str] | None = None) -> None:
    """The command line of the small-group scripts: cached cases (bench_detection.cached_case_arguments, with
    ``--small``, the largest small candidate as a share of the class, 0.1, and ``--full``), each scored by
    ``score(case, directory, images, size, small)`` and printed by ``line``, then ``summary`` of the rows, and
    the rows written to ``--json``."""
    args, seeds, size = bench_detection.sized_case_arguments(
        description, {"--small": "largest candidate of the small selection, a share of the class (0.1)"})
    small = float(args.small or 0.1)
    rows = []
    for _, row in bench_detection.scored(args.caches, seeds,
                                         lambda case, directory, images: score(case, directory, images, size, small),
                                         size=size):
        print(line(row), flush=True)
        rows.append(row)
    if summary is not None:
        print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def main() -> None:
    run_small(__doc__.split("\n\n")[0], score, line)


if __name__ == "__main__":
    main()
