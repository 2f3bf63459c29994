"""Pooled activations at other layers than the first, or pooled otherwise, in the ranking: does a deeper feature
map, or the channels' mean over positions, find what the first map's maxima miss?

The benchmark ranks three analyses (spray.benchmark.run.RANKED); the third, ``activation_max``, is each channel's
maximum over the first feature map (the CNN's 8 channels at ``features.2``). For each cached case, this script
copies the model and the audit store to ``--work`` (the cache is left as it is), stores the maximum over
positions of every ``--layers`` module's channels (``--quantity activation_max``, the default; ``activation``:
their mean, a texture statistic; spray.workflow.latent_attributor, grid 1; with ``--grid G``, pooled to G × G cells
instead: at the map's own size, its activations as they are) as attribution and analysis ``amax_<layer>`` or
``amean_<layer>`` (``amax<G>_<layer>`` with a grid; the benchmark's activation_max pipeline), and scores, with the
benchmark's detection scoring, the rankings ``shipped`` (RANKED), ``first alone``, and per layer ``<layer> in
place`` (the layer's analysis instead of the first map's), ``<layer> alone`` and ``<layer> added`` (all four
analyses). A rerun reuses the copies it finished. docs/benchmark.md, "Why the ResNet finds 3 % groups the CNN
misses", reports it.

Run:  python tests/benchmarks/bench_activation_layers.py CACHE [CACHE ...] --work DIR --layers features.6,features.10
      [--quantity activation] [--grid 7] [--full] [--seeds 0,1,2] [--json OUT]
(``--layers`` takes module names, ``first`` and ``default``: ClArC's default layer.)
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

import bench_detection  # this folder, first on sys.path when run as a script
from spray.attribution.methods import get_method
from spray.benchmark.cases import Case, CaseData, Size
from spray.benchmark.run import ACTIVATION_MAX, METHOD, RANKED, _latent_pipeline, attribute_case
from spray.pipeline import analyze, pipeline_from_text
from spray.ranking import rank_analyses, rank_classes
from spray.store import AuditStore
from spray.workflow import latent_attributor

QUANTITIES = {ACTIVATION_MAX: "amax", "activation": "amean"}


def prefix(quantity: str, grid: int = 1) -> str:
    """``amax``, ``amean``; with a grid of G > 1 cells a side, ``amax<G>``, ``amean<G>``."""
    return f"{QUANTITIES[quantity]}{'' if grid == 1 else grid}"


def analysis_name(layer: str, quantity: str, grid: int = 1) -> str:
    return f"{prefix(quantity, grid)}_{layer.replace('.', '_')}"


def add_layers(case: Case, directory: Path, images: object, work: Path, layers: list[str], quantity: str,
               size: Size, grid: int = 1) -> tuple[Path, CaseData, nn.Module, bool | None]:
    """The case's copy in ``work`` with every layer's pooled activations attributed and analysed."""
    here = bench_detection.work_copy(directory, work)
    done = here / f"{prefix(quantity, grid)}-{'+'.join(layers)}-done"
    data, model, uses = bench_detection.cached_model(case, here, images, size)
    if not done.exists():
        train = data.dataset(data.train)
        for layer in layers:
            name = analysis_name(layer, quantity, grid)
            attribute_case(here / "audit.h5", model, train, case,
                           latent_attributor(get_method(METHOD), model, train, layer, grid, quantity), name)
            analyze(str(here / "audit.h5"), pipeline_from_text(_latent_pipeline(name, name), source=name),
                    progress=False)
        done.touch()
    return here, data, model, uses


def main() -> None:
    args, seeds, size = bench_detection.sized_case_arguments(
        __doc__.split("\n\n")[0], {"--work": "where the copies of the cases go (required)",
                                   "--layers": "comma-separated modules whose pooled activations are ranked",
                                   "--quantity": "activation_max (default) or activation (the mean)",
                                   "--grid": "pool to G x G cells instead of 1 (default 1)"})
    if not args.work or not args.layers:
        raise SystemExit("--work and --layers are required")
    layers, quantity = args.layers.split(","), args.quantity or ACTIVATION_MAX
    grid = int(args.grid or 1)
    if quantity not in QUANTITIES:
        raise SystemExit(f"--quantity must be one of {', '.join(QUANTITIES)}, not {quantity!r}")

    def score(case: Case, directory: Path, images: object) -> dict:
        here, data, model, uses = add_layers(case, directory, images, Path(args.work), layers, quantity, size, grid)
        with AuditStore(here / "audit.h5", mode="r") as store:
            rankings = {"shipped": rank_analyses(store, RANKED), "first alone": rank_classes(store, ACTIVATION_MAX)}
            for layer in layers:
                name, others = analysis_name(layer, quantity, grid), [a for a in RANKED if a != ACTIVATION_MAX]
                rankings[f"{layer} in place"] = rank_analyses(store, [*others, name])
                rankings[f"{layer} alone"] = rank_classes(store, name)
                rankings[f"{layer} added"] = rank_analyses(store, [*RANKED, name])
        return bench_detection.detection_row(case, data, model, uses, rankings)

    bench_detection.print_rankings(bench_detection.scored(args.caches, seeds, score, size=size), args.json)


if __name__ == "__main__":
    main()
