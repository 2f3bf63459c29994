"""GroupDRO: the group weights follow the exponentiated-gradient rule; the fine-tuning is resumable and
keeps the best validation epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spray.clarc.finetune import CHECKPOINT
from spray.clarc.groupdro import GroupDRO, GroupWeights
from spray.clarc.groups import infer_groups, worst_group_accuracy
from spray.errors import BadInputError
from tests.clarc.test_dfr import ToyArtifact, paste_spurious, spurious_set


def test_group_weights_take_the_papers_exponentiated_gradient_step():
    weights = GroupWeights(3, eta=0.5)
    losses = torch.tensor([1.0, 3.0, 2.0, 4.0])
    groups = torch.tensor([0, 0, 1, 1])  # group 2 absent: mean losses 2, 3, 0
    loss = weights(losses, groups)
    q = torch.tensor([1 / 3 * math.exp(0.5 * 2), 1 / 3 * math.exp(0.5 * 3), 1 / 3])
    q = q / q.sum()
    assert torch.allclose(weights.q, q)
    assert torch.isclose(loss, q[0] * 2 + q[1] * 3)
    weights(torch.tensor([1.0]), torch.tensor([2]))  # the next step starts from the updated q
    q2 = q * torch.tensor([1.0, 1.0, math.exp(0.5)])
    assert torch.allclose(weights.q, q2 / q2.sum())


def test_the_group_loss_gradient_is_the_q_weighted_mean():
    weights = GroupWeights(2, eta=0.0)  # η = 0: q stays uniform
    losses = torch.tensor([2.0, 4.0, 6.0], requires_grad=True)
    weights(losses, torch.tensor([0, 0, 1])).backward()
    assert torch.allclose(losses.grad, torch.tensor([0.25, 0.25, 0.5]))


def test_groupdro_with_counterfactual_groups_removes_the_shortcut_and_stops_at_the_best_epoch():
    dataset, artifact, model = spurious_set()
    test, test_artifact, _ = spurious_set(seed=1)
    inferred = infer_groups(test.tensors[1].numpy(), 1, test_artifact.artifact_index)
    every = np.arange(len(test))
    dro = GroupDRO(epochs=8, lr=0.1, weight_decay=1e-3, batch_size=32).fit(model, dataset, artifact,
                                                                          progress=False)
    scores = [h["val_worst_group"] for h in dro.history_]
    assert dro.best_epoch_ == 1 + int(np.argmax(scores))
    assert worst_group_accuracy(dro.model_, test, every, inferred, paste_spurious) > 0.85
    assert len(dro.q_) == 4 and torch.isclose(dro.q_.sum(), torch.tensor(1.0))
    assert model[1].weight[1, 0] == 2.0  # the input model is untouched


def test_groupdro_that_cannot_beat_the_start_returns_the_model_as_it_was():
    dataset, artifact, model = spurious_set()
    dro = GroupDRO(epochs=1, lr=1e-9).fit(model, dataset, artifact, progress=False)
    assert dro.best_epoch_ == 0
    assert torch.equal(dro.model_[1].weight, model[1].weight)


def test_interrupted_groupdro_resumes_to_the_same_weights_and_group_weights(tmp_path):
    dataset, artifact, model = spurious_set()
    make = lambda: GroupDRO(epochs=3, lr=0.1, batch_size=32)  # noqa: E731
    reference = make().fit(model, dataset, artifact, checkpoint_dir=tmp_path / "a", progress=False)

    def interrupt(epoch, _entry):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make().fit(model, dataset, artifact, checkpoint_dir=tmp_path / "b", progress=False, on_epoch=interrupt)
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["epoch"] == 2
    resumed = make().fit(model, dataset, artifact, checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from_ == 2
    assert torch.equal(resumed.q_, reference.q_)
    assert resumed.best_epoch_ == reference.best_epoch_
    assert [h["val_worst_group"] for h in resumed.history_] == [h["val_worst_group"] for h in reference.history_]
    assert all(torch.equal(a, b) for a, b in zip(resumed.model_.state_dict().values(),
                                                 reference.model_.state_dict().values()))


def test_a_group_too_small_for_groupdro_is_refused_naming_the_sizes():
    dataset, artifact, model = spurious_set(n=40)
    small = ToyArtifact(1, artifact.artifact_index[:5], artifact.rest_index, artifact.patch, artifact.mask)
    with pytest.raises(BadInputError, match=r"^GroupDRO needs at least 8 samples in every inferred group, got "
                                            r"1:cluster 5, 1:rest 15, 0 20;"):
        GroupDRO().fit(model, dataset, small, progress=False)
