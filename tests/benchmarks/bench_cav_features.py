"""CAV retrieval benchmark: the scorecard's out-of-fold CAV AUROC with the CAV fitted to other features.

The scorecard's ``cav_auroc`` (docs/benchmark.md, "Metrics") ranks the poisoned class's training images by
out-of-fold scores of a signal CAV fitted to separate the cluster spray names from the rest of the class.
Up to scoring version 7 it fitted the CAV to ClArC's default layer's activations averaged over positions: a
small local artifact moves a few positions of a few channels, and the mean over 49 positions dilutes it. This
re-scores the cached cases (as the scorecard does: the cluster named by the ranking over the benchmark's
analyses, spray.benchmark.run.RANKED) with the CAV fitted to each of :data:`FEATURES`:

- ``mean``: activations averaged over positions, (C,) (ClArC's CAV; the scorecard's up to version 7);
- ``max``: the maximum over positions, (C,): position-free, and a local artifact's peak is not averaged away;
- ``grid2``, ``full``: activations area-averaged to 2 × 2 cells, (C·4,) (the scorecard's since version 8,
  spray.benchmark.run.CAV_GRID), or every position, (C·H·W,);
- ``relevance``, ``relevance_grid2``: the latent relevance the concept analysis clusters (the store's
  ``latent`` attribution, 2 × 2 cells) summed over cells, (C,), or as stored, (C·4,);
- ``first_max``, ``first_grid2``: the first feature map's activations (spray.clarc.activations.first_layer)
  maximised over positions, (C',) — what the ``activation_max`` analysis clusters — or in 2 × 2 cells, (C'·4,);
- ``chosen``: per case, the one of :data:`CHOICE` in which the named cluster is best separated (no ground
  truth; the scorecard's ``cav_auroc`` since scoring version 23).

Prints per case the AUROC of each, then per split and artifact class (local: patch, tag, frame; global:
brightness, blur, cast, waterbirds) the mean and minimum over the cases whose model uses the artifact, and over
those of them whose named cluster is the planted group (F1 ≥ 0.9: where the CAV's features, not the cluster,
decide the AUROC).

Run:  python tests/benchmarks/bench_cav_features.py CACHE [CACHE ...] [--full] [--seeds 0,100] [--json OUT]
(``--full``: the cache holds full-size cases, not ``--quick`` ones).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from bench_detection import cases, sized_case_arguments, trained_model
from spray.benchmark.cases import QUICK, Size, make_case
from spray.benchmark.data import load_images
from spray.benchmark.metrics import best_separated, out_of_fold_cav_auroc
from spray.benchmark.run import RANKED, USES_MARGIN, _detect, cav_features
from spray.clarc.activations import activations, default_layer, first_layer, pool
from spray.ranking import rank_analyses
from spray.store import LATENT_METHOD, AuditStore
from spray.training import accuracy

FEATURES = ("mean", "max", "grid2", "full", "relevance", "relevance_grid2", "first_max", "first_grid2")
CHOICE = ("grid2", "first_max")
"""What ``chosen`` picks from (spray.benchmark.run.cav_features, the scorecard's since version 23), per case
without ground truth: the one in which the named cluster is best separated (spray.benchmark.metrics.best_separated)."""
LOCAL = ("patch_fixed", "patch_random", "patch_large", "tag", "frame")


def features(a: torch.Tensor, latent: np.ndarray, first: torch.Tensor) -> dict[str, np.ndarray]:
    """Each of :data:`FEATURES` from activations ``a`` (n, C, H, W), latent relevance (n, C, 2, 2) and the
    first feature map's activations ``first`` (n, C', H', W')."""
    return {"mean": pool(a).numpy(), "max": a.flatten(2).amax(2).numpy(), "grid2": pool(a, 2).numpy(),
            "full": a.flatten(1).numpy(), "relevance": latent.sum((2, 3)),
            "relevance_grid2": latent.reshape(len(latent), -1), "first_max": first.flatten(2).amax(2).numpy(),
            "first_grid2": pool(first, 2).numpy()}


def score(case, directory: Path, images: object, size: Size = QUICK) -> dict:
    data = make_case(case, images, size)
    model = trained_model(case, directory, data)
    clean = accuracy(model, data.dataset(data.clean_test))
    everywhere = accuracy(model, data.dataset(data.everywhere_test))
    in_class = np.flatnonzero(data.train[1] == data.poisoned_class)
    with AuditStore(directory / "audit.h5", mode="r") as store:
        members, detected = _detect(data, rank_analyses(store, RANKED), cav_features(model, data))
        latent = store.read(f"attributions/{LATENT_METHOD}/relevance", in_class)
    x = torch.from_numpy(data.train[0][in_class])
    a = activations(model, default_layer(model, x[:2]), x)
    first = activations(model, first_layer(model, x[:2]), x)
    flagged, truth = np.isin(in_class, members), np.isin(in_class, data.planted)
    sets = features(a, latent, first)
    auroc = {name: out_of_fold_cav_auroc(f, flagged, truth, seed=case.seed) for name, f in sets.items()}
    chosen = CHOICE[best_separated([sets[name] for name in CHOICE], flagged, seed=case.seed)]
    auroc["chosen"] = auroc[chosen]
    return {"case": case.name, "artifact": case.artifact, "split": case.split, "seed": case.seed,
            "uses": clean - everywhere >= USES_MARGIN, "f1": detected["f1"], "scorecard": detected["cav_auroc"],
            "auroc": auroc, "chosen": chosen}


def summary(rows: list[dict]) -> str:
    columns = (*FEATURES, "chosen")
    lines = ["| split | artifacts | named cluster | cases | " + " | ".join(columns) + " |",
             "|---" * (4 + len(columns)) + "|"]
    for split in ("dev", "heldout"):
        for kind in ("local", "global"):
            for found in ("any", "F1 ≥ 0.9"):
                here = [r for r in rows if r["split"] == split and r["uses"] and (r["artifact"] in LOCAL) ==
                        (kind == "local") and (found == "any" or r["f1"] >= 0.9)]
                means = []
                for name in columns:
                    values = [r["auroc"][name] for r in here if r["auroc"][name] is not None]
                    means.append(f"{np.mean(values):.3f} (min {min(values):.2f})" if values else "-")
                lines.append(f"| {split} | {kind} | {found} | {len(here)} | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main() -> None:
    args, seeds, size = sized_case_arguments(__doc__.split("\n\n")[0])
    images, rows = load_images("mnist"), []
    for case, directory in cases(args.caches, seeds, size):
        if case.is_control:
            continue
        row = score(case, directory, images, size)
        rows.append(row)
        print(f"{case.name}: uses {row['uses']} F1 {row['f1']:.2f} " + " ".join(
            f"{n} {'-' if v is None else f'{v:.3f}'}" for n, v in row["auroc"].items()) + f" ({row['chosen']})",
              flush=True)
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
