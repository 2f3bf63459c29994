"""The method registry and the captum gradient attributors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spray.attribution.methods import available_methods, get_method
from spray.errors import BadInputError

GRADIENT_METHODS = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad"]


def _net(activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), activation(), nn.Linear(8, 3)).double().eval()


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_method_returns_relevance_of_input_shape_and_the_models_logits(name):
    model, x = _net(), torch.randn(5, 3, 2, 2, dtype=torch.float64)
    relevance, logits = get_method(name).attribute(model, x, torch.tensor([0, 1, 2, 0, 1]))
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    torch.testing.assert_close(logits, model(x))
    assert all(p.grad is None for p in model.parameters())


def test_integrated_gradients_completeness_sums_to_logit_difference_from_baseline():
    # A smooth net: with ReLU kinks the quadrature error, not the method, would dominate.
    model, x = _net(nn.Softplus), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    target = torch.tensor([2, 1, 0, 2])
    relevance, logits = get_method("integrated_gradients", n_steps=200).attribute(model, x, target)
    baseline_logits = model(torch.zeros_like(x))
    expected = logits.gather(1, target[:, None])[:, 0] - baseline_logits.gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), expected.detach(), rtol=1e-3, atol=1e-4)


def test_input_x_gradient_equals_input_times_autograd_gradient():
    model, x = _net(), torch.randn(3, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2, 1])
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    relevance, _ = get_method("input_x_gradient").attribute(model, x.detach(), target)
    torch.testing.assert_close(relevance, (x * grad).detach())


def test_smoothgrad_is_reproducible_and_leaves_global_random_state_alone():
    model, x = _net(), torch.randn(2, 3, 2, 2, dtype=torch.float64)
    target = torch.tensor([1, 1])
    state = torch.random.get_rng_state()
    first, _ = get_method("smoothgrad", seed=3).attribute(model, x, target)
    second, _ = get_method("smoothgrad", seed=3).attribute(model, x, target)
    other, _ = get_method("smoothgrad", seed=4).attribute(model, x, target)
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert torch.equal(state, torch.random.get_rng_state())


def test_unknown_method_error_lists_the_valid_names():
    with pytest.raises(BadInputError, match="unknown attribution method 'lrp_magic'.*epsilon_plus_flat"):
        get_method("lrp_magic")


def test_bad_parameter_error_names_the_method():
    with pytest.raises(BadInputError, match="integrated_gradients"):
        get_method("integrated_gradients", steps=3)


def test_registry_lists_lrp_composites_and_gradient_methods():
    assert {"epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", *GRADIENT_METHODS} <= set(
        available_methods()
    )
