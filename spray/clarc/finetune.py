"""The fine-tuning loop A-ClArC and RR-ClArC share: seeded, checkpointed after each epoch, resumable.

Reproducibility: every random choice of epoch ``e`` (shuffling, the objective's own draws such as which
samples get the artifact, dropout) comes from seeds derived from ``(seed, e)`` alone, and deterministic
kernels are on. A run resumed from the checkpoint of epoch ``e`` therefore continues exactly as the
uninterrupted run would have, and the same seed gives bit-identical weights (same machine, same torch).

Checkpoint (``<checkpoint_dir>/checkpoint.pt``, written atomically after each epoch): the epoch, model and
optimiser state, history, and the run's configuration; a checkpoint of another configuration is refused
rather than silently continued. On ``KeyboardInterrupt`` the model gets the weights of the last completed
epoch back and the interrupt is re-raised. An objective that carries state across batches (GroupDRO's
group weights) is an ``nn.Module``: its ``state_dict`` is checkpointed and resumed with the model's.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from spray._checks import check_choice, check_int, check_real
from spray.clarc.activations import modules_after
from spray.data import model_hash
from spray.errors import BadInputError, DivergedError
from spray.seeding import seeded
from spray.training import stack_samples

#: ``objective(model, x, y, generator) -> scalar loss`` for one batch; ``generator`` is the epoch's
#: seeded source for any random choice the objective makes.
Objective = Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor]


class Annotation(Protocol):
    """A caller's figures of each epoch's model, ``annotation(epoch, model)``, recorded in the history (and
    checkpoint); its ``fingerprint()`` (JSON) is part of the checkpoint's configuration, and ``done(history)``
    says from those figures that the fine-tuning may stop before its last epoch (early stopping)."""

    def __call__(self, epoch: int, model: nn.Module) -> Mapping[str, float]: ...

    def fingerprint(self) -> dict[str, Any]: ...

    def done(self, history: Sequence[Mapping[str, float]]) -> bool: ...


CHECKPOINT = "checkpoint.pt"
#: What the correctors fine-tune: the modules that run after the artifact's layer, or the whole model.
TRAINABLE = ("after", "all")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class FinetuneResult:
    """The fine-tuned ``model`` (eval mode), one ``history`` entry per epoch (``epoch``, ``loss``, the
    annotation's figures, ``seconds``: the epoch's training and annotation), and ``resumed_from``: the completed
    epoch a checkpoint was resumed from (0: none)."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0


def history_seconds(history: Sequence[Mapping[str, float]], wall: float) -> float:
    """What a fine-tuning cost: its epochs' ``seconds`` as its history recorded them, each epoch once, also when a
    checkpoint was resumed or a finished run loaded (whose ``wall`` time is only the loading); ``wall``, the
    seconds the call took, where there is no history (a method that trains nothing) or an entry has no time."""
    seconds = [entry.get("seconds") for entry in history]
    return float(sum(seconds)) if seconds and None not in seconds else wall


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int, int]:
    """Seeds of epoch ``epoch``: (shuffling, the objective's generator, torch's global RNG for dropout)."""
    a, b, c = np.random.SeedSequence([seed, epoch]).generate_state(3, dtype=np.uint64)
    return int(a >> 1), int(b >> 1), int(c >> 1)


