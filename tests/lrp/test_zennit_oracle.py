"""zennit 0.5.1 as a peer oracle: spray's heatmaps equal zennit's on the zoo's ResNets, VGG-16-BN and
MobileNetV2.

zennit (a test-only dependency) imports torchvision, which is not installed: a stand-in ``torchvision`` in
``sys.modules`` provides what zennit touches at import, and its ``BasicBlock``/``Bottleneck`` are the zoo's
classes, so zennit's ``ResNetCanonizer`` rewrites the zoo's blocks as it would torchvision's. zennit has
no canonizer for MobileNetV2: :func:`_mobilenet_canonizer` writes its residual ``x + self.conv(x)`` and
its functional pooling as zennit's ``Sum`` and ``AdaptiveAvgPool2d`` modules, as zennit's ResNet
canonizer does for ResNets. spray needs no such per-architecture code: it traces the model.

Conventions aligned on zennit's side (docs/lrp.md, "Agreement with zennit"): biases are ignored by the
z⁺, αβ, flat and z^B rules (``zero_params='bias'``) but kept by ε on dense layers and by γ (spray's
convention); each rule gets spray's stabiliser (1e-12 guard for z⁺/αβ/flat/z^B, ε = 1e-6 for ε and γ;
zennit's ``Norm`` at sums and average pools and spray's proportional rule there 1e-12). zennit's merged
BatchNorm stays in the model as ``x / sqrt(1 + eps)`` instead of the identity, so the oracle's models use
BatchNorm ``eps = 0``.
"""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

import spray.lrp as lrp
from spray import zoo
from spray.lrp.functional import Addition, Pooling


