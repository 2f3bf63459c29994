"""Where a missed planted group is lost: not among the candidates, not selected, or selected and outranked.

Issue 17: a class's ranking entry is its best cluster in the analysis whose flag test is strongest
(spray.ranking.rank_analyses). A planted group the ranking misses can be lost at three stages, and each asks for a
different fix: no clustering holds it (the features or the clusterings); a clustering holds it, but the fda node
selects another cluster of its class (the selection rule); or it is its class's selected cluster in an analysis,
but the ranking puts another class first, or names another analysis's cluster of the class (the flag's
statistic). For every cached case whose model uses its artifact this script reads, per analysis stored (the
three ranked ones and any a benchmark script added), the poisoned class's selected cluster and its F1 with the
planted group, the best F1 any candidate cluster of the class reaches (every clustering, every cluster), the
class's selection-null p and the smallest null p of a clean class. Where the combined ranking
(spray.benchmark.run.RANKED) does not rank the class first with its group (F1 at least
spray.benchmark.metrics.MIN_F1_SMALL, issue 17's target at 3 %), it says at which stage the ranked analyses lose
the group.

Run:  python tests/benchmarks/bench_candidates.py CACHE [CACHE ...] [--full] [--seeds 0,1,2] [--json OUT]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import bench_detection  # this folder, first on sys.path when run as a script
from spray.benchmark.cases import Case
from spray.benchmark.metrics import MIN_F1_SMALL, detection
from spray.benchmark.run import RANKED
from spray.ranking import rank_analyses
from spray.results import best_clusters, complete_analyses, read_class
from spray.store import AuditStore

def poisoned_entry(store: AuditStore, analysis: str, label: int, planted: list[int]) -> dict:
    """Class ``label``'s figures in ``analysis``: its selected cluster's F1 and size, the best F1 of any candidate
    cluster and that cluster's size, its null p and the smallest null p of another class."""
    classes = {c.label: c for c in best_clusters(store, analysis)}
    chosen = classes[label]
    stored = read_class(store, analysis, label)
    best_f1, best_size = 0.0, None
    for labels in stored.clusterings.values():
        for cluster in np.unique(labels[labels >= 0]):
            members = stored.dataset_index[labels == cluster]
            f1 = detection(members.tolist(), planted)[2]
            if f1 > best_f1:
                best_f1, best_size = f1, len(members)
    others = [c.null_p_value for c in classes.values() if c.label != label and c.null_p_value is not None]
    return {"chosen_f1": None if chosen.cluster is None else detection(list(chosen.cluster.members), planted)[2],
            "chosen_size": None if chosen.cluster is None else chosen.cluster.size,
            "candidate_f1": best_f1, "candidate_size": best_size, "null_p": chosen.null_p_value,
            "clean_null_p": min(others) if others else None}


def stage(entries: dict[str, dict]) -> str:
    """Where the group is lost in the analyses of ``entries``: the furthest stage any of them reaches."""
    if any((e["chosen_f1"] or 0) >= MIN_F1_SMALL for e in entries.values()):
        return "selected, outranked"
    if any(e["candidate_f1"] >= MIN_F1_SMALL for e in entries.values()):
        return "a candidate, not selected"
    return "no candidate"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def main() -> None:
    args, seeds, size = bench_detection.sized_case_arguments(__doc__.split("\n\n")[0])

    def score(case: Case, directory: Path, images: object) -> dict:
        data, _, uses = bench_detection.cached_model(case, directory, images, size)
        planted = sorted(data.planted.tolist())
        with AuditStore(directory / "audit.h5", mode="r") as store:
            entry = next(c for c in rank_analyses(store, RANKED) if c.label == data.poisoned_class)
            entries = {a: poisoned_entry(store, a, data.poisoned_class, planted) for a in complete_analyses(store)}
        f1 = 0.0 if entry.cluster is None else detection(list(entry.cluster.members), planted)[2]
        found = entry.rank == 1 and f1 >= MIN_F1_SMALL
        return {"case": case.name, "uses": uses, "rank": entry.rank, "f1": f1, "analyses": entries,
                "stage": None if found else stage({a: entries[a] for a in RANKED})}

    rows = []
    for case, row in bench_detection.scored(args.caches, seeds, score, size=size):
        if not row["uses"]:
            continue
        rows.append(row)
        lost = f", lost: {row['stage']}" if row["stage"] else ""
        print(f"{case.name}: rank {row['rank']}, F1 {bench_detection._rounded(row['f1'])}{lost}", flush=True)
        for name, e in row["analyses"].items():
            print(f"  {name}: selected {e['chosen_size']} F1 {bench_detection._rounded(e['chosen_f1'])}, best "
                  f"candidate {e['candidate_size']} F1 {bench_detection._rounded(e['candidate_f1'])}, null p "
                  f"{_p(e['null_p'])}, clean classes' smallest {_p(e['clean_null_p'])}", flush=True)
    missed = [r for r in rows if r["stage"]]
    print(f"{len(rows)} cases whose model uses its artifact, {len(missed)} not ranked first with F1 >= {MIN_F1_SMALL}: "
          + ", ".join(f"{sum(r['stage'] == s for r in missed)} {s}" for s in sorted({r["stage"] for r in missed})))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
