"""Decoding image files vs explaining them (issue 16 #6): JPEGs of mixed sizes around 500 px, resized to 224.

Writes ``--n`` JPEGs (sides uniform in [400, 600), random noise, quality 90) into ``--dir`` once, then
measures, with ``--threads`` torch threads everywhere:

1. CPU seconds per sample of decoding + preprocessing (``--resize 256 --crop 224 --normalize imagenet``)
   and of the sha256 the store records, in this process;
2. CPU seconds per sample of ResNet-18 LRP (``epsilon_plus_flat``, batch ``--batch-size``) on the
   decoded inputs;
3. the wall time of ``attribute_dataset`` over the folder with ``--workers`` 0 and N and over the same
   inputs pre-decoded into a TensorDataset, and the overhead (wall with decoding - wall pre-decoded) / wall.

    python tests/benchmarks/bench_decoding.py --n 64             # a minute or two: does it run?
    python tests/benchmarks/bench_decoding.py --n 10000          # issue 16 #6's setting (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from spray.attribution import AttributionRun, attribute_dataset
from spray.attribution.methods import get_method
from spray.data import ImageTransform, open_source
from spray.data.transforms import IMAGENET
from spray.zoo.resnet import resnet18


def write_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / "ab"[i % 2] / f"{i:05d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = (int(v) for v in rng.integers(400, 600, 2))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def attribute_wall(dataset, model, batch_size: int, workers: int, store: Path) -> float:
    store.unlink(missing_ok=True)
    tick = time.perf_counter()
    attribute_dataset(store, model, dataset, AttributionRun(
        get_method("epsilon_plus_flat"), model_hash="bench", model_name="resnet18", dataset_name="bench",
        batch_size=batch_size, progress=False, workers=workers))
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "spray-bench-jpegs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.dir / str(args.n)
    write_images(root, args.n)
    dataset = open_source(f"folder:{root}", ImageTransform(resize=256, crop=224, mean=IMAGENET[0], std=IMAGENET[1]))

    tick = time.process_time()
    inputs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    decode = (time.process_time() - tick) / len(dataset)
    tick = time.process_time()
    dataset.record()
    digest = (time.process_time() - tick) / len(dataset)
    model = resnet18(2).eval()
    method = get_method("epsilon_plus_flat")
    batch = inputs[: args.batch_size]
    method.attribute(model, batch[:2], torch.zeros(2, dtype=torch.long))  # tracing, first-call costs
    tick = time.process_time()
    method.attribute(model, batch, torch.zeros(len(batch), dtype=torch.long))
    lrp = (time.process_time() - tick) / len(batch)
    print(f"n {args.n}, torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    print(f"CPU s/sample: decode+preprocess {decode:.4f}, sha256 {digest:.5f}, ResNet-18 LRP {lrp:.3f} "
          f"(decode / LRP {decode / lrp:.1%})")

    labels = torch.tensor([label for _, label in dataset.files])
    store = args.dir / "bench.h5"
    walls = {"pre-decoded": attribute_wall(TensorDataset(inputs, labels), model, args.batch_size, 0, store)}
    for workers in (0, args.workers):
        walls[f"workers {workers}"] = attribute_wall(dataset, model, args.batch_size, workers, store)
    for name, wall in walls.items():
        overhead = "" if name == "pre-decoded" else f", overhead {(wall - walls['pre-decoded']) / wall:.1%}"
        print(f"wall {name}: {wall:.1f} s{overhead}")


if __name__ == "__main__":
    main()
