"""Ranking benchmark: is the class ranking stable, does it find planted artifacts, and what does the FDA node cost?

Part 1 (--store PATH): every analysed class of an audit store is scored again from its stored spectral
embedding and clusterings with the store's own fda parameters, once per ``random_state`` 0..S−1 (the seed of
the permutation null). Prints per class the z-score (mean, sd, min, max over seeds) and the chosen
cluster(s); per seed the top three classes and the margin of the first over the second. (The flags do not
depend on this seed: they come from the null node, spray.ranking.flag_tests.)

Part 2 (--synthetic N): N stores of spray.testing.make_heatmaps (6 classes × 50 maps, the poisoned class
and the seed vary) analysed with the tests' "synthetic" pipeline and ranked by `spray.ranking`: rank and
outlier score (spray.ranking: the standard score of its selection-null z) of the poisoned class, the largest
of the others, the flagged classes and the
overlap (IoU) of the flagged cluster with the planted samples.

Part 3 (--cost): the FDA node (a FisherSeparability per clustering for the stored table, the clusters'
normalised cuts in the affinity of a 10-NN graph, then the choice)
on a 10-blob Gaussian mixture, n = 10k, d = 32, k-means k = 2..31 (30 clusterings), 100 permutations; wall
and CPU seconds of the node, of best_cluster alone, and of best_cluster without permutations (what the
ranking's z-scores cost; the permutations serve p-values and the clusterings' own null).

Run:  python tests/benchmarks/bench_ranking.py --store STORE.h5 [--seeds 10]
      python tests/benchmarks/bench_ranking.py --synthetic 12
      python tests/benchmarks/bench_ranking.py --cost [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def stability(path: str, seeds: int) -> None:
    from spray.analysis import best_cluster
    from spray.results import analysis_summary, read_class
    from spray.results import Cluster
    from spray.store import AuditStore

    with AuditStore(path) as store:
        summary = analysis_summary(store)
        params = json.loads(summary["pipeline"])["nodes"]["fda"]
        classes = [read_class(store, "spray", label) for label in summary["classes"]]
    classes = [c for c in classes if c.skipped is None]
    scores = {c.label: [] for c in classes}
    chosen = {}
    for seed in range(seeds):
        best = []
        for c in classes:
            name, cid, stats = best_cluster(c.embedding, c.clusterings, **{**params, "random_state": seed})
            scores[c.label].append(stats["z_score"])
            chosen.setdefault(c.label, set()).add((name, cid, stats["size"], round(stats["tau"], 2)))
            best.append(Cluster(c.label, name, cid, tuple(c.dataset_index[c.clusterings[name] == cid].tolist()),
                                None, stats["tau"], stats["z_score"], stats["p_value"], stats["clustering_score"]))
        best.sort(key=lambda b: -b.z_score)
        top = best[:3]
        print(f"seed {seed}: top {[(b.label, round(b.z_score)) for b in top]}, "
              f"margin {top[0].z_score / top[1].z_score:.3f}")
    # The flags no longer depend on the fda seed: they come from the null node (spray.ranking.flag_tests).
    print(f"{'class':>5} {'z mean':>8} {'sd':>6} {'min':>8} {'max':>8}  chosen cluster(s) (clustering, id, size, τ)")
    for label, z in scores.items():
        print(f"{label:>5} {np.mean(z):8.1f} {np.std(z):6.1f} {min(z):8.1f} {max(z):8.1f}  {sorted(chosen[label])}")


def synthetic(runs: int) -> None:
    from spray.pipeline import analyze, pipeline_from_text
    from spray.ranking import rank_classes
    from spray.store import AuditStore
    from spray.testing import make_heatmaps, pipeline_text, write_store

    n_classes, first, exact = 6, 0, 0
    for run in range(runs):
        poisoned = run % n_classes
        heatmaps = make_heatmaps(n_per_class=50, n_classes=n_classes, poisoned=poisoned, seed=run)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_store(Path(tmp) / "s.h5", heatmaps)
            analyze(str(path), pipeline_from_text(pipeline_text()), progress=False)
            with AuditStore(path) as store:
                ranking = rank_classes(store)
        entry = ranking.of(poisoned)
        others = max(e.outlier for e in ranking if e.label != poisoned)
        planted = set(heatmaps.planted.tolist())
        members = set(entry.cluster.members)
        flagged = [e.label for e in ranking.flagged]
        first += entry.rank == 1
        exact += flagged == [poisoned]
        print(f"seed {run} poisoned {poisoned}: rank {entry.rank}, z {entry.z_score:.1f}, "
              f"outlier {entry.outlier:.2f} (others ≤ {others:.2f}), flagged {flagged}, "
              f"IoU {len(members & planted) / len(members | planted):.2f}")
    print(f"poisoned class first in {first}/{runs}, flagged alone in {exact}/{runs}")


def cost(n: int) -> None:
    from spray.analysis import KMeansRange, KNNGraph, best_cluster
    from spray.pipeline.nodes import NODES

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(10, 32))
    E = centres[rng.integers(0, 10, n)] + rng.normal(size=(n, 32))
    clusterings = KMeansRange(2, 31, n_init=1, random_state=0).fit(E).named_labels()
    params = dict(NODES["fda"].defaults)
    graph = KNNGraph(random_state=0).fit(E)
    inputs = {"spectral": ({"embedding": E}, {}), "kmeans": (clusterings, {}),
              "knn": ({"indices": graph.indices_, "distances": graph.distances_}, {})}
    no_permutations = {**params, "n_permutations": 0}
    for what, call in (("fda node (table + best_cluster)", lambda: NODES["fda"].run(params, inputs)),
                       ("best_cluster alone", lambda: best_cluster(E, clusterings, **params)),
                       ("best_cluster, no permutations", lambda: best_cluster(E, clusterings, **no_permutations))):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        print(f"n = {n}, d = 32, {len(clusterings)} clusterings, {what}: "
              f"{time.perf_counter() - wall:.2f} s wall, {time.process_time() - cpu:.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="an analysed audit store (part 1)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--synthetic", type=int, default=0, metavar="N", help="N synthetic stores (part 2)")
    parser.add_argument("--cost", action="store_true", help="the FDA node's cost (part 3)")
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    if args.store:
        stability(args.store, args.seeds)
    if args.synthetic:
        synthetic(args.synthetic)
    if args.cost:
        cost(args.n)


if __name__ == "__main__":
    main()
