"""The demo's small CNN: plain ``nn.Sequential`` blocks so the LRP engine can fold every BatchNorm.

Module names (``model.named_modules()``), for ``--layer`` options and ClArC::

    features.0  Conv2d(1, 16, 3, padding=1)    features.1  BatchNorm2d   features.2  ReLU   features.3  MaxPool2d(2)
    features.4  Conv2d(16, 32, 3, padding=1)   features.5  BatchNorm2d   features.6  ReLU   features.7  MaxPool2d(2)
    features.8  Conv2d(32, 64, 3, padding=1)   features.9  BatchNorm2d   features.10 ReLU   (64 × 8 × 8)
    classifier.0 AdaptiveAvgPool2d(1)  classifier.1 Flatten  classifier.2 Dropout(0.2)  classifier.3 Linear(64, n)

``LAST_CONV`` ("features.8") is the last convolution; ``FEATURE_LAYER`` ("features.10") is its ReLU, the
non-negative 64 × 8 × 8 activation ClArC fits its concept activation vector in by default.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from spray.seeding import seeded

LAST_CONV = "features.8"
FEATURE_LAYER = "features.10"


def _block(c_in: int, c_out: int, *, pool: bool) -> list[nn.Module]:
    # BatchNorm directly after its convolution, inside one Sequential: the canonizer folds the pair.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return layers + [nn.MaxPool2d(2)] if pool else layers


def build_model(num_classes: int = 10, *, in_channels: int = 1, seed: int | None = None) -> nn.Module:
    """The demo CNN for (N, ``in_channels``, H, W) inputs (32 × 32 in the demo), returning (N, num_classes).

    With ``seed`` the initial weights are drawn from that seed without touching torch's global random
    state; without it they come from the global generator, as for any torch module.
    """
    if seed is None:
        return _build(num_classes, in_channels)
    with seeded(seed):
        return _build(num_classes, in_channels)


def _build(num_classes: int, in_channels: int) -> nn.Module:
    features = nn.Sequential(
        *_block(in_channels, 16, pool=True), *_block(16, 32, pool=True), *_block(32, 64, pool=False)
    )
    classifier = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, num_classes)
    )
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))
