"""A layer's activations: find the layer by name, pick a default one, collect its outputs for samples.

ClArC models an artifact as a direction in the output of one module (the *layer*), named as in
``model.named_modules()``. Every ClArC step reads that output through a forward hook; the model is never
modified for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from spray._layout import layer_layout
from spray.attribution.latent import area_pool
from spray.errors import BadInputError
from spray.lrp.tracing import feature_layer
from spray.lrp.layers import BATCHNORM_LAYERS, PASS_LAYERS
from spray.training import CHUNK, eval_mode, sample_chunks

#: Modules that may sit between a convolution and "its" activation (the default layer skips them).
_BETWEEN = (*BATCHNORM_LAYERS, nn.Identity, nn.Dropout, nn.Dropout2d)
_ACTIVATIONS = tuple(t for t in PASS_LAYERS if t not in (nn.Dropout, nn.Flatten, nn.Identity))
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
#: How many feature maps the layer choice compares: the default layer and the ones before it.
CANDIDATES = 4


def module_names(model: nn.Module) -> list[str]:
    """Every named module except the root (the names ``layer`` accepts)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module called ``layer``; a :class:`BadInputError` listing the valid names otherwise."""
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        names = module_names(model)
        raise BadInputError(
            f"layer {layer!r} is not a module of the model; use one of its module names: {', '.join(names)}"
        )
    return modules[layer]


def default_layer(model: nn.Module, x: Tensor) -> str:
    """The layer ClArC uses when none is given; ``x``: a batch of the model's inputs (one sample runs).

    ``model.FEATURE_LAYER`` if the model declares one; a model without a Conv2d is refused (before it
    runs); otherwise the module whose output is the last feature map the model's head reads, in the traced
    forward (:func:`spray.lrp.tracing.feature_layer`: a ResNet's last block after its residual addition).
    For a model fx cannot trace: the activation that follows the last Conv2d in registration order
    (skipping BatchNorm/Identity/Dropout in between), or the last Conv2d itself when no activation follows.
    """
    declared = getattr(model, "FEATURE_LAYER", None)
    if isinstance(declared, str):
        resolve_layer(model, declared)
        return declared
    named = [(name, m) for name, m in model.named_modules() if name and next(m.children(), None) is None]
    convs = [i for i, (_, m) in enumerate(named) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise BadInputError(
            "the model has no Conv2d layer to default to; pass the layer to fit the artifact in "
            f"(one of: {', '.join(module_names(model))})"
        )
    with eval_mode(model):
        traced = feature_layer(model, x)
    if traced is not None:
        return traced
    last = convs[-1]
    for name, module in named[last + 1 :]:
        if isinstance(module, _ACTIVATIONS):
            return name
        if not isinstance(module, _BETWEEN):
            break
    return named[last][0]


def candidate_layers(model: nn.Module, x: Tensor, limit: int = CANDIDATES) -> list[str]:
    """The layers ClArC's layer choice compares, in forward order: the last ``limit`` feature maps up to and
    including :func:`default_layer`'s. A feature map is the output, of at least three dimensions
    (n, C, *spatial), of a *block* (a module with children that is not a Sequential/ModuleList/ModuleDict,
    such as a ResNet's BasicBlock; its insides are not candidates, but for a block that holds the default layer,
    as a ViT's ``encoder`` holds its blocks and final LayerNorm) or of an activation module outside blocks
    (the ReLU after a convolution of a Sequential CNN). A model that declares ``FEATURE_LAYER`` has that one
    candidate: its author chose. ``x``: a sample batch (one sample runs)."""
    last = default_layer(model, x)
    if isinstance(getattr(model, "FEATURE_LAYER", None), str):
        return [last]
    units: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(unit + ".") for unit in units):
            continue
        if next(module.children(), None) is None:
            units += [name] if isinstance(module, _ACTIVATIONS) else []
        elif not isinstance(module, _CONTAINERS) and not last.startswith(name + "."):
            units.append(name)
    modules = dict(model.named_modules())
    ran: dict[str, bool] = {}  # name -> its output is a feature map, in the order the modules finish

    def record(name: str) -> Callable[[nn.Module, tuple, object], None]:
        def hook(_module: nn.Module, _args: tuple, output: object) -> None:
            ran.setdefault(name, isinstance(output, Tensor) and output.dim() >= 3)

        return hook

    handles = [modules[name].register_forward_hook(record(name)) for name in dict.fromkeys([*units, last])]
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    order = list(ran)
    before = order[: order.index(last)] if last in order else []
    maps = [name for name in before if ran[name] and not name.startswith(last + ".")]
    return [*maps[-(limit - 1):], last] if limit > 1 else [last]


def first_layer(model: nn.Module, x: Tensor) -> str:
    """The first feature map of the forward pass, as :func:`candidate_layers` counts feature maps (the first
    block's or activation's output; ``model.FEATURE_LAYER`` where the model declares one): where what the images
    contain is read before the model composes it (the benchmark CNN's first ReLU, ``features.2``). ``x``: a
    sample batch (one sample runs)."""
    return candidate_layers(model, x, limit=len(module_names(model)) + 1)[0]


@contextmanager
def capture(model: nn.Module, layer: str, *, differentiable: bool = False) -> Iterator[list[Tensor]]:
    """While active, every output of module ``layer`` is appended to the yielded list (graph kept), in its
    canonical view (B, C, ...), channels at dim 1 (:mod:`spray._layout`: a transformer's tokens (B, T, D)
    are read as (B, D, T)); the model goes on from that view, so gradients taken with respect to it are the
    model's.

    ``differentiable``: an output that does not require grad (frozen layers before it, under grad mode)
    is replaced by a copy that does, so the model output can be differentiated with respect to it.
    """
    module = resolve_layer(model, layer)
    layout = layer_layout(model, layer)
    outputs: list[Tensor] = []

    def hook(_module: nn.Module, _args: tuple, output: object) -> Tensor | None:
        if not isinstance(output, Tensor):
            raise BadInputError(
                f"layer {layer!r} ({type(module).__qualname__}) returns {type(output).__name__}, not a "
                "tensor; choose a layer whose output is one tensor (e.g. a Conv2d or its activation)"
            )
        view = layout.canonical(output)
        if differentiable and torch.is_grad_enabled() and not view.requires_grad:
            view = view.detach().requires_grad_(True)
        outputs.append(view)
        return None if view is output else layout.restore(view, output)

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def layer_output(model: nn.Module, layer: str, x: Tensor, *,
                 differentiable: bool = False) -> tuple[Tensor, Tensor]:
    """One forward pass: (the activation of ``layer``, the model output); ``differentiable`` as in
    :func:`capture`."""
    with capture(model, layer, differentiable=differentiable) as outputs:
        logits = model(x)
    if not outputs:
        raise BadInputError(f"layer {layer!r} did not run in the model's forward pass; choose one that does")
    return outputs[0], logits


@torch.no_grad()
def activations(model: nn.Module, layer: str, x: Tensor, batch_size: int = 256) -> Tensor:
    """Activations of ``layer`` for inputs ``x`` (n, ...), in eval mode: (n, ...)."""
    with eval_mode(model):
        return torch.cat([layer_output(model, layer, x[i : i + batch_size])[0]
                          for i in range(0, len(x), batch_size)])


def pool(a: Tensor, grid: int = 1) -> Tensor:
    """Pooled activations, from their canonical view (n, C, ...) (:func:`capture`): the mean over every axis
    after the channel axis, (n, C) (what ClArC's CAV is fitted to); with ``grid > 1``, the means over
    ``g_h × g_w`` cells of a feature map (n, C, H, W), ``g = min(grid, size)`` per axis, channel-major,
    (n, C · g_h · g_w) (the latent attribution's area pooling, spray.attribution.latent.area_pool): a local
    artifact raises a few channels in a few cells, and the mean over every position dilutes it. Positions
    without a 2-D grid (a transformer's tokens (n, D, T)) are pooled to their mean whatever the grid;
    activations without positions are returned as they are."""
    if a.dim() <= 2:
        return a
    if grid == 1 or a.dim() != 4:
        return a.flatten(2).mean(2)
    return area_pool(a, grid, mean=True).flatten(1)


def along_channels(v: Tensor, like: Tensor) -> Tensor:
    """``v`` (C,) shaped to broadcast over ``like`` (n, C, *spatial): (1, C, 1, ...)."""
    return v.to(like.dtype).reshape(1, -1, *[1] * (like.dim() - 2))


@torch.no_grad()
def modules_after(model: nn.Module, layer: str, x: Tensor) -> list[str]:
    """Names of the leaf modules that run after ``layer`` finishes, in a forward pass of ``x`` (a batch).

    These are the modules between the layer's activation and the output: what the output's sensitivity to
    that activation depends on, and what a fine-tuning restricted to "after the layer" trains.
    """
    resolve_layer(model, layer)
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda _m, _a, _o, name=name: order.append(name))
        for name, module in model.named_modules()
        if name == layer or (name and next(module.children(), None) is None)
    ]
    try:
        with eval_mode(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if layer not in order:
        raise BadInputError(f"layer {layer!r} did not run in the model's forward pass; choose one that does")
    after = order[order.index(layer) + 1 :]
    inside = layer + "."
    return list(dict.fromkeys(name for name in after if not name.startswith(inside) and name != layer))


def pooled_activations(model: nn.Module, layer: str, dataset: Dataset, index: np.ndarray,
                       transform: Callable[[Tensor], Tensor] | None = None,
                       chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """(the pooled activations (n, C) of samples ``index`` at ``layer``, each ``transform``-ed first if given,
    their mean activation (one activation's shape, summed in float64)), reading ``chunk`` samples at a time: a
    class of 20,000 images of 224 × 224 is 12 GB stacked, and its activations at a ResNet's last block 2–8 GB
    more."""
    pooled: list[Tensor] = []
    total: Tensor | None = None
    for x, _ in sample_chunks(dataset, index, chunk):
        a = activations(model, layer, x if transform is None else transform(x))
        pooled.append(pool(a))
        part = a.sum(0, dtype=torch.float64)
        total = part if total is None else total + part
    assert total is not None
    return torch.cat(pooled), (total / len(index)).float()
