"""Transformers under CP-LRP (spray.lrp.transformer): both zoo ViTs account for every sample's relevance,
are left as found, and the rules equal gradient × input with the attention weights and LayerNorm's σ
held constant (Ali et al., ICML 2022), which plain gradient × input is not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spray.cli import main
from spray.errors import UnsupportedLayerError
from spray.lrp import LRP, Epsilon, EpsilonPlusFlat, UntracedModelWarning
from spray.lrp.accounting import check, may_absorb
from spray.lrp.functional import Slot
from spray.lrp.transformer import AttnLRP, MultiheadAttentionCall, ScaledDotProductAttention, multihead_attention
from spray.testing import pipeline_text
from spray.zoo import timm_vit_tiny_16, vit_tiny_16
from tests.lrp.test_tracing import _assert_left_as_found, _snapshot


def _tiny(build) -> nn.Module:
    """A 32 px, patch 8, depth 2, width 48 ViT in float64 with biases, class token, position embedding and
    the head drawn at random (the zoo's zero or tiny ones would hide what absorbs relevance)."""
    torch.manual_seed(0)
    model = build()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or parameter.dim() == 3 or not parameter.any():
                parameter.normal_(0.0, 0.5)
    return model.double().eval()


VITS = {
    "torchvision": lambda: vit_tiny_16(10, image_size=32, patch_size=8, num_layers=2, hidden_dim=48, mlp_dim=96),
    "timm": lambda: timm_vit_tiny_16(10, img_size=32, patch_size=8, depth=2, embed_dim=48),
}


ATTNLRP = {MultiheadAttentionCall: AttnLRP(), ScaledDotProductAttention: AttnLRP()}


@pytest.mark.parametrize("composite", [EpsilonPlusFlat(), Epsilon(), EpsilonPlusFlat(types=ATTNLRP)],
                         ids=["epsilon_plus_flat", "epsilon", "attnlrp"])
@pytest.mark.parametrize("layout", VITS)
def test_vit_accounts_for_every_samples_relevance_and_keeps_its_logits(layout, composite):
    model = _tiny(VITS[layout])
    x, target = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 3, 5, 9])
    before = _snapshot(model)
    relevance, logits, ledger = LRP(composite).balance(model, x, target)
    _assert_left_as_found(model, before)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-12)
    f = logits.gather(1, target[:, None])[:, 0]
    absorbed = sum(b.out - b.into for b in ledger)
    assert float((relevance.flatten(1).sum(1) + absorbed - f).abs().max()) <= 1e-12 * float(f.abs().max())
    check(relevance, f, ledger, tolerance=1e-6)  # every module without a constant part within 1e-6 of f
    absorbing = {b.name: type(b.module).__name__ for b in ledger if (b.out - b.into).abs().max() > 1e-6}
    assert all(may_absorb(b) for b in ledger if b.name in absorbing)
    # The class token's slice and the position embedding's share are absorbed where they join the tokens,
    # LayerNorm's shift β in the traced normalisation.
    assert {"Concatenation", "Addition", "Normalization"} <= set(absorbing.values())


def test_the_rules_are_gradient_times_input_with_attention_and_sigma_held_not_plain_gradient_times_input():
    torch.manual_seed(0)
    model = _OneBlock().double().eval()
    x, target = torch.randn(3, 5, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    relevance, logits = LRP(Epsilon(1e-12)).attribute(model, x, target)

    def held(inputs: torch.Tensor) -> torch.Tensor:
        """The block written out, with σ and the softmax detached (bias-free: LRP-0 is gradient × input)."""
        h = inputs - inputs.mean(-1, keepdim=True)
        h = h / (inputs.detach().var(-1, unbiased=False, keepdim=True) + model.norm.eps).sqrt()
        w_q, w_k, w_v = model.attention.in_proj_weight.chunk(3)
        heads = [slice(0, 2), slice(2, 4)]
        q, k, v = h @ w_q.T, h @ w_k.T, h @ w_v.T
        mixed = torch.cat([torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 2 ** 0.5, -1).detach() @ v[..., s]
                           for s in heads], -1)
        return model.head((inputs + mixed @ model.attention.out_proj.weight.T)[:, 0])

    def gradient_times_input(function) -> torch.Tensor:
        leaf = x.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(function(leaf).gather(1, target[:, None]).sum(), leaf)
        return x * gradient

    expected = gradient_times_input(held)
    # Up to the stabilisers: ε = 1e-12 here, 1e-9 in the proportional rule of the residual addition.
    assert float((relevance - expected).abs().max()) <= 1e-8 * float(expected.abs().max())
    torch.testing.assert_close(relevance.flatten(1).sum(1), logits.gather(1, target[:, None])[:, 0])
    # Plain gradient × input also follows the softmax and σ: it neither matches nor conserves.
    plain = gradient_times_input(model)
    assert float((plain - expected).abs().max()) > 0.05 * float(expected.abs().max())
    assert float((plain.flatten(1).sum(1) - expected.flatten(1).sum(1)).abs().max()) > 1e-3


