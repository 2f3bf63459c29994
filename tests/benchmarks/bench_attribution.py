"""Attribution throughput: EpsilonPlusFlat LRP vs a plain forward+backward gradient pass (also on the zoo's
ViT-Tiny/16 layouts at 224 px), and the share of wall time spent writing the store. Targets (issue 2): LRP
<= 3x a gradient pass; store writes < 10%.

Run: python tests/benchmarks/bench_attribution.py [--samples N] [--threads T]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from spray.attribution.methods import get_method
from spray.attribution import AttributionRun, attribute_dataset
from spray.data.models import model_hash
from spray.demo.model import build_model
from spray.lrp import Sum
from spray.zoo import draw_zero_parameters, timm_vit_tiny_16, vit_tiny_16


class Residual(nn.Module):
    """conv-bn-relu-conv-bn + identity, summed through spray.lrp.Sum so LRP can explain the addition."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
        )
        self.sum = Sum()
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.sum(x, self.body(x)))


def resnet_like(num_classes: int = 10) -> nn.Module:
    """A small ResNet-style net for 3x64x64 inputs: stem, 4 residual blocks in 2 stages, pooled head."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)),
        Residual(32), Residual(32),
        nn.Sequential(nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU()),
        Residual(64), Residual(64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    ).eval()


def _randomise_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def _drawn(model: nn.Module) -> nn.Module:
    """A zoo ViT with its zero parameters (head, biases) drawn at random (zero logits explain nothing), in eval."""
    torch.manual_seed(0)
    return draw_zero_parameters(model).eval()


def gradient_pass(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    return grad


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def compare(name: str, model: nn.Module, shape: tuple[int, ...], batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(batch, *shape)
    target = torch.randint(0, 10, (batch,))
    lrp = get_method("epsilon_plus_flat")
    t_grad = seconds(lambda: gradient_pass(model, x, target), repeats)
    t_lrp = seconds(lambda: lrp.attribute(model, x, target), repeats)
    print(f"{name:12s} batch {batch:4d}: gradient {batch / t_grad:8.1f} samples/s, "
          f"EpsilonPlusFlat {batch / t_lrp:8.1f} samples/s, LRP/gradient time ratio {t_lrp / t_grad:.2f} "
          f"(target <= 3)")


def write_share(name: str, model: nn.Module, shape: tuple[int, ...], n: int) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(n, *shape), torch.randint(0, 10, (n,)))
    with tempfile.TemporaryDirectory() as tmp:
        summary = attribute_dataset(Path(tmp) / "bench.h5", model, data, AttributionRun(
            get_method("epsilon_plus_flat"), model_hash=model_hash(model), model_name=name, dataset_name="random",
            batch_size=64, progress=False,
        ))
        size = (Path(tmp) / "bench.h5").stat().st_size
    share = summary["write_seconds"] / summary["seconds"]
    print(f"{name:12s} {n} samples: {summary['seconds']:.1f} s total, {summary['write_seconds']:.2f} s writing "
          f"the store = {100 * share:.1f}% (target < 10%), store {size / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    demo = build_model(10, seed=0).eval()
    resnet = resnet_like()
    _randomise_batchnorm(demo)
    _randomise_batchnorm(resnet)
    compare("demo CNN", demo, (1, 32, 32), 64, 20)
    compare("ResNet-like", resnet, (3, 64, 64), 32, 5)
    for name, build in (("ViT-Ti/16", vit_tiny_16), ("timm ViT-Ti", timm_vit_tiny_16)):
        compare(name, _drawn(build(10)), (3, 224, 224), 8, 2)
    write_share("demo CNN", demo, (1, 32, 32), args.samples)
    write_share("ResNet-like", resnet, (3, 64, 64), args.samples // 4)


if __name__ == "__main__":
    main()
