"""Canonisation by tracing: models as users write them are explained without being rewritten or modified."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spray.errors import BadInputError, UnsupportedLayerError
from spray.lrp import LRP, Epsilon, EpsilonPlusFlat, rules
from spray.lrp.composites import Composite
from spray.lrp.functional import Activation, Addition, Pooling, Scaling
from spray.lrp import tracing
from spray.lrp.tracing import canonize
from spray.zoo import randomize_batch_norms, resnet18


def _ratio(relevance: Tensor, logits: Tensor, target: Tensor) -> Tensor:
    """Σ input relevance / explained logit, per sample."""
    return relevance.flatten(1).sum(1) / logits.gather(1, target[:, None])[:, 0]


@pytest.fixture(scope="module")
def zoo_resnet() -> nn.Module:
    """torchvision's ResNet-18 layout (``out += identity``, in-place ReLUs, BN attributes), 10 classes, with
    non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    return randomize_batch_norms(resnet18(num_classes=10)).double().eval()


def _snapshot(model: nn.Module) -> dict:
    return {"tensors": {k: v.clone() for k, v in model.state_dict().items()},
            "modules": list(model.named_modules()), "parameters": list(model.parameters())}


def _assert_left_as_found(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before["tensors"].keys()
    assert all(torch.equal(after[k], v) for k, v in before["tensors"].items())
    assert [(n, id(m)) for n, m in model.named_modules()] == [(n, id(m)) for n, m in before["modules"]]
    assert all(a is b for a, b in zip(model.parameters(), before["parameters"], strict=True))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_zoo_resnet_accounts_for_the_logit_under_epsilon_plus_flat_with_folding_and_leaves_the_model(zoo_resnet):
    # Before tracing, this model gave Σ R / logit of median 1.95 (range -4.6 … 19.6) on real data: each
    # `out += identity` handed the whole relevance to both summands and BatchNorms in blocks were not folded.
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = zoo_resnet(x)
    target = expected.argmax(1)
    before = _snapshot(zoo_resnet)
    relevance, logits = LRP(EpsilonPlusFlat()).attribute(zoo_resnet, x, target)
    _assert_left_as_found(zoo_resnet, before)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-12)  # folding: equal to rounding
    # z⁺ ignores the folded biases; the head's ε rule lets its bias absorb its own value (and ε a share of
    # order ε / logit): Σ input relevance + absorbed = explained logit.
    absorbed = zoo_resnet.fc.bias[target]
    torch.testing.assert_close(relevance.flatten(1).sum(1) + absorbed, logits.gather(1, target[:, None])[:, 0],
                               rtol=1e-5, atol=0)


def test_bias_free_zoo_resnet_conserves_exactly_under_epsilon():
    torch.manual_seed(1)
    model = resnet18(num_classes=4)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # no shift: folded layers stay bias-free
            with torch.no_grad():
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    nn.init.zeros_(model.fc.bias)
    model = model.double().eval()
    x, target = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 3])
    relevance, logits = LRP(Epsilon(1e-12)).attribute(model, x, target)
    torch.testing.assert_close(_ratio(relevance, logits, target), torch.ones(2, dtype=torch.float64), rtol=0,
                               atol=1e-6)


def test_model_is_left_as_found_when_the_attribution_raises(zoo_resnet):
    before = _snapshot(zoo_resnet)
    with pytest.raises(BadInputError, match="initial relevance has shape"):
        LRP(EpsilonPlusFlat()).relevance(zoo_resnet, torch.randn(1, 3, 32, 32, dtype=torch.float64), "layer2",
                                         lambda a: a[0])
    _assert_left_as_found(zoo_resnet, before)


def test_relevance_starts_at_a_residual_stage_output(zoo_resnet):
    # layer3 is a container: its output is the last block's ReLU after `out += identity`.
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    seeds = []

    def initial(activation: Tensor) -> Tensor:
        seeds.append(activation)
        return activation

    LRP(Epsilon()).relevance(zoo_resnet, x, "layer3", initial)
    with torch.no_grad():
        stem = zoo_resnet.maxpool(zoo_resnet.relu(zoo_resnet.bn1(zoo_resnet.conv1(x))))
        expected = zoo_resnet.layer3(zoo_resnet.layer2(zoo_resnet.layer1(stem)))
    torch.testing.assert_close(seeds[0], expected)