def test_attnlrp_with_one_key_gives_the_values_half_and_queries_and_keys_nothing():
    # One key: the softmax is the constant 1, so the scores' relevance S ⊙ (R_A − A ΣR_A) vanishes and the
    # uniform split of A·v leaves v half of the relevance; the softmax absorbs the other half.
    module = ScaledDotProductAttention(torch.nn.functional.scaled_dot_product_attention,
                                       (Slot(0), Slot(1), Slot(2)), {}, "call_function scaled_dot_product_attention")
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 1, 5, dtype=torch.float64)[:, i] for i in range(3))
    relevance = torch.randn(2, 4, 1, 5, dtype=torch.float64)
    to_q, to_k, to_v = AttnLRP(epsilon=0.0).redistribute(module, (q, k, v), module(q, k, v), relevance)
    torch.testing.assert_close(to_v, relevance / 2)
    assert not to_q.any() and not to_k.any()


class _OneBlock(nn.Module):
    """LayerNorm without affine → 2-head self-attention without biases → residual → head on token 0."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4, elementwise_affine=False)
        self.attention = nn.MultiheadAttention(4, 2, bias=False, batch_first=True)
        self.head = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        h, _ = self.attention(h, h, h)
        return self.head((x + h)[:, 0])


@pytest.mark.parametrize("options", [dict(batch_first=True), dict(batch_first=False), dict(kdim=3, vdim=5)],
                         ids=["batch_first", "sequence_first", "kdim_vdim"])
def test_multihead_attention_is_re_implemented_from_its_weights_also_against_the_fast_path(options):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(6, 3, **options).eval()
    with torch.no_grad():
        attention.in_proj_bias.normal_()
        attention.out_proj.bias.normal_()
    query = torch.randn(2, 4, 6)
    key, value = torch.randn(2, 4, options.get("kdim", 6)), torch.randn(2, 4, options.get("vdim", 6))
    with torch.no_grad():  # eval, no grad, batch first: PyTorch's fast path
        expected = attention(query, key, value, need_weights=False)[0]
        torch.testing.assert_close(multihead_attention(attention, query, key, value), expected)
        torch.testing.assert_close(multihead_attention(attention, query[0], key[0], value[0]),
                                   attention(query[0], key[0], value[0], need_weights=False)[0])


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)
        self.register_buffer("mask", torch.ones(3, 3, dtype=torch.bool).triu(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(x, x, x, attn_mask=self.mask)[0][:, 0])


class _Untraceable(nn.Module):
    """Attention in a forward fx cannot trace (data-dependent control flow)."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.attention(x, x, x)[0][:, 0]


@pytest.mark.parametrize(("build", "shape", "called"), [
    (lambda: _Masked(), (2, 3, 4), "nn.MultiheadAttention 'attention'"),
    (lambda: _Encoder(False, "relu", mask=True).eval(), (2, 5, 4), "TransformerEncoder"),
], ids=["multihead_attention", "transformer_encoder"])
def test_masked_attention_is_refused_and_the_model_left_as_found(build, shape, called):
    torch.manual_seed(0)
    model = build()
    before = _snapshot(model)
    with pytest.raises(UnsupportedLayerError, match=rf"^{called} is called with a mask or causal attention; LRP "
                       r"explains unmasked attention only \(docs/lrp.md, 'Transformers'\)$"):
        LRP(EpsilonPlusFlat()).attribute(model, torch.randn(*shape), torch.tensor([0, 1]))
    _assert_left_as_found(model, before)


