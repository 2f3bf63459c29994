"""Transplant test: does the model *use* what a class's named cluster has in addition to the rest of its class?

A diagnostic for issue 17 on the benchmark's cached quick cases (`spray benchmark --cache`): a flag says "a
distinct strategy", which may be a shortcut or a legitimate sub-style. For every class of the ranking over
spray.benchmark.run.RANKED, the named cluster's mean input shift (mean of the cluster's training images minus
the mean of the rest of its class, spray.clarc.transform.GroupMoments.shift) is added to every clean test image of
the *other* classes; the **transplant rate** is the share then predicted as the class minus the share without
the shift. Control: the same for random subgroups of the class of the cluster's size (5 draws, their mean).
A shortcut the model uses should transplant (a frame added to a 3 makes it an 8); a way of writing the class
should not. Prints per case the poisoned class's rank by the ranking and by the transplant rate, its rate, the
control's, and the largest rate of a clean class.

Run:  python tests/benchmarks/bench_transplant.py CACHE [CACHE ...] [--seeds 0,1] [--json OUT]
"""

from __future__ import annotations

import json

import numpy as np
import torch

# this folder, first on sys.path when run as a script
from bench_detection import cached_case_arguments, scored, trained_model
from spray.benchmark.cases import QUICK, make_case
from spray.benchmark.run import RANKED
from spray.ranking import rank_analyses
from spray.store import AuditStore
from spray.training import predict

CONTROL_DRAWS = 5


def transplant_rates(model: torch.nn.Module, train: tuple, test: tuple, label: int, members: np.ndarray,
                     rng: np.random.Generator) -> tuple[float, float]:
    """(transplant rate of ``members``' mean shift into the other classes' test images as ``label``, the mean
    rate of :data:`CONTROL_DRAWS` random subgroups of the class of the same size)."""
    x, y = torch.from_numpy(train[0]), train[1]
    in_class = np.flatnonzero(y == label)
    others = torch.from_numpy(test[0][test[1] != label])
    base = np.mean(predict(model, others).numpy() == label)

    def rate(group: np.ndarray) -> float:
        delta = x[group].mean(0) - x[np.setdiff1d(in_class, group)].mean(0)
        return float(np.mean(predict(model, others + delta).numpy() == label) - base)

    control = [rate(rng.choice(in_class, size=len(members), replace=False)) for _ in range(CONTROL_DRAWS)]
    return rate(members), float(np.mean(control))


def score(case, directory, images) -> dict:
    data = make_case(case, images, QUICK)
    model = trained_model(case, directory, data)
    with AuditStore(directory / "audit.h5", mode="r") as store:
        ranking = [e for e in rank_analyses(store, RANKED) if e.cluster is not None]
    rng, classes = np.random.default_rng(0), []
    for entry in ranking:
        rate, control = transplant_rates(model, data.train, data.clean_test, entry.label,
                                         np.asarray(sorted(entry.cluster.members)), rng)
        classes.append({"label": entry.label, "rank": entry.rank, "flagged": entry.flagged, "transplant": rate,
                        "control": control, "poisoned": entry.label == data.poisoned_class})
    classes.sort(key=lambda c: -c["transplant"])
    return {"case": case.name, "classes": classes}


def main() -> None:
    args, seeds = cached_case_arguments(__doc__.split("\n\n")[0])
    torch.set_num_threads(1)
    rows = []
    for case, row in scored(args.caches, seeds, score):
        rows.append(row)
        by_rate = [c["label"] for c in row["classes"]]
        poisoned = next((c for c in row["classes"] if c["poisoned"]), None)
        clean = max((c["transplant"] for c in row["classes"] if not c["poisoned"]), default=float("nan"))
        if poisoned is None:  # the control: no poisoned class
            print(f"{case.name}: largest transplant rate {clean:.3f}", flush=True)
            continue
        print(f"{case.name}: poisoned class rank {poisoned['rank']} by the ranking, "
              f"{by_rate.index(poisoned['label']) + 1} by transplant rate; its rate {poisoned['transplant']:.3f} "
              f"(random subgroups {poisoned['control']:.3f}); largest of a clean class {clean:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
