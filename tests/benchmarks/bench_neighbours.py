"""Fewer neighbours for small groups: the ranking with every analysis's kNN graph built on ``--neighbours`` K.

Issue 17: a group of 10 images among a class of 350 (3 % at the full size) cannot be cut off in a graph of 10
neighbours — its members' tenth neighbours lie outside it — so its normalised cut is no better than a large
sub-style's. For each cached case this script copies the audit store and the model to ``--work`` (the cache is
left as it is), analyses each analysis of the benchmark's ranking (spray.benchmark.run.RANKED) again with the
same pipeline and ``knn.n_neighbors = K`` (the selection null included: it reruns the pipeline's kNN on each
resample) as analysis ``<analysis>_k<K>``, and scores with the benchmark's own detection scoring the rankings
``shipped`` (RANKED) and ``k<K>`` (the three analyses at K). A rerun reuses the analyses it finished (the
pipeline's nodes are memoised).

Run:  python tests/benchmarks/bench_neighbours.py CACHE [CACHE ...] --work DIR --neighbours 5 [--full]
      [--seeds 0,1,2] [--json OUT]
"""

from __future__ import annotations

from pathlib import Path

import bench_detection  # this folder, first on sys.path when run as a script
from spray.benchmark.cases import FULL, QUICK, Case
from spray.benchmark.run import RANKED
from spray.pipeline import analyze, pipeline_from_text
from spray.ranking import rank_analyses
from spray.store import AuditStore

def with_neighbours(analysis: str, k: int) -> str:
    """The benchmark's pipeline of ``analysis`` as analysis ``<analysis>_k<k>`` with a kNN graph of ``k``."""
    text = bench_detection.PIPELINES[analysis].replace(f'name = "{analysis}"', f'name = "{analysis}_k{k}"')
    return f"{text}[knn]\nn_neighbors = {k}\n"


def main() -> None:
    args, seeds = bench_detection.cached_case_arguments(
        __doc__.split("\n\n")[0], {"--work": "where the copies of the cases go (required)",
                                   "--neighbours": "comma-separated numbers of neighbours (required)"},
        flags={"--full": "the caches hold full-size cases"})
    if not args.work or not args.neighbours:
        raise SystemExit("--work and --neighbours are required")
    ks, size = [int(k) for k in args.neighbours.split(",")], FULL if args.full else QUICK

    def score(case: Case, directory: Path, images: object) -> dict:
        here = bench_detection.work_copy(directory, Path(args.work))
        data, model, uses = bench_detection.cached_model(case, here, images, size)
        for k in ks:
            for analysis in RANKED:
                analyze(str(here / "audit.h5"), pipeline_from_text(with_neighbours(analysis, k), source=analysis),
                        progress=False)
        with AuditStore(here / "audit.h5", mode="r") as store:
            rankings = {"shipped": rank_analyses(store, RANKED),
                        **{f"k{k}": rank_analyses(store, [f"{a}_k{k}" for a in RANKED]) for k in ks}}
        return bench_detection.detection_row(case, data, model, uses, rankings)

    bench_detection.print_rankings(bench_detection.scored(args.caches, seeds, score, size=size), args.json)


if __name__ == "__main__":
    main()
