"""Which rule a composite picks: user names > user types > first layer > defaults; parameters as JSON."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from spray.attribution.methods import get_method
from spray.lrp import (
    LRP, AlphaBeta, Composite, Epsilon, EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox,
    EpsilonPlusFlat, Flat, Gamma, Pass, Proportional, Sum, WinnerTakesAll, ZBox, ZPlus, rules,
)


class _Spy(rules.Epsilon):
    """An ε rule that records the modules it explained."""

    def __init__(self) -> None:
        super().__init__(1e-9)
        self.seen: list[nn.Module] = []

    def redistribute(self, module, inputs, output, relevance):
        self.seen.append(module)
        return super().redistribute(module, inputs, output, relevance)


class _Reversed(nn.Module):
    """Registers its layers in the opposite order of their use."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Linear(4, 2)
        self.early = nn.Linear(3, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.late(torch.relu(self.early(x)))


def test_first_layer_is_the_first_linear_layer_in_forward_order_not_registration_order():
    spy = _Spy()
    model = _Reversed().double()
    LRP(Composite(dense=rules.Epsilon(), conv=rules.Epsilon(), first=spy)).attribute(
        model, torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    )
    assert spy.seen == [model.early]


def test_default_rules_by_layer_type():
    composite = EpsilonGammaBox(0.0, 1.0)
    assert isinstance(composite.rule("c", nn.Conv2d(1, 1, 1), first=True), ZBox)
    assert isinstance(composite.rule("c", nn.Conv2d(1, 1, 1), first=False), Gamma)
    assert isinstance(composite.rule("l", nn.Linear(1, 1), first=False), rules.Epsilon)
    assert isinstance(composite.rule("b", nn.BatchNorm2d(1), first=False), rules.Epsilon)
    assert isinstance(composite.rule("r", nn.LeakyReLU(), first=False), Pass)
    assert isinstance(composite.rule("p", nn.AdaptiveAvgPool2d(1), first=False), Proportional)
    assert isinstance(composite.rule("s", Sum(), first=False), Proportional)
    assert isinstance(composite.rule("m", nn.MaxPool1d(2), first=False), WinnerTakesAll)
    assert composite.rule("x", nn.Softmax(dim=1), first=False) is None
    assert isinstance(EpsilonPlusFlat().rule("c", nn.Conv1d(1, 1, 1), first=False), ZPlus)
    assert isinstance(EpsilonPlusFlat().rule("c", nn.Linear(1, 1), first=True), Flat)
    assert isinstance(EpsilonAlpha2Beta1().rule("c", nn.Conv2d(1, 1, 1), first=True), AlphaBeta)
    assert isinstance(EpsilonAlpha2Beta1Flat().rule("c", nn.Conv2d(1, 1, 1), first=True), Flat)


def test_user_names_take_precedence_over_user_types_over_the_first_layer_rule():
    by_name, by_type = rules.Epsilon(0.1), Gamma(1.0)
    composite = EpsilonPlusFlat(names={"features.0": by_name}, types={nn.Conv2d: by_type, nn.Softmax: Pass()})
    conv = nn.Conv2d(1, 1, 1)
    assert composite.rule("features.0", conv, first=True) is by_name
    assert composite.rule("features.3", conv, first=True) is by_type
    assert composite.rule("features", conv, first=False) is by_type  # exact names only
    assert isinstance(composite.rule("head.softmax", nn.Softmax(dim=1), first=False), Pass)


@pytest.mark.parametrize("composite, expected", [
    (Epsilon(1e-3), {"epsilon": 1e-3}),
    (EpsilonPlusFlat(), {"epsilon": 1e-6}),
    (EpsilonAlpha2Beta1(), {"epsilon": 1e-6}),
    (EpsilonAlpha2Beta1Flat(), {"epsilon": 1e-6}),
    (EpsilonGammaBox(torch.tensor([[[0.0]], [[-1.0]]]), 1, gamma=0.5),
     {"low": [[[0.0]], [[-1.0]]], "high": 1.0, "gamma": 0.5, "epsilon": 1e-6}),
])
def test_params_are_json_serialisable_and_rebuild_the_preset(composite, expected):
    params = LRP(composite).params()
    assert params == expected and json.loads(json.dumps(params)) == expected
    assert get_method(composite.name, **params).params() == expected


def test_params_describe_user_maps_and_custom_composites():
    composite = Composite(dense=rules.Epsilon(), conv=ZPlus(), names={"fc": Pass()},
                          types={nn.Softmax: Pass()})
    params = composite.params()
    json.dumps(params)
    assert params["names"] == {"fc": "Pass()"} and params["types"] == {"Softmax": "Pass()"}
    assert params["conv"] == "ZPlus()" and params["first"] == "None"