class _Functional(nn.Module):
    """Every functional operation tracing gives a rule, between bias-free modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(8, 4, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu(self.conv1(x))
        b = torch.add(self.conv2(a), a)          # functional addition
        b.add_(a)                                # in-place method: later reads of b see the sum
        b = F.relu(b - 0.5 * a, inplace=True)    # difference, scaling, functional in-place ReLU
        c = torch.cat([b, a], dim=1)             # concatenation: relevance split by slices
        c = F.max_pool2d(self.conv3(c), 2) + F.avg_pool2d(a, 2)
        d = F.gelu(c / 2)
        spatial = (d.dim() - 2, d.dim() - 1)     # sizes computed in forward: passed to the traced mean
        pooled = torch.cat([d.mean(spatial), F.adaptive_avg_pool2d(d, 1).flatten(1)], 1)
        return self.fc(pooled.view(pooled.size(0), -1))


class _HandBlock(nn.Module):
    """Linear → BatchNorm1d → in-place ReLU, ``out += x``, Linear: a residual block small enough to explain by
    hand. BatchNorm (ε = 0) folds to the scale 1 and the bias (b − μ)·γ/σ + β = [0.2, 0.3]."""

    def __init__(self) -> None:
        super().__init__()
        f64 = {"dtype": torch.float64}  # the hand's decimals exactly as written
        self.lin1, self.bn = nn.Linear(2, 2, **f64), nn.BatchNorm1d(2, eps=0.0, **f64)
        self.relu, self.lin2 = nn.ReLU(inplace=True), nn.Linear(2, 1, bias=False, **f64)
        with torch.no_grad():
            f64_tensor = partial(torch.tensor, **f64)
            self.lin1.weight.copy_(f64_tensor([[1.0, -2.0], [0.5, 1.5]]))
            self.lin1.bias.copy_(f64_tensor([0.3, -0.2]))
            self.bn.weight.copy_(f64_tensor([2.0, 0.5]))
            self.bn.bias.copy_(f64_tensor([0.1, 0.4]))
            self.bn.running_mean.copy_(f64_tensor([0.2, -0.1]))
            self.bn.running_var.copy_(f64_tensor([4.0, 0.25]))
            self.lin2.weight.copy_(f64_tensor([[1.0, 2.0]]))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn(self.lin1(x)))
        out += x
        return self.lin2(out)


# x = [1, 0.5]: h = W x + [0.2, 0.3] = [0.2, 1.55] = ReLU(h); s = h + x = [1.2, 2.05]; logit 1.2 + 2 · 2.05 = 5.3.
# The output layer gives s the relevance [1.2, 4.1]; the sum splits it by contribution: to the branch
# [1.2 · 0.2 / 1.2, 4.1 · 1.55 / 2.05] = [0.2, 3.1], to the skip [1.0, 1.0].
# ε: the branch's relevance goes by x_i w_ji / h_j (bias in h): [0.2 · 1 / 0.2 + 3.1 · 0.5 / 1.55,
#    0.2 · (−1) / 0.2 + 3.1 · 0.75 / 1.55] = [2.0, 0.5], plus the skip: [3.0, 1.5]; the bias absorbs 0.8.
# z⁺: by the positive contributions (bias ignored): row 0 [1, 0] → [0.2, 0], row 1 [0.5, 0.75] → [1.24, 1.86];
#    plus the skip: [2.44, 2.86], the whole logit.
@pytest.mark.parametrize(("rule", "expected"), [(rules.Epsilon(1e-12), [3.0, 1.5]), (rules.ZPlus(), [2.44, 2.86])])
def test_residual_sum_and_folded_batchnorm_give_the_hand_computed_relevance(rule, expected):
    model = _HandBlock().eval()
    x = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    relevance, logits = LRP(Composite(dense=rule, conv=rule)).attribute(model, x, torch.tensor([0]))
    torch.testing.assert_close(logits, torch.tensor([[5.3]], dtype=torch.float64), rtol=0, atol=1e-12)
    # To the sum's stabiliser: the proportional rule divides by s + 1e-9.
    torch.testing.assert_close(relevance, torch.tensor([expected], dtype=torch.float64), rtol=0, atol=1e-8)


def test_functional_operations_get_rules_and_conserve():
    torch.manual_seed(0)
    model = _Functional().double().eval()
    x, target = torch.randn(3, 2, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2])
    traced = canonize(model, x, Epsilon(), None).module
    kinds = {name: type(m) for name, m in traced.named_modules() if type(m) in (Addition, Pooling, Scaling,
                                                                                   Activation)}
    assert kinds == {"add": Addition, "add_1": Addition, "sub": Addition, "mul": Scaling, "add_2": Addition,
                     "avg_pool2d": Pooling, "truediv": Scaling, "gelu": Activation, "mean": Pooling,
                     "adaptive_avg_pool2d": Pooling}
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    relevance, logits = LRP(Epsilon(1e-12)).attribute(model, x, target)
    # GELU passes relevance through, the constant of `0.5 * a` and the ReLU's zeros absorb none.
    torch.testing.assert_close(_ratio(relevance, logits, target), torch.ones(3, dtype=torch.float64), rtol=0,
                               atol=1e-6)


def test_traced_operations_take_rules_by_name_as_modules_do():
    torch.manual_seed(0)
    model = _Functional().double().eval()
    x, target = torch.randn(2, 2, 6, 6, dtype=torch.float64), torch.tensor([0, 1])
    default, _ = LRP(Epsilon(1e-12)).attribute(model, x, target)
    mapped, _ = LRP(Epsilon(1e-12, names={"gelu": rules.Epsilon(1e-12)})).attribute(model, x, target)
    assert not torch.allclose(default, mapped)


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        return h * torch.sigmoid(h)


class _Squared(_Gated):
    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        return h * h


def test_operation_without_rule_is_refused_naming_the_node_and_the_source_line():
    x = torch.randn(2, 4)
    with pytest.raises(UnsupportedLayerError, match=r"graph node 'mul' \(call_function mul\) at \S+test_tracing.py:"
                                                    r"\d+: `return h \* h`: LRP explains it only when one factor "
                                                    r"\(the numerator, the first argument\) depends"):
        LRP(Epsilon()).attribute(_Squared(), x, torch.tensor([0, 1]))


def test_module_mapped_by_type_is_not_traced_into():
    torch.manual_seed(0)
    model = _Gated()
    relevance, _ = LRP(Epsilon(types={_Gated: rules.Epsilon()})).attribute(
        nn.Sequential(nn.Linear(3, 4), model), torch.randn(2, 3), torch.tensor([0, 1])
    )
    assert relevance.shape == (2, 3)



def test_a_model_that_is_one_leaf_module_is_hooked_without_a_trace(recwarn):
    model = nn.Linear(3, 2, bias=False).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    assert canonize(model, x, Epsilon(), None) is None
    relevance, logits = LRP(Epsilon(1e-12)).attribute(model, x, torch.tensor([0, 1]))
    torch.testing.assert_close(relevance.sum(1), logits.diagonal())
    assert not recwarn.list


def test_attributions_in_concurrent_threads_equal_the_serial_ones():
    # fx patches torch.nn.Module.__call__ process-wide while tracing: unserialised, one thread's trace would
    # capture another thread's forward.
    torch.manual_seed(0)
    model = _Functional().double().eval()
    xs = [torch.randn(2, 2, 6, 6, dtype=torch.float64) for _ in range(8)]
    target = torch.tensor([0, 1])
    serial = [LRP(Epsilon()).attribute(model, x, target)[0] for x in xs]
    shared = LRP(Epsilon())  # one attributor and its trace, as a dask worker's threads share them
    for method in (lambda: LRP(Epsilon()), lambda: shared):
        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(lambda x: method().attribute(model, x, target)[0], xs))
        assert all(torch.equal(a, b) for a, b in zip(serial, concurrent, strict=True))


class _Scaled(nn.Module):
    """A forward that reads a plain number attribute: the trace holds its value as a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2, bias=False)
        self.factor = 2.0

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * self.factor


