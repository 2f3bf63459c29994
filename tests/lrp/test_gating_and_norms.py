"""Gating (a product with a sigmoid gate: the signal takes all relevance) and layer/group normalisation (the
ε rule with the standard deviation held constant), as tracing explains them (docs/lrp.md, "Tracing")."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from spray.lrp import LRP, Epsilon
from spray.lrp.functional import Gating, Normalization, Scaling
from spray.lrp.tracing import canonize
from spray.zoo.convnext import LayerNorm2d


class _SqueezeExcite(nn.Module):
    """A conv, then squeeze-and-excitation written in three common ways, with ``detach`` optional: a detached
    gate is a constant, so the product is a scaling whose relevance passes through unchanged."""

    def __init__(self, style: str, detach: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3, bias=False)
        self.style, self.detach = style, detach

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        b, c = h.shape[:2]
        gate = self.fc(h.mean((2, 3)))
        gate = gate.detach() if self.detach else gate
        if self.style == "expand":      # y = sigmoid(fc(pool(x))).view(b, c, 1, 1); x * y.expand_as(x)
            h = h * torch.sigmoid(gate).view(b, c, 1, 1).expand_as(h)
        elif self.style == "in-place":  # the gate first, the signal modified in place by a method
            h = h.mul_(torch.sigmoid(gate)[:, :, None, None])
        else:                           # a SiLU written out: x * sigmoid(x)
            h = h * torch.sigmoid(h)
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("style", ["expand", "in-place", "silu"])
def test_a_gated_signal_takes_all_relevance_as_if_the_gate_were_constant(style):
    torch.manual_seed(0)
    gated, constant = _SqueezeExcite(style, False).double(), _SqueezeExcite(style, True).double()
    constant.load_state_dict(gated.state_dict())
    x, target = torch.randn(3, 2, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2])
    traced = canonize(gated, x, Epsilon(), None).module
    assert [type(m) for m in traced.modules() if isinstance(m, Gating | Scaling)] == [Gating]
    relevance, logits = LRP(Epsilon(1e-12)).attribute(gated, x, target)
    expected, expected_logits = LRP(Epsilon(1e-12)).attribute(constant, x, target)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    # (the constant gate's scaling is proportional: its stabiliser of 1e-9 leaves differences below 1e-7)
    torch.testing.assert_close(relevance, expected, rtol=1e-6, atol=1e-7)
    # bias-free signal path: the gate's branch (with a bias) receives nothing, so the logit is conserved
    torch.testing.assert_close(relevance.flatten(1).sum(1), logits.gather(1, target[:, None])[:, 0])


class _Normalised(nn.Module):
    """A bias-free conv, a normalisation with drawn affine parameters, a bias-free head."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(2, 4, 3, padding=1, bias=False), norm
        self.head = nn.Linear(4 * 25, 3, bias=False)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.conv(x)).flatten(1))


@pytest.mark.parametrize(("norm", "groups"), [(nn.GroupNorm(2, 4), 2), (LayerNorm2d(4), None)],
                         ids=["GroupNorm", "LayerNorm2d"])
def test_normalisation_passes_x_times_its_gradient_with_sigma_held_constant(norm, groups):
    torch.manual_seed(0)
    model = _Normalised(norm).double().eval()
    x, target = torch.randn(2, 2, 5, 5, dtype=torch.float64), torch.tensor([0, 2])
    traced = canonize(model, x, Epsilon(), None).module
    assert [type(m) for m in traced.modules() if isinstance(m, Normalization)] == [Normalization]
    relevance, logits = LRP(Epsilon(1e-12)).attribute(model, x, target)
    # By hand: the head's ε rule gives R_j = z_j w_tj; the normalisation gives
    # R_in_i = a_i (g_i − mean over the group of g), g = γ R / (σ z), a its input; then the conv's ε rule.
    with torch.no_grad():
        a = model.conv(x)
        z = model.norm(a)
        head = z.flatten(1) * model.head.weight[target]
        g = (norm.weight[:, None, None] * head.view_as(z) / z)
        shape = (2, groups, -1) if groups else (2, 1, 4, 25)
        dims = -1 if groups else 2
        grouped_a = a.reshape(shape)
        sigma = grouped_a.var(dims, unbiased=False, keepdim=True).add(norm.eps).sqrt()
        grouped_g = g.reshape(shape) / sigma
        r_norm = (a.reshape(shape) * (grouped_g - grouped_g.mean(dims, keepdim=True))).reshape_as(a)
    leaf = x.clone().requires_grad_(True)
    out = model.conv(leaf)
    (grad,) = torch.autograd.grad(out, leaf, r_norm / out)
    torch.testing.assert_close(relevance, leaf.detach() * grad, rtol=1e-8, atol=1e-10)
    # the shift β absorbs Σ β R / z; the rest reaches the input
    absorbed = (norm.bias[:, None, None] * head.view_as(z) / z).flatten(1).sum(1)
    torch.testing.assert_close(relevance.flatten(1).sum(1) + absorbed, logits.gather(1, target[:, None])[:, 0])


def test_traced_normalisation_computes_the_modules_values():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    for module in (nn.GroupNorm(3, 6), LayerNorm2d(6), nn.LayerNorm([3, 3])):
        model = nn.Sequential(module).double()
        traced = canonize(nn.Sequential(model, nn.Flatten()), x, Epsilon(), None).module
        with torch.no_grad():
            torch.testing.assert_close(traced(x), model(x).flatten(1), rtol=1e-12, atol=1e-12)
