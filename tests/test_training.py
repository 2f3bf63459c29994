"""The training loop and the prediction helpers: reproducible, side-effect free, modes restored.

Whether the demo's recipe makes a Clever Hans (and a control model does not) is tests/test_workflow.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from spray.demo import build_model, clean_test_dataset, default_poisoned_digits
from spray.errors import BadInputError
from spray.seeding import seeded
from spray.training import (TrainingConfig, accuracy, eval_mode, predict, predict_samples, shifted,
                            stack_samples, train_model)


def _small_train_set():
    return Subset(default_poisoned_digits().as_dataset("train"), range(128))


def _train(seed: int) -> dict[str, torch.Tensor]:
    model = build_model(seed=0)
    train_model(model, _small_train_set(), TrainingConfig(epochs=1, batch_size=32, lr=1e-3, seed=seed),
                progress=False)
    return model.state_dict()


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not():
    a, b, c = _train(0), _train(0), _train(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_leaves_global_random_state_and_determinism_flag_as_found():
    state, deterministic = torch.get_rng_state(), torch.are_deterministic_algorithms_enabled()
    _train(0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_train_model_reports_one_history_entry_per_epoch_and_returns_eval_mode():
    model = build_model(seed=0)
    result = train_model(model, _small_train_set(), TrainingConfig(epochs=2, batch_size=64, lr=1e-3),
                         progress=False)
    assert result.model is model and not model.training
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(h["loss"] > 0 and 0 <= h["accuracy"] <= 1 for h in result.history)


@pytest.mark.parametrize(("params", "message"), [
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"lr": 0.0}, "lr must be > 0.0, got 0.0"),
    ({"lr": float("nan")}, "lr must be a finite number, got nan"),
    ({"seed": True}, "seed must be an integer, got True"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0.0, got -0.1"),
    ({"warmup": 1.0}, "warmup must be < 1, got 1.0"),
    ({"label_smoothing": 1.5}, "label_smoothing must be < 1, got 1.5"),
    ({"shift": -1}, "shift must be >= 0, got -1"),
    ({"shift": 1.5}, "shift must be an integer, got 1.5"),
])
def test_a_bad_training_config_is_refused_naming_the_parameter(params, message):
    with pytest.raises(BadInputError, match=f"^{message}$"):
        TrainingConfig(**({"epochs": 1, "batch_size": 32, "lr": 1e-3} | params))


def test_the_defaults_train_exactly_as_plain_adam_with_cosine_decay_and_cross_entropy():
    trained = _train(0)
    model, data = build_model(seed=0), _small_train_set()
    with seeded(0, deterministic=True):  # the loop train_model ran before AdamW, warm-up, smoothing and shifts
        loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=len(loader))
        model.train()
        for x, y in loader:
            optimiser.zero_grad(set_to_none=True)
            nn.CrossEntropyLoss()(model(x), torch.as_tensor(y, dtype=torch.int64)).backward()
            optimiser.step()
            schedule.step()
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())


def test_shifted_moves_each_image_whole_by_at_most_shift_pixels_and_zero_fills():
    x = torch.zeros(400, 2, 9, 9)
    x[:, 0, 4, 4], x[:, 1, 5, 4] = 1.0, 2.0  # one pixel per channel, far enough from the border to stay
    out = shifted(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), torch.full((400,), 3.0))
    first, second = (torch.nonzero(out[:, c]) for c in (0, 1))
    assert torch.equal(second[:, 1:] - first[:, 1:], torch.tensor([1, 0]).expand(400, 2))  # channels move together
    offsets = first[:, 1:] - 4
    assert offsets.abs().max() == 2 and {tuple(o) for o in offsets.tolist()} == {(r, c) for r in range(-2, 3)
                                                                                for c in range(-2, 3)}


def test_shift_refuses_batches_that_are_not_images():
    with pytest.raises(BadInputError, match=r"^shift translates images, so training batches must be \(N, C, H, W\), "
                                            r"got shape \(8, 4\); train with shift 0$"):
        shifted(torch.zeros(8, 4), 1, torch.Generator())


def test_eval_mode_restores_each_modules_own_mode():
    model = build_model(seed=0).train()
    model.classifier.eval()  # a mixed model: eval_mode must not flatten it to one mode afterwards
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model.features.training and not model.classifier[2].training


def test_predict_batches_give_the_argmax_of_the_model_in_eval_mode():
    model = build_model(seed=0).train()
    x, y = stack_samples(clean_test_dataset(), np.arange(40))
    assert x.shape == (40, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    predicted = predict(model, x, batch_size=16)
    assert model.training  # restored
    with torch.no_grad():
        expected = model.eval()(x).argmax(1)
    torch.testing.assert_close(predicted, expected, rtol=0, atol=0)


def test_accuracy_is_the_share_predicted_right_and_nan_when_empty():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))  # predicts the larger of the two inputs
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(model, TensorDataset(x, torch.tensor([0, 1, 1, 1]))) == 0.75
    assert math.isnan(accuracy(model, TensorDataset(x[:0], torch.tensor([], dtype=torch.int64))))


def test_predict_samples_reads_by_chunks_and_transforms_each_chunk():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))  # predicts the larger of the two inputs
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [5.0, 4.0]])
    data = TensorDataset(x, torch.tensor([0, 1, 1, 1, 0]))
    seen = []

    def swap(batch):  # exchanges the two inputs, so the prediction flips
        seen.append(len(batch))
        return batch.flip(1)

    predicted, labels = predict_samples(model, data, np.array([4, 0, 3, 2]), chunk=3)
    assert predicted.tolist() == [0, 0, 1, 0] and labels.tolist() == [0, 0, 1, 1]
    predicted, labels = predict_samples(model, data, np.array([4, 0, 3, 2]), swap, chunk=3)
    assert predicted.tolist() == [1, 1, 0, 1] and seen == [3, 1]
    empty = predict_samples(model, data, np.array([], dtype=np.int64))
    assert empty[0].shape == empty[1].shape == (0,) and empty[0].dtype == torch.int64
