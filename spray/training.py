"""Training and prediction for any classifier: a seeded training loop, one predict, one accuracy.

:func:`train_model` trains with Adam(W) and cross-entropy under a :class:`TrainingConfig` (the demo's model and
``spray run``'s ``[train]`` table both go through it); :func:`predict` and :func:`accuracy` measure a
model's decisions wherever spray does (ClArC's evaluation, the demo's checks), inside :func:`eval_mode`,
which also serves every other forward pass that must not train (activations, RR-ClArC).
:func:`stack_samples` holds some samples of a dataset as tensors; :func:`sample_chunks` reads many samples
a :data:`CHUNK` at a time, :func:`sample_sums` sums statistics of them, :func:`predict_samples` predicts them (and
:func:`accuracy` so reads a test set).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from spray._checks import check_int, check_real
from spray.errors import BadInputError
from spray.seeding import seeded


@dataclass(frozen=True)
class TrainingConfig:
    """How :func:`train_model` trains: ``epochs`` passes over the data in shuffled batches of
    ``batch_size``, Adam at learning rate ``lr`` decayed to zero (cosine), everything random drawn from
    ``seed``. ``weight_decay`` (AdamW's decoupled decay), ``warmup`` (the share of all steps over which the
    rate rises linearly before its decay), ``label_smoothing`` (of the cross-entropy) and ``shift`` (each
    training image translated by up to ``shift`` pixels per axis, drawn per image and step: :func:`shifted`)
    serve models trained from scratch on little data, such as small ViTs; at 0 they change nothing. Checked
    when made: a bad value is a ``BadInputError`` naming the parameter."""

    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    weight_decay: float = 0.0
    warmup: float = 0.0
    label_smoothing: float = 0.0
    shift: int = 0

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_real(self.lr, "lr", minimum=0.0, strict=True)
        check_int(self.seed, "seed")
        for name in ("weight_decay", "warmup", "label_smoothing"):
            if not check_real(getattr(self, name), name, minimum=0.0) < 1.0:
                raise BadInputError(f"{name} must be < 1, got {getattr(self, name)}")
        check_int(self.shift, "shift", minimum=0)


@dataclass(frozen=True, eq=False)
class TrainResult:
    """The trained ``model`` (in eval mode) and one ``history`` entry per epoch:
    ``{"epoch", "loss" (mean cross-entropy), "accuracy" (on the training batches, dropout on), "seconds"}``."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)


def train_model(model: nn.Module, data: Dataset, config: TrainingConfig, *, progress: bool = True) -> TrainResult:
    """Train ``model`` in place on ``data`` of (x, y) with Adam and cross-entropy, as ``config`` says.

    Shuffling, shifts, dropout and everything else random depend on ``config.seed`` only, so the same model, data
    and config give bit-identical weights on the same machine and torch build; torch's global random state
    is left as found. Progress goes to stderr.
    """
    history: list[dict[str, float]] = []
    with seeded(config.seed, deterministic=True):
        generator = torch.Generator().manual_seed(config.seed)
        loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, generator=generator)
        # AdamW without decay is Adam, step for step.
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        # Cosine decay to zero over all steps: the last epochs settle instead of ending on a noisy step,
        # which otherwise moves test accuracy by several points from seed to seed.
        steps = config.epochs * len(loader)
        warmup = round(config.warmup * steps)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps - warmup)
        if warmup:
            rise = torch.optim.lr_scheduler.LinearLR(optimiser, start_factor=1 / warmup, total_iters=warmup)
            schedule = torch.optim.lr_scheduler.SequentialLR(optimiser, [rise, schedule], milestones=[warmup])
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        model.train()
        bar = tqdm(
            total=config.epochs * len(loader), desc="training", unit="batch", file=sys.stderr,
            disable=not progress,
        )
        with bar:
            for epoch in range(1, config.epochs + 1):
                start, total_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
                for x, y in loader:
                    y = torch.as_tensor(y, dtype=torch.int64)
                    optimiser.zero_grad(set_to_none=True)
                    logits = model(shifted(x, config.shift, generator) if config.shift else x)
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


