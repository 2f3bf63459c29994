"""BatchNorm folding: same function while folded, the exact model back afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spray.lrp import fold_batchnorm


@pytest.fixture
def model(randomise_batchnorm, request) -> nn.Module:
    """Conv2d → BatchNorm2d and Linear → BatchNorm1d in a Sequential; ``request.param``: layer biases."""
    torch.manual_seed(0)
    bias = getattr(request, "param", False)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, bias=bias), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Flatten(), nn.Linear(12, 5, bias=bias), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2),
    )
    return randomise_batchnorm(model, True).double().eval()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("model", [True, False], indirect=True, ids=["bias", "no_bias"])
def test_folded_model_computes_the_same_function_and_is_restored_bit_for_bit(model):
    x, bias = torch.randn(4, 2, 4, 4, dtype=torch.float64), model[0].bias is not None
    before, parameters, output = _snapshot(model), list(model.parameters()), model(x)
    with fold_batchnorm(model) as folded:
        assert folded == 2
        assert isinstance(model[1], nn.Identity) and isinstance(model[5], nn.Identity)
        assert model[0].bias is not None
        torch.testing.assert_close(model(x), output)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    assert isinstance(model[1], nn.BatchNorm2d) and (model[0].bias is None) == (not bias)
    assert torch.equal(model(x), output)


def test_model_is_restored_when_the_block_raises(model):
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), fold_batchnorm(model):
        raise RuntimeError("boom")
    assert all(torch.equal(model.state_dict()[name], before[name]) for name in before)
    assert isinstance(model[1], nn.BatchNorm2d) and model[0].bias is None


def test_batchnorm_not_directly_after_a_linear_layer_is_left_alone():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4))
    with fold_batchnorm(model) as folded:
        assert folded == 0
        assert isinstance(model[0], nn.BatchNorm1d) and isinstance(model[3], nn.BatchNorm1d)
