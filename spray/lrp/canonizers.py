"""Canonisation: fold BatchNorm into the preceding Linear/Conv for the duration of an attribution.

This module's :func:`fold_batchnorm` serves models that cannot be traced; a traced model has every
BatchNorm folded into the layer that feeds it wherever that edge is, into new copies of the layers
(spray.lrp.tracing). Both use :func:`folded_parameters`.

In eval mode ``BN(f(x)) = s ⊙ (W x + b − μ) + β`` with ``s = γ / sqrt(σ² + eps)``, which is one layer with
weight ``s ⊙ W`` and bias ``s ⊙ (b − μ) + β``; LRP rules then see the network's true linear maps.

Detection rule: inside an ``nn.Sequential``, a BatchNorm1d/2d (with running statistics) that directly
follows a Linear, Conv1d or Conv2d child whose output channels match is folded. Only there is the order
of the children the order of the forward pass; any other BatchNorm is explained on its own by the ε rule.
Linear → BatchNorm1d assumes (batch, features) activations, as BatchNorm1d then normalises the features.

The model is restored exactly afterwards: the original parameter objects and BatchNorm modules are put
back, nothing is modified in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from spray.lrp.layers import BATCHNORM_LAYERS, LINEAR_LAYERS


@contextmanager
def fold_batchnorm(model: nn.Module) -> Iterator[int]:
    """Within the block, foldable BatchNorms are merged into their layer and replaced by ``nn.Identity``.

    Yields the number of folded BatchNorms. The module tree keeps its names (the identity takes the
    BatchNorm's place), so name-based rule maps still apply.
    """
    undo: list[Callable[[], None]] = []
    try:
        for parent in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
            keys = list(parent._modules)
            for previous, key in zip(keys, keys[1:]):
                layer, norm = parent._modules[previous], parent._modules[key]
                if foldable(layer, norm):
                    undo.append(_fold(parent, key, layer, norm))
        yield len(undo)
    finally:
        for restore in reversed(undo):
            restore()


def foldable(layer: nn.Module | None, norm: nn.Module | None) -> bool:
    """``norm`` is a BatchNorm with running statistics over the output channels of Linear/Conv ``layer``."""
    return (
        isinstance(layer, LINEAR_LAYERS)
        and isinstance(norm, BATCHNORM_LAYERS)
        and norm.running_mean is not None
        and norm.running_var is not None
        and layer.weight.shape[0] == norm.num_features
    )


def _fold(parent: nn.Sequential, key: str, layer: nn.Module, norm: nn.Module) -> Callable[[], None]:
    """Fold ``norm`` (child ``key`` of ``parent``) into ``layer``; return the function that undoes it."""
    weight, bias = layer.weight, layer.bias
    folded_weight, folded_bias = folded_parameters(layer, norm)
    layer.weight, layer.bias = folded_weight, folded_bias
    parent._modules[key] = nn.Identity()

    def restore() -> None:
        layer.weight = weight
        layer.bias = bias
        parent._modules[key] = norm

    return restore


def folded_parameters(layer: nn.Module, norm: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    """New (weight, bias) of ``layer`` followed by eval-mode ``norm`` as one layer (see the module docstring)."""
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var + norm.eps)
        shift = -norm.running_mean * scale
        if norm.affine:
            scale = scale * norm.weight
            shift = shift * norm.weight + norm.bias
        bias = shift if layer.bias is None else layer.bias * scale + shift
        weight = layer.weight * scale.reshape(-1, *[1] * (layer.weight.dim() - 1))
    return nn.Parameter(weight, requires_grad=False), nn.Parameter(bias, requires_grad=False)
