"""The kind rule's figures on cached benchmark cases: what this tree's rule reads of each corrected cluster.

`spray benchmark --clarc auto` records, per case, the cluster auto corrected and the kind rule's figures as its
tree read them (``params["auto"]`` of the ClArC run, docs/clarc.md §2). A change to the rule
(spray.clarc.transform) changes no model, audit or cluster, so what it reads can be measured from those caches
without a correction: per case, the artifact is isolated again from the cached store as clarc_from_store isolates
it (the recorded cluster, layer, CAV, reference, σ, threshold and seed) and spray.clarc.transform.kind_figures
reads it with the cached model. Printed per case: the mean mask's coverage, the pasted mask's agreed area (and the
recorded one: equal unless the isolation changed), the intensity map's gain, the transplant masks' spread, the
reproduction AUCs with their chance SD, and the kind this tree reads next to the kind recorded.

Run:  python tests/benchmarks/bench_kind_figures.py CACHE [CACHE ...] [--full] [--seeds 0,100]
(``--full``: the cache holds full-size cases; a case without an auto run is skipped).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_detection import cached_model, cases  # this folder, first on sys.path when run as a script
from spray.benchmark.cases import FULL, QUICK
from spray.benchmark.data import load_images
from spray.clarc.artifact import isolate_artifact
from spray.clarc.cluster import ClusterSpec, read_cluster
from spray.clarc.run import audit_composite
from spray.clarc.transform import Transformations, kind_figures
from spray.store import AuditStore


def figures(directory: Path, data, model) -> tuple[dict, object] | None:
    """The recorded auto run of the case in ``directory`` and this tree's kind figures of its artifact."""
    runs = sorted((directory / "clarc").glob("auto_*/result.json"))
    if not runs:
        return None
    run = json.loads(runs[0].read_text())
    params, spec = run["params"], ClusterSpec.parse(run["cluster"])
    dataset = data.dataset(data.train)
    with AuditStore(directory / "audit.h5", mode="r") as store:
        members = read_cluster(store, spec, params["analysis"])
        composite = audit_composite(store, params["analysis"])
    artifact = isolate_artifact(model, dataset, members.artifact, members.rest, label=spec.label, layer=run["layer"],
                                cav=params["cav_method"], composite=composite, reference=params["reference"],
                                sigma=params["sigma"], threshold=params["threshold"], random_state=params["seed"],
                                cluster=str(spec))
    return params["auto"], kind_figures(Transformations(artifact, dataset), model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", nargs="+", type=Path)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--seeds", type=lambda s: {int(x) for x in s.split(",")})
    args = parser.parse_args()
    size, images = FULL if args.full else QUICK, load_images("mnist")
    for case, directory in cases(args.caches, args.seeds, size):
        data, model, uses = cached_model(case, directory, images, size)
        found = figures(directory, data, model)
        if found is None:
            print(f"{case.name}: no auto run, skipped")
            continue
        recorded, read = found
        aucs = ", ".join(f"{k} {v:.3f}" for k, v in (read.reproduction or {}).items()) or "model not asked"
        spread = "–" if read.spread is None else f"{read.spread:.3f}"
        chance = "" if read.chance is None else f" (chance SD {read.chance:.3f})"
        print(f"{case.name}: uses {uses}; coverage {read.coverage:.3f}, agreed {read.agreed_area:.4f} "
              f"(recorded {recorded['agreed_area']:.4f}), gain {read.gain:.3f}, spread {spread}; {aucs}{chance}; "
              f"kind {read.kind} (recorded {recorded['kind']})", flush=True)


if __name__ == "__main__":
    main()
