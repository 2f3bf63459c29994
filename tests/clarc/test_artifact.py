"""The artifact model reads the rest of a class, and the dataset outside the cluster, by chunks."""

from __future__ import annotations

import numpy as np
import torch

from spray import training as training_module
from spray.clarc import artifact as artifact_module
from spray.clarc import layer_choice as layer_choice_module
from spray.clarc import transform as transform_module
from spray.clarc.activations import activations, pool, pooled_activations
from spray.clarc.artifact import isolate_artifact
from spray.clarc.transform import moments
from tests.clarc.conftest import tiny_data, tiny_model


def test_pooled_activations_by_chunks_equal_those_of_the_stacked_samples():
    data, _ = tiny_data()
    model, index = tiny_model(), np.arange(3, 70)
    x = torch.stack([data[i][0] for i in index])
    a = activations(model, "features.2", x)
    pooled, mean = pooled_activations(model, "features.2", data, index, chunk=8)
    assert torch.equal(pooled, pool(a))  # per sample: the chunks change nothing
    assert mean.shape == a.shape[1:] and mean.dtype == torch.float32
    torch.testing.assert_close(mean, a.double().mean(0).float(), rtol=0, atol=1e-7)


def test_moments_by_chunks_are_the_per_pixel_mean_and_population_deviation():
    data, _ = tiny_data()
    index = np.arange(5, 61)
    x = torch.stack([data[i][0] for i in index]).double()
    mean, deviation = moments(data, index, chunk=7)
    torch.testing.assert_close(mean, x.mean(0).float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(deviation, x.std(0, correction=0).float(), rtol=0, atol=1e-6)


def test_the_rest_of_a_large_class_is_never_stacked_whole(monkeypatch):
    # 1,288 samples in the rest of class 1: isolate_artifact (its layer choice too) and the kind rule's transplant
    # and reproduction read at most CHUNK (512) of them at once.
    data, stamped = tiny_data(n=2600)
    labels = data.tensors[1].numpy()
    rest = np.setdiff1d(np.flatnonzero(labels == 1), stamped.numpy())
    largest = []

    def recording(stack):
        def stack_samples(dataset, index):
            largest.append(len(index))
            return stack(dataset, index)
        return stack_samples

    for module in (artifact_module, transform_module, training_module, layer_choice_module):  # training: its chunks
        monkeypatch.setattr(module, "stack_samples", recording(module.stack_samples))
    model = tiny_model()
    found = isolate_artifact(model, data, stamped.numpy(), rest, label=1, reference="all")
    moved = transform_module.Transformations(found, data).moving
    aucs = transform_module.reproduction(model, found, data, {"moving": moved})
    chosen = isolate_artifact(model, data, stamped.numpy(), rest, label=1, layer="auto")
    assert len(chosen.choice.candidates) > 1
    assert len(rest) == 1288 and max(largest) == training_module.CHUNK == 512
    assert moved.sources.shape == (12, 1, 8, 8) and 0 <= aucs["moving"] <= 1
    # what the chunks computed equals the stacked computation
    x_rest = torch.stack([data[i][0] for i in rest])
    pooled, _ = pooled_activations(model, found.layer, data, rest)
    assert torch.equal(pooled, pool(activations(model, found.layer, x_rest)))
