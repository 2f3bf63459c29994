"""Latent relevance as an attributor: what reaches one layer's output, per channel and coarse position.

:class:`LatentAttributor` follows the attributor contract (docs/architecture.md), so the runner stores it
in the audit store like input heatmaps: batched, resumable, a second attribution of the store (named
``"latent"`` by default) whose identity holds the composite, the layer, the grid and the quantity.
Its rows have shape (C, grid, grid): ``grid = 1`` is CRP's channel relevance ``R_c = Σ_{h,w} R_{c,h,w}``
(Achtibat et al. 2023); a larger grid keeps where in the feature map each channel's relevance lies. The
default, 2 × 2, was chosen on the benchmark's development split: it found blurred images (a global artifact)
better than the full 7 × 7 map of the benchmark's CNN and kept the other artifacts found (docs/benchmark.md). The
concept-level SpRAy analysis (pipelines/concept.toml, docs/spray-method.md) clusters these rows. The
activations maximised over positions (``"activation_max"``) at the first feature map are what a texture the images
share, wherever it sits, raises (pipelines/activation_max.toml; docs/spray-method.md, "What relevance cannot show").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.functional import adaptive_max_pool2d

from spray._checks import check_choice, check_int
from spray._layout import Layout, layer_layout
from spray.analysis.preprocess import area_pooling_matrix
from spray.errors import BadInputError
from spray.lrp import LRP, Composite, Latent
from spray.lrp.engine import Balance
from spray.store import LATENT_METHOD

__all__ = ["LatentAttributor", "QUANTITIES", "area_pool", "reads_activations"]

QUANTITIES = ("relevance", "activation", "activation_max")
"""What a latent attribution stores: the relevance there (sum-pooled), the activation (mean-pooled) or the
activation maximised over each cell's positions."""


def reads_activations(info: dict[str, Any]) -> bool:
    """Whether a recorded attribution (``AuditStore.attribution_info``) holds activations — what the model computes
    from the input — rather than relevance, what its decision rests on (heatmaps and latent relevance)."""
    return info["method"] == LATENT_METHOD and info["params"]["quantity"] != "relevance"


class LatentAttributor:
    """``quantity`` at the output of module ``layer`` of the model, area-pooled to ``grid`` × ``grid``.

    ``"relevance"``: the latent relevance of the explained output (:meth:`spray.lrp.LRP.latent`),
    sum-pooled, so each row totals the relevance reaching the layer. ``"activation"``: the activation
    there, mean-pooled (``grid = 1``: the pooled activations a CAV is fitted to). ``"activation_max"``: the
    activation's maximum over each cell's positions (:func:`_cell_max`), so a detector that fires strongly at one
    place is seen wherever the place is (a mean over the cell dilutes it by the cell's area). Channels are read
    from the layer's canonical view (spray._layout): a transformer block's tokens (B, T, D) give D channels. A
    layer without spatial axes (B, C), or with positions but no 2-D grid (tokens), gives (C, 1, 1) whatever the
    grid: the sum (mean, maximum) over every position. ``layer`` is a name from ``model.named_modules()``; the
    CLI and the benchmark resolve ``default`` to ClArC's default layer and ``first`` to the first feature map
    (spray.workflow.latent_attributor).
    """

    name = LATENT_METHOD

    def __init__(self, lrp: LRP, layer: str, grid: int = 2, quantity: str = "relevance") -> None:
        check_int(grid, "grid", minimum=1)
        check_choice(quantity, "quantity", QUANTITIES)
        if not isinstance(layer, str) or not layer:
            raise BadInputError(f"layer must be a module name of the model, got {layer!r}")
        self.lrp = lrp
        self.layer = layer
        self.grid = grid
        self.quantity = quantity

    @property
    def composite(self) -> Composite:
        """The LRP composite the relevance is computed with (what ClArC localises an artifact with)."""
        return self.lrp.composite

    def params(self) -> dict[str, Any]:
        """The composite (its name and parameters), the layer, the grid and the quantity."""
        return {"composite": self.lrp.name, "composite_params": self.lrp.params(), "layer": self.layer,
                "grid": self.grid, "quantity": self.quantity}

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(pooled quantity (B, C, g_h, g_w), logits (B, K)) for inputs ``x`` and explained outputs ``target``;
        with ``"relevance"``, each row sums to the relevance reaching the layer (CRP's R_c over positions)."""
        latent = self.lrp.latent(model, x, target, self.layer)
        return self._pooled(latent, layer_layout(model, self.layer)), latent.logits

    def relevance_shape(self, model: nn.Module, x: Tensor) -> tuple[int, ...]:
        """The shape of one sample's row, (C, g_h, g_w), from one sample of ``x`` (B, ...)."""
        target = torch.zeros(1, dtype=torch.int64, device=x.device)
        return tuple(self.attribute(model, x[:1], target)[0].shape[1:])

    def balance(self, model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, list[Balance]]:
        """The heatmap's accounting (:meth:`spray.lrp.LRP.balance`): the relevance reaching the layer is the
        same backward pass's."""
        return self.lrp.balance(model, x, target)

    def trace_record(self, model: nn.Module, x: Tensor) -> dict[str, Any]:
        """The traced graph and rules the composite explains (:meth:`spray.lrp.LRP.trace_record`)."""
        return self.lrp.trace_record(model, x)

    def _pooled(self, latent: Latent, layout: Layout) -> Tensor:
        values = layout.canonical(latent.relevance if self.quantity == "relevance" else latent.activation)
        if values.dim() == 2:
            return values[:, :, None, None]
        if values.dim() == 3:  # positions without a 2-D grid: a transformer's tokens (B, D, T)
            pooled = {"relevance": values.sum, "activation": values.mean, "activation_max": values.amax}
            return pooled[self.quantity](2)[:, :, None, None]
        if values.dim() != 4:
            raise BadInputError(f"layer {self.layer!r} has output shape {tuple(values.shape[1:])} per sample; "
                                "latent relevance needs a feature map (C, H, W), tokens (T, D) or a vector (C,)")
        if self.quantity == "activation_max":
            return _cell_max(values, self.grid)
        return area_pool(values, self.grid, mean=self.quantity == "activation")


def area_pool(values: Tensor, grid: int, *, mean: bool) -> Tensor:
    """Feature maps (B, C, H, W) pooled to ``g_h × g_w`` cells, ``g = min(grid, size)`` per axis: (B, C, g_h, g_w),
    each cell the overlap-weighted sum of its pixels (spray.analysis.preprocess.area_pooling_matrix), so the
    map's total is kept, or with ``mean`` their mean over the cell's area."""
    ph, pw = (torch.from_numpy(area_pooling_matrix(size, min(grid, size))).to(values) for size in values.shape[-2:])
    if mean:
        ph, pw = ph / ph.sum(1, keepdim=True), pw / pw.sum(1, keepdim=True)
    return torch.einsum("gh,bchw,kw->bcgk", ph, values, pw)


def _cell_max(values: Tensor, grid: int) -> Tensor:
    """Feature maps (B, C, H, W) maximised over the cells of :func:`area_pool`, (B, C, g_h, g_w): each cell the
    maximum over the pixels that overlap it (torch's adaptive max pooling takes exactly those: rows
    ``floor(i·H/g)`` to ``ceil((i + 1)·H/g) − 1``); ``grid = 1`` is the maximum over every position."""
    return adaptive_max_pool2d(values, (min(grid, values.shape[-2]), min(grid, values.shape[-1])))
