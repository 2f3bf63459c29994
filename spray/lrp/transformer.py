"""Transformer layers under conservative propagation, CP-LRP (Ali et al., ICML 2022).

CP-LRP makes each nonlinearity of a transformer block that is not elementwise *linear* by holding part of
it constant, then applies the ε rule to the linear map that remains (docs/lrp.md, "Transformers"):

- **LayerNorm**: ``y = γ ⊙ (x − mean(x)) / σ + β`` with ``σ`` held constant is linear in ``x``; tracing
  goes into ``nn.LayerNorm`` and its ``F.layer_norm`` becomes a :class:`~spray.lrp.functional.Normalization`
  (the one rule of layer and group normalisation): the centring moves relevance between the features of a
  token, ``β`` absorbs its share as a bias does.
- **Attention** (:class:`ConstantAttention`): ``softmax(q kᵀ / √d) · v`` with the attention weights held
  constant is linear in ``v``; queries and keys receive no relevance. For ``nn.MultiheadAttention`` the
  linear map runs from the value input through the value projection, the weighted sum and the output
  projection; their biases absorb their shares. Equivalently (ε → 0), the value input's relevance is its
  gradient × input with the attention weights detached, as Ali et al. compute it.
- **Class token** (:class:`Concatenation`): a constant concatenated to the tokens is, like every constant
  of a traced operation, no input of it: the relevance of its slice is passed to no input, it is absorbed;
  a learned position embedding is a constant summand of a traced :class:`~spray.lrp.functional.Addition`
  and absorbs its proportional share.

``nn.MultiheadAttention`` returns a tuple and holds its projections as parameters, so tracing replaces each
of its calls by a :class:`MultiheadAttentionCall` (a leaf that returns the output tensor, under the same
module name); ``F.scaled_dot_product_attention`` (timm's fused attention) becomes a
:class:`ScaledDotProductAttention` module. ``nn.TransformerEncoder`` and ``nn.TransformerEncoderLayer`` choose
between a fused kernel and their layers at run time, which fx cannot trace: tracing runs their layers as
written instead (:func:`traceable_forward`), the same arithmetic as the fused kernel.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from spray.errors import UnsupportedLayerError
from spray.lrp.functional import Slot, TracedOperation
from spray.lrp.rules import Epsilon, WinnerTakesAll, _share


class MultiheadAttentionCall(nn.Module):
    """A call of the user's ``nn.MultiheadAttention`` that returns its output tensor (not the tuple).

    The user's module is held without being registered: this module stays a leaf the engine hooks, and the
    user's module is shared, never modified.
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        object.__setattr__(self, "attention", attention)

    @property
    def biased(self) -> bool:
        """Whether the projections have biases (which absorb relevance)."""
        return self.attention.in_proj_bias is not None or self.attention.out_proj.bias is not None

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return self.attention(query, key, value, need_weights=False)[0]

    def extra_repr(self) -> str:
        return repr(self.attention)


class ScaledDotProductAttention(TracedOperation):
    """A traced ``F.scaled_dot_product_attention(q, k, v, ...)``; an operand not computed from the input (a
    learned latent query, a mask) is a fixed value of the module, no input."""

    @property
    def operands(self) -> tuple[int | None, int | None, int | None]:
        """The input indices of the query, key and value, None for a constant one."""
        args, kwargs = self.template
        slots = [args[i] if i < len(args) else kwargs.get(name) for i, name in enumerate(("query", "key", "value"))]
        return tuple(slot.index if isinstance(slot, Slot) else None for slot in slots)


class Concatenation(TracedOperation):
    """A traced ``torch.cat`` of relevance-carrying tensors with a constant one (a class token)."""


