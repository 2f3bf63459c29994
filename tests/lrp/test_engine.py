"""The LRP engine end to end: conservation, captum agreement, batch independence, the model left as found."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LRP as CaptumLRP
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from spray.attribution.methods import get_method
from spray.errors import BadInputError, UnsupportedLayerError
from spray.lrp import (
    LRP, Epsilon, EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat, Gamma, Pass,
    UntracedModelWarning,
)
from spray.zoo import resnet18
from tests.data.factories import plain_block_model, residual_block_model

COMPOSITES = [
    Epsilon(), EpsilonPlusFlat(), EpsilonAlpha2Beta1(), EpsilonAlpha2Beta1Flat(), EpsilonGammaBox(-3.0, 3.0),
]


def _explained_logit(logits: Tensor, target: Tensor) -> Tensor:
    return logits.gather(1, target[:, None])[:, 0]


def _assert_conserved(relevance: Tensor, expected: Tensor) -> None:
    """Σ relevance per sample equals ``expected`` to 1e-5 relative (atol only for logits near zero)."""
    atol = 1e-9 * expected.abs().max()
    torch.testing.assert_close(relevance.flatten(1).sum(1), expected, rtol=1e-5, atol=atol)


@settings(max_examples=15, deadline=None)
@given(
    composite=st.sampled_from(
        [Epsilon(1e-12), EpsilonPlusFlat(1e-12), EpsilonGammaBox(-1.0, 1.0, epsilon=1e-12)]
    ),
    channels=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
    size=st.sampled_from([4, 6]),
    seed=st.integers(0, 2**16),
)
def test_bias_free_cnn_conserves_the_explained_logit(composite, channels, size, seed):
    torch.manual_seed(seed)
    c0, c1, c2 = channels
    model = nn.Sequential(
        nn.Conv2d(c0, c1, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(c2 * (size // 2) ** 2, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False),
    ).double().eval()
    x = torch.rand(3, c0, size, size, dtype=torch.float64) * 2 - 1
    target = torch.tensor([0, 1, 2])
    relevance, logits = LRP(composite).attribute(model, x, target)
    assert relevance.shape == x.shape
    _assert_conserved(relevance, _explained_logit(logits, target))


def test_alpha_beta_conserves_on_a_bias_free_net_whose_conv_sees_both_signs():
    torch.manual_seed(0)  # raw inputs: every output of the conv has positive and negative contributions
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3, bias=False)
    ).double().eval()
    x, target = torch.randn(4, 3, 10, 10, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    relevance, logits = LRP(EpsilonAlpha2Beta1(1e-12)).attribute(model, x, target)
    _assert_conserved(relevance, _explained_logit(logits, target))


# Not z⁺ or αβ: through Sum, a conv output with only negative contributions can receive relevance,
# which those rules cannot pass on.
@pytest.mark.parametrize("composite", [Epsilon(1e-12), EpsilonGammaBox(-1.0, 1.0, epsilon=1e-12)])
def test_resnet_like_net_with_sum_batchnorm_and_max_pool_conserves(bias_free_resnet, composite):
    x, target = torch.rand(3, 2, 8, 8, dtype=torch.float64) * 2 - 1, torch.tensor([2, 0, 1])
    relevance, logits = LRP(composite).attribute(bias_free_resnet, x, target)
    _assert_conserved(relevance, _explained_logit(logits, target))


class _CaptumNet(nn.Module):
    """Only layers captum's LRP supports; flattening is functional (captum has no rule for nn.Flatten)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(4, 6, 3), nn.ReLU(), nn.AvgPool2d(2)
        self.fc1, self.relu3, self.fc2 = nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(x.flatten(1))))


