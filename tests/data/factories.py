"""Importable factories for the data and model tests (``tests.data.factories:NAME``)."""

from __future__ import annotations

import sys
from collections import OrderedDict

import torch
from torch import nn
from torch.utils.data import TensorDataset

from spray.zoo import vit_tiny_16


def tiny_dataset() -> TensorDataset:
    return TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def raises() -> None:
    raise RuntimeError("boom")


def not_a_dataset() -> int:
    return 3


def wrong_shape_dataset() -> TensorDataset:
    return TensorDataset(torch.zeros(4, 1, 3, 3), torch.tensor([0, 1, 0, 1]))


def vector_dataset() -> TensorDataset:
    return TensorDataset(torch.zeros(8, 4), torch.tensor([0, 1] * 4))


def vector_model() -> nn.Module:
    return nn.Linear(4, 2)


def out_of_range_dataset() -> TensorDataset:
    return TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 5, 1]))


def single_tensors() -> list:
    return [torch.zeros(1, 2, 2) for _ in range(3)]


def float_labels() -> list:
    return [(torch.zeros(1, 2, 2), 0.5)]


def with_classes() -> TensorDataset:
    dataset = tiny_dataset()
    dataset.classes = ["cat", "dog"]
    return dataset


class _Slotted:
    """A dataset that accepts no new attributes."""

    __slots__ = ()

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        return torch.zeros(3), i


def slotted() -> _Slotted:
    return _Slotted()


def empty() -> list:
    return []


def conv_model() -> nn.Module:
    """Two convolutions, global average pooling and a linear head on (1, 8, 8) inputs; 2 outputs."""
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
    return nn.Sequential(OrderedDict(
        features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=nn.Linear(6, 2),
    ))


def conv_data() -> TensorDataset:
    """40 noisy 8×8 images of 2 classes for :func:`conv_model`; 10 of class 1 carry a bright corner."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.rand(40, 1, 8, 8, generator=g) * 0.5 + 0.2 * y[:, None, None, None]
    x[torch.nonzero(y == 1).flatten()[:10], :, :3, :3] = 1.0
    return TensorDataset(x, y)


def channels_last_model() -> nn.Module:
    """:func:`conv_model`'s first convolution, then a Linear over the channels of a map permuted to
    channels-last (``mix``: (B, 8, 8, 6), ConvNeXt's layout inside a block), permuted back; 2 outputs."""
    from spray.zoo.ops import Permute

    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3, padding=1), last=Permute([0, 2, 3, 1]), mix=nn.Linear(4, 6),
        first=Permute([0, 3, 1, 2]), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
        head=nn.Linear(6, 2),
    ))


class _Block(nn.Module):
    """A convolution block on (1, 8, 8) inputs, with or without a residual addition around its second
    convolution: the same parameters (names, shapes, values) either way, another forward."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x).relu()
        out = self.conv(h)
        if self.residual:
            out = out + h
        return self.head(out.relu().mean((2, 3)))


def plain_block_model() -> nn.Module:
    """:class:`_Block` without its residual addition (for :func:`conv_data`)."""
    return _Block(residual=False)


def residual_block_model() -> nn.Module:
    """:class:`_Block` with its residual addition: :func:`plain_block_model`'s weights, another forward."""
    return _Block(residual=True)


def efficientnet_model() -> nn.Module:
    """A tiny EfficientNet-B0 (spray.zoo: its first three stages at a quarter width) on (3, 8, 8) inputs; 2
    outputs, squeeze-and-excitation gating in every block."""
    from spray.zoo import efficientnet_b0, randomize_batch_norms

    torch.manual_seed(0)
    return randomize_batch_norms(efficientnet_b0(2, stages=3, width_mult=0.25)).eval()


def rgb_conv_data() -> TensorDataset:
    """:func:`conv_data` in three channels (the bright corner in each), for :func:`efficientnet_model`."""
    x, y = conv_data().tensors
    return TensorDataset(x.repeat(1, 3, 1, 1), y)