def shifted(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Images ``x`` (n, C, H, W), each translated by its own offsets of -``shift`` to ``shift`` pixels per axis
    (drawn from ``generator``), the uncovered border zero: the padded random crop of He et al. (CVPR 2016, §4.2).
    A planted artifact moves with its image, so it stays a shortcut at about the place it was planted."""
    if x.dim() != 4:
        raise BadInputError(f"shift translates images, so training batches must be (N, C, H, W), got shape "
                            f"{tuple(x.shape)}; train with shift 0")
    n, c, h, w = x.shape
    padded = F.pad(x, (shift,) * 4)
    rows, cols = torch.randint(0, 2 * shift + 1, (2, n, 1), generator=generator)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  (rows + torch.arange(h))[:, None, :, None], (cols + torch.arange(w))[:, None, None, :]]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in eval mode for the block; each module's own mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


CHUNK = 512
"""How many samples are read and stacked at a time where more are needed than memory may hold together (a
class, a validation part): 512 images of 3 × 224 × 224 are 308 MB as float32."""


def stack_samples(dataset: Dataset, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
    """Samples ``dataset[i]`` for ``i`` in ``indices`` as (x (k, ...) float32, y (k,) int64)."""
    xs, ys = [], []
    n = len(dataset)  # type: ignore[arg-type]
    for i in np.asarray(indices, dtype=np.int64).tolist():
        if not 0 <= i < n:
            raise BadInputError(
                f"sample index {i} is outside the dataset of {n} samples; is this the dataset the audit "
                "store was made from?"
            )
        x, y = dataset[i][:2]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def sample_chunks(dataset: Dataset, indices: np.ndarray, chunk: int = CHUNK) -> Iterator[tuple[Tensor, Tensor]]:
    """Samples ``indices`` of ``dataset`` as (x, y) stacks (:func:`stack_samples`) of ``chunk`` at a time, in
    order: many samples read without holding them together."""
    for start in range(0, len(indices), chunk):
        yield stack_samples(dataset, indices[start : start + chunk])


def sample_sums(dataset: Dataset, indices: np.ndarray, statistics: Sequence[Callable[[Tensor], Tensor]],
                chunk: int = CHUNK) -> list[Tensor]:
    """Per statistic, its float64 sum over samples ``indices``: each ``statistic(x)`` of a chunk's stack
    (:func:`sample_chunks`) summed over the stack's first axis, and the chunks' sums added."""
    sums: list[Tensor] | None = None
    for x, _ in sample_chunks(dataset, indices, chunk):
        parts = [statistic(x).sum(0, dtype=torch.float64) for statistic in statistics]
        sums = parts if sums is None else [total + part for total, part in zip(sums, parts)]
    assert sums is not None
    return sums


def predict_samples(model: nn.Module, dataset: Dataset, indices: np.ndarray,
                    transform: Callable[[Tensor], Tensor] | None = None,
                    chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """(predicted classes (k,), labels (k,)) of samples ``indices`` of ``dataset``, each ``transform``-ed if
    given, read ``chunk`` samples at a time (:func:`sample_chunks`, :func:`predict`): they need not fit in
    memory together."""
    predicted, labels = [], []
    for x, y in sample_chunks(dataset, indices, chunk):
        predicted.append(predict(model, x if transform is None else transform(x)))
        labels.append(y)
    if not labels:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return torch.cat(predicted), torch.cat(labels)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted classes (n,) of ``model`` for inputs ``x`` (n, ...), run in :func:`eval_mode` in batches
    of ``batch_size``."""
    with eval_mode(model):
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, dataset: Dataset) -> float:
    """Fraction of ``dataset`` that ``model`` classifies correctly (:func:`predict_samples`: read by chunks, so
    that a test set need not fit in memory); NaN when empty."""
    predicted, labels = predict_samples(model, dataset, np.arange(len(dataset)))  # type: ignore[arg-type]
    return float((predicted == labels).float().mean()) if len(labels) else math.nan
