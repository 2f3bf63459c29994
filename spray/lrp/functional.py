"""Leaf modules that stand in for the functional operations of a traced forward (spray.lrp.tracing).

LRP attaches rules to modules. Tracing turns each functional operation that needs a rule of its own, e.g.
``out += identity`` or ``x.mean((2, 3))``, into one of these modules, which computes exactly the same
function; the composite then gives it a rule by its class (docs/lrp.md, "Tracing"):

- :class:`Addition` (``+``, ``-``, ``+=``, ``torch.add``, ``x.add_()``): proportional split over the summands;
- :class:`Pooling` (``mean``/``sum`` over dimensions, functional average pooling): proportional;
- :class:`Scaling` (``*``, ``/`` by a constant): proportional, which hands the relevance through unchanged;
- :class:`Activation` (functional GELU, SiLU, sigmoid, tanh, ...): relevance passes through;
- :class:`Gating` (``x * torch.sigmoid(...)``): the gate held constant, the signal takes all relevance;
- :class:`Normalization` (``F.layer_norm``, ``F.group_norm``): ε rule with the standard deviation held constant.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


class Slot:
    """A hole in a :class:`TracedOperation`'s argument template: the ``index``-th tensor input, or the
    non-tensor value passed under keyword ``key`` (e.g. a size computed in the forward)."""

    def __init__(self, index: int | None = None, key: str | None = None) -> None:
        self.index = index
        self.key = key

    def fill(self, tensors: tuple[Tensor, ...], values: dict[str, Any]) -> Any:
        return tensors[self.index] if self.key is None else values[self.key]

    def __repr__(self) -> str:
        return f"Slot({self.index})" if self.key is None else f"Slot(key={self.key!r})"


def _fill(template: Any, tensors: tuple[Tensor, ...], values: dict[str, Any]) -> Any:
    if isinstance(template, Slot):
        return template.fill(tensors, values)
    if isinstance(template, tuple | list):
        return type(template)(_fill(item, tensors, values) for item in template)
    if isinstance(template, dict):
        return {key: _fill(item, tensors, values) for key, item in template.items()}
    return template


class TracedOperation(nn.Module):
    """``function(*args, **kwargs)`` with the tensors (positional inputs) filled into the template.

    ``function``: a callable, or the name of a tensor method (called on the first argument).
    ``describe``: the operation as the user wrote it (for messages and ``repr``).
    """

    def __init__(self, function: Callable | str, args: tuple, kwargs: dict, describe: str) -> None:
        super().__init__()
        self.function = function
        self.template = (args, kwargs)
        self.describe = describe

    def forward(self, *tensors: Tensor, **values: Any) -> Tensor:
        args, kwargs = _fill(self.template, tensors, values)
        if isinstance(self.function, str):
            return getattr(args[0], self.function)(*args[1:], **kwargs)
        return self.function(*args, **kwargs)

    def extra_repr(self) -> str:
        return self.describe


class Addition(TracedOperation):
    """A sum or difference of tensors (or of a tensor and a constant)."""


class Pooling(TracedOperation):
    """A mean or sum over dimensions, or a functional average pooling."""


class Scaling(TracedOperation):
    """A tensor multiplied or divided by a constant (a number or a tensor that does not depend on the input)."""


class Activation(TracedOperation):
    """A functional elementwise activation."""


class Gating(TracedOperation):
    """A product ``signal * gate`` of two input-dependent tensors where ``gate`` (the ``gate``-th input) is a
    sigmoid's output: squeeze-and-excitation's ``x * scale``, a SiLU written as ``x * torch.sigmoid(x)``."""

    gate: int = 1


class Normalization(TracedOperation):
    """``F.layer_norm`` or ``F.group_norm``, computed with the standard deviation held constant.

    The value is the normalisation's; its gradient is that of ``x ↦ γ ⊙ (x − μ(x)) / σ + β`` with ``σ`` a
    constant, an affine map on which LRP's ε rule is exact bookkeeping: the mean subtraction a linear map,
    the shift ``β`` absorbing its share (docs/lrp.md, "Tracing").
    """

    def forward(self, *tensors: Tensor, **values: Any) -> Tensor:
        args, kwargs = _fill(self.template, tensors, values)
        bound = inspect.signature(self.function).bind(*args, **kwargs)
        bound.apply_defaults()
        x, weight, bias, eps = (bound.arguments[key] for key in ("input", "weight", "bias", "eps"))
        if self.function is F.group_norm:
            groups = bound.arguments["num_groups"]
            reduced = x.reshape(len(x), groups, -1)
            centred = reduced - reduced.mean(-1, keepdim=True)
            sigma = reduced.var(-1, unbiased=False, keepdim=True).add(eps).sqrt()
            normalised = (centred / sigma.detach()).reshape(x.shape)
            shape = (-1, *[1] * (x.dim() - 2))  # affine per channel (dimension 1)
            weight, bias = (None if p is None else p.reshape(shape) for p in (weight, bias))
        else:
            dims = tuple(range(-len(bound.arguments["normalized_shape"]), 0))
            centred = x - x.mean(dims, keepdim=True)
            normalised = centred / x.var(dims, unbiased=False, keepdim=True).add(eps).sqrt().detach()
        if weight is not None:
            normalised = normalised * weight
        return normalised if bias is None else normalised + bias