def _projections(attention: nn.MultiheadAttention, query: Tensor, key: Tensor,
                 value: Tensor) -> tuple[Tensor, Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """``nn.MultiheadAttention``'s projected queries, keys and values per head, (B, heads, L, E / heads),
    and the map from the heads' attention-weighted values to the module's output (``out_proj``)."""
    heads, width = attention.num_heads, attention.embed_dim
    if attention._qkv_same_embed_dim:
        weights = attention.in_proj_weight.chunk(3)
    else:
        weights = (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight)
    biases = (None,) * 3 if attention.in_proj_bias is None else attention.in_proj_bias.chunk(3)
    unbatched = query.dim() == 2

    def tokens(x: Tensor) -> Tensor:  # (B, L, E)
        return x[None] if unbatched else x if attention.batch_first else x.transpose(0, 1)

    def merge(mixed: Tensor) -> Tensor:
        output = F.linear(mixed.transpose(1, 2).flatten(2), attention.out_proj.weight, attention.out_proj.bias)
        return output[0] if unbatched else output if attention.batch_first else output.transpose(0, 1)

    q, k, v = (F.linear(tokens(x), w, b).unflatten(-1, (heads, width // heads)).transpose(1, 2)
               for x, w, b in zip((query, key, value), weights, biases, strict=True))
    return q, k, v, merge


def multihead_attention(attention: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``attention(query, key, value)[0]`` re-implemented from its weights, the attention weights detached.

    The result is linear in ``value`` (plus the projections' biases) and carries no graph to ``query`` and
    ``key``. It does not depend on the path PyTorch takes (its eval fast path has no graph at all). Inputs
    (L, E), or (B, L, E) / (L, B, E) as ``batch_first`` says.
    """
    q, k, v, merge = _projections(attention, query, key, value)
    held = torch.softmax(q.detach() @ k.detach().transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return merge(held @ v)


class ConstantAttention(Epsilon):
    """Attention with the softmax weights held constant: the ε rule on the map from the values (CP-LRP).

    For :class:`MultiheadAttentionCall` (re-implemented from ``in_proj_weight`` / ``out_proj``, biases
    absorbing) and :class:`ScaledDotProductAttention`; the query and key (and a mask computed from the
    input) receive zero relevance.
    """

    def check(self, name: str, module: nn.Module) -> None:
        if isinstance(module, MultiheadAttentionCall):
            if module.attention.bias_k is not None or module.attention.add_zero_attn:
                raise UnsupportedLayerError(f"nn.MultiheadAttention {name!r} uses add_bias_kv or add_zero_attn, "
                                            "which the attention rule does not re-implement")
        elif not isinstance(module, ScaledDotProductAttention):
            raise UnsupportedLayerError(f"rule {self!r} applies to attention only (nn.MultiheadAttention, "
                                        f"F.scaled_dot_product_attention), but module {name!r} is a "
                                        f"{type(module).__qualname__}; map another rule to it in the composite")

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        if isinstance(module, MultiheadAttentionCall):
            query, key, value = inputs
            with torch.enable_grad():
                value = value.detach().requires_grad_(True)
                output = multihead_attention(module.attention, query.detach(), key.detach(), value)
            (share,) = _share((value,), output, relevance, self.epsilon)
            return (torch.zeros_like(query), torch.zeros_like(key), share)
        # The gradient of the output with respect to the values alone treats the weights as constants; a
        # constant value (no input) leaves the relevance with the attention.
        value = module.operands[2]
        return tuple(_share((x,), output, relevance, self.epsilon)[0] if i == value else torch.zeros_like(x)
                     for i, x in enumerate(inputs))


class AttnLRP(ConstantAttention):
    """AttnLRP (Achtibat et al., ICML 2024): relevance also flows through the softmax to queries and keys.

    The bilinear products ``A v`` and ``q kᵀ`` split their ε-rule relevance uniformly, half to each factor;
    the softmax ``A = softmax(S)`` passes ``S ⊙ (R_A − A ⊙ Σ_j R_A_j)`` (its Taylor expansion at ``S``,
    Proposition 3.1 of the paper) and absorbs the rest; projections and ``out_proj`` get the ε rule.
    Unmasked attention with the default scale ``1/√d`` only.
    """

    def check(self, name: str, module: nn.Module) -> None:
        super().check(name, module)
        if isinstance(module, ScaledDotProductAttention):
            args, kwargs = module.template
            options = {key: value for key, value in kwargs.items() if key != "dropout_p"}
            if (len(args) != 3 or module.operands != (0, 1, 2)
                    or any(value not in (None, False) for value in options.values())):
                raise UnsupportedLayerError(f"rule {self!r} explains F.scaled_dot_product_attention(q, k, v) of "
                                            f"tensors computed from the input, without a mask, causal attention or "
                                            f"another scale, but {name!r} is {module.describe} with "
                                            f"{sorted(options)}")

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        if isinstance(module, ScaledDotProductAttention):
            return _through_softmax(*inputs, relevance, self.epsilon)
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(True) for x in inputs]
            q, k, v, merge = _projections(module.attention, *leaves)
            mixed = (torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v).detach()
            mixed.requires_grad_(True)
            output = merge(mixed)
        (share,) = _share((mixed,), output, relevance, self.epsilon)
        heads = _through_softmax(q, k, v, share, self.epsilon)
        return tuple(_share((x,), z, r, self.epsilon)[0] for x, z, r in zip(leaves, (q, k, v), heads, strict=True))


def _through_softmax(q: Tensor, k: Tensor, v: Tensor, relevance: Tensor, epsilon: float) -> tuple[Tensor, ...]:
    """AttnLRP's relevance of ``q``, ``k``, ``v`` (…, L, d) for ``softmax(q kᵀ / √d) v`` with ``relevance``."""
    with torch.enable_grad():
        q, k, v = (x.detach().requires_grad_(True) for x in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        weights = torch.softmax(scores.detach(), -1).requires_grad_(True)
        mixed = weights @ v
    to_weights, to_v = (r / 2 for r in _share((weights, v), mixed, relevance, epsilon))
    to_scores = scores.detach() * (to_weights - weights.detach() * to_weights.sum(-1, keepdim=True))
    to_q, to_k = (r / 2 for r in _share((q, k), scores, to_scores, epsilon))
    return to_q, to_k, to_v


class Slices(WinnerTakesAll):
    """Concatenation: each input gets the relevance of its slice (the gradient's routing); a constant (a
    class token) is no input, and the relevance of its slice is absorbed."""


def refuse_untraced_attention(model: nn.Module) -> None:
    """Raise :class:`UnsupportedLayerError` if the untraced ``model`` holds an ``nn.MultiheadAttention``: the
    hook engine would see its functional projections and softmax as a gradient."""
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            raise UnsupportedLayerError(f"nn.MultiheadAttention {name!r} is explained only in a model torch.fx "
                                        "traces (its projections are parameters used functionally); make the "
                                        "forward traceable (docs/lrp.md, 'Tracing')")


def _unmasked(module: nn.Module, masks: Sequence[object]) -> None:
    if any(mask is not None and mask is not False for mask in masks):
        raise UnsupportedLayerError(f"{type(module).__name__} is called with a mask or causal attention; LRP "
                                    "explains unmasked attention only (docs/lrp.md, 'Transformers')")


def _encoder_layer(layer: nn.TransformerEncoderLayer, src: Tensor, src_mask: Tensor | None = None,
                   src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """``nn.TransformerEncoderLayer.forward`` as its layers compute it (post- or pre-norm), unmasked."""
    _unmasked(layer, (src_mask, src_key_padding_mask, is_causal))

    def attention(x: Tensor) -> Tensor:
        return layer.dropout1(layer.self_attn(x, x, x, need_weights=False)[0])

    def feed_forward(x: Tensor) -> Tensor:
        return layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(x)))))

    if layer.norm_first:
        src = src + attention(layer.norm1(src))
        return src + feed_forward(layer.norm2(src))
    src = layer.norm1(src + attention(src))
    return layer.norm2(src + feed_forward(src))


def _encoder(encoder: nn.TransformerEncoder, src: Tensor, mask: Tensor | None = None,
             src_key_padding_mask: Tensor | None = None, is_causal: bool | None = None) -> Tensor:
    """``nn.TransformerEncoder.forward``: its layers in turn, then its norm; unmasked."""
    _unmasked(encoder, (mask, src_key_padding_mask, is_causal))
    for layer in encoder.layers:
        src = layer(src)
    return src if encoder.norm is None else encoder.norm(src)


_TRACEABLE: dict[type, Callable[..., Tensor]] = {nn.TransformerEncoderLayer: _encoder_layer,
                                                   nn.TransformerEncoder: _encoder}


def traceable_forward(module: nn.Module) -> Callable[..., Tensor] | None:
    """A forward of ``module`` that fx can trace where its own cannot (PyTorch's encoder and encoder layer,
    exactly those classes: a subclass may have its own forward), bound to it; None for other modules."""
    forward = _TRACEABLE.get(type(module))
    return None if forward is None else lambda *args, **kwargs: forward(module, *args, **kwargs)


def wrap_multihead_attention(module: fx.GraphModule) -> None:
    """Replace every ``nn.MultiheadAttention`` call of the traced ``module`` by a
    :class:`MultiheadAttentionCall` of the same name, its ``[0]`` reads by the call's output.

    Refused (:class:`UnsupportedLayerError`): masks, and reads of the attention weights (``[1]``).
    """
    calls = [node for node in module.graph.nodes
             if node.op == "call_module" and isinstance(module.get_submodule(node.target), nn.MultiheadAttention)]
    for node in calls:
        options = {key: value for key, value in node.kwargs.items() if key not in ("need_weights",
                                                                                  "average_attn_weights")}
        if len(node.args) != 3 or any(value not in (None, False) for value in options.values()):
            raise UnsupportedLayerError(f"nn.MultiheadAttention {node.target!r} is called with a mask or causal "
                                        "attention; LRP explains unmasked attention only (docs/lrp.md, "
                                        "'Transformers')")
        reads = list(node.users)
        if not all(read.op == "call_function" and read.target is operator.getitem
                   and (read.args[1] == 0 or not read.users) for read in reads):
            raise UnsupportedLayerError(f"the attention weights of nn.MultiheadAttention {node.target!r} are used "
                                        "in the forward; LRP explains its output only (docs/lrp.md, 'Transformers')")
        node.kwargs = {}
        for read in reads:
            if read.args[1] == 0:
                read.replace_all_uses_with(node)
            module.graph.erase_node(read)
    for target in {node.target for node in calls}:
        module.add_submodule(target, MultiheadAttentionCall(module.get_submodule(target)))
