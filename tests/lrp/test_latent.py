"""Latent relevance (LRP.latent) and conditional heatmaps (LRP.conditional): exact values on a small model,
conservation through the accounting, agreement with zennit's relevance at the same layer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spray import zoo
from spray.errors import BadInputError
from spray.lrp import LRP, Epsilon, EpsilonPlusFlat
from tests.lrp.zennit_peer import imported_zennit, zennit_composite


def _pooled_head(bias: bool = False) -> nn.Module:
    """1×1 conv (2 → 3 channels) → ReLU → global average pooling → linear 3 → 2."""
    model = nn.Sequential(nn.Conv2d(2, 3, 1, bias=bias), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2, bias=bias)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, 2.0], [0.25, 0.25]]).reshape(3, 2, 1, 1))
        model[4].weight.copy_(torch.tensor([[1.0, -2.0, 4.0], [0.5, 1.0, -1.0]]))
        if bias:
            model[0].bias.copy_(torch.tensor([0.5, -0.25, 1.0]))
            model[4].bias.copy_(torch.tensor([0.75, -0.5]))
    return model


def test_latent_relevance_of_a_pooled_linear_head_is_weight_times_activation_over_area():
    # ε at the linear head passes p_c w_kc; the average pool hands each position its share a_chw / (H W p_c).
    model = _pooled_head()
    x = torch.rand(2, 2, 3, 4, dtype=torch.float64)
    target = torch.tensor([0, 1])
    latent = LRP(Epsilon(1e-12)).latent(model, x, target, "1")
    activation = torch.relu(model[0](x))
    expected = model[4].weight[target][:, :, None, None] * activation / 12
    torch.testing.assert_close(latent.activation, activation, rtol=0, atol=0)
    # Exact up to the stabilisers (ε 1e-12 at the head, 1e-9 in the pooling's proportional rule).
    torch.testing.assert_close(latent.relevance, expected, rtol=1e-7, atol=1e-9)
    assert latent.relevance.shape == (2, 3, 3, 4) and latent.logits.shape == (2, 2)
    # Channel relevance R_c = Σ_hw R_chw: here w_kc · mean_hw(a_c).
    torch.testing.assert_close(latent.relevance.sum((2, 3)),
                               model[4].weight[target] * activation.mean((2, 3)), rtol=1e-7, atol=1e-9)


def test_channel_relevance_totals_the_input_relevance_plus_what_the_modules_below_absorb():
    model = _pooled_head(bias=True)
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 0])
    lrp = LRP(Epsilon())  # ε at the first conv too: its bias absorbs (the flat rule would pass everything)
    latent = lrp.latent(model, x, target, "1")
    _, logits, ledger = lrp.balance(model, x, target)
    absorbed = {b.name: b.out - b.into for b in ledger}
    total = latent.relevance.sum((1, 2, 3))
    input_total = latent.input_relevance.sum((1, 2, 3))
    # Below the layer (the ReLU "1") the 1×1 conv's bias absorbs; above it the head's bias and the pooling's
    # stabiliser.
    below = absorbed["0"] + absorbed["1"]
    above = sum(absorbed[name] for name in ("2", "3", "4"))
    torch.testing.assert_close(total - below, input_total, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(total + above, logits.gather(1, target[:, None])[:, 0], rtol=1e-12, atol=1e-12)
    assert float(absorbed["0"].abs().min()) > 1e-3  # the identity is not vacuous: the bias does absorb
    relevance, _ = lrp.attribute(model, x, target)
    torch.testing.assert_close(latent.input_relevance, relevance, rtol=0, atol=0)


def test_conditional_heatmaps_of_a_channel_partition_sum_to_the_heatmap_and_to_their_channel_relevance():
    model = _pooled_head()
    x = torch.rand(2, 2, 3, 3, dtype=torch.float64)
    target = torch.tensor([1, 0])
    lrp = LRP(EpsilonPlusFlat())
    latent = lrp.latent(model, x, target, "1")
    parts = [lrp.conditional(model, x, target, "1", torch.tensor(mask, dtype=torch.float64))
             for mask in ([1, 0, 0], [0, 1, 1])]
    torch.testing.assert_close(parts[0] + parts[1], latent.input_relevance, rtol=1e-12, atol=1e-12)
    channel = latent.relevance.sum((2, 3))
    torch.testing.assert_close(parts[0].sum((1, 2, 3)), channel[:, 0], rtol=1e-10, atol=1e-12)
    # A per-sample mask: sample 0 keeps channel 2 only, sample 1 nothing.
    masked = lrp.conditional(model, x, target, "1", torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(masked.sum((1, 2, 3)), torch.stack([channel[0, 2], channel.new_zeros(())]),
                               rtol=1e-10, atol=1e-12)


def test_a_vit_block_s_conditional_heatmaps_gate_its_d_features_not_its_tokens():
    torch.manual_seed(0)
    model = zoo.VisionTransformer(28, 4, 2, 4, 64, 128, num_classes=3).double().eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.1)
    x, target = torch.rand(2, 3, 28, 28, dtype=torch.float64), torch.tensor([0, 2])
    block = "encoder.layers.encoder_layer_0"
    lrp = LRP(EpsilonPlusFlat())
    latent = lrp.latent(model, x, target, block)
    mask = (torch.arange(64) < 20).double()
    parts = [lrp.conditional(model, x, target, block, m) for m in (mask, 1 - mask)]
    torch.testing.assert_close(parts[0] + parts[1], latent.input_relevance, rtol=1e-10, atol=1e-12)
    with pytest.raises(BadInputError, match=r"^channels must have shape \(64,\) or \(2, 64\)"):
        lrp.conditional(model, x, target, block, torch.ones(50, dtype=torch.float64))  # 50 tokens, not channels


def test_latent_relevance_equals_zennits_relevance_at_the_same_resnet_block():
    torch.manual_seed(0)
    model = zoo.randomize_batch_norms(zoo.resnet18(num_classes=10), eps=0.0).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([3, 7])
    ours = LRP(EpsilonPlusFlat()).latent(model, x, target, "layer3").relevance
    with imported_zennit() as z:
        composite = zennit_composite(z, "epsilon_plus_flat", z.ResNetCanonizer)
        with composite.context(copy.deepcopy(model)) as modified:
            kept: list[torch.Tensor] = []
            handle = modified.layer3.register_forward_hook(lambda _m, _a, out: kept.append(out))
            inputs = x.clone().requires_grad_(True)
            output = modified(inputs)
            handle.remove()
            seed = torch.zeros_like(output).scatter_(1, target[:, None], output.gather(1, target[:, None]))
            (theirs,) = torch.autograd.grad(output, kept[0], seed)
    assert ours.shape == theirs.shape == (2, 256, 2, 2)
    assert ((ours - theirs).norm() / theirs.norm()).item() <= 1e-6


class _NormedTokens(nn.Module):
    """Tokens embedded, layer-normalised, the first read by a linear head: a ViT's end in small."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.ln, self.head = nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(self.embed(x))[:, 0])


