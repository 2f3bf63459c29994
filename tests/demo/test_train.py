"""The demo CNN and its training loop: reproducible, side-effect free; the factories open as sources.

Whether the default recipe makes a Clever Hans (and a control model does not) is tests/test_workflow.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

from spray.data import open_source
from spray.demo import (
    FEATURE_LAYER,
    LAST_CONV,
    build_model,
    clean_test_dataset,
    default_poisoned_digits,
    evaluate_accuracy,
    predict,
    train_model,
)
from spray.errors import BadInputError


def _small_train_set():
    return Subset(default_poisoned_digits().as_dataset("train"), range(128))


def _train(seed: int) -> dict[str, torch.Tensor]:
    model = build_model(seed=0)
    train_model(model, _small_train_set(), epochs=1, seed=seed, progress=False)
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
    result = train_model(model, _small_train_set(), epochs=2, batch_size=64, seed=0, progress=False)
    assert result.model is model and not model.training
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(h["loss"] > 0 and 0 <= h["accuracy"] <= 1 for h in result.history)


def test_evaluate_accuracy_restores_the_training_flag_and_predict_returns_labels():
    model = build_model(seed=0).train()
    dataset = Subset(clean_test_dataset(), range(40))
    accuracy = evaluate_accuracy(model, dataset, batch_size=16)
    assert model.training and 0.0 <= accuracy <= 1.0
    predicted, labels = predict(model, dataset)
    assert predicted.shape == labels.shape == (40,) and labels.dtype == torch.int64


def test_bad_training_arguments_are_named():
    with pytest.raises(BadInputError, match="epochs >= 1"):
        train_model(build_model(seed=0), _small_train_set(), epochs=0)


def test_documented_layer_names_exist_and_batchnorm_follows_each_conv():
    modules = dict(build_model().named_modules())
    assert isinstance(modules[LAST_CONV], torch.nn.Conv2d)
    assert isinstance(modules[FEATURE_LAYER], torch.nn.ReLU)
    features = list(modules["features"])
    for i, layer in enumerate(features):
        if isinstance(layer, torch.nn.Conv2d):
            assert isinstance(features[i + 1], torch.nn.BatchNorm2d)


def test_seeded_model_init_leaves_global_random_state_alone():
    state = torch.get_rng_state()
    a, b = build_model(seed=3), build_model(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_demo_factories_open_as_data_sources_with_label_names():
    for name in ("train_dataset", "clean_test_dataset", "poisoned_test_dataset", "everywhere_test_dataset"):
        dataset = open_source(f"spray.demo:{name}")
        x, y = dataset[0]
        assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and int(y) in range(10)
        assert dataset.label_names == [str(d) for d in range(10)]
