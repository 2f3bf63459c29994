"""Where a layer's output holds its channels: the one decision every reader of a layer's activations uses.

A convolution's feature map is channels-first, (B, C, *spatial); a transformer's token layout is (B, T, D),
its channels (features) last. What spray computes per channel (the CAV's pooling and direction, P-ClArC's
projection, RR-ClArC's penalty, TCAV's derivative, the latent relevance R_c) reads the *canonical view*
(B, C, ...): channels at dim 1, what :meth:`Layout.canonical` returns; :meth:`Layout.restore` is its
inverse, for values handed back to the model.

The decision (:func:`layer_layout`) looks at ``source``, the last module with weights among ``layer``, its
submodules and the modules registered before it (``model.named_modules()`` order: a block's last weighted
module, or the convolution or Linear an activation module follows), and at the output's shape:

- a convolution, BatchNorm, GroupNorm or InstanceNorm (or no weighted module): channels-first;
- a Linear, LayerNorm or ``nn.MultiheadAttention`` of width ``w``: a 3-D output (B, T, w) is a token
  layout, channels last; a map (B, *spatial, w) with more axes and ``w`` channels last only (ConvNeXt's
  permuted insides) is refused (:class:`~spray.errors.BadInputError`); any other output is channels-first
  (ConvNeXt's LayerNorm2d, a block that permutes back after its Linear layers, a Conv1d's (B, C, L)).

Outputs of at most two dimensions (B, C) are the same in both layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from spray.errors import BadInputError

#: Weighted modules whose output holds channels at dim 1.
CHANNELS_FIRST_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
#: Weighted modules whose output holds its features in the last axis.
FEATURES_LAST_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention)


@dataclass(frozen=True)
class Layout:
    """The layout of module ``layer``'s output: ``source``, the module that decides it (None: none with
    weights), and, for a Linear/LayerNorm/attention source, its ``width`` (features per position)."""

    layer: str
    source: str | None = None
    width: int | None = None

    def channels_last(self, a: Tensor) -> bool:
        """Whether the output ``a`` (B, ...) of the layer holds its channels last (module docstring)."""
        if self.width is None or a.dim() <= 2 or a.shape[-1] != self.width:
            return False
        if a.dim() == 3:
            return True
        if a.shape[1] == self.width:
            return False
        raise BadInputError(
            f"layer {self.layer!r} outputs shape {tuple(a.shape[1:])} per sample, features last after "
            f"{self.source!r} ({self.width} features); spray reads channels-first feature maps (C, H, W) and "
            "tokens (T, D), not channels-last maps: choose a layer whose output is channels-first (e.g. the "
            "block's output)"
        )

    def canonical(self, a: Tensor) -> Tensor:
        """The view of ``a`` with channels at dim 1, (B, C, ...): a view, so gradients flow through it."""
        return a.movedim(-1, 1) if self.channels_last(a) else a

    def restore(self, c: Tensor, like: Tensor) -> Tensor:
        """The inverse of :meth:`canonical` for ``c`` in the canonical view of ``like`` (the layer's output)."""
        return c.movedim(1, -1) if self.channels_last(like) else c


def layer_layout(model: nn.Module, layer: str) -> Layout:
    """The :class:`Layout` of module ``layer`` of ``model`` (a name from ``model.named_modules()``; callers
    check it), decided without running the model; the output's shape completes it where it is used."""
    found, inside = Layout(layer), False
    for name, module in model.named_modules():
        if inside and not name.startswith(layer + "."):
            break
        inside = inside or name == layer
        if isinstance(module, CHANNELS_FIRST_LAYERS):
            found = Layout(layer, name)
        elif isinstance(module, FEATURES_LAST_LAYERS):
            found = Layout(layer, name, _width(module))
    return found if inside else Layout(layer)


def _width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    return module.embed_dim  # type: ignore[return-value]  # nn.MultiheadAttention