def test_latent_relevance_at_a_layer_norm_the_trace_runs_through_is_its_output_times_the_heads_weight():
    # The LayerNorm is traced through (its F.layer_norm gets the rule), so its output is a rewritten node.
    torch.manual_seed(0)
    model = _NormedTokens().double().eval()
    x, target = torch.randn(2, 5, 3, dtype=torch.float64), torch.tensor([1, 0])
    latent = LRP(Epsilon(1e-12)).latent(model, x, target, "ln")
    activation = model.ln(model.embed(x))
    expected = torch.zeros_like(activation)
    expected[:, 0] = activation[:, 0] * model.head.weight[target]  # ε at the head: a_j w_j; other tokens 0
    torch.testing.assert_close(latent.activation, activation, rtol=0, atol=1e-14)  # the rule's own layer norm
    torch.testing.assert_close(latent.relevance, expected, rtol=1e-9, atol=1e-12)


def test_a_layer_the_model_lacks_and_channels_of_the_wrong_shape_are_refused():
    model, x, target = _pooled_head(), torch.rand(2, 2, 3, 3, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(BadInputError, match=r"^layer module 'head' is not in the model; use a name from "):
        LRP(EpsilonPlusFlat()).latent(model, x, target, "head")
    with pytest.raises(BadInputError) as caught:
        LRP(EpsilonPlusFlat()).conditional(model, x, target, "1", torch.ones(4))
    assert str(caught.value) == "channels must have shape (3,) or (2, 3) for layer '1', got (4,)"
