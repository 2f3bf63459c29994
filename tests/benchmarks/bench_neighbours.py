"""Fewer neighbours for small groups: the ranking with every analysis's kNN graph built on ``--neighbours`` K,
or with its small clusters cut in a graph of ``--small-neighbours`` S (fda.small_neighbors).

Issue 17: a group of 10 images among a class of 350 (3 % at the full size) cannot be cut off in a graph of 10
neighbours — its members' tenth neighbours lie outside it — so its normalised cut is no better than a large
sub-style's. For each cached case this script copies the audit store and the model to ``--work`` (the cache is
left as it is), analyses each analysis of the benchmark's ranking (spray.benchmark.run.RANKED) again with the
same pipeline and ``knn.n_neighbors = K`` (the selection null included: it reruns the pipeline's kNN on each
resample) as analysis ``<analysis>_k<K>``, and with ``fda.small_neighbors = S`` (clusters of at most 10 samples
cut in the graph of each sample's first S neighbours, spray.analysis.candidate_cuts) as ``<analysis>_s<S>``. It
scores with the benchmark's own detection scoring the rankings ``shipped`` (RANKED), ``k<K>`` and ``s<S>`` (the
three analyses so changed). A rerun reuses the analyses it finished (the pipeline's nodes are memoised).

Run:  python tests/benchmarks/bench_neighbours.py CACHE [CACHE ...] --work DIR [--neighbours 5]
      [--small-neighbours 5] [--full] [--seeds 0,1,2] [--json OUT]
"""

from __future__ import annotations

from pathlib import Path

import bench_detection  # this folder, first on sys.path when run as a script
from spray.benchmark.cases import Case
from spray.benchmark.run import RANKED
from spray.pipeline import analyze, pipeline_from_text
from spray.ranking import rank_analyses
from spray.store import AuditStore

def variant(analysis: str, label: str, table: str) -> str:
    """The benchmark's pipeline of ``analysis`` as analysis ``<analysis>_<label>``, with ``table`` added."""
    text = bench_detection.PIPELINES[analysis].replace(f'name = "{analysis}"', f'name = "{analysis}_{label}"')
    return f"{text}{table}"


def main() -> None:
    args, seeds, size = bench_detection.sized_case_arguments(
        __doc__.split("\n\n")[0], {"--work": "where the copies of the cases go (required)",
                                   "--neighbours": "comma-separated numbers of neighbours of the kNN graph",
                                   "--small-neighbours": "comma-separated numbers of neighbours of small clusters' cut"})
    if not args.work or not (args.neighbours or args.small_neighbours):
        raise SystemExit("--work and one of --neighbours, --small-neighbours are required")
    variants = {**{f"k{k}": f"[knn]\nn_neighbors = {k}\n" for k in _numbers(args.neighbours)},
                **{f"s{s}": f"[fda]\nsmall_neighbors = {s}\n" for s in _numbers(args.small_neighbours)}}

    def score(case: Case, directory: Path, images: object) -> dict:
        here = bench_detection.work_copy(directory, Path(args.work))
        data, model, uses = bench_detection.cached_model(case, here, images, size)
        for label, table in variants.items():
            for analysis in RANKED:
                analyze(str(here / "audit.h5"), pipeline_from_text(variant(analysis, label, table), source=analysis),
                        progress=False)
        with AuditStore(here / "audit.h5", mode="r") as store:
            rankings = {"shipped": rank_analyses(store, RANKED),
                        **{label: rank_analyses(store, [f"{a}_{label}" for a in RANKED]) for label in variants}}
        return bench_detection.detection_row(case, data, model, uses, rankings)

    bench_detection.print_rankings(bench_detection.scored(args.caches, seeds, score, size=size), args.json)


def _numbers(text: str | None) -> list[int]:
    return [int(n) for n in text.split(",")] if text else []


if __name__ == "__main__":
    main()
