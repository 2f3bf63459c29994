"""Leaf modules that stand in for the functional operations of a traced forward (spray.lrp.tracing).

LRP attaches rules to modules. Tracing turns each functional operation that needs a rule of its own, e.g.
``out += identity`` or ``x.mean((2, 3))``, into one of these modules, which computes exactly the same
function; the composite then gives it a rule by its class (docs/lrp.md, "Tracing"):

- :class:`Addition` (``+``, ``-``, ``+=``, ``torch.add``, ``x.add_()``): proportional split over the summands;
- :class:`Pooling` (``mean``/``sum`` over dimensions, functional average pooling): proportional;
- :class:`Scaling` (``*``, ``/`` by a constant): proportional, which hands the relevance through unchanged;
- :class:`Activation` (functional GELU, SiLU, sigmoid, tanh, ...): relevance passes through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn


class Slot:
    """A hole in a :class:`TracedOperation`'s argument template: the ``index``-th tensor input, or the
    non-tensor value passed under keyword ``key`` (e.g. a size computed in the forward)."""

    def __init__(self, index: int | None = None, key: str | None = None) -> None:
        self.index = index
        self.key = key

    def fill(self, tensors: tuple[Tensor, ...], values: dict[str, Any]) -> Any:
        return tensors[self.index] if self.key is None else values[self.key]


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
