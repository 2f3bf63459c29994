"""The first forward pass's checks (spray.attribution.batches.count_outputs): outputs, input left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spray.attribution.batches import count_outputs
from spray.errors import BadInputError

CPU = torch.device("cpu")


def _count(model: nn.Module, x0: torch.Tensor) -> int:
    return count_outputs(model, x0, dtype=torch.float32, device=CPU)


def test_in_place_activations_inside_the_model_are_fine_and_no_hook_is_left() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8, 3))
    x0 = torch.randn(1, 4, 4)
    before = x0.clone()
    assert _count(model, x0) == 3
    assert torch.equal(x0, before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_an_in_place_activation_on_the_input_itself_is_named() -> None:
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(BadInputError, match=r"^the model modifies its input tensor in place \(module '0' \(ReLU\)\)"):
        _count(model, -torch.ones(1, 4, 4))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_an_edit_between_children_is_blamed_on_the_module_running_them() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Identity(), nn.Flatten()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.first(x)
            x.clamp_(min=0)
            return self.second(x)

    model = nn.Sequential(nn.Identity(), Inner(), nn.Linear(16, 2))
    with pytest.raises(BadInputError, match=r"\(module '1' \(Inner\)\)"):
        _count(model, -torch.ones(1, 4, 4))


def test_a_tuple_output_is_described_item_by_item() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return x.flatten(1), None

    with pytest.raises(BadInputError) as caught:
        _count(Pair(), torch.ones(1, 2, 2))
    assert str(caught.value).startswith("the model returned a tuple of 2 items: (1, 4), NoneType for one sample;")
