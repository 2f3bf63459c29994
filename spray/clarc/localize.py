"""Where the artifact is in input space: soft masks from LRP along the CAV, and the artifact patch.

For each artifact sample, LRP starts at the layer with initial relevance ``max(a, 0) ⊙ v`` (``v`` the unit
CAV over channels, broadcast over H, W): the share of each activation that points along the artifact
direction. The relevance that reaches the input marks the pixels that make the activation artifact-like.
From the input relevance ``R`` (C, H, W) of one sample:

1. ``r = max(Σ_c R_c, 0)``: positive evidence for the artifact direction, summed over input channels;
2. ``s = G_σ * r / max(G_σ * r)``: smoothed by a Gaussian of ``sigma`` pixels and scaled to max 1
   (LRP's flat and max-pooling rules leave speckled maps; the mask should cover the object, not its pixels);
3. ``m = clip((s − τ) / τ, 0, 1)`` with ``τ = threshold``: 0 below τ, 1 above 2τ, linear in between.

The artifact **patch** is the mask-weighted mean of the artifact samples, ``patch = Σ_i m_i x_i / Σ_i m_i``
(0 where no mask covers a pixel), and the **mean mask** is ``M = mean_i m_i``. Pasting the artifact into
an image ``x`` blends it in: ``x' = (1 − M) ⊙ x + M ⊙ patch`` (:func:`paste`), the mask shared by every
channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spray._layout import layer_layout
from spray.clarc.activations import along_channels
from spray.errors import BadInputError
from spray.lrp import LRP, Composite

SIGMA = 1.0
THRESHOLD = 0.3


@dataclass(frozen=True)
class Localization:
    """Per-sample masks ``masks`` (n, H, W) in [0, 1], the ``patch`` (C, H, W) and mean ``mask`` (H, W)."""

    masks: Tensor
    patch: Tensor
    mask: Tensor


def artifact_relevance(model: nn.Module, layer: str, x: Tensor, direction: Tensor, composite: Composite,
                       batch_size: int = 64) -> Tensor:
    """Input relevance (n, C, H, W) of LRP started at ``layer`` with ``max(a, 0) ⊙ v`` (``a`` in its canonical
    view, spray._layout)."""
    lrp = LRP(composite)
    v = torch.as_tensor(direction, dtype=torch.float32)
    layout = layer_layout(model, layer)

    def initial(output: Tensor) -> Tensor:
        a = layout.canonical(output)
        if a.dim() < 2 or a.shape[1] != v.numel():
            raise BadInputError(
                f"the CAV has {v.numel()} channels but layer {layer!r} outputs shape {tuple(output.shape)}"
            )
        return layout.restore(a.clamp(min=0) * along_channels(v, a), output)

    parts = [lrp.relevance(model, x[i : i + batch_size], layer, initial) for i in range(0, len(x), batch_size)]
    return torch.cat(parts)


def soft_masks(relevance: Tensor, *, sigma: float = SIGMA, threshold: float = THRESHOLD) -> Tensor:
    """Soft masks (n, H, W) in [0, 1] from input relevance (n, C, H, W), steps 1-3 of the module docstring."""
    if relevance.dim() != 4:
        raise BadInputError(f"artifact masks need image inputs (n, C, H, W), got relevance of shape "
                            f"{tuple(relevance.shape)}")
    if not 0.0 < threshold < 0.5:
        raise BadInputError(f"mask threshold must be in (0, 0.5), got {threshold!r}")
    r = relevance.sum(1, keepdim=True).clamp(min=0)
    if sigma > 0:
        r = _gaussian_blur(r, sigma)
    peak = r.flatten(1).max(1).values.clamp(min=torch.finfo(r.dtype).tiny)
    s = r[:, 0] / peak[:, None, None]
    return ((s - threshold) / threshold).clamp(0.0, 1.0)


def localize(model: nn.Module, layer: str, x: Tensor, direction: Tensor, composite: Composite, *,
             sigma: float = SIGMA, threshold: float = THRESHOLD) -> Localization:
    """Masks, patch and mean mask of the artifact samples ``x`` (n, C, H, W)."""
    masks = soft_masks(artifact_relevance(model, layer, x, direction, composite), sigma=sigma,
                       threshold=threshold)
    weight = masks.sum(0)
    patch = (masks[:, None] * x).sum(0) / weight.clamp(min=1e-12)
    return Localization(masks, torch.where(weight > 0, patch, torch.zeros_like(patch)), masks.mean(0))


def paste(x: Tensor, patch: Tensor, mask: Tensor) -> Tensor:
    """``(1 − mask) ⊙ x + mask ⊙ patch`` for a batch ``x`` (n, C, H, W); ``x`` is not modified."""
    return torch.lerp(x, patch.to(x.dtype).expand_as(x), mask.to(x.dtype).expand_as(x[:, :1]))


def _gaussian_blur(r: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=r.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    # Separable blur; replicate padding keeps mass at the border (artifacts often sit in corners).
    r = F.conv2d(F.pad(r, (radius, radius, 0, 0), mode="replicate"), kernel.reshape(1, 1, 1, -1))
    return F.conv2d(F.pad(r, (0, 0, radius, radius), mode="replicate"), kernel.reshape(1, 1, -1, 1))
