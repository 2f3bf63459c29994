"""A seeded, reproducible training loop (Adam, cross-entropy) and an accuracy helper."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from spray.errors import BadInputError
from spray.seeding import seeded

# The demo's recipe (docs/demo.md has the measurements): long enough for ~95% clean accuracy, short enough
# that the model still leans on the stamp; batch 32 gives twice the steps of 64 for the same epochs.
EPOCHS = 13
BATCH_SIZE = 32
LR = 1e-3


@dataclass(frozen=True, eq=False)
class TrainResult:
    """The trained ``model`` (in eval mode) and one ``history`` entry per epoch:
    ``{"epoch", "loss" (mean cross-entropy), "accuracy" (on the training batches, dropout on), "seconds"}``."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)


def train_model(
    model: nn.Module,
    dataset: Dataset,
    *,
    epochs: int,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``dataset`` of (x, y) with Adam and cross-entropy.

    Shuffling, dropout and everything else random depend on ``seed`` only, so the same model, data and
    arguments give bit-identical weights on the same machine and torch build; torch's global random state
    is left as found. Progress goes to stderr.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise BadInputError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    history: list[dict[str, float]] = []
    with seeded(seed, deterministic=True):
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        # Cosine decay to zero over all steps: the last epochs settle instead of ending on a noisy step,
        # which otherwise moves test accuracy by several points from seed to seed.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs * len(loader))
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        bar = tqdm(
            total=epochs * len(loader), desc="training", unit="batch", file=sys.stderr, disable=not progress
        )
        with bar:
            for epoch in range(1, epochs + 1):
                start, total_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
                for x, y in loader:
                    y = torch.as_tensor(y, dtype=torch.int64)
                    optimiser.zero_grad(set_to_none=True)
                    logits = model(x)
                    loss = loss_fn(logits, y)
                    loss.backward()
                    optimiser.step()
                    schedule.step()
                    total_loss += loss.item() * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    seen += len(y)
                    bar.update()
                history.append(
                    {
                        "epoch": epoch,
                        "loss": total_loss / seen,
                        "accuracy": correct / seen,
                        "seconds": time.perf_counter() - start,
                    }
                )
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    model.eval()
    return TrainResult(model, history)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class (n,), true label (n,)) of ``model`` in eval mode; its training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        predicted, labels = [], []
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            predicted.append(model(x).argmax(1))
            labels.append(torch.as_tensor(y, dtype=torch.int64))
    finally:
        model.train(was_training)
    return torch.cat(predicted), torch.cat(labels)


def evaluate_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Fraction of ``dataset`` that ``model`` (in eval mode) classifies correctly."""
    predicted, labels = predict(model, dataset, batch_size)
    return float((predicted == labels).float().mean()) if len(labels) else float("nan")
