"""The shared fine-tuning loop: same seed, same weights; an interrupted run resumes to the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from spray.clarc.augmentive import AClArC
from spray.clarc.finetune import CHECKPOINT, finetune
from spray.clarc.rrclarc import RRClArC
from spray.errors import BadInputError, DivergedError
from tests.clarc.conftest import OnePlace


class FakeArtifact:
    """What the correctors read from an ArtifactModel."""

    label, layer = 1, "features.3"
    direction = torch.ones(6) / 6**0.5
    basis = direction[None]
    patch = torch.ones(1, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:3, :3] = 1.0

    artifact_index = np.arange(1, 24, 2)  # tiny_data's stamped samples of class 1, and the rest of the class
    rest_index = np.arange(25, 80, 2)

    @property
    def localization(self) -> OnePlace:
        return OnePlace(self.mask, len(self.artifact_index))

    def fingerprint(self):
        return {"label": self.label, "layer": self.layer}


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


CORRECTORS = [
    lambda: AClArC(fraction=0.5, epochs=3, lr=1e-2, batch_size=16, seed=7, trainable="all"),
    lambda: RRClArC(lam=1.0, epochs=3, lr=1e-2, batch_size=16, seed=7),
]


@pytest.mark.parametrize("make", CORRECTORS, ids=["aclarc", "rrclarc"])
def test_same_seed_gives_bit_identical_weights(make, new_model, tiny_dataset):
    dataset = tiny_dataset
    a = make().fit(new_model(), dataset, FakeArtifact(), progress=False).model_
    b = make().fit(new_model(), dataset, FakeArtifact(), progress=False).model_
    assert same_weights(a, b)
    assert not same_weights(a, new_model()), "fine-tuning changed the weights"


def test_another_seed_gives_other_weights(new_model, tiny_dataset):
    dataset = tiny_dataset
    a = AClArC(epochs=1, seed=0, trainable="all").fit(new_model(), dataset, FakeArtifact(), progress=False)
    b = AClArC(epochs=1, seed=1, trainable="all").fit(new_model(), dataset, FakeArtifact(), progress=False)
    assert not same_weights(a.model_, b.model_)


@pytest.mark.parametrize("make", CORRECTORS, ids=["aclarc", "rrclarc"])
def test_interrupted_run_resumes_from_the_last_epoch_and_ends_with_the_same_weights(
    make, tmp_path, new_model, tiny_dataset
):
    dataset = tiny_dataset
    model = new_model()
    reference = make().fit(model, dataset, FakeArtifact(), checkpoint_dir=tmp_path / "a", progress=False)

    def interrupt(epoch, _entry):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make().fit(model, dataset, FakeArtifact(), checkpoint_dir=tmp_path / "b", progress=False,
                   on_epoch=interrupt)
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["epoch"] == 1
    resumed = make().fit(model, dataset, FakeArtifact(), checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from_ == 1
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3]
    assert same_weights(resumed.model_, reference.model_)


def test_keyboard_interrupt_mid_epoch_leaves_the_last_completed_epochs_weights(new_model, tiny_dataset):
    dataset = tiny_dataset
    model, snapshot = new_model(), {}
    calls = {"n": 0}

    def objective(m, x, y, generator):
        calls["n"] += 1
        if calls["n"] == 7:  # in the second epoch (5 batches per epoch)
            raise KeyboardInterrupt
        return torch.nn.functional.cross_entropy(m(x), y)

    def remember(epoch, _entry):
        snapshot.update({k: v.clone() for k, v in model.state_dict().items()})

    with pytest.raises(KeyboardInterrupt):
        finetune(model, dataset, objective, epochs=3, lr=1e-2, batch_size=16, progress=False, on_epoch=remember)
    assert all(torch.equal(model.state_dict()[k], snapshot[k]) for k in snapshot)


def test_checkpoint_of_another_configuration_is_refused_unless_overwritten(tmp_path, new_model, tiny_dataset):
    dataset = tiny_dataset
    AClArC(epochs=1, lr=1e-2).fit(new_model(), dataset, FakeArtifact(), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(BadInputError, match="another configuration.*overwrite"):
        AClArC(epochs=1, lr=5e-3).fit(new_model(), dataset, FakeArtifact(), checkpoint_dir=tmp_path,
                                      progress=False)
    AClArC(epochs=1, lr=5e-3).fit(new_model(), dataset, FakeArtifact(), checkpoint_dir=tmp_path, progress=False,
                                  overwrite=True)


def test_a_checkpoint_of_another_artifact_transformation_is_refused(tmp_path, new_model, tiny_dataset):
    # the same artifact model and parameters, but the rest of the class shifted: another pasted region
    AClArC(epochs=1, kind="local").fit(new_model(), tiny_dataset, FakeArtifact(), checkpoint_dir=tmp_path,
                                       progress=False)
    x, y = tiny_dataset.tensors
    shifted = x.clone()
    shifted[FakeArtifact.rest_index] += 0.5
    with pytest.raises(BadInputError, match="another configuration.*overwrite"):
        AClArC(epochs=1, kind="local").fit(new_model(), TensorDataset(shifted, y), FakeArtifact(),
                                           checkpoint_dir=tmp_path, progress=False)


def test_completed_run_is_loaded_not_recomputed(tmp_path, new_model, tiny_dataset):
    dataset = tiny_dataset
    first = AClArC(epochs=2).fit(new_model(), dataset, FakeArtifact(), checkpoint_dir=tmp_path, progress=False)

    def fail(*_args):
        raise AssertionError("no epoch should run")

    again = AClArC(epochs=2).fit(new_model(), dataset, FakeArtifact(), checkpoint_dir=tmp_path, progress=False,
                                 on_epoch=fail)
    assert again.resumed_from_ == 2 and same_weights(first.model_, again.model_)


class StopAfter:
    """An annotation that records each epoch's number and is done after ``epochs`` of them."""

    def __init__(self, epochs):
        self.epochs = epochs

    def __call__(self, epoch, model):
        return {"seen": float(epoch)}

    def fingerprint(self):
        return {"stop_after": self.epochs}

    def done(self, history):
        return len(history) >= self.epochs


