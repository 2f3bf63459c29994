"""A second flag test for small groups, measured against the shipped ranking (issue 17; not adopted).

On cached benchmark cases (`spray benchmark --cache`), each analysis of spray.benchmark.run.RANKED gets a second
test per class beside the shipped one: the selection and its selection null restricted to candidates of at most
``--small`` (default 0.1) of the class (bench_small_groups.py: ``small_nulls``, ``small_members``), its p-value and
excess judged against the other classes' restricted excesses as the shipped test is (docs/spray-method.md §12),
one Benjamini–Hochberg over both tests of every analysis. A class is represented by its strongest test (smallest
flag p), which names the restricted rule's cluster when it is the small one; classes are ordered by q, then p, as
``spray.ranking.rank_analyses`` orders them.

Prints per case the shipped and the two-test ranking's rank, flag and F1 of the poisoned class and the flags on
clean classes, then per split: ranked first, flagged, mean F1 and mean rank where the model uses its artifact, and
the clean-class flags (every class of the control). docs/benchmark.md, "Small groups at 3 %", holds its table.

Run:  python tests/benchmarks/bench_small_test.py CACHE [CACHE ...] [--full] [--small 0.1] [--seeds 0,100]
"""

from __future__ import annotations

import h5py
import numpy as np

import bench_detection  # this folder, first on sys.path when run as a script
from bench_small_groups import labelings, run_small, small_members, small_nulls
from spray.benchmark import run as benchmark_run
from spray.benchmark.cases import Case, Size
from spray.benchmark.metrics import detection
from spray.ranking import _tests, rank_analyses  # the shipped test, applied to the small one too
from spray.results import best_clusters
from spray.store import AuditStore


def small_tests(path: object, classes: int, small: float) -> dict[str, dict[int, tuple[float, float, list[int]]]]:
    """Per analysis ``{class: (p, excess, dataset indices of the named small cluster)}`` for the classes that have
    a candidate of at most ``small`` · n."""
    found: dict[str, dict[int, tuple[float, float, list[int]]]] = {}
    with h5py.File(path, "r") as store:
        for analysis in benchmark_run.RANKED:
            nulls = small_nulls(store[f"analyses/{analysis}/preprocess/features"], store, analysis, classes, small)
            found[analysis] = {}
            for label, null in enumerate(nulls):
                group = store[f"analyses/{analysis}/{label}"]
                members = small_members(group, labelings(group), small)
                if members is not None:
                    index = group["status/dataset_index"][:]
                    found[analysis][label] = (float(null.p_value_), float(null.excess_), index[members].tolist())
    return found


def two_tests(store: AuditStore, small: dict[str, dict[int, tuple[float, float, list[int]]]]) -> list[tuple]:
    """The classes as the two-test ranking orders them: ``(label, flagged, test, named members)``."""
    shipped = {analysis: best_clusters(store, analysis) for analysis in benchmark_run.RANKED}
    found = {analysis: [(c.label, c.null_p_value, c.null_excess, c.separation) for c in classes]
             for analysis, classes in shipped.items()}
    members = {(analysis, c.label): list(c.cluster.members)
               for analysis, classes in shipped.items() for c in classes if c.cluster is not None}
    for analysis, tests in small.items():
        found[f"{analysis}/small"] = [(label, p, x, None) for label, (p, x, _) in tests.items()]
        members.update({(f"{analysis}/small", label): named for label, (_, _, named) in tests.items()})
    strongest: dict[int, object] = {}
    for test in _tests(found):
        if (test.analysis, test.label) in members and (
                test.label not in strongest or test.p_value < strongest[test.label].p_value):
            strongest[test.label] = test
    order = sorted(strongest.values(), key=lambda t: (t.q_value, t.p_value))
    return [(t.label, t.flagged, t.analysis, members[(t.analysis, t.label)]) for t in order]


def score(case: Case, directory: object, images: object, size: Size, small: float) -> dict:
    data, model, uses = bench_detection.cached_model(case, directory, images, size)
    tests = small_tests(directory / "audit.h5", len(data.label_names), small)
    with AuditStore(directory / "audit.h5", mode="r") as store:
        shipped = benchmark_run._detect(data, rank_analyses(store, benchmark_run.RANKED),
                                        benchmark_run.cav_features(model, data))[1]
        ranked = two_tests(store, tests)
    poisoned = data.poisoned_class
    rank, entry = next(((i, e) for i, e in enumerate(ranked, start=1) if e[0] == poisoned), (None, None))
    two = {"rank": rank, "flagged": bool(entry and entry[1]), "analysis": entry and entry[2],
           "f1": None if case.is_control or entry is None else detection(entry[3], data.planted.tolist())[2],
           "clean_flags": sum(e[1] for e in ranked if case.is_control or e[0] != poisoned)}
    return {"case": case.name, "split": case.split, "uses": uses, "clean_classes": shipped["clean_classes"],
            "shipped": {k: shipped[k] for k in ("rank", "flagged", "analysis", "f1", "clean_flags")}, "two": two}


def line(row: dict) -> str:
    def part(s: dict) -> str:
        f1 = "–" if s["f1"] is None else f"{s['f1']:.2f}"
        return f"rank {s['rank']} {'flagged' if s['flagged'] else 'not flagged'} F1 {f1} by {s['analysis']} " \
               f"(clean flags {s['clean_flags']})"
    return f"{row['case']:36s} uses {row['uses']}: shipped {part(row['shipped'])} | two tests {part(row['two'])}"


def summary(rows: list[dict]) -> str:
    lines = ["| split | tests | cases | ranked first (uses) | flagged (uses) | mean F1 (uses) | mean rank (uses) | "
             "clean-class flags |", "|---|---|---|---|---|---|---|---|"]
    for split in ("dev", "heldout"):
        here = [r for r in rows if r["split"] == split]
        used = [r for r in here if r["uses"]]
        for key in ("shipped", "two"):
            f1 = [r[key]["f1"] for r in used if r[key]["f1"] is not None]
            ranks = [r[key]["rank"] for r in used if r[key]["rank"] is not None]
            lines.append(
                f"| {split} | {key} | {len(here)} | {sum(r[key]['rank'] == 1 for r in used)}/{len(used)} | "
                f"{sum(r[key]['flagged'] for r in used)}/{len(used)} | {np.mean(f1) if f1 else np.nan:.2f} | "
                f"{np.mean(ranks) if ranks else np.nan:.1f} | "
                f"{sum(r[key]['clean_flags'] for r in here)}/{sum(r['clean_classes'] for r in here)} |")
    return "\n".join(lines)


def main() -> None:
    run_small(__doc__.split("\n\n")[0], score, line, summary)


if __name__ == "__main__":
    main()