def test_a_model_is_traced_once_and_again_only_when_it_changed(monkeypatch):
    torch.manual_seed(0)
    model = randomize_batch_norms(resnet18(num_classes=3)).double().eval()
    x, target = torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 2])
    starts = []

    def counted(model: nn.Module, x: Tensor, composite: object, start: str | None) -> object:
        starts.append(start)
        return canonize(model, x, composite, start)

    monkeypatch.setattr(tracing, "canonize", counted)
    method = LRP(EpsilonPlusFlat())
    first, _ = method.attribute(model, x, target)
    again, _ = method.attribute(model, x, target)
    method.attribute(model, x[:1], target[:1])  # another batch size: the same trace
    method.relevance(model, x, "layer3", lambda a: a)  # another start: a trace of its own
    assert torch.equal(first, again) and starts == [None, "layer3"]
    with torch.no_grad():
        model.bn1.running_var.mul_(4.0)  # in place, as an optimizer or load_state_dict changes weights
    _, logits = method.attribute(model, x, target)
    assert starts == [None, "layer3", None]
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-12)  # the new statistics folded
    model.layer1[0].conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False).double()  # a module replaced
    method.attribute(model, x, target)
    assert starts == [None, "layer3", None, None]

    scaled, inputs = _Scaled().eval(), torch.rand(3, 4)
    method = LRP(Epsilon())
    for factor in (2.0, 3.0):
        scaled.factor = factor
        _, logits = method.attribute(scaled, inputs, torch.tensor([0, 1, 0]))
        torch.testing.assert_close(logits, scaled.fc(inputs).detach() * factor)