def test_attention_in_a_model_fx_cannot_trace_is_refused():
    model = _Untraceable()
    with pytest.warns(UntracedModelWarning), pytest.raises(
            UnsupportedLayerError, match=r"^nn.MultiheadAttention 'attention' is explained only in a model torch.fx "
            r"traces \(its projections are parameters used functionally\); make the forward traceable \(docs/lrp.md, "
            r"'Tracing'\)$"):
        LRP(EpsilonPlusFlat()).attribute(model, torch.randn(2, 3, 4), torch.tensor([0, 1]))


class _CausalFused(nn.Module):
    """timm-style fused attention with a boolean causal mask; the head reads token 0."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.head = nn.Linear(4, 12), nn.Linear(4, 2)
        self.register_buffer("mask", torch.ones(3, 3, dtype=torch.bool).tril())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.head(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)[:, 0])


def test_a_masked_fused_attention_passes_relevance_only_along_the_mask():
    torch.manual_seed(0)
    model, x, target = _CausalFused().double(), torch.randn(2, 3, 4, dtype=torch.float64), torch.tensor([0, 1])
    relevance, logits, ledger = LRP(EpsilonPlusFlat()).balance(model, x, target)
    check(relevance, logits.gather(1, target[:, None])[:, 0], ledger, tolerance=1e-6)
    assert relevance[:, 0].abs().sum() > 0 and not relevance[:, 1:].any()  # token 0 attends to itself only
    attention = next(b for b in ledger if b.name == "scaled_dot_product_attention")
    assert attention.inputs == 3  # q, k, v; the mask is a constant, no input (it carries no relevance)


class _LatentQuery(nn.Module):
    """Attention pooling with a learned query (as timm's AttentionPoolLatent): the query is a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.randn(1, 1, 4))
        self.kv, self.head = nn.Linear(4, 8, bias=False), nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(x).chunk(2, -1)
        q = self.latent.expand(x.shape[0], -1, -1)
        return self.head(torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, 0])


def test_a_constant_query_is_no_input_and_the_values_get_the_relevance_with_the_weights_held():
    torch.manual_seed(0)
    model, x, target = _LatentQuery().double(), torch.randn(3, 5, 4, dtype=torch.float64), torch.tensor([0, 1, 0])
    relevance, logits, ledger = LRP(Epsilon(1e-12)).balance(model, x, target)
    attention = next(b for b in ledger if b.name == "scaled_dot_product_attention")
    assert attention.inputs == 2  # k, v
    leaf = x.clone().requires_grad_(True)
    k, v = model.kv(leaf).chunk(2, -1)
    weights = torch.softmax(model.latent @ k.transpose(1, 2) / 2, -1).detach()
    (gradient,) = torch.autograd.grad(model.head((weights @ v)[:, 0]).gather(1, target[:, None]).sum(), leaf)
    expected = x * gradient
    assert float((relevance - expected).abs().max()) <= 1e-8 * float(expected.abs().max())
    torch.testing.assert_close(relevance.flatten(1).sum(1), logits.gather(1, target[:, None])[:, 0])


def test_attnlrp_refuses_a_constant_query():
    with pytest.raises(UnsupportedLayerError, match=r"^rule AttnLRP\(epsilon=1e-06\) explains "
                       r"F.scaled_dot_product_attention\(q, k, v\) of tensors computed from the input, without a "
                       r"mask, causal attention or another scale, but 'scaled_dot_product_attention' is "
                       r"call_function scaled_dot_product_attention with \[\]$"):
        LRP(EpsilonPlusFlat(types=ATTNLRP)).attribute(_LatentQuery(), torch.randn(2, 5, 4), torch.tensor([0, 1]))


def test_a_vit_is_attributed_and_analysed_from_the_command_line(tmp_path, capsys):
    store, pipeline = tmp_path / "vit.h5", tmp_path / "p.toml"
    pipeline.write_text(pipeline_text("tiny"))
    model, data = "tests.data.factories:vit_model", "tests.data.factories:vit_data"
    assert main(["attribute", "--model", model, "--data", data, "--store", str(store), "--batch-size", "8"]) == 0
    assert main(["analyze", str(store), "--pipeline", str(pipeline)]) == 0
    assert main(["info", str(store), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"epsilon_plus_flat"' in out and '"done": 40' in out


class _Encoder(nn.Module):
    """Tokens -> PyTorch's own ``nn.TransformerEncoder`` (2 layers, a final norm) -> mean token -> head."""

    def __init__(self, norm_first: bool, activation: str, mask: bool = False) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, activation=activation, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8), enable_nested_tensor=False)
        self.mask = torch.ones(5, 5, dtype=torch.bool).triu(1) if mask else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x), mask=self.mask).mean(1))


