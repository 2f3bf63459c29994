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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from spray._checks import check_real
from spray.clarc.finetune import Annotation, FinetuningCorrector, Objective
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

    After :meth:`fit`: ``model_`` (the best epoch's weights; epoch 0 is the model as it was), ``history_``
    (with ``val_worst_group`` per epoch), ``best_epoch_``, ``q_`` (the final group weights), ``groups_``
    (the groups' sizes).
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

    def objective(self, artifact: Any) -> Objective:
        check_real(self.eta, "eta", minimum=0.0)
        if not 0.0 < self.fraction <= 1.0:
            raise BadInputError(f"fraction must be in (0, 1], got {self.fraction!r}")
        inferred, transform = self.inferred_, self.transform_
        n_groups = inferred.n_counterfactual if transform is not None else len(inferred.names)
        self.objective_ = GroupDROObjective(inferred, GroupWeights(n_groups, self.eta), transform, self.fraction,
                                            self.start_)
        return self.objective_  # type: ignore[return-value]

    def fit(self, model: nn.Module, dataset: Dataset, artifact: Any, *, checkpoint_dir: str | Path | None = None,
            overwrite: bool = False, progress: bool = True,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None,
            annotate: Annotation | None = None) -> GroupDRO:
        """Fine-tune a copy of ``model`` on the fit part of ``dataset``; keep its best validation epoch."""
        inferred = infer_groups(labels_of(dataset), artifact.label, artifact.artifact_index)
        check_group_sizes(inferred, MIN_GROUP, "GroupDRO")
        fit, self.val_ = inferred.split(self.validation, self.seed)
        self.inferred_, self.dataset_ = inferred, dataset
        self.transform_ = artifact_transform(artifact, dataset, self.kind, model) if self.counterfactual else None
        self.start_ = (model, self.score(model))
        part = Subset(GroupCoded(dataset, inferred), fit.tolist())  # Python ints: a dataset may need them
        super().fit(model, part, artifact, checkpoint_dir=checkpoint_dir, overwrite=overwrite, progress=progress,
                    on_epoch=on_epoch, annotate=annotate)
        best = self.objective_
        self.best_epoch_ = int(best.best_epoch)
        self.model_.load_state_dict(best.best.state_dict())
        self.q_ = best.weights.q.clone()
        self.groups_ = dict(zip(inferred.names, map(int, inferred.sizes)))
        return self

    def epoch_figures(self, epoch: int, model: nn.Module) -> dict[str, float]:
        """The worst validation group's accuracy after ``epoch``; a better epoch's weights are kept."""
        score = self.score(model)
        self.objective_.keep_if_better(epoch, score, model)
        return {"val_worst_group": score}

    def score(self, model: nn.Module) -> float:
        """The worst validation group's accuracy (counterfactual groups included when used)."""
        transforms = () if self.transform_ is None else (self.transform_,)
        return worst_group_accuracy(model, self.dataset_, self.val_, self.inferred_, *transforms)


class GroupDROObjective(nn.Module):
    """The per-batch GroupDRO loss over (x, group-coded y) batches (:class:`GroupCoded`). Its state, saved
    with every checkpoint: the group weights ``weights.q`` and the best epoch so far (``best_epoch``,
    ``best_score``, its weights in the submodule ``best``; epoch 0: the model as it was, ``start``)."""

    def __init__(self, inferred: InferredGroups, weights: GroupWeights, transform: Callable[[Tensor], Tensor] | None,
                 fraction: float, start: tuple[nn.Module, float]) -> None:
        super().__init__()
        self.K, self.G, self.label = int(inferred.labels.max()) + 1, len(inferred.names), inferred.label
        self.weights, self.transform, self.fraction = weights, transform, fraction
        self.best = copy.deepcopy(start[0]).eval().requires_grad_(False)
        self.register_buffer("best_epoch", torch.tensor(0))
        self.register_buffer("best_score", torch.tensor(start[1], dtype=torch.float64))

    def forward(self, model: nn.Module, x: Tensor, code: Tensor, generator: torch.Generator) -> Tensor:
        y, g = code % self.K, code // self.K
        if self.transform is not None:
            chosen = (y != self.label) & (torch.rand(len(y), generator=generator) < self.fraction)
            x = torch.where(chosen.reshape(-1, *[1] * (x.dim() - 1)), self.transform(x), x)
            g = torch.where(chosen, g + self.G - 2, g)
        return self.weights(F.cross_entropy(model(x), y, reduction="none"), g)

    @torch.no_grad()
    def keep_if_better(self, epoch: int, score: float, model: nn.Module) -> None:
        """Keep ``model``'s weights as the best if ``score`` beats the best so far (ties keep the earlier)."""
        if score > float(self.best_score):
            self.best.load_state_dict(model.state_dict())
            self.best_epoch.fill_(epoch)
            self.best_score.fill_(score)
