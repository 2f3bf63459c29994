"""The embedded demo: poisoned digits, a small CNN, its training recipe — and factories for the CLI.

``spray demo`` runs spray/demo/audit.py (train, audit, recovery of the planted samples, ClArC).

``MOD:FACTORY`` specs for ``spray attribute`` / ``spray run`` (all seeded with the default seed):
``spray.demo:build_model``, ``spray.demo:train_dataset``, ``spray.demo:clean_test_dataset``,
``spray.demo:poisoned_test_dataset``, ``spray.demo:everywhere_test_dataset``.
"""

from __future__ import annotations

from torch.utils.data import TensorDataset

from spray.demo.digits import (
    Artifact,
    PoisonedDigits,
    add_specks,
    checker_stamp,
    default_poisoned_digits,
    paste_artifact,
    poisoned_digits,
)
from spray.demo.model import FEATURE_LAYER, LAST_CONV, build_model
from spray.demo.train import BATCH_SIZE, EPOCHS, LR


def train_dataset() -> TensorDataset:
    """The demo's training split, with the stamp planted in 30% of class 8."""
    return default_poisoned_digits().as_dataset("train")


def clean_test_dataset() -> TensorDataset:
    """The test split without any stamp."""
    return default_poisoned_digits().as_dataset("clean_test")


def poisoned_test_dataset() -> TensorDataset:
    """The test split poisoned as the training split was (30% of class 8 stamped)."""
    return default_poisoned_digits().as_dataset("poisoned_test")


def everywhere_test_dataset() -> TensorDataset:
    """The test split with the stamp in every image of every class."""
    return default_poisoned_digits().as_dataset("everywhere_test")


__all__ = [
    "BATCH_SIZE",
    "EPOCHS",
    "FEATURE_LAYER",
    "LAST_CONV",
    "LR",
    "Artifact",
    "PoisonedDigits",
    "add_specks",
    "build_model",
    "checker_stamp",
    "clean_test_dataset",
    "default_poisoned_digits",
    "everywhere_test_dataset",
    "paste_artifact",
    "poisoned_digits",
    "poisoned_test_dataset",
    "train_dataset",
]
