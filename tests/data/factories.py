"""Importable factories for the data and model tests (``tests.data.factories:NAME``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


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
