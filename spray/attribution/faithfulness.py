"""Faithfulness of heatmaps by region perturbation ("pixel flipping", Samek et al. 2017).

A heatmap is faithful when the regions it calls most relevant are the ones the model needs: removing them
first (most relevant first, "MoRF") should make the explained output drop fastest. For each sample, the
image is cut into square regions of ``patch_size`` pixels (all channels together), ranked by their summed
relevance; step k replaces the ``k·m/n_steps`` top regions (``m`` = ``max_fraction`` of all regions, rounded)
by the fill value, and the drop is ``f(x)_t − f(x⁽ᵏ⁾)_t`` for the explained output t. The area over the
perturbation curve, ``AOPC = 1/(L+1) Σ_{k=0..L} ⟨f(x)_t − f(x⁽ᵏ⁾)_t⟩`` (Samek et al., eq. 12), is larger
for a more faithful ordering. A random ordering is the reference a heatmap must beat; the benchmark
(tests/benchmarks/bench_faithfulness.py) compares LRP, gradient × input and a random ordering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from spray._checks import check_int, check_real
from spray.errors import BadInputError

__all__ = ["FlippingCurve", "PixelFlipping"]


@dataclass(frozen=True)
class FlippingCurve:
    """The mean drop of the explained output as the most relevant regions are removed, and its AOPC."""

    fractions: np.ndarray
    """(L + 1,) share of each sample's regions removed at each step; 0 first."""
    drops: np.ndarray
    """(L + 1,) mean over samples of f(x)_t − f(x⁽ᵏ⁾)_t; 0 first."""
    sample_aopc: np.ndarray
    """(n,) each sample's AOPC: the mean of its own drops."""

    @property
    def aopc(self) -> float:
        """Samek et al.'s AOPC: the mean drop over the L + 1 steps and the samples."""
        return float(self.drops.mean())


class PixelFlipping:
    """Region-perturbation curves of heatmaps (most relevant first), batched through the model.

    ``fill``: the value a removed region gets — ``"mean"`` (each sample's per-channel mean, so removal
    adds no new intensity), ``"uniform"`` (Samek et al.'s perturbation: every pixel and channel drawn
    uniformly from ``bounds``, the input range; one noise image per sample, drawn from ``seed``, so every
    ordering of one sample is filled with the same values) or a number (e.g. the normalised value of black).
    """

    def __init__(
        self, patch_size: int = 4, n_steps: int = 16, max_fraction: float = 0.25, fill: float | str = "mean",
        batch_size: int = 256, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0,
    ) -> None:
        self.patch_size = patch_size
        self.n_steps = n_steps
        self.max_fraction = max_fraction
        self.fill = fill
        self.batch_size = batch_size
        self.bounds = bounds
        self.seed = seed

    def curve(self, model: nn.Module, x: Tensor, relevance: Tensor, target: Tensor) -> FlippingCurve:
        """Flip the regions of ``x`` (n, C, H, W) in the order of ``relevance`` (same shape) for the
        outputs ``target`` (n,) of ``model`` (in eval mode; gradients are not needed)."""
        patch = check_int(self.patch_size, "patch_size", minimum=1)
        n_steps = check_int(self.n_steps, "n_steps", minimum=1)
        max_fraction = check_real(self.max_fraction, "max_fraction", minimum=0.0, strict=True)
        if max_fraction > 1:
            raise BadInputError(f"max_fraction must be in (0, 1], got {max_fraction!r}")
        batch_size = check_int(self.batch_size, "batch_size", minimum=1)
        if x.ndim != 4 or relevance.shape != x.shape:
            raise BadInputError(
                f"pixel flipping needs images (n, C, H, W) and relevance of the same shape; got inputs of shape "
                f"{tuple(x.shape)} and relevance of shape {tuple(relevance.shape)}"
            )
        if target.shape != (x.shape[0],):
            raise BadInputError(f"target must have shape ({x.shape[0]},), got {tuple(target.shape)}")
        regions = _region_ids(x.shape[-2:], patch)
        n_regions = int(regions.max()) + 1
        removed = np.rint(np.linspace(0.0, max_fraction * n_regions, n_steps + 1)).astype(int)
        fill = self._fill(x)
        drops = np.empty((x.shape[0], n_steps + 1))
        chunk = max(1, batch_size // (n_steps + 1))  # samples per forward pass: all their steps at once
        with torch.no_grad():
            for start in range(0, x.shape[0], chunk):
                stop = min(start + chunk, x.shape[0])
                drops[start:stop] = self._drops(
                    model, x[start:stop], relevance[start:stop], target[start:stop], fill[start:stop], regions,
                    n_regions, removed,
                )
        return FlippingCurve(removed / n_regions, drops.mean(axis=0), drops.mean(axis=1))

    def _fill(self, x: Tensor) -> Tensor:
        """(n, C, 1, 1) fill values, or (n, C, H, W) for ``"uniform"``."""
        if self.fill == "mean":
            return x.mean(dim=(2, 3), keepdim=True)
        if self.fill == "uniform":
            low, high = (check_real(value, "bounds") for value in self.bounds)
            if not low < high:
                raise BadInputError(f"bounds must be (low, high) with low < high, got {self.bounds!r}")
            noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(check_int(self.seed, "seed")),
                               dtype=torch.float64)
            return (low + (high - low) * noise).to(x.device, x.dtype)
        if isinstance(self.fill, str):
            raise BadInputError(f"fill must be 'mean', 'uniform' or a number, got {self.fill!r}")
        value = check_real(self.fill, "fill")
        return torch.full((x.shape[0], x.shape[1], 1, 1), value, dtype=x.dtype, device=x.device)

    @staticmethod
    def _drops(
        model: nn.Module, x: Tensor, relevance: Tensor, target: Tensor, fill: Tensor, regions: Tensor,
        n_regions: int, removed: np.ndarray,
    ) -> np.ndarray:
        """(b, L + 1) drops of one chunk of samples: all steps of all its samples in one forward pass."""
        b = x.shape[0]
        scores = torch.zeros(b, n_regions, dtype=torch.float64)
        per_pixel = relevance.detach().to(torch.float64).sum(dim=1).reshape(b, -1).cpu()
        scores.index_add_(1, regions.reshape(-1), per_pixel)
        # Stable descending order: ties (e.g. regions without relevance) go by region index, so curves repeat.
        order = torch.from_numpy(np.argsort(-scores.numpy(), axis=1, kind="stable"))
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(n_regions).expand(b, -1).contiguous())
        pixel_rank = rank[:, regions.to(torch.int64)].to(x.device)  # (b, H, W): rank of each pixel's region
        steps = torch.as_tensor(removed, device=x.device)
        gone = pixel_rank[:, None] < steps[None, :, None, None]  # (b, L + 1, H, W)
        flipped = torch.where(gone[:, :, None], fill[:, None], x[:, None])  # (b, L + 1, C, H, W)
        out = model(flipped.reshape(-1, *x.shape[1:])).reshape(b, len(removed), -1)
        explained = out.gather(2, target.to(x.device)[:, None, None].expand(-1, len(removed), 1))[..., 0]
        return (explained[:, :1] - explained).double().cpu().numpy()


def _region_ids(size: torch.Size, patch: int) -> Tensor:
    """(H, W) region index of every pixel: square patches in row-major order, smaller ones at the borders."""
    h, w = int(size[0]), int(size[1])
    columns = -(-w // patch)
    rows = torch.arange(h)[:, None] // patch
    return rows * columns + torch.arange(w)[None, :] // patch