@pytest.fixture(scope="module")
def zennit() -> Iterator[types.SimpleNamespace]:
    """zennit's composites, rules and canonizers, imported against a stand-in torchvision (removed after)."""
    torchvision = types.ModuleType("torchvision")
    torchvision.models = types.ModuleType("torchvision.models")
    torchvision.models.resnet = types.ModuleType("torchvision.models.resnet")
    torchvision.models.resnet.BasicBlock = zoo.BasicBlock
    torchvision.models.resnet.Bottleneck = zoo.Bottleneck
    torchvision.ops = types.ModuleType("torchvision.ops")
    torchvision.ops.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (nn.Module,), {})
    stand_in = {"torchvision": torchvision, "torchvision.models": torchvision.models,
                "torchvision.models.resnet": torchvision.models.resnet, "torchvision.ops": torchvision.ops}
    saved = {name: sys.modules.get(name) for name in stand_in}
    sys.modules.update(stand_in)
    try:
        from zennit import composites, rules
        from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
        from zennit.layer import Sum
        from zennit.torchvision import ResNetCanonizer
        from zennit.types import Convolution

        z = types.SimpleNamespace(composites=composites, rules=rules, Convolution=Convolution,
                                  ResNetCanonizer=ResNetCanonizer, SequentialMergeBatchNorm=SequentialMergeBatchNorm)
        z.MobileNetCanonizer = _mobilenet_canonizer(AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm,
                                                    Sum)
        yield z
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _mobilenet_canonizer(attribute: type, composite: type, merge: type, zennit_sum: type) -> Callable[[], object]:
    """zennit's canonizers for the zoo's MobileNetV2: BatchNorm merged in the Sequentials, the residual
    addition a ``Sum`` of a stack, the head's functional pooling an ``AdaptiveAvgPool2d`` module."""

    def residual(self: zoo.InvertedResidual, x: Tensor) -> Tensor:
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1)) if self.use_res_connect else self.conv(x)

    def head(self: zoo.MobileNetV2, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.canonizer_pool(self.features(x)), 1))

    def attributes(_name: str, module: nn.Module) -> dict | None:
        if isinstance(module, zoo.InvertedResidual):
            return {"forward": residual.__get__(module), "canonizer_sum": zennit_sum()}
        if isinstance(module, zoo.MobileNetV2):
            return {"forward": head.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
        return None

    return lambda: composite([merge(), attribute(attributes)])


def _zennit_composite(z: types.SimpleNamespace, name: str, canonizer: Callable) -> object:
    """zennit's composite ``name`` with spray's conventions (module docstring)."""
    common = {"canonizers": [canonizer()], "zero_params": "bias", "stabilizer": 1e-12}
    dense = (nn.Linear, z.rules.Epsilon(epsilon=1e-6))
    if name == "epsilon_plus_flat":
        return z.composites.EpsilonPlusFlat(layer_map=[dense], **common)
    if name == "epsilon_alpha2_beta1_flat":
        return z.composites.EpsilonAlpha2Beta1Flat(layer_map=[dense], **common)
    gamma = (z.Convolution, z.rules.Gamma(gamma=0.25, stabilizer=1e-6))
    return z.composites.EpsilonGammaBox(low=-3.0, high=3.0, layer_map=[dense, gamma], **common)


#: spray's proportional rule at sums and average pools with zennit's stabiliser: with spray's 1e-9 the
#: heatmaps of the MobileNetV2 differ by 6e-7 (α2β1) of their norm, with 1e-12 by 3e-15.
_PROPORTIONAL = dict.fromkeys([Addition, Pooling, nn.AdaptiveAvgPool2d], lrp.rules.Proportional(1e-12))
_SPRAY = {"epsilon_plus_flat": lrp.EpsilonPlusFlat(types=_PROPORTIONAL),
          "epsilon_alpha2_beta1_flat": lrp.EpsilonAlpha2Beta1Flat(types=_PROPORTIONAL),
          "epsilon_gamma_box": lrp.EpsilonGammaBox(-3.0, 3.0, types=_PROPORTIONAL)}


def _model(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with drawn BatchNorm statistics, ε = 0: zennit's merged BatchNorm leaves x / √(1 + ε)
    where the identity belongs (docs/lrp.md), which alone would cost 2.7e-5 of the match."""
    torch.manual_seed(0)
    return zoo.randomize_batch_norms(build(), eps=0.0).double().eval()


def _zennit_relevance(composite: object, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """zennit's relevance of ``x`` for the target logits, on a copy (zennit canonizes the model in place)."""
    with composite.context(copy.deepcopy(model)) as modified:
        inputs = x.clone().requires_grad_(True)
        output = modified(inputs)
        seed = torch.zeros_like(output).scatter_(1, target[:, None], output.gather(1, target[:, None]))
        (relevance,) = torch.autograd.grad(output, inputs, seed)
    return relevance


#: MobileNetV2's first three stages: residual blocks at both strides' ends, depthwise convolutions, ReLU6.
_MOBILE = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2]]

CASES = [
    ("resnet18", lambda: zoo.resnet18(num_classes=10), "ResNetCanonizer", name) for name in _SPRAY
] + [
    ("resnet50", lambda: zoo.resnet50(num_classes=10), "ResNetCanonizer", "epsilon_plus_flat"),
    *[("vgg16_bn", lambda: zoo.vgg16_bn(num_classes=10, pool=1, hidden=64), "SequentialMergeBatchNorm", name)
      for name in _SPRAY],
    *[("mobilenet_v2", lambda: zoo.mobilenet_v2(10, width_mult=0.5, inverted_residual_setting=_MOBILE),
       "MobileNetCanonizer", name) for name in _SPRAY],
]


@pytest.mark.parametrize(("architecture", "build", "canonizer", "composite"), CASES,
                         ids=[f"{a}-{c}" for a, _, _, c in CASES])
def test_heatmaps_equal_zennits(zennit, architecture, build, canonizer, composite):
    model = _model(build)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        target = model(x).argmax(1)
    ours, _ = lrp.LRP(_SPRAY[composite]).attribute(model, x, target)
    theirs = _zennit_relevance(_zennit_composite(zennit, composite, getattr(zennit, canonizer)), model, x, target)
    assert ((ours - theirs).norm() / theirs.norm()).item() <= 1e-6