def finetune(
    model: nn.Module,
    dataset: Dataset,
    objective: Objective,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    desc: str = "fine-tuning",
    trainable: Sequence[str] | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
    annotate: Callable[[int, nn.Module], Mapping[str, float]] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    stop: Callable[[Sequence[Mapping[str, float]]], bool] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place with Adam on ``objective`` over ``dataset`` of (x, y).

    Args:
        checkpoint_dir: where ``checkpoint.pt`` lives; a checkpoint there of the same ``config`` (and
            seed, lr, batch size) is resumed, and a complete one just loaded. None: no checkpoints.
        config: JSON-serialisable description of everything else that determines the result (method,
            its parameters, the starting weights' hash); stored in the checkpoint and compared on resume.
        overwrite: discard a checkpoint of another configuration instead of refusing it.
        trainable: names of the modules to train (with their submodules); every other module is frozen:
            its parameters get no gradient and it stays in eval mode (BatchNorm statistics unchanged).
            None trains the whole model.
        optimizer: ``"adam"`` (Adam) or ``"sgd"`` (SGD with momentum 0.9).
        weight_decay: the optimiser's L2 weight decay (part of ``config`` where it matters).
        max_grad_norm: each step's gradient is scaled down to at most this Euclidean norm over the trained
            parameters (``torch.nn.utils.clip_grad_norm_``); None leaves it as it is.
        annotate: ``annotate(epoch, model)`` after each epoch returns figures (e.g. a validation score)
            added to its history entry before the checkpoint is written.
        on_epoch: called as ``on_epoch(epoch, entry)`` after each epoch's checkpoint is written.
        stop: ``stop(history)`` before each epoch, a resumed history's included: True ends the fine-tuning
            there, so an interrupted run resumed from its checkpoint stops where the uninterrupted one did.
    """
    check_int(epochs, "epochs", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    check_real(lr, "lr", minimum=0.0, strict=True)
    if max_grad_norm is not None:
        check_real(max_grad_norm, "max_grad_norm", minimum=0.0, strict=True)
    fingerprint = json.dumps({"config": config or {}, "seed": seed, "lr": lr, "batch_size": batch_size,
                              "trainable": None if trainable is None else list(trainable),
                              "optimizer": optimizer,
                              **({} if max_grad_norm is None else {"max_grad_norm": max_grad_norm})},
                             sort_keys=True, default=str)
    train_modules, frozen_modules = _split(model, trainable)
    params = list({id(p): p for m in train_modules for p in m.parameters()}.values())
    if not params:
        raise BadInputError(f"none of the modules to fine-tune ({', '.join(trainable or [])}) has parameters")
    trained = {id(p) for p in params}
    frozen_params = [p for p in model.parameters() if id(p) not in trained]
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    check_real(weight_decay, "weight_decay", minimum=0.0)
    optimiser = (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam"
                 else torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay))
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    history: list[dict[str, float]] = []
    state = objective if isinstance(objective, nn.Module) else None
    start = _resume(path, fingerprint, epochs, overwrite, model, optimiser, history, state)
    good = copy.deepcopy(model.state_dict())

    n_batches = -(-len(dataset) // batch_size)  # type: ignore[arg-type]
    bar = tqdm(total=epochs * n_batches, initial=start * n_batches, desc=desc, unit="batch", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    grad_flags = [(p, p.requires_grad) for p in frozen_params]
    for p in frozen_params:
        p.requires_grad_(False)
    try:
        with bar, seeded(deterministic=True):
            for epoch in range(start + 1, epochs + 1):
                if stop is not None and history and stop(history):
                    bar.total = bar.n  # stopped early: the bar ends full
                    bar.refresh()
                    break
                shuffle_seed, objective_seed, global_seed = epoch_seeds(seed, epoch)
                torch.manual_seed(global_seed)
                generator = torch.Generator().manual_seed(objective_seed)
                loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                    generator=torch.Generator().manual_seed(shuffle_seed))
                tick, total, seen = time.perf_counter(), 0.0, 0
                model.train()
                for module in frozen_modules:
                    module.eval()
                for x, y in loader:
                    y = torch.as_tensor(y, dtype=torch.int64)
                    optimiser.zero_grad(set_to_none=True)
                    loss = objective(model, x, y, generator)
                    if not torch.isfinite(loss):
                        raise DivergedError(
                            f"the fine-tuning loss became {loss.item()} in epoch {epoch}; lower lr or lambda"
                        )
                    loss.backward()
                    if max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    optimiser.step()
                    total += float(loss.detach()) * len(y)
                    seen += len(y)
                    bar.update()
                entry: dict[str, float] = {"epoch": epoch, "loss": total / max(seen, 1)}
                if annotate is not None:
                    entry.update(annotate(epoch, model))
                entry["seconds"] = time.perf_counter() - tick  # the epoch's training and its annotation
                history.append(entry)
                good = copy.deepcopy(model.state_dict())
                if path is not None:
                    _save(path, epoch, fingerprint, model, optimiser, history, state)
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
                if on_epoch is not None:
                    on_epoch(epoch, entry)
    except KeyboardInterrupt:
        model.load_state_dict(good)
        raise
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        model.eval()
    return FinetuneResult(model, history, start)


def _split(model: nn.Module, trainable: Sequence[str] | None) -> tuple[list[nn.Module], list[nn.Module]]:
    """(modules to train, leaf modules to freeze) for the ``trainable`` module names."""
    if trainable is None:
        return [model], []
    modules = dict(model.named_modules())
    unknown = [name for name in trainable if name not in modules]
    if unknown:
        raise BadInputError(f"modules {unknown} to fine-tune are not in the model; use names from "
                            "model.named_modules()")
    prefixes = tuple(f"{name}." for name in trainable if name)
    frozen = [m for name, m in modules.items()
              if next(m.children(), None) is None and name not in trainable and not name.startswith(prefixes)]
    return [modules[name] for name in trainable], frozen


def _resume(path: Path | None, fingerprint: str, epochs: int, overwrite: bool, model: nn.Module,
            optimiser: torch.optim.Optimizer, history: list[dict[str, float]], objective: nn.Module | None) -> int:
    """Load a matching checkpoint into model, optimiser (and a stateful objective); returns its completed
    epoch (0: none)."""
    if path is None or not path.exists():
        return 0
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        same = checkpoint["fingerprint"] == fingerprint
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise BadInputError(f"cannot read the checkpoint {path} ({exc}); delete it to start over") from None
    if not same or checkpoint["epoch"] > epochs:
        if overwrite:
            path.unlink()
            return 0
        why = ("another configuration" if not same
               else f"{checkpoint['epoch']} epochs, more than the {epochs} asked")
        raise BadInputError(
            f"{path} is a checkpoint of {why}; use another output directory, delete it, or pass "
            "overwrite=True (--overwrite) to start over"
        )
    model.load_state_dict(checkpoint["model"])
    optimiser.load_state_dict(checkpoint["optimizer"])
    if objective is not None:
        objective.load_state_dict(checkpoint["objective"])
    history.extend(json.loads(checkpoint["history"]))
    return int(checkpoint["epoch"])


def _save(path: Path, epoch: int, fingerprint: str, model: nn.Module, optimiser: torch.optim.Optimizer,
          history: list[dict[str, float]], objective: nn.Module | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"epoch": epoch, "fingerprint": fingerprint, "model": model.state_dict(),
                "optimizer": optimiser.state_dict(), "history": json.dumps(history),
                **({} if objective is None else {"objective": objective.state_dict()})}, tmp)
    os.replace(tmp, path)  # a kill during the write leaves the previous checkpoint intact


class FinetuningCorrector:
    """Base of the correctors that fine-tune (A-ClArC, RR-ClArC): parameters in ``__init__``, the work in
    :meth:`fit`, the result in ``model_`` (a corrected copy; the input model is untouched) and ``history_``.

    Subclasses set ``name`` and implement :meth:`objective` and :meth:`method_params`.
    """

    name = "finetuning"

    def __init__(self, *, epochs: int, lr: float, batch_size: int = 64, seed: int = 0,
                 trainable: str = "after", optimizer: str = "adam", weight_decay: float = 0.0,
                 max_grad_norm: float | None = None) -> None:
        self.epochs = epochs
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.trainable = trainable
        self.optimizer = optimizer

    def method_params(self) -> dict[str, Any]:
        """The method's own parameters (JSON), besides epochs, lr, batch size and seed."""
        raise NotImplementedError

    def objective(self, artifact: Any) -> Objective:
        """The per-batch loss for ``artifact`` (an :class:`~spray.clarc.artifact.ArtifactModel`)."""
        raise NotImplementedError

    def epoch_figures(self, epoch: int, model: nn.Module) -> dict[str, float]:
        """Figures recorded with each epoch's history entry (and checkpoint); none by default."""
        return {}

    def params(self) -> dict[str, Any]:
        return {**self.method_params(), "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "seed": self.seed, "trainable": self.trainable, "optimizer": self.optimizer}

    def fit(self, model: nn.Module, dataset: Dataset, artifact: Any, *, checkpoint_dir: str | Path | None = None,
            overwrite: bool = False, progress: bool = True,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None,
            annotate: Annotation | None = None) -> FinetuningCorrector:
        """Fine-tune a copy of ``model`` on ``dataset`` (the audited, attributed training data); ``annotate``
        adds the caller's figures of each epoch's model to its history entry (spray.clarc.finetune.finetune),
        after the corrector's own (:meth:`epoch_figures`), and stops the fine-tuning when it is ``done``."""
        check_choice(self.trainable, "trainable", TRAINABLE)
        corrected = copy.deepcopy(model)
        modules = None
        if self.trainable == "after":
            x, _ = stack_samples(dataset, [0])
            modules = modules_after(corrected, artifact.layer, x)
            if not modules:
                raise BadInputError(f"no module runs after layer {artifact.layer!r}; use trainable='all'")
        # the transformation that adds the artifact to other classes (A-ClArC, GroupDRO), made in their fit
        transform = getattr(self, "transform_", None)
        config = {"method": self.name, "params": self.method_params(), "artifact": artifact.fingerprint(),
                  "start": model_hash(model),
                  **({} if transform is None else {"transform": transform.fingerprint()}),
                  # a checkpoint without the caller's figures of its epochs, or with others, cannot give them
                  **({} if annotate is None else {"annotated": annotate.fingerprint()})}
        result = finetune(
            corrected, dataset, self.objective(artifact), epochs=self.epochs, lr=self.lr,
            batch_size=self.batch_size, seed=self.seed, checkpoint_dir=checkpoint_dir, config=config,
            overwrite=overwrite, progress=progress, desc=self.name, trainable=modules,
            optimizer=self.optimizer, weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
            annotate=self.epoch_figures if annotate is None else
            lambda epoch, m: {**self.epoch_figures(epoch, m), **annotate(epoch, m)},
            on_epoch=on_epoch, stop=None if annotate is None else annotate.done,
        )
        self.model_, self.history_, self.resumed_from_ = result.model, result.history, result.resumed_from
        return self
