"""The evaluation's figures: group accuracies (AGA, WGA), relevance density, TCAV in the row, the table."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from spray import training as training_module
from spray.clarc.activations import activations, pool
from spray.clarc.cav import CAV
from spray.clarc.evaluate import (METRICS, _group_rows, artifact_relevance, evaluate_correction, evaluate_model,
                                  everywhere, format_metrics, group_accuracy)
from spray.clarc.localize import paste
from spray.clarc.tcav import directional_derivatives
from spray.training import CHUNK, predict
from tests.clarc.conftest import tiny_data


def test_group_accuracy_on_hand_made_predictions_gives_each_group_its_share_and_aga_wga():
    predictions = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1])
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    groups = ["0:clean", "0:clean", "1:clean", "1:clean", "0:artifact", "0:artifact", "1:artifact", "1:artifact"]
    per_group = group_accuracy(predictions, labels, groups)
    assert per_group == {"0:clean": 1.0, "1:clean": 1.0, "0:artifact": 0.5, "1:artifact": 1.0}
    rows = _group_rows(per_group)
    assert rows["average_group_accuracy"] == 0.875 and rows["worst_group_accuracy"] == 0.5
    assert _group_rows({}) == {"group_accuracy": None, "average_group_accuracy": None, "worst_group_accuracy": None}
    with pytest.raises(ValueError, match="3 predictions, 3 labels and 2 groups differ"):
        group_accuracy(predictions[:3], labels[:3], groups[:2])


def test_the_rows_hold_every_metric_groups_by_class_and_artifact_density_and_the_cost(tiny_audit):
    test = tiny_data(40, seed=1)[0]
    mask = torch.zeros(8, 8)
    mask[:3, :3] = 1.0
    patch = torch.ones(1, 8, 8)
    rows = evaluate_correction(tiny_audit.model, tiny_audit.model, label=1, patch=patch, mask=mask, clean=test,
                               layer="features.3", training_seconds=12.5, correction="pclarc")
    original, corrected = rows
    assert set(original) == {"model", "correction", *METRICS}
    assert (original["correction"], corrected["correction"]) == (None, "pclarc")
    assert list(original["group_accuracy"]) == ["0:clean", "0:artifact", "1:clean", "1:artifact"]
    x, y = test.tensors
    predicted = tiny_audit.model(x).argmax(1)
    assert original["group_accuracy"]["1:clean"] == pytest.approx(float((predicted[y == 1] == 1).float().mean()))
    assert original["worst_group_accuracy"] == min(original["group_accuracy"].values())
    # the mask covers 9 of 64 pixels: the density is the relevance share over 9/64
    assert original["relevance_density"] == pytest.approx(original["artifact_relevance"] * 64 / 9)
    assert original["tcav_layer"] == corrected["tcav_layer"] == "features.1"
    assert 0.0 <= original["tcav_score"] <= 1.0 and original["tcav_score"] == corrected["tcav_score"]
    assert (original["training_seconds"], corrected["training_seconds"]) == (None, 12.5)


def test_the_table_shows_groups_density_tcav_and_cost():
    row = {"model": "corrected", "correction": None, **dict.fromkeys(METRICS), "clean_accuracy": 0.95,
           "average_group_accuracy": 0.9, "worst_group_accuracy": 0.805, "relevance_density": 1.234,
           "tcav_score": 0.5, "tcav_magnitude": 0.012345, "training_seconds": 61.25, "fda_rank": 9}
    header, line = format_metrics([row]).splitlines()
    assert header.split() == ["model", "clean", "acc", "poisoned", "acc", "everywhere", "acc", "AGA", "WGA",
                              "artifact", "rel.", "density", "TCAV", "|dd|", "FDA", "rank", "cost"]
    assert line.split() == ["corrected", "95.0%", "-", "-", "90.0%", "80.5%", "-", "1.23x", "50.0%", "0.0123", "9",
                            "61.2s"]
    shipped = format_metrics([{**row, "correction": "auto: aclarc/local, refit on all the data"}]).splitlines()[1]
    assert shipped.split("  ")[0] == "corrected (auto: aclarc/local, refit on all the data)"
    assert shipped.split()[8:] == line.split()[1:]


def test_tcav_is_not_measured_where_the_artifact_leaves_the_layer_unchanged(tiny_audit):
    test = tiny_data(40, seed=1)[0]
    rows = evaluate_correction(tiny_audit.model, tiny_audit.model, label=1, patch=torch.ones(1, 8, 8),
                               mask=torch.zeros(8, 8), clean=test, layer="features.3")
    assert rows[0]["tcav_layer"] == "features.1" and rows[0]["tcav_score"] is None
    assert rows[0]["relevance_density"] is None  # an empty mask has no area


def test_a_large_test_set_is_read_by_chunks_with_the_figures_of_the_stacked_one(tiny_audit, monkeypatch):
    # 1,300 test images: the accuracies, the relevance share and TCAV read at most CHUNK (512) of them at a time
    # (the artifact pasted as each is read), with the figures computed on the whole stacked set.
    test = tiny_data(1300, seed=2)[0]
    mask = torch.zeros(8, 8)
    mask[:3, :3] = 1.0
    patch = torch.ones(1, 8, 8)
    largest = []

    def stack_samples(dataset, index):
        largest.append(len(index))
        return stack(dataset, index)

    stack = training_module.stack_samples
    monkeypatch.setattr(training_module, "stack_samples", stack_samples)
    model = tiny_audit.model
    row = evaluate_model(model, clean=test, patch=patch, mask=mask, label=1, tcav_at="features.1")
    assert max(largest) == CHUNK == 512
    x, y = test.tensors
    stamped = paste(x, patch, mask)
    assert torch.equal(torch.stack([everywhere(test, patch, mask)[i][0] for i in range(len(y))]), stamped)
    assert row["clean_accuracy"] == float((predict(model, x) == y).float().mean())
    assert row["everywhere_accuracy"] == float((predict(model, stamped) == y).float().mean())
    assert row["artifact_relevance"] == pytest.approx(
        artifact_relevance(model, TensorDataset(stamped, y), mask), rel=1e-6)
    cav = CAV("signal").fit(pool(activations(model, "features.1", stamped)).numpy(),
                            pool(activations(model, "features.1", x)).numpy())
    derivatives = directional_derivatives(model, "features.1", x[y == 1], torch.from_numpy(cav.direction_), 1)
    assert row["tcav_score"] == float((derivatives > 0).float().mean())
    assert row["tcav_magnitude"] == pytest.approx(float(derivatives.abs().mean()), rel=1e-6)
