"""The benchmark's architectures, by name: a small Sequential CNN, a small ResNet of the model zoo's blocks and
a small ViT of the zoo's torchvision layout; docs/benchmark.md, "Architecture"."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from spray._checks import check_names
from spray.seeding import seeded
from spray.training import TrainingConfig
from spray.zoo.resnet import BasicBlock, ResNet, conv3x3
from spray.zoo.vit import VisionTransformer

if TYPE_CHECKING:
    from spray.benchmark.cases import Size


def cnn(num_classes: int = 10, channels: int = 1) -> nn.Module:
    """Two Conv–BatchNorm–ReLU–MaxPool blocks (8, 16 channels), a third without pooling (32 channels),
    flattened into one linear layer: about 22k parameters for (N, ``channels``, 28, 28) inputs (3 for the colour
    cast's RGB cases; the first convolution takes them). BatchNorm directly
    follows each convolution inside one ``nn.Sequential`` so the LRP engine folds it; ClArC's default
    layer is ``features.10``, the last ReLU (32 × 7 × 7).

    The linear layer sees where each feature is: with global average pooling instead, the same recipe
    reached 0.74 clean accuracy on the quick size (150 images per class, 6 epochs) against 0.97."""
    layers: list[nn.Module] = []
    for c_in, c_out, pool in ((channels, 8, True), (8, 16, True), (16, 32, False)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if pool else []
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, num_classes))
    return nn.Sequential(OrderedDict(features=nn.Sequential(*layers), classifier=classifier))


class SmallResNet(ResNet):
    """The model zoo's ResNet (spray.zoo.resnet: its BasicBlock and its stage builder) at the benchmark's
    28 × 28: the small-image form of He et al. (CVPR 2016, §4.2, the CIFAR-10 networks) — a 3 × 3 stem without
    stride or max pooling, three stages of ``blocks`` BasicBlocks (``widths`` channels, the second and third
    halving the map: 28, 14, 7), global average pooling, one linear layer; PyTorch's default initialisation.
    The defaults, one block per stage of 16, 32, 64 channels (the paper's widths), make a ResNet-8 of 78k
    parameters. At 8, 16, 32 channels (20k, the CNN's size) it reached 0.87 clean accuracy on a quick-size case
    (patch_fixed 30 %, development seed 0) against 0.94 at these widths (the CNN: 0.96). ClArC's default layer
    is the last block's output after its residual addition (``layer3.0``)."""

    def __init__(self, num_classes: int = 10, channels: int = 1, widths: tuple[int, int, int] = (16, 32, 64),
                 blocks: int = 1) -> None:
        nn.Module.__init__(self)  # ResNet.__init__ builds the ImageNet stem and widths; the stages are its own
        self.inplanes, self.groups, self.base_width = widths[0], 1, 64
        self.conv1 = conv3x3(channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(BasicBlock, widths[0], blocks)
        self.layer2 = self._make_layer(BasicBlock, widths[1], blocks, stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def small_vit(num_classes: int = 10, channels: int = 1) -> nn.Module:
    """The model zoo's ViT (torchvision's layout, spray.zoo.vit) at the benchmark's 28 × 28: patches of 7 × 7
    (16 tokens and the class token), 4 pre-norm blocks of 4 heads, width 64, MLP 128 (139k parameters for
    grey inputs); the patch embedding ``conv_proj`` takes ``channels`` (torchvision's takes 3), initialised as
    torchvision does. ClArC's default layer is the final LayerNorm ``encoder.ln``, tokens (17, 64) read with
    their 64 channels (spray/_layout.py). Patches of 4 × 4 (50 tokens) cost 2.5× the CPU per step, for no
    better accuracy (docs/benchmark.md, "The ViT's recipe")."""
    model = VisionTransformer(28, 7, 4, 4, 64, 128, num_classes=num_classes)
    model.conv_proj = nn.Conv2d(channels, 64, kernel_size=7, stride=7)
    nn.init.trunc_normal_(model.conv_proj.weight, std=(1 / (channels * 49)) ** 0.5)
    nn.init.zeros_(model.conv_proj.bias)
    return model


ARCHITECTURES = {"cnn": cnn, "resnet": SmallResNet, "vit": small_vit}
DEFAULT_ARCHITECTURES = ("cnn",)
"""What a grid runs on unless told: the CNN alone (``spray benchmark --architectures cnn,resnet,vit`` adds the
ResNet and the ViT)."""


@dataclass(frozen=True)
class Recipe:
    """An architecture's own training recipe, in place of the case size's (Adam at ``Size.lr`` for
    ``Size.epochs``): the fields of spray.training.TrainingConfig it sets."""

    epochs: int
    lr: float
    weight_decay: float
    warmup: float
    label_smoothing: float
    shift: int


RECIPES = {"vit": Recipe(epochs=60, lr=1e-3, weight_decay=0.05, warmup=0.1, label_smoothing=0.1, shift=2)}
"""The small-ViT-from-scratch practice (AdamW, weight decay 0.05, a linear warm-up over the first 10 % of
steps, cosine decay, label smoothing 0.1; Steiner et al., "How to train your ViT?", TMLR 2022) with random
shifts of up to 2 pixels, the augmentation that lifts it above 0.90 clean accuracy on the quick size (without
it, it fits its 1,000 training images and stops near 0.89; docs/benchmark.md, "The ViT's recipe"). The CNN
and the ResNet train with the size's."""


def training_config(architecture: str, size: Size, seed: int) -> TrainingConfig:
    """How the benchmark trains ``architecture`` on a case of ``size``: the size's recipe, or the
    architecture's own (:data:`RECIPES`) where it has one."""
    config = TrainingConfig(epochs=size.epochs, batch_size=size.batch_size, lr=size.lr, seed=seed)
    return replace(config, **asdict(RECIPES[architecture])) if architecture in RECIPES else config


def check_architectures(names: list[str]) -> tuple[str, ...]:
    """``names`` as a tuple (each once, in the order given) if each is an architecture of :data:`ARCHITECTURES`; a
    BadInputError naming the unknown ones otherwise."""
    return check_names(names, tuple(ARCHITECTURES), "architecture", "--architectures")


def build(architecture: str, seed: int, num_classes: int = 10, channels: int = 1) -> nn.Module:
    """The named architecture for ``channels``-channel inputs and ``num_classes`` classes, with initial weights
    drawn from ``seed`` (torch's global state untouched)."""
    (name,) = check_architectures([architecture])
    with seeded(seed):
        return ARCHITECTURES[name](num_classes, channels)
