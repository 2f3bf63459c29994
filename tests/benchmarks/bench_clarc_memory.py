"""Peak memory of ClArC's artifact model on a large class: the CAV and masks, and the kind rule's transplant.

A lazy dataset stands in for an image folder (each 3 × 224 × 224 image made from its index when read, as a
decoder would): a class of ``--class-size`` images, of which ``--group`` carry a sticker at a random place,
and a second class of 500. A small convolutional model (two strided convolutions, 16 channels of 27 × 27 at
its last feature map). Each step runs in a fresh subprocess and prints its wall seconds and the subprocess's
peak RSS (``ru_maxrss``):

- ``isolate``: :func:`spray.clarc.artifact.isolate_artifact` of the group against the rest of its class;
- ``kind``: the same, then what ``--method auto`` reads before its candidates: the kind rule's figures
  (:func:`spray.clarc.transform.kind_figures`: the sticker's masks agree nowhere, so it builds the transplant
  and measures its reproduction) and the counterfactual transformations of that kind
  (:func:`spray.clarc.auto.counterfactual_transforms`); ``class_reads`` is how many times the step read each
  image of class 0 on average;
- ``evaluate``: :func:`spray.clarc.evaluate.evaluate_correction` of the model against itself on a test set of
  ``--class-size`` + 500 images without stickers (accuracies clean and with a sticker pasted into every image,
  the relevance share in the sticker's square, TCAV at the first convolution's output), as ``spray clarc``
  evaluates a correction.

The stacked class alone is ``class-size × 602 KB`` (3,600 images: 2.2 GB). Run the old tree and the new one with
``PYTHONPATH=<tree>`` one after the other.

Run:  python tests/benchmarks/bench_clarc_memory.py [--class-size 4000] [--group 400] [--steps isolate,kind,evaluate]
      [--layer auto]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

SIDE = 224


class StickerImages(Dataset):
    """Class 0: ``n0`` images, the first ``group`` with a 24-pixel sticker at a random place; class 1: ``n1``
    images. Each image is made from its index when read (smooth noise), as a folder's decoder would."""

    def __init__(self, n0: int, group: int, n1: int = 500) -> None:
        self.n0, self.group, self.n1 = n0, group, n1
        self.reads = 0
        """Images of class 0 made so far."""

    def __len__(self) -> int:
        return self.n0 + self.n1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 28, 28, generator=g), size=SIDE, mode="bilinear")[0]
        label = int(i >= self.n0)
        self.reads += label == 0
        x[label] += 0.3  # the class shows in one colour channel
        if i < self.group:
            r, c = torch.randint(0, SIDE - 24, (2,), generator=g).tolist()
            x[:, r : r + 24, c : c + 24] = torch.tensor([1.0, 0.0, 1.0])[:, None, None]
        return x, label


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2)).eval()


def step(name: str, class_size: int, group: int, layer: str | None = None) -> dict[str, float]:
    from spray.clarc.artifact import isolate_artifact
    from spray.clarc.evaluate import evaluate_correction
    from spray.clarc.auto import counterfactual_transforms
    from spray.clarc.transform import Transformations, kind_figures

    torch.set_num_threads(1)
    data, net = StickerImages(class_size, group), model()
    start = time.perf_counter()
    if name == "evaluate":
        mask = torch.zeros(SIDE, SIDE)
        mask[100:124, 100:124] = 1.0
        patch = torch.tensor([1.0, 0.0, 1.0])[:, None, None].expand(3, SIDE, SIDE).clone()
        rows = evaluate_correction(net, net, label=0, patch=patch, mask=mask, clean=StickerImages(class_size, 0),
                                   layer="3")
        return {"evaluate_s": time.perf_counter() - start, "everywhere": rows[0]["everywhere_accuracy"],
                "tcav": rows[0]["tcav_score"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    artifact = isolate_artifact(net, data, np.arange(group), np.arange(group, class_size), label=0, layer=layer)
    out = {"isolate_s": time.perf_counter() - start, "layer": artifact.layer,
           **({"candidates": artifact.choice.to_dict()["candidates"]} if artifact.choice else {})}
    if name == "kind":
        start, reads = time.perf_counter(), data.reads
        built = Transformations(artifact, data)
        figures = kind_figures(built, net)
        counterfactual_transforms(built, figures.kind)
        out["kind_s"] = time.perf_counter() - start
        out.update(kind=figures.kind, spread=figures.spread, reproduction=figures.reproduction,
                   class_reads=(data.reads - reads) / class_size)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--class-size", type=int, default=4000)
    parser.add_argument("--group", type=int, default=400)
    parser.add_argument("--step", choices=("isolate", "kind", "evaluate"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="isolate,kind,evaluate", help="comma-separated steps to run")
    parser.add_argument("--layer", help="the artifact model's layer (isolate, kind): e.g. auto, the layer choice")
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.class_size, args.group, args.layer)))
        return
    stacked = args.class_size * 3 * SIDE * SIDE * 4 / 1e9
    print(f"class of {args.class_size} images of 3 x {SIDE} x {SIDE} ({stacked:.2f} GB stacked), group {args.group}; "
          f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    for name in args.steps.split(","):
        done = subprocess.run([sys.executable, __file__, "--step", name, "--class-size", str(args.class_size),
                               "--group", str(args.group), *(["--layer", args.layer] if args.layer else [])],
                              capture_output=True, text=True, check=True)
        print(name, done.stdout.strip())


if __name__ == "__main__":
    main()
