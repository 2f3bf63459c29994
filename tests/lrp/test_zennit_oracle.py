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

import types
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

import spray.lrp as lrp
from spray import zoo
from spray.lrp.functional import Addition, Pooling
from tests.lrp.zennit_peer import imported_zennit, zennit_composite, zennit_relevance


@pytest.fixture(scope="module")
def zennit() -> Iterator[types.SimpleNamespace]:
    with imported_zennit() as z:
        yield z


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
    theirs = zennit_relevance(zennit_composite(zennit, composite, getattr(zennit, canonizer)), model, x, target)
    assert ((ours - theirs).norm() / theirs.norm()).item() <= 1e-6