def test_epsilon_lrp_agrees_with_captum():
    # captum's default: ε-rule with ε = 1e-9 on z_j + ε·sign(z_j), sign(0) = 1, for Conv/Linear/pooling
    # (its max-pool ε-rule equals winner-takes-all up to ε); activations pass relevance through.
    torch.manual_seed(0)
    model = _CaptumNet().double().eval()
    x, target = torch.randn(4, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    ours, _ = LRP(Epsilon(1e-9)).attribute(model, x, target)
    theirs = CaptumLRP(model).attribute(x.clone().requires_grad_(True), target=target).detach()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("composite", COMPOSITES, ids=lambda c: c.name)
def test_a_sample_alone_gets_the_relevance_it_gets_inside_a_batch(resnet, composite):
    x, target = torch.randn(5, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    batch, logits = LRP(composite).attribute(resnet, x, target)
    alone, alone_logits = LRP(composite).attribute(resnet, x[3:4], target[3:4])
    torch.testing.assert_close(alone, batch[3:4], rtol=0, atol=1e-6)
    torch.testing.assert_close(alone_logits, logits[3:4])


def _state(model: nn.Module) -> dict:
    return {
        "tensors": {name: tensor.clone() for name, tensor in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "modules": list(model.modules()),
    }


def _assert_left_as_found(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before["tensors"].keys()
    assert all(torch.equal(after[name], tensor) for name, tensor in before["tensors"].items())
    assert [m.training for m in model.modules()] == before["training"]
    assert [p.requires_grad for p in model.parameters()] == before["requires_grad"]
    assert list(model.modules()) == before["modules"]
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("composite", COMPOSITES, ids=lambda c: c.name)
def test_model_and_input_are_left_as_found(resnet, composite):
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    expected = resnet(x)
    resnet.blocks[1].train()  # flags the engine must restore
    resnet.fc.weight.requires_grad_(False)
    x_before, before = x.clone(), _state(resnet)
    _, logits = LRP(composite).attribute(resnet, x, torch.tensor([0, 1, 2]))
    _assert_left_as_found(resnet, before)
    assert torch.equal(x, x_before) and not x.requires_grad
    torch.testing.assert_close(logits, expected)  # eval-mode logits, BatchNorm folded: equal up to rounding
    assert torch.equal(resnet.eval()(x), expected)


def test_model_is_left_as_found_when_a_layer_is_unsupported(resnet):
    model = nn.Sequential(resnet, nn.Softmax(dim=1))
    before, x = _state(model), torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(UnsupportedLayerError) as error:
        LRP(EpsilonPlusFlat()).attribute(model, x, torch.tensor([0, 1]))
    assert "'1'" in str(error.value) and "Softmax" in str(error.value) and "names=" in str(error.value)
    _assert_left_as_found(model, before)


def test_unsupported_layer_error_names_the_qualified_module_and_a_type_map_fixes_it():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.PReLU(), nn.Linear(3, 2))).double()
    x, target = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(UnsupportedLayerError, match=r"module '1\.0' of type PReLU"):
        LRP(Epsilon()).attribute(model, x, target)
    relevance, _ = LRP(Epsilon(types={nn.PReLU: Pass()})).attribute(model, x, target)
    assert relevance.shape == x.shape


def test_a_rule_mapped_to_a_layer_it_cannot_explain_is_an_unsupported_layer_error(resnet):
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(UnsupportedLayerError, match="'pool'.*AdaptiveAvgPool2d"):
        LRP(Epsilon(names={"pool": Gamma()})).attribute(resnet, x, torch.tensor([0]))


def test_input_is_not_modified_by_an_in_place_first_layer():
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 2)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    x_before = x.clone()
    relevance, _ = LRP(Epsilon()).attribute(model, x, torch.tensor([0, 1, 0]))
    assert torch.equal(x, x_before)
    assert relevance.shape == x.shape


class _Functional(nn.Module):
    """Reshapes and an in-place ReLU written in forward, between hooked modules; ``len`` defeats torch.fx."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.fc = nn.Linear(3 * 4 * 4, 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x.relu_()
        return self.fc(x.view(len(x), -1))


def test_untraceable_model_falls_back_to_hooks_with_a_warning_naming_the_call():
    torch.manual_seed(0)
    model = _Functional().double()
    x, target = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 1])
    message = (r"cannot trace the forward of _Functional at \S+test_engine.py:\d+: "
               r"`return self.fc\(x.view\(len\(x\), -1\)\)` \('len' is not supported")
    with pytest.warns(UntracedModelWarning, match=message):
        relevance, logits = LRP(EpsilonPlusFlat(1e-12)).attribute(model, x, target)
    _assert_conserved(relevance, _explained_logit(logits, target))


class _ShapeBranch(nn.Module):
    """Control flow on a shape: torch.export could trace it (specialised to the sample's shape), fx cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU()
        self.fc = nn.Linear(12, 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.conv(x))
        if y.shape[-1] > 2:
            y = F.avg_pool2d(y, 2)
        return self.fc(y.flatten(1))


class _DataBranch(_ShapeBranch):
    """Control flow on the data: neither fx nor torch.export can trace it."""

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.conv(x))
        if y.sum() > 0:
            y = F.avg_pool2d(y, 2)
        return self.fc(y.flatten(1))


@pytest.mark.parametrize(("model", "line"), [(_ShapeBranch, "if y.shape[-1] > 2:"), (_DataBranch, "if y.sum() > 0:")])
def test_shape_and_data_dependent_control_flow_fall_back_to_hooks_with_a_warning_naming_the_branch(model, line):
    torch.manual_seed(0)
    x, target = torch.rand(2, 2, 4, 4, dtype=torch.float64), torch.tensor([0, 1])
    message = (f"torch.fx cannot trace the forward of {model.__name__} at {__file__}:\\d+: `{re.escape(line)}` "
               r"\(symbolically traced variables cannot be used as inputs to control flow\); LRP falls back to "
               "hooks on its modules, which leave functional additions and BatchNorm outside nn.Sequential "
               r"unexplained \(docs/lrp.md, 'Tracing'\)$")
    with pytest.warns(UntracedModelWarning, match=message):
        relevance, logits = LRP(EpsilonPlusFlat(1e-12)).attribute(model().double(), x, target)
    # the functional average pooling between the hooked modules is routed by its gradient, which conserves
    _assert_conserved(relevance, _explained_logit(logits, target))


class _ConvThenBatchNorm(nn.Module):
    """BatchNorm after a conv whose output is also read elsewhere: not folded, explained by the ε rule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv1d(2, 3, 3, bias=False), nn.BatchNorm1d(3, affine=False)
        self.head = nn.Sequential(
            nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 2, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv(x)
        return self.head(self.bn(a) + a)


def test_unfoldable_batchnorm_is_explained_as_an_affine_layer():
    torch.manual_seed(0)
    model = _ConvThenBatchNorm().double().eval()
    model.bn.running_var.uniform_(0.5, 2.0)  # zero running mean: the BatchNorm has no offset
    x, target = torch.randn(3, 2, 7, dtype=torch.float64), torch.tensor([0, 1, 0])
    relevance, logits = LRP(Epsilon(1e-12)).attribute(model, x, target)
    _assert_conserved(relevance, _explained_logit(logits, target))


@pytest.mark.parametrize("start", ["blocks.0", "blocks.1.body.1", "blocks.1.body.2", "stem"])
def test_relevance_from_an_intermediate_module_conserves_the_initial_relevance(bias_free_resnet, start):
    # blocks.1.body.1 is a BatchNorm that is folded for the attribution: its output is still the start.
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    direction = torch.randn(1, 4, 1, 1, dtype=torch.float64)
    initial_sums = []

    def initial(activation: Tensor) -> Tensor:
        seed = activation.clamp(min=0) * direction
        initial_sums.append(seed.flatten(1).sum(1))
        return seed

    relevance = LRP(Epsilon(1e-12)).relevance(bias_free_resnet, x, start=start, initial=initial)
    assert relevance.shape == x.shape
    _assert_conserved(relevance, initial_sums[0])


def test_relevance_from_the_output_equals_attribute(resnet):
    x, target = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.tensor([2, 1, 0])
    attributed, _ = LRP(EpsilonGammaBox(-3.0, 3.0)).attribute(resnet, x, target)
    one_hot = nn.functional.one_hot(target, 3).double()
    relevance = LRP(EpsilonGammaBox(-3.0, 3.0)).relevance(resnet, x, None, lambda logits: logits * one_hot)
    torch.testing.assert_close(relevance, attributed)


def test_relevance_rejects_unknown_module_names_and_misshapen_initial_relevance(resnet):
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(BadInputError, match="'blocks.7'"):
        LRP(Epsilon()).relevance(resnet, x, start="blocks.7", initial=lambda a: a)
    with pytest.raises(BadInputError, match=r"does not have: \['fc2'\]"):
        LRP(Epsilon(names={"fc2": Pass()})).relevance(resnet, x, start=None, initial=lambda a: a)
    with pytest.raises(BadInputError, match="initial relevance has shape"):
        LRP(Epsilon()).relevance(resnet, x, start="pool", initial=lambda a: a.flatten(1))
    _assert_left_as_found(resnet, _state(resnet))


def test_attribute_rejects_targets_of_the_wrong_shape_or_range(resnet):
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(BadInputError, match="target must have shape"):
        LRP(Epsilon()).attribute(resnet, x, torch.tensor([0]))
    with pytest.raises(BadInputError, match=r"\[0, 3\)"):
        LRP(Epsilon()).attribute(resnet, x, torch.tensor([0, 3]))


def test_float32_matches_float64(resnet):
    x, target = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2])
    exact, _ = LRP(EpsilonPlusFlat()).attribute(resnet, x, target)
    single, logits = LRP(EpsilonPlusFlat()).attribute(resnet.float(), x.float(), target)
    assert single.dtype == logits.dtype == torch.float32
    torch.testing.assert_close(single.double(), exact, rtol=1e-3, atol=1e-5 * exact.abs().max())


def test_registry_builds_lrp_attributors_named_after_their_composite(resnet):
    method = get_method("epsilon_plus_flat", epsilon=1e-4)
    assert method.name == "epsilon_plus_flat" and method.params() == {"epsilon": 1e-4}
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    relevance, logits = method.attribute(resnet, x, torch.tensor([0, 1]))
    assert relevance.shape == (2, 2, 8, 8) and logits.shape == (2, 3)


def test_trace_record_names_each_module_and_operation_with_the_rule_the_composite_gives_it():
    model = resnet18(num_classes=3).eval()
    x = torch.rand(2, 3, 16, 16)
    record = LRP(EpsilonPlusFlat(names={"layer1.0.add": Pass()})).trace_record(model, x)
    rules = dict(record["rules"])
    assert record["traced"] is True
    assert [name for name, _ in record["rules"][:6]] == ["conv1", "bn1", "relu", "maxpool", "layer1.0.conv1",
                                                         "layer1.0.bn1"]
    # The first convolution is flat, later ones z+; folded BatchNorms are named after their layer; the user's
    # name map wins over the addition's proportional default; the head is epsilon.
    assert (rules["conv1"], rules["layer1.0.conv1"], rules["layer4.1.conv2"], rules["bn1"]) == (
        "Flat()", "ZPlus()", "ZPlus()", "folded into conv1")
    assert rules["layer2.0.downsample.1"] == "folded into layer2.0.downsample.0"
    assert (rules["layer1.0.add"], rules["layer1.1.add"]) == ("Pass()", "Proportional(epsilon=1e-09)")
    assert rules["fc"] == "Epsilon(epsilon=1e-06)"
    assert len(rules) == len(record["rules"])  # each module once, at its first call


def test_trace_hash_follows_the_forward_and_the_rules_not_the_weights():
    x = torch.rand(1, 1, 8, 8)
    plain, residual = plain_block_model(), residual_block_model()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), residual.state_dict().values()))
    hashes = {LRP(EpsilonPlusFlat()).trace_record(plain, x)["hash"]}
    with torch.no_grad():
        plain.conv.weight.add_(1.0)
    hashes.add(LRP(EpsilonPlusFlat()).trace_record(plain, x)["hash"])
    assert len(hashes) == 1
    assert LRP(EpsilonPlusFlat()).trace_record(residual, x)["hash"] not in hashes
    assert LRP(Epsilon()).trace_record(plain, x)["hash"] not in hashes


class _Shifted(nn.Module):
    """A linear layer, then a shift held as a plain tensor attribute (no parameter, no buffer) and a literal."""

    def __init__(self, shift: float, literal: float) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.shift = torch.full((2,), shift)
        self.literal = literal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fc(x) + self.shift) * self.literal


def test_trace_hash_follows_constants_no_state_dict_holds():
    x = torch.rand(2, 4)
    record = {(shift, literal): LRP(EpsilonPlusFlat()).trace_record(_Shifted(shift, literal), x)["hash"]
              for shift, literal in [(0.5, 2.0), (0.5, 2.0), (0.25, 2.0), (0.5, 3.0)]}
    assert len(record) == 3 and len(set(record.values())) == 3  # same constants, same hash; each change shows


def test_an_untraceable_model_records_that_it_is_untraced():
    model = _Functional().double()
    with pytest.warns(UntracedModelWarning):
        record = LRP(EpsilonPlusFlat()).trace_record(model, torch.randn(2, 2, 4, 4, dtype=torch.float64))
    assert record["traced"] is False
    assert record["rules"] == [["conv", "Flat()"], ["fc", "Epsilon(epsilon=1e-06)"]]
