"""The ``activation`` baseline with small clusters cut in five neighbours, as SpRAy cuts them, against its rule
before scoring version 33 (every cluster cut in the 10-neighbour graph).

Issue 17: since scoring version 32 SpRAy cuts clusters of at most 10 samples in the graph of each sample's first 5
neighbours (spray.analysis.candidate_cuts); the baseline that runs SpRAy's per-class analysis on the penultimate
activations (spray.benchmark.baseline) follows it from version 33. For each cached case but the controls this
script runs the baseline both ways on the case's training data and cached model and prints the poisoned class's
rank and the F1 of its group, then, over the cases whose model uses its artifact, how often each rule ranks the
poisoned class first and its mean F1.

Run:  python tests/benchmarks/bench_baseline_cut.py CACHE [CACHE ...] [--full] [--seeds 0,1,2] [--json OUT]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import bench_detection  # this folder, first on sys.path when run as a script
from spray.benchmark.baseline import activation_baseline
from spray.benchmark.cases import Case
from spray.benchmark.metrics import detection
from spray.analysis.cut import SMALL_NEIGHBORS

RULES = {"k10": None, f"s{SMALL_NEIGHBORS}": SMALL_NEIGHBORS}
"""The rules compared: every cluster cut in 10 neighbours (before version 33), small clusters in 5 (since)."""


def main() -> None:
    args, seeds, size = bench_detection.sized_case_arguments(__doc__.split("\n\n")[0])

    def score(case: Case, directory: Path, images: object) -> dict:
        data, model, uses = bench_detection.cached_model(case, directory, images, size)
        row = {"case": case.name, "uses": uses}
        for rule, small in RULES.items():
            found = activation_baseline(model, *data.train, small_neighbors=small)
            entry = next((i for i, c in enumerate(found) if c.label == data.poisoned_class), None)
            row[rule] = {"rank": None, "f1": None} if entry is None else {
                "rank": entry + 1, "f1": detection(found[entry].members.tolist(), data.planted.tolist())[2]}
        return row

    rows = []
    for case, row in bench_detection.scored(args.caches, seeds, score, size=size):
        if case.is_control:
            continue
        rows.append(row)
        print(f"{case.name}: uses {row['uses']}, " + ", ".join(
            f"{rule} rank {row[rule]['rank']} F1 {bench_detection._rounded(row[rule]['f1'])}" for rule in RULES), flush=True)
    used = [r for r in rows if r["uses"]]
    for rule in RULES:
        first = sum(r[rule]["rank"] == 1 for r in used)
        f1 = np.mean([r[rule]["f1"] or 0.0 for r in used]) if used else float("nan")
        print(f"{rule}: ranked first {first}/{len(used)}, mean F1 {f1:.2f} (cases whose model uses its artifact)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
