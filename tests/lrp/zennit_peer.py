"""zennit 0.5.1 as a peer, imported against a stand-in torchvision (tests/lrp/test_zennit_oracle.py checks
spray's heatmaps against it; tests/benchmarks/bench_lrp_peers.py times both).

zennit imports torchvision, which is not installed: the stand-in ``torchvision`` in ``sys.modules`` provides
what zennit touches at import, and its ``BasicBlock``/``Bottleneck`` are the zoo's classes, so zennit's
``ResNetCanonizer`` rewrites the zoo's blocks as it would torchvision's. zennit has no canonizer for
MobileNetV2: :func:`_mobilenet_canonizer` writes its residual ``x + self.conv(x)`` and its functional pooling
as zennit's ``Sum`` and ``AdaptiveAvgPool2d`` modules, as zennit's ResNet canonizer does for ResNets.
"""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from spray import zoo


@contextmanager
def imported_zennit() -> Iterator[types.SimpleNamespace]:
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


def zennit_composite(z: types.SimpleNamespace, name: str, canonizer: Callable) -> object:
    """zennit's composite ``name`` with spray's conventions (module docstring)."""
    common = {"canonizers": [canonizer()], "zero_params": "bias", "stabilizer": 1e-12}
    dense = (nn.Linear, z.rules.Epsilon(epsilon=1e-6))
    if name == "epsilon_plus_flat":
        return z.composites.EpsilonPlusFlat(layer_map=[dense], **common)
    if name == "epsilon_alpha2_beta1_flat":
        return z.composites.EpsilonAlpha2Beta1Flat(layer_map=[dense], **common)
    gamma = (z.Convolution, z.rules.Gamma(gamma=0.25, stabilizer=1e-6))
    return z.composites.EpsilonGammaBox(low=-3.0, high=3.0, layer_map=[dense, gamma], **common)


def zennit_relevance(composite: object, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """zennit's relevance of ``x`` for the target logits, on a copy (zennit canonizes the model in place)."""
    with composite.context(copy.deepcopy(model)) as modified:
        inputs = x.clone().requires_grad_(True)
        output = modified(inputs)
        seed = torch.zeros_like(output).scatter_(1, target[:, None], output.gather(1, target[:, None]))
        (relevance,) = torch.autograd.grad(output, inputs, seed)
    return relevance
