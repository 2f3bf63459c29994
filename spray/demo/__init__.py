"""The embedded default audit: poisoned digits, a small CNN and its training (docs/demo.md).

Everything here is deterministic for a given seed and needs no download. The zero-argument factories are
meant for the command line::

    spray attribute --model spray.demo:trained_model --data spray.demo:train_dataset --store demo.h5

``build_model`` builds an untrained network (pair it with ``--weights``); ``trained_model`` trains the
demo network with the default recipe (a few seconds on 2 CPU cores) and returns it.
"""

from __future__ import annotations

from functools import lru_cache

from torch import nn
from torch.utils.data import TensorDataset

from spray.demo.digits import (
    DEFAULT_SEED,
    Artifact,
    PoisonedDigits,
    SplitArrays,
    add_specks,
    checker_stamp,
    default_poisoned_digits,
    paste_artifact,
    poisoned_digits,
)
from spray.demo.model import FEATURE_LAYER, LAST_CONV, build_model
from spray.demo.train import TrainResult, evaluate_accuracy, predict, train_model

# The default recipe, tuned so that the stamp is demonstrably used (docs/demo.md has the measurements):
# training longer raises clean accuracy a little but learns the digit shapes well enough to lean on the
# stamp less; shorter training leaves clean accuracy below 0.93.
EPOCHS = 13
BATCH_SIZE = 32
LR = 1e-3

__all__ = [
    "BATCH_SIZE",
    "EPOCHS",
    "FEATURE_LAYER",
    "LAST_CONV",
    "LR",
    "Artifact",
    "PoisonedDigits",
    "SplitArrays",
    "TrainResult",
    "add_specks",
    "build_demo",
    "build_model",
    "checker_stamp",
    "clean_test_dataset",
    "default_poisoned_digits",
    "evaluate_accuracy",
    "everywhere_test_dataset",
    "paste_artifact",
    "poisoned_digits",
    "poisoned_test_dataset",
    "predict",
    "train_dataset",
    "train_model",
    "trained_model",
]


def build_demo(
    seed: int = DEFAULT_SEED, epochs: int = EPOCHS, *, progress: bool = True
) -> tuple[PoisonedDigits, nn.Module]:
    """The demo data for ``seed`` and the demo CNN trained on its training split (eval mode).

    The network's initial weights, the data split and the training all derive from ``seed``.
    """
    data = default_poisoned_digits(seed)
    model = build_model(seed=seed)
    train_model(
        model, data.as_dataset("train"), epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=seed,
        progress=progress,
    )
    return data, model


@lru_cache(maxsize=1)
def _trained_state() -> dict:
    _, model = build_demo()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_model() -> nn.Module:
    """The demo CNN trained with the default recipe and seed (trained once per process, then copied)."""
    model = build_model()
    model.load_state_dict(_trained_state())
    return model.eval()


def train_dataset() -> TensorDataset:
    """Training split (with the planted stamps) of the default demo data."""
    return default_poisoned_digits().as_dataset("train")


def clean_test_dataset() -> TensorDataset:
    """Test split without any stamp."""
    return default_poisoned_digits().as_dataset("clean_test")


def poisoned_test_dataset() -> TensorDataset:
    """Test split poisoned as the training split was (same class, same fraction)."""
    return default_poisoned_digits().as_dataset("poisoned_test")


def everywhere_test_dataset() -> TensorDataset:
    """Test split with the stamp pasted into every image of every class."""
    return default_poisoned_digits().as_dataset("everywhere_test")
