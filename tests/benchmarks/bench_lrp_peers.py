"""LRP cost against its peer and against a gradient pass (issue 14, "Performance"): EpsilonPlusFlat on the zoo's
ResNet-50 (and ResNet-18) by spray and by zennit 0.5.1 (ResNetCanonizer, spray's conventions: tests/lrp/
zennit_peer.py), a plain input-gradient pass on the same batch, and spray on ViT-Tiny/16 against its gradient
pass (zennit has no transformer rules). Targets: spray / zennit <= 1.0; spray LRP / gradient <= 2.5.

Per model, in one process: one warm-up round, then ``--repeats`` rounds that call each method once in turn
(gradient, spray, zennit), so that a load changing during the run weighs on every method alike; per method
the median wall seconds and the median CPU seconds (user + system of the process, all threads) of a call.
spray's first call apart: it traces the model (the once-per-run cost; later calls reuse the trace). Then each
method once more in a fresh process of its own, for its peak RSS (the interpreter, torch, the model and the
batch included: the gradient pass's is the baseline). The load average is printed before and after.

Run: python tests/benchmarks/bench_lrp_peers.py [--size 224] [--batch 32] [--repeats 3] [--models resnet50,...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
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
METHODS = ("gradient", "spray", "zennit")


def gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
    return grad


def calls(name: str, size: int, batch: int, z: object) -> dict[str, Callable[[], object]]:
    """The methods to time on model ``name`` (seeded weights and batch), each a call without arguments."""
    torch.manual_seed(0)
    model = zoo.randomize_batch_norms(MODELS[name](size)).eval()
    x = torch.rand(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))
    spray_lrp = lrp.LRP(lrp.EpsilonPlusFlat())
    methods = {"gradient": lambda: gradient(model, x, target),
               "spray": lambda: spray_lrp.attribute(model, x, target)}
    if name in PEERED:
        composite = zennit_composite(z, "epsilon_plus_flat", z.ResNetCanonizer)
        methods["zennit"] = lambda: zennit_relevance(composite, model, x, target)
    return methods


def clocked(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def peak_rss(name: str, method: str, size: int, batch: int) -> float:
    """Peak RSS (GiB) of a fresh process that builds the model and batch and calls ``method`` once.

    Read as ``VmHWM`` of /proc/self/status, the peak of this process's own memory: ``ru_maxrss`` would keep
    the parent's resident size, as Linux carries it over the fork and exec that start the process."""
    with imported_zennit() as z:
        calls(name, size, batch, z)[method]()
    with open("/proc/self/status", encoding="utf-8") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**20


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,resnet18,vit_tiny_16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss", default=",".join(METHODS), help="methods whose peak RSS is measured")
    args = parser.parse_args()
    print(f"{machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"batch {args.batch} of 3 x {args.size} x {args.size}, float32; {load()}", flush=True)
    rows = []
    with imported_zennit() as z:
        for name in args.models.split(","):
            methods = calls(name, args.size, args.batch, z)
            first = clocked(methods["spray"])  # tracing included
            for method in methods:
                if method != "spray":
                    clocked(methods[method])  # warm-up
            rounds = [{method: clocked(fn) for method, fn in methods.items()} for _ in range(args.repeats)]
            medians = {method: tuple(statistics.median(r[method][i] for r in rounds) for i in (0, 1))
                       for method in methods}
            rows.append((name, first, medians))
            print(name, "first spray call", first, medians, load(), flush=True)
    context = multiprocessing.get_context("spawn")
    rss = {}
    for name, _, medians in rows:
        for method in [m for m in args.rss.split(",") if m in medians]:
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                rss[name, method] = pool.submit(peak_rss, name, method, args.size, args.batch).result()
            print(name, method, f"peak RSS {rss[name, method]:.2f} GiB", flush=True)
    print(load())
    print("\nwall / CPU seconds per call (medians)\n")
    print("| model | gradient pass | spray LRP, first call (tracing) | spray LRP | zennit LRP | spray / zennit | "
          "spray / gradient | peak RSS GiB: gradient / spray / zennit |")
    print("|---|---|---|---|---|---|---|---|")
    for name, first, medians in rows:
        def cell(method: str) -> str:
            return "–" if method not in medians else f"{medians[method][0]:.2f} / {medians[method][1]:.2f}"

        def ratio(method: str) -> str:
            if method not in medians:
                return "–"
            return " / ".join(f"{medians['spray'][i] / medians[method][i]:.2f}" for i in (0, 1))

        memory = " / ".join(f"{rss[name, m]:.2f}" if (name, m) in rss else "–" for m in METHODS)
        print(f"| {name} | {cell('gradient')} | {first[0]:.2f} / {first[1]:.2f} | {cell('spray')} | {cell('zennit')} "
              f"| {ratio('zennit')} | {ratio('gradient')} | {memory} |")


if __name__ == "__main__":
    main()
