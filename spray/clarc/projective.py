"""P-ClArC: project the artifact direction out of a layer's activations, without training.

``h(a) = a − v vᵀ(a − z)`` with ``v`` the unit CAV over channels and ``z`` the mean activation of clean
samples, applied at every spatial position: the component of ``a − z`` along ``v`` is removed, so every
sample's activation along ``v`` becomes the clean samples' (``vᵀh(a) = vᵀz``); everything orthogonal to
``v`` is unchanged. With a subspace CAV (orthonormal rows ``V`` (k, C)) it is ``h(a) = a − VᵀV(a − z)``:
every direction of the subspace is set to the clean samples' value.

The projection is a module (:class:`Projection`, buffers ``v`` and ``z``) inside a wrapper
(:class:`Projected`) that takes the layer's place in the model, so the corrected model is an ordinary
``nn.Module``: its ``state_dict`` holds ``<layer>.layer.*`` (the original layer's tensors) and
``<layer>.projection.v`` / ``.z``; :func:`load_corrected` rebuilds the wrapper from such a file, and
:func:`remove_projection` puts the original layer back (the model is then exactly as before).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from spray._layout import Layout, layer_layout
from spray.clarc.activations import along_channels, resolve_layer
from spray.errors import BadInputError
from spray.lrp import Composite, rules

A = TypeVar("A")


class Projection(nn.Module):
    """``h(a) = a − Vᵀ V (a − z)`` over the channel axis of ``a``, read in the canonical view (n, C, ...) of
    ``layout`` (:mod:`spray._layout`; channels at dim 1 when None), the result handed back in ``a``'s layout.

    ``v``: one direction (C,), normalised on construction, or a subspace (k, C), orthonormalised (its row
    space is what is projected out); ``z`` is (C,) or a canonical activation's shape without the batch axis
    (C, *spatial), e.g. the mean clean activation map.
    """

    def __init__(self, v: Tensor, z: Tensor, layout: Layout | None = None) -> None:
        super().__init__()
        self.layout = layout or Layout("")
        v = torch.as_tensor(v, dtype=torch.float32)
        rows = v.reshape(-1, v.shape[-1]) if v.dim() else v.reshape(1, 1)
        if v.dim() not in (1, 2) or not torch.isfinite(rows).all() or torch.linalg.matrix_rank(rows) < len(rows):
            raise BadInputError("the projection direction v must be a finite, non-zero vector (C,) or k linearly "
                                "independent ones (k, C)")
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.dim() < 1 or z.shape[0] != rows.shape[1]:
            raise BadInputError(f"z must have {rows.shape[1]} channels first (like v), got shape {tuple(z.shape)}")
        # Orthonormal rows spanning v's (QR); one row is only normalised.
        q = rows / rows.norm() if len(rows) == 1 else torch.linalg.qr(rows.T).Q.T
        self.register_buffer("v", q.reshape(v.shape))
        self.register_buffer("z", z)

    @property
    def bias(self) -> Tensor:
        """The constant part ``Vᵀ V z`` of the affine map (z's shape): LRP's relevance accounting lets a
        module with a bias absorb relevance, as the ε rule's explanation of this one does."""
        shape = (self.z.shape[0], *[1] * (self.z.dim() - 1))
        return sum(v.reshape(shape) * (v.reshape(shape) * self.z).sum(0, keepdim=True)
                   for v in self.v.reshape(-1, self.v.shape[-1]))

    def forward(self, output: Tensor) -> Tensor:
        a = self.layout.canonical(output)
        z = self.z.to(a.dtype).reshape(1, *self.z.shape, *[1] * (a.dim() - 1 - self.z.dim()))
        out = a
        for v in self.v.reshape(-1, self.v.shape[-1]):  # orthonormal rows: the projections add up
            v = along_channels(v, a)
            out = out - v * ((a - z) * v).sum(1, keepdim=True)
        return self.layout.restore(out, output)


class Projected(nn.Module):
    """A layer followed by a :class:`Projection`: ``projection(layer(*args))``."""

    def __init__(self, layer: nn.Module, projection: Projection) -> None:
        super().__init__()
        self.layer = layer
        self.projection = projection

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        a = self.layer(*args, **kwargs)
        if not isinstance(a, Tensor | torch.fx.Proxy):  # a Proxy while LRP traces the model (spray.lrp.tracing)
            raise BadInputError(f"the projected layer returns {type(a).__name__}, not a tensor")
        return self.projection(a)


def insert_projection(model: nn.Module, layer: str, v: Tensor, z: Tensor) -> Projected:
    """Replace module ``layer`` of ``model`` (in place) by ``Projected(layer, Projection(v, z))``."""
    original = resolve_layer(model, layer)
    if isinstance(original, Projected):
        raise BadInputError(f"layer {layer!r} already has a projection; remove_projection it first")
    wrapper = Projected(original, Projection(v, z, layer_layout(model, layer)))
    param = next(model.parameters(), None)
    if param is not None:
        wrapper.projection.to(param.device)
    _set_module(model, layer, wrapper)
    return wrapper


def remove_projection(model: nn.Module, layer: str) -> nn.Module:
    """Put the original module back at ``layer`` (in place); returns it."""
    wrapper = resolve_layer(model, layer)
    if not isinstance(wrapper, Projected):
        raise BadInputError(f"layer {layer!r} has no projection to remove")
    _set_module(model, layer, wrapper.layer)
    return wrapper.layer


def projected_layers(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that carry a projection."""
    return [name for name, m in model.named_modules() if isinstance(m, Projected)]


def project_model(model: nn.Module, layer: str, v: Tensor, z: Tensor) -> nn.Module:
    """P-ClArC: a copy of ``model`` (eval mode) with the projection after ``layer``; ``model`` is untouched."""
    corrected = copy.deepcopy(model)
    insert_projection(corrected, layer, v, z)
    return corrected.eval()


def load_corrected(model: nn.Module, weights: str | Path | dict[str, Tensor]) -> nn.Module:
    """Load corrected weights (a state_dict or its file) into ``model`` in place, and return it.

    Projections recorded in the weights (keys ``<layer>.projection.v`` / ``.z``) are inserted first, so
    P-ClArC weights load into a freshly built model; A- and RR-ClArC weights are plain state_dicts.
    """
    if isinstance(weights, dict):
        state = weights
    else:
        from spray.data.models import safe_load

        if not Path(weights).is_file():
            raise BadInputError(f"corrected weights file {weights} does not exist (moved or deleted?)")
        state = safe_load(weights, "corrected weights file")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise BadInputError(f"corrected weights {weights} are not a state_dict (a dict of name -> tensor)")
    suffix = ".projection.v"
    for key in sorted(k for k in state if k.endswith(suffix)):
        layer = key[: -len(suffix)]
        current = dict(model.named_modules()).get(layer)
        if isinstance(current, Projected):
            continue
        insert_projection(model, layer, state[key], state[f"{layer}.projection.z"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BadInputError(f"the corrected weights do not fit this model: {exc}") from None
    return model.eval()


def with_projection_rule(composite: Composite) -> Composite:
    """``composite`` extended to explain :class:`Projection` with LRP-ε (it is affine in ``a``).

    LRP needs a rule for every leaf module; the projection is ``a ↦ (I − v vᵀ) a + v vᵀ z``, one affine
    layer, which the ε rule explains like a 1×1 convolution with a bias.
    """
    if Projection in composite.types:
        return composite
    extended = copy.copy(composite)
    extended.types = {**composite.types, Projection: rules.Epsilon()}
    return extended


def explaining(attributor: A, model: nn.Module) -> A:
    """``attributor`` able to explain ``model``: where P-ClArC projected one of its layers, a copy whose LRP
    composite has :func:`with_projection_rule` (a latent attribution: a copy whose LRP has it); else
    ``attributor`` itself (a gradient method needs no rule)."""
    if not projected_layers(model):
        return attributor
    lrp = getattr(attributor, "lrp", None)
    if lrp is not None:  # spray.attribution.LatentAttributor: its LRP explains the model
        extended = copy.copy(attributor)
        extended.lrp = explaining(lrp, model)  # type: ignore[attr-defined]
        return extended
    composite = getattr(attributor, "composite", None)
    if composite is None:
        return attributor
    extended = copy.copy(attributor)
    extended.composite = with_projection_rule(composite)  # type: ignore[attr-defined]
    return extended


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
