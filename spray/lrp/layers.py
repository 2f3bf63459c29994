"""Layer kinds the LRP engine knows, and :class:`Sum`, an addition as a module.

LRP attaches its rules to modules. Tracing (spray.lrp.tracing) turns an addition written as ``a + b`` in a
``forward`` into a module; in a model that cannot be traced it would be invisible, and autograd would hand
each summand the *whole* relevance of the sum (doubling it). There ``Sum()(a, b)`` makes the addition a
module, so relevance is split in proportion to each summand's contribution.
"""

from __future__ import annotations

import functools
import operator

from torch import Tensor, nn

#: Layers with a weight that rules may modify (Linear, Conv1d, Conv2d); "first layer" means the first of
#: these in forward order, and BatchNorm is folded into them.
LINEAR_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

BATCHNORM_LAYERS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)

#: Elementwise activations and shape-only layers: relevance passes through unchanged (reshaped).
PASS_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Mish, nn.Dropout, nn.Flatten, nn.Identity,
)

AVGPOOL_LAYERS: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)

MAXPOOL_LAYERS: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)


class Sum(nn.Module):
    """Add tensors: ``Sum()(a, b, ...)`` is ``a + b + ...`` (broadcasting), ``Sum()(stacked)`` sums dim 0.

    The second form takes the output of ``torch.stack([a, b, ...])``. Needed only for the residual or skip
    connections of a model that cannot be traced (see the module docstring).
    """

    def forward(self, *tensors: Tensor) -> Tensor:
        if len(tensors) == 1:
            return tensors[0].sum(dim=0)
        return functools.reduce(operator.add, tensors)
