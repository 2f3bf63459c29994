"""The demo CNN: documented layer names, seeded construction; the factories open as sources.

The training loop is tests/test_training.py; whether the demo's recipe makes a Clever Hans (and a control
model does not) is tests/test_workflow.py.
"""

from __future__ import annotations

import torch

from spray.data import open_source
from spray.demo import FEATURE_LAYER, LAST_CONV, build_model


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