def test_an_attributor_travels_without_its_traces(zoo_resnet):
    method = LRP(EpsilonPlusFlat())
    method.attribute(zoo_resnet, torch.rand(1, 3, 16, 16, dtype=torch.float64), torch.tensor([1]))
    assert pickle.dumps(method) == pickle.dumps(LRP(method.composite))


def test_in_place_modules_run_out_of_place_in_the_traced_copy_only(zoo_resnet):
    traced = canonize(zoo_resnet, torch.rand(1, 3, 16, 16, dtype=torch.float64), EpsilonPlusFlat(), None)
    assert [name for name, m in traced.module.named_modules() if getattr(m, "inplace", False)] == []
    assert zoo_resnet.layer1[0].relu.inplace is True
    assert traced.module.get_submodule("layer1.0.relu") is not zoo_resnet.layer1[0].relu


@pytest.mark.parametrize("start", ["layer2.0.downsample", "layer2.0.downsample.1"])
def test_relevance_starts_at_a_folded_batchnorm_and_at_the_container_it_ends(zoo_resnet, start):
    # The folded BatchNorm's call leaves the traced graph unless it is the start; both start at its output.
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    seeds = []
    relevance = LRP(Epsilon(1e-12)).relevance(zoo_resnet, x, start, lambda a: seeds.append(a) or a)
    with torch.no_grad():
        stem = zoo_resnet.maxpool(zoo_resnet.relu(zoo_resnet.bn1(zoo_resnet.conv1(x))))
        expected = zoo_resnet.layer2[0].downsample(zoo_resnet.layer1(stem))
    torch.testing.assert_close(seeds[0], expected)
    assert relevance.shape == x.shape


def test_a_frame_whose_code_line_is_missing_is_named_without_one():
    from spray.lrp.tracing import _source

    trace = ('  File "/home/u/model.py", line 3, in forward\n    return h * g\n'
             '  File "/home/u/blocks.py", line 9, in gate\n'
             f'  File "{torch.__file__}", line 1, in impl\n    x\n')
    assert _source(trace) == " at /home/u/blocks.py:9"