@pytest.mark.parametrize(("norm_first", "activation"), [(False, "relu"), (True, "gelu")])
def test_pytorchs_transformer_encoder_is_traced_through_its_layers_and_accounts_for_every_samples_relevance(
        norm_first, activation):
    torch.manual_seed(0)
    model = _Encoder(norm_first, activation).double().eval()
    x, target = torch.randn(4, 5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    before = _snapshot(model)
    relevance, logits, ledger = LRP(EpsilonPlusFlat()).balance(model, x, target)
    _assert_left_as_found(model, before)
    with torch.no_grad():  # the eval model takes PyTorch's fused path; the trace runs the layers: same logits
        torch.testing.assert_close(logits, model(x), rtol=1e-10, atol=1e-10)
    f = logits.gather(1, target[:, None])[:, 0]
    absorbed = sum(b.out - b.into for b in ledger)
    assert float((relevance.flatten(1).sum(1) + absorbed - f).abs().max()) <= 1e-12 * float(f.abs().max())
    check(relevance, f, ledger, tolerance=1e-6)
    kinds = {type(b.module).__name__ for b in ledger}
    # Each layer's attention, both norms and the encoder's final norm are traced, none left a leaf
    assert {"MultiheadAttentionCall", "Normalization", "Addition"} <= kinds
    assert not kinds & {"TransformerEncoder", "TransformerEncoderLayer", "LayerNorm"}
    names = {b.name for b in ledger}
    assert {"encoder.layers.0.self_attn", "encoder.layers.1.linear2"} <= names


def test_the_attnlrp_preset_is_epsilon_plus_flat_with_attnlrp_for_both_attention_kinds():
    from spray.attribution.methods import get_method
    from spray.lrp import EpsilonPlusFlatAttnLRP

    x, target = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 7])
    for build in VITS.values():
        model = _tiny(build)
        preset = get_method("epsilon_plus_flat_attnlrp", epsilon=1e-5)
        assert preset.name == "epsilon_plus_flat_attnlrp" and preset.params() == {"epsilon": 1e-5}
        attention = {kind: AttnLRP(1e-5) for kind in ATTNLRP}
        expected, _ = LRP(EpsilonPlusFlat(1e-5, types=attention)).attribute(model, x, target)
        relevance, _ = preset.attribute(model, x, target)
        torch.testing.assert_close(relevance, expected, rtol=0, atol=0)
        held, _ = LRP(EpsilonPlusFlat(1e-5)).attribute(model, x, target)
        assert float((held - expected).abs().max()) > 1e-3 * float(expected.abs().max())
    assert isinstance(EpsilonPlusFlatAttnLRP().rule("a", MultiheadAttentionCall(nn.MultiheadAttention(4, 1)), False),
                      AttnLRP)


def test_the_flat_first_layer_makes_a_vits_heatmap_constant_on_its_patch_grid_and_epsilon_does_not():
    # Flat spreads a unit's relevance evenly over its receptive field; a patch embedding's fields are the
    # patches themselves, so every pixel (and channel) of a patch gets the same relevance: the heatmap holds
    # only the token grid's 4 x 4 numbers (what the benchmark's ViT heatmaps are, docs/benchmark.md).
    model = _tiny(VITS["torchvision"])
    x, target = torch.rand(3, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 4, 7])

    def spread(relevance: torch.Tensor) -> float:
        blocks = relevance.reshape(3, 3, 4, 8, 4, 8)
        deviation = blocks - blocks.mean(dim=(1, 3, 5), keepdim=True)
        return float(deviation.abs().max() / relevance.abs().max())

    flat = LRP(EpsilonPlusFlat()).balance(model, x, target)[0]
    assert spread(flat) <= 1e-12
    assert spread(LRP(Epsilon()).balance(model, x, target)[0]) > 0.1
