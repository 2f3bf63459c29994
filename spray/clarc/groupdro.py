"""GroupDRO (Sagawa, Koh, Hashimoto & Liang 2020) fine-tuning on spray's inferred groups.

The loss is the worst-case mixture of the groups' losses, found online: per batch, with ``ℓ_g`` the mean
cross-entropy of group ``g``'s samples in the batch (0 for a group absent from it), the group weights
follow the paper's exponentiated-gradient step (its Algorithm 1)

    q_g ← q_g · exp(η ℓ_g),  q ← q / Σ_g q_g,  loss = Σ_g q_g ℓ_g,

so a group the model keeps failing gains weight. The groups are spray's (spray.clarc.groups: the flagged
cluster, the rest of its class, each other class, GEORGE's protocol of cluster-then-GroupDRO) and, by
default, the counterfactual ones: a sample of another class gets the artifact with probability
``fraction`` during training and then counts in its class's counterfactual group. As the paper stresses,
GroupDRO needs strong regularisation to do better than ERM on the worst group: weight decay
(``weight_decay``) and early stopping, here by the worst group's accuracy on a validation part of every
group, held out from the fine-tuning (the epoch with the best score is kept; epoch 0 is the model as it
was). The weights ``q`` are the objective's state and are checkpointed with the model, so a run resumes
exactly (spray.clarc.finetune).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from spray._checks import check_real
from spray.clarc.finetune import FinetuningCorrector
from spray.clarc.groups import (VALIDATION, InferredGroups, check_group_sizes, infer_groups, labels_of,
                                worst_group_accuracy)
from spray.clarc.transform import artifact_transform
from spray.errors import BadInputError

EPOCHS = 10
LR = 1e-3
WEIGHT_DECAY = 0.1
ETA = 0.01
"""The paper's group-weight step size."""
FRACTION = 0.5
MIN_GROUP = 8
"""Fewest samples per inferred group: 4 to fine-tune on and 4 to stop by (as a CAV or a DFR head)."""
BEST = "best.pt"


class GroupWeights(nn.Module):
    """The GroupDRO objective's state: ``q`` (n_groups,), uniform at the start; :meth:`forward` updates it."""

    def __init__(self, n_groups: int, eta: float = ETA) -> None:
        super().__init__()
        self.eta = eta
        self.register_buffer("q", torch.full((n_groups,), 1.0 / n_groups))

    def forward(self, losses: Tensor, groups: Tensor) -> Tensor:
        """Per-sample ``losses`` (n,) of ``groups`` (n,) -> ``Σ_g q_g ℓ_g`` after the step on ``q``."""
        n = len(self.q)
        count = torch.bincount(groups, minlength=n).to(losses.dtype)
        group_loss = torch.zeros(n, dtype=losses.dtype).index_add(0, groups, losses) / count.clamp(min=1)
        with torch.no_grad():
            q = self.q * torch.exp(self.eta * group_loss.detach())
            self.q.copy_(q / q.sum())
        return (self.q * group_loss).sum()


