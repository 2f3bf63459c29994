"""Attribution faithfulness of a case's model: pixel-flipping AOPC of LRP, gradient × input and a random ordering.

Region perturbation (spray.attribution.faithfulness, Samek et al. 2017) on a fixed subset of the clean test
images: 4 × 4 regions, the most relevant quarter removed in 16 steps, each removed region filled with its
image's mean; the explained output is the true class's logit. A faithful heatmap's AOPC is clearly above the
random ordering's, and LRP's at least gradient × input's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from spray.attribution.faithfulness import PixelFlipping
from spray.attribution.methods import get_method

SAMPLES = 64
"""Clean test images flipped per case, spread evenly over the (sorted, class-balanced) test set."""
FLIPPING = PixelFlipping(patch_size=4, n_steps=16, max_fraction=0.25, fill="mean")
GRADIENT = "input_x_gradient"
ORDERINGS = ("lrp", "gradient", "random")


def spread(n: int, k: int = SAMPLES) -> np.ndarray:
    """``min(k, n)`` indices spread evenly over ``range(n)``, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


def aopc(model: nn.Module, x: Tensor, y: Tensor, method: str, *, seed: int = 0,
         flipping: PixelFlipping = FLIPPING) -> dict[str, float]:
    """AOPC of ``model`` on the images ``x`` (n, C, H, W) for their labels ``y`` (n,), per ordering (keys
    :data:`ORDERINGS`): the attribution ``method`` (spray.attribution.methods), gradient × input, and a random
    ordering (standard normal relevance per pixel, drawn with ``seed``)."""
    relevance = {
        "lrp": get_method(method).attribute(model, x, y)[0].detach(),
        "gradient": get_method(GRADIENT).attribute(model, x, y)[0].detach(),
        "random": torch.from_numpy(np.random.default_rng(seed).standard_normal(tuple(x.shape))).to(x.dtype),
    }
    return {name: flipping.curve(model, x, relevance[name], y).aopc for name in ORDERINGS}
