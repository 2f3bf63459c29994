"""RR-ClArC's penalty: (∇_a f_y · v)², zero when the gradient is orthogonal to v."""

from __future__ import annotations

import torch
from torch import nn

from spray.clarc.activations import along_channels
from spray.clarc.rrclarc import RRClArC, rr_penalty


def test_penalty_is_zero_for_a_gradient_orthogonal_to_v():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, generator=g)
    v = v / v.norm()
    grad = torch.randn(4, 6, 5, 5, generator=g)
    grad = grad - along_channels(v, grad) * (grad * along_channels(v, grad)).sum(1, keepdim=True)
    assert rr_penalty(grad, v) < 1e-10


def test_penalty_is_the_mean_squared_directional_derivative():
    v = torch.tensor([1.0, 0.0])
    grad = torch.zeros(2, 2, 3, 3)
    grad[0, 0] = 1.0  # Σ grad·v = 9 for the first sample, 0 for the second
    grad[1, 1] = 5.0
    assert rr_penalty(grad, v) == (9.0**2 + 0.0) / 2


def test_subspace_penalty_is_the_sum_over_its_directions():
    grad = torch.zeros(2, 3, 2, 2)
    grad[0, 0] = 1.0  # along e0: 4 for the first sample
    grad[1, 1] = 2.0  # along e1: 8 for the second
    V = torch.eye(3)[:2]
    assert rr_penalty(grad, V) == rr_penalty(grad, V[0]) + rr_penalty(grad, V[1]) == (16.0 + 64.0) / 2
    assert rr_penalty(grad, V[:1]) == rr_penalty(grad, V[0])


def test_model_whose_output_ignores_the_direction_has_zero_penalty_and_a_plain_cross_entropy_loss(new_model):
    model = new_model()
    with torch.no_grad():
        model.head.weight[:, 5] = 0.0  # the logits do not read channel 5 of the last activation
    v = torch.zeros(6)
    v[5] = 1.0
    artifact = type("A", (), {"layer": "features.3", "basis": v[None]})()
    loss = RRClArC(lam=1e6).objective(artifact)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 2, (8,))
    model.train()
    expected = nn.functional.cross_entropy(model(x), y)
    torch.testing.assert_close(loss(model, x, y, torch.Generator()), expected)


def test_penalty_gradient_reaches_the_weights_through_the_second_order_term(new_model):
    model = new_model()
    v = torch.ones(6) / 6**0.5
    artifact = type("A", (), {"layer": "features.3", "basis": v[None]})()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 2, (8,))
    with_penalty = RRClArC(lam=100.0).objective(artifact)(model, x, y, torch.Generator())
    without = RRClArC(lam=0.0).objective(artifact)(model, x, y, torch.Generator())
    (g1,) = torch.autograd.grad(with_penalty, model.head.weight)
    (g0,) = torch.autograd.grad(without, model.head.weight)
    assert not torch.allclose(g1, g0)