def test_a_run_stops_when_its_annotation_is_done_and_resumes_to_the_same_stop(tmp_path, new_model, tiny_dataset):
    def make():
        return AClArC(fraction=0.5, epochs=5, lr=1e-2, batch_size=16, seed=7, trainable="all")

    model = new_model()
    stopped = make().fit(model, tiny_dataset, FakeArtifact(), checkpoint_dir=tmp_path / "a", progress=False,
                         annotate=StopAfter(2))
    assert [(h["epoch"], h["seen"]) for h in stopped.history_] == [(1, 1.0), (2, 2.0)]
    # the weights of two epochs: epoch e's draws depend on (seed, e) only
    two = AClArC(fraction=0.5, epochs=2, lr=1e-2, batch_size=16, seed=7, trainable="all")
    assert same_weights(stopped.model_, two.fit(model, tiny_dataset, FakeArtifact(), progress=False).model_)

    def interrupt(epoch, _entry):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make().fit(model, tiny_dataset, FakeArtifact(), checkpoint_dir=tmp_path / "b", progress=False,
                   annotate=StopAfter(2), on_epoch=interrupt)
    resumed = make().fit(model, tiny_dataset, FakeArtifact(), checkpoint_dir=tmp_path / "b", progress=False,
                         annotate=StopAfter(2))
    assert resumed.resumed_from_ == 1 and [h["epoch"] for h in resumed.history_] == [1, 2]
    assert same_weights(resumed.model_, stopped.model_)

    def fail(*_args):
        raise AssertionError("a stopped run resumed should run no epoch")

    again = make().fit(model, tiny_dataset, FakeArtifact(), checkpoint_dir=tmp_path / "a", progress=False,
                       annotate=StopAfter(2), on_epoch=fail)
    assert again.resumed_from_ == 2 and same_weights(again.model_, stopped.model_)


def test_default_fine_tunes_only_the_modules_after_the_layer(new_model, tiny_dataset):
    dataset = tiny_dataset
    model = new_model()
    corrected = RRClArC(lam=1.0, epochs=1, lr=1e-2).fit(model, dataset, FakeArtifact(), progress=False).model_
    before, after = model.state_dict(), corrected.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("features."))
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(p.requires_grad for p in corrected.parameters()), "requires_grad flags restored"


def test_fine_tuning_leaves_global_random_state_alone(new_model, tiny_dataset):
    dataset = tiny_dataset
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    AClArC(epochs=1).fit(new_model(), dataset, FakeArtifact(), progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_a_non_finite_loss_stops_the_fine_tuning_naming_its_epoch(new_model, tiny_dataset):
    def diverging(model, x, y, generator):
        return model(x).sum() * 0 + float("inf")

    with pytest.raises(DivergedError, match=r"^the fine-tuning loss became inf in epoch 1; lower lr or lambda$"):
        finetune(new_model(), tiny_dataset, diverging, epochs=2, lr=0.01, progress=False)


def test_a_clipped_gradient_keeps_a_steep_objective_from_diverging():
    # loss 1000 w² from w = 1: plain SGD (lr 0.01, momentum 0.9) multiplies w by about −19 a step and overflows;
    # each step's gradient clipped to norm 1 moves w by at most lr · 1 (plus momentum) and it settles near 0
    data = TensorDataset(torch.ones(4, 1), torch.zeros(4, dtype=torch.long))

    def steep(model, x, y, generator):
        return 1000 * model.weight.square().sum()

    def run(max_grad_norm):
        start = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            start.weight.fill_(1.0)
        return finetune(start, data, steep, epochs=200, lr=0.01, batch_size=4, optimizer="sgd",
                        max_grad_norm=max_grad_norm, progress=False).model

    with pytest.raises(DivergedError, match=r"^the fine-tuning loss became inf in epoch \d+; lower lr or lambda$"):
        run(None)
    assert abs(run(1.0).weight.item()) < 0.02
    with pytest.raises(BadInputError, match=r"^max_grad_norm must be > 0.0, got 0.0$"):
        run(0.0)


def test_rrclarc_clips_its_gradients_and_its_checkpoint_config_says_so():
    assert RRClArC().max_grad_norm == 1.0 and RRClArC().method_params() == {"lambda": 10.0, "max_grad_norm": 1.0}
    assert AClArC().max_grad_norm is None
