"""LRP cost against its peer and against a gradient pass (issue 14, "Performance"): EpsilonPlusFlat on the zoo's
ResNet-50 (and ResNet-18) by spray and by zennit 0.5.1 (ResNetCanonizer, spray's conventions: tests/lrp/
zennit_peer.py), a plain input-gradient pass on the same batch, and spray on ViT-Tiny/16 against its gradient
pass (zennit has no transformer rules). Targets: spray / zennit <= 1.0; spray LRP / gradient <= 2.5.

Per model: wall seconds per batch (the median of ``--repeats`` calls after one warm-up), spray's first call
apart (it traces the model: the once-per-run cost), and the peak RSS of the process so far.

Run: python tests/benchmarks/bench_lrp_peers.py [--size 224] [--batch 32] [--repeats 3] [--models resnet50,...]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spray import lrp, zoo  # noqa: E402
from spray.benchmark.scorecard import machine  # noqa: E402
from tests.lrp.zennit_peer import imported_zennit, zennit_composite, zennit_relevance  # noqa: E402

MODELS: dict[str, Callable[[int], nn.Module]] = {
    "resnet50": lambda size: zoo.resnet50(num_classes=1000),
    "resnet18": lambda size: zoo.resnet18(num_classes=1000),
    "vit_tiny_16": lambda size: zoo.vit_tiny_16(num_classes=1000, image_size=size),
}
"""name -> factory of the model for square inputs of a side."""
PEERED = {"resnet50", "resnet18"}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first call's seconds, median of the next ``repeats``)."""
    tick = time.perf_counter()
    fn()
    first = time.perf_counter() - tick
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return first, statistics.median(times)


def gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
    return grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,resnet18,vit_tiny_16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"batch {args.batch} of 3 x {args.size} x {args.size}, float32")
    rows = []
    with imported_zennit() as z:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = zoo.randomize_batch_norms(MODELS[name](args.size)).eval()
            x = torch.rand(args.batch, 3, args.size, args.size)
            target = torch.randint(0, 1000, (args.batch,))
            _, t_grad = timed(lambda: gradient(model, x, target), args.repeats)
            spray_lrp = lrp.LRP(lrp.EpsilonPlusFlat())
            first, t_spray = timed(lambda: spray_lrp.attribute(model, x, target), args.repeats)
            t_zennit = None
            if name in PEERED:
                composite = zennit_composite(z, "epsilon_plus_flat", z.ResNetCanonizer)
                _, t_zennit = timed(lambda: zennit_relevance(composite, model, x, target), args.repeats)
            rows.append((name, t_grad, first, t_spray, t_zennit, peak_rss_gib()))
            print(rows[-1], flush=True)
    print("\n| model | gradient pass (s) | spray LRP, first call (s) | spray LRP (s) | zennit LRP (s) | "
          "spray / zennit | spray / gradient | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, t_grad, first, t_spray, t_zennit, rss in rows:
        peer = "–" if t_zennit is None else f"{t_zennit:.2f}"
        ratio = "–" if t_zennit is None else f"{t_spray / t_zennit:.2f}"
        print(f"| {name} | {t_grad:.2f} | {first:.2f} | {t_spray:.2f} | {peer} | {ratio} | "
              f"{t_spray / t_grad:.2f} | {rss:.2f} |")


if __name__ == "__main__":
    main()