def nan_model() -> nn.Module:
    """:func:`tiny_model` whose head weights hold a NaN: every output is NaN."""
    model = tiny_model()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    return model


def prelu_model() -> nn.Module:
    """A model with a PReLU, a layer the LRP engine has no rule for."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 2))


class _Squared(nn.Module):
    """A square written as a product in ``forward``: neither factor is a gate, so LRP has no rule for it."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten, self.fc = nn.Flatten(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.flatten(x))
        return h * h


def squared_model() -> nn.Module:
    """A model whose forward multiplies two tensors computed from the input (an operation without a rule)."""
    torch.manual_seed(0)
    return _Squared()


class _PowerMean(nn.AdaptiveAvgPool2d):
    """A custom pooling that squares the mean: it inherits average pooling's proportional rule, which
    doubles the relevance passing through a function of degree 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) ** 2


def power_mean_model() -> nn.Module:
    """A CNN for :func:`conv_data` whose :class:`_PowerMean` is mapped to a rule that creates relevance."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3, padding=1), relu=nn.ReLU(), pool=_PowerMean(1), flatten=nn.Flatten(),
        fc=nn.Linear(4, 2),
    ))


def vit_model() -> nn.Module:
    """The zoo's torchvision-layout ViT at 16 px (patch 8: four tokens and the class token), one block of
    width 8 and 2 heads, 2 classes; head and class token drawn at random (torchvision's are zero)."""
    torch.manual_seed(0)
    model = vit_tiny_16(2, image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16)
    with torch.no_grad():
        model.heads.head.weight.normal_(0.0, 0.5)
        model.class_token.normal_(0.0, 0.5)
    return model


def vit_data() -> TensorDataset:
    """40 RGB 16×16 images of 2 classes for :func:`vit_model`; 10 of class 1 carry a bright corner patch."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(40) % 2
    x = torch.rand(40, 3, 16, 16, generator=g) * 0.5 + 0.2 * y[:, None, None, None]
    x[torch.nonzero(y == 1).flatten()[:10], :, :8, :8] = 1.0
    return TensorDataset(x, y)


def int_dataset() -> TensorDataset:
    """:func:`tiny_dataset` with integer inputs (their scale is unknown to spray)."""
    return TensorDataset(torch.zeros(4, 1, 2, 2, dtype=torch.int64), torch.tensor([0, 1, 0, 1]))


def ragged_dataset() -> list:
    """Samples of two shapes: sample 1 is larger than sample 0."""
    return [(torch.zeros(1, 2, 2), 0), (torch.zeros(1, 3, 3), 1)]


def flat_output_model() -> nn.Module:
    """A model that returns one flat vector per batch instead of (batch, outputs) logits."""
    return nn.Sequential(nn.Flatten(start_dim=0))


class _DictOutput(nn.Module):
    """Hugging Face style: the logits inside a dict beside a hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_model()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.body(x), "hidden": x.flatten(1)}


def dict_output_model() -> nn.Module:
    return _DictOutput()


class _Centre(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sub_(0.5)


def input_editing_model() -> nn.Module:
    """A model whose first module subtracts a mean from its input in place."""
    torch.manual_seed(0)
    return nn.Sequential(_Centre(), nn.Flatten(), nn.Linear(4, 2))


class _EditsInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten, self.linear = nn.Flatten(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.add_(1.0)
        return self.linear(self.flatten(x))


def forward_editing_model() -> nn.Module:
    """A model whose own forward shifts its input in place before calling its children."""
    torch.manual_seed(0)
    return _EditsInForward()


def exits() -> None:
    """A factory that ends the process, as a script's main() might."""
    sys.exit(0)


class _ExitingForward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise SystemExit(3)


def exiting_forward_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), _ExitingForward())


class _ExitingSample(TensorDataset):
    """Sample 2 exits, as a transform calling exit() on a file it cannot read would."""

    def __getitem__(self, i: int):
        if i == 2:
            sys.exit("cannot read sample 2")
        return super().__getitem__(i)


def exiting_sample_dataset() -> TensorDataset:
    return _ExitingSample(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))