class GroupCoded(Dataset):
    """``dataset`` with each label replaced by ``group · K + label`` (``K``: the number of classes), so
    the fine-tuning loop's (x, y) batches carry the groups."""

    def __init__(self, dataset: Dataset, inferred: InferredGroups) -> None:
        self.dataset, self.inferred = dataset, inferred
        self.K = int(inferred.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.inferred.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.dataset[i][0], int(self.inferred.groups[i]) * self.K + int(self.inferred.labels[i])


class GroupDRO(FinetuningCorrector):
    """Fine-tune with the GroupDRO loss over the inferred (and counterfactual) groups, with weight decay
    and early stopping by the worst validation group.

    Args:
        eta: the group weights' step size.
        weight_decay: SGD's L2 weight decay.
        counterfactual: add the counterfactual groups; False is the published protocol on inferred groups.
        fraction: the probability that a sample of another class gets the artifact (counterfactual only).
        kind: the artifact's transformation (spray.clarc.transform).
        validation: the share of every group held out to stop by.
        epochs, lr, batch_size, seed, trainable, optimizer: of the fine-tuning, see spray.clarc.finetune.

    After :meth:`fit`: ``model_`` (the best epoch's weights), ``history_`` (with ``val_worst_group`` per
    epoch), ``best_epoch_``, ``q_`` (the final group weights), ``groups_`` (the groups' sizes).
    """

    name = "groupdro"

    def __init__(self, *, eta: float = ETA, weight_decay: float = WEIGHT_DECAY, counterfactual: bool = True,
                 fraction: float = FRACTION, kind: str = "auto", validation: float = VALIDATION,
                 epochs: int = EPOCHS, lr: float = LR, batch_size: int = 64, seed: int = 0,
                 trainable: str = "all", optimizer: str = "sgd") -> None:
        super().__init__(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, trainable=trainable,
                         optimizer=optimizer, weight_decay=weight_decay)
        self.eta = eta
        self.counterfactual = counterfactual
        self.fraction = fraction
        self.kind = kind
        self.validation = validation

    def method_params(self) -> dict[str, Any]:
        return {"eta": self.eta, "weight_decay": self.weight_decay, "counterfactual": self.counterfactual,
                "fraction": self.fraction, "kind": self.kind, "validation": self.validation}

    def objective(self, artifact: Any) -> GroupWeights:
        check_real(self.eta, "eta", minimum=0.0)
        if not 0.0 < self.fraction <= 1.0:
            raise BadInputError(f"fraction must be in (0, 1], got {self.fraction!r}")
        inferred, transform = self.inferred_, self.transform_
        K, G, label, fraction = int(inferred.labels.max()) + 1, len(inferred.names), inferred.label, self.fraction
        weights = self.weights_ = GroupWeights(inferred.n_counterfactual if transform is not None else G,
                                               self.eta)

        class Objective(nn.Module):
            """The per-batch GroupDRO loss; its state is ``weights.q``."""

            def __init__(self) -> None:
                super().__init__()
                self.weights = weights

            def forward(self, model: nn.Module, x: Tensor, code: Tensor, generator: torch.Generator) -> Tensor:
                y, g = code % K, code // K
                if transform is not None:
                    chosen = (y != label) & (torch.rand(len(y), generator=generator) < fraction)
                    x = torch.where(chosen.reshape(-1, *[1] * (x.dim() - 1)), transform(x), x)
                    g = torch.where(chosen, g + G - 2, g)
                return self.weights(F.cross_entropy(model(x), y, reduction="none"), g)

        return Objective()  # type: ignore[return-value]

    def fit(self, model: nn.Module, dataset: Dataset, artifact: Any, *, checkpoint_dir: str | Path | None = None,
            overwrite: bool = False, progress: bool = True,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> GroupDRO:
        """Fine-tune a copy of ``model`` on the fit part of ``dataset``; keep its best validation epoch."""
        inferred = infer_groups(labels_of(dataset), artifact.label, artifact.artifact_index)
        check_group_sizes(inferred, MIN_GROUP, "GroupDRO")
        fit, val = inferred.split(self.validation, self.seed)
        self.inferred_ = inferred
        self.transform_ = artifact_transform(artifact, dataset, self.kind) if self.counterfactual else None
        best_file = Path(checkpoint_dir) / BEST if checkpoint_dir is not None else None
        start = self.score(model, dataset, val)
        best: dict[str, Any] = {"epoch": 0, "score": start}

        def validate(epoch: int, entry: dict[str, float]) -> None:
            entry["val_worst_group"] = score = self.score(self.model_, dataset, val)
            if score > best["score"]:
                best.update(epoch=epoch, score=score, state=copy.deepcopy(self.model_.state_dict()))
                if best_file is not None:
                    _save_best(best_file, epoch, best["state"])
            if on_epoch is not None:
                on_epoch(epoch, entry)

        super().fit(model, Subset(GroupCoded(dataset, inferred), fit), artifact, checkpoint_dir=checkpoint_dir,
                    overwrite=overwrite, progress=progress, on_epoch=validate)
        scores = [start] + [h["val_worst_group"] for h in self.history_]
        self.best_epoch_ = int(np.argmax(scores))  # the first best: the earliest stop
        if self.best_epoch_ == 0:
            self.model_ = copy.deepcopy(model).eval()
        elif self.best_epoch_ < len(self.history_):
            # A resumed run found its best epoch before the interruption: that epoch's weights are on disk.
            state = best["state"] if best["epoch"] == self.best_epoch_ else _load_best(best_file, self.best_epoch_)
            self.model_.load_state_dict(state)
        self.q_ = self.weights_.q.clone()
        self.groups_ = dict(zip(inferred.names, map(int, inferred.sizes)))
        return self

    def score(self, model: nn.Module, dataset: Dataset, val: np.ndarray) -> float:
        """The worst validation group's accuracy (counterfactual groups included when used)."""
        return worst_group_accuracy(model, dataset, val, self.inferred_, self.transform_)


def _save_best(path: Path, epoch: int, state: dict[str, Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"epoch": epoch, "model": state}, tmp)
    os.replace(tmp, path)


def _load_best(path: Path | None, epoch: int) -> dict[str, Tensor]:
    """The weights of ``epoch`` from the best-epoch file; it must be that epoch's."""
    saved = torch.load(path, weights_only=True, map_location="cpu") if path is not None and path.exists() else {}
    if saved.get("epoch") != epoch:
        raise BadInputError(f"the best epoch's weights ({epoch}) are not in {path}; start the run over "
                            "with overwrite=True (--overwrite)")
    return saved["model"]
