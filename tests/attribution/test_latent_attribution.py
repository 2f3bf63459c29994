"""Latent relevance as an attributor: stored beside the heatmaps as a second attribution, pooled as
documented, resumable to identical bytes, its layer and grid part of what a resumed run must repeat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spray.attribution import AttributionRun, LatentAttributor, attribute_dataset
from spray.errors import BadInputError, StoreError
from spray.lrp import LRP, EpsilonPlusFlat
from spray.store import AuditStore
from tests.attribution.test_runner import BATCH, N, _Interrupt, _interrupt_after, datasets_of, make_dataset, make_model


def _run(path, attributor, **kwargs) -> dict:
    run = AttributionRun(attributor, model_hash="h1", model_name="net", dataset_name="toy", batch_size=BATCH,
                         progress=False, **kwargs)
    return attribute_dataset(path, make_model(), make_dataset(), run)


def test_latent_relevance_is_a_second_attribution_sum_pooled_per_channel_and_cell(tmp_path):
    path = tmp_path / "audit.h5"
    lrp = LRP(EpsilonPlusFlat())
    _run(path, lrp)
    _run(path, LatentAttributor(lrp, "1", grid=2))  # the ReLU after the conv: (3, 6, 10) per sample
    model, (x, y) = make_model(), make_dataset().tensors
    latent = lrp.latent(model, x, y, "1").relevance
    with AuditStore(path) as store:
        assert store.attributions() == ["epsilon_plus_flat", "latent"]
        info = store.attribution_info("latent")
        stored = store.read("attributions/latent/relevance")
        heatmaps = store.read("attributions/epsilon_plus_flat/relevance")
    assert info["shape"] == [N, 3, 2, 2] and info["method"] == "latent" and info["complete"]
    assert info["params"] == {"composite": "epsilon_plus_flat", "composite_params": lrp.params(), "layer": "1",
                              "grid": 2, "quantity": "relevance"}
    # 6 × 10 into 2 × 2 cells of 3 × 5: sum-pooling, so each channel keeps its relevance R_c.
    expected = latent.reshape(N, 3, 2, 3, 2, 5).sum((3, 5)).numpy()
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored.sum((2, 3)), latent.sum((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(heatmaps, lrp.attribute(model, x, y)[0].numpy(), rtol=1e-5, atol=1e-7)


def test_activations_are_mean_pooled_and_a_grid_of_one_gives_channel_values(tmp_path):
    path = tmp_path / "audit.h5"
    lrp = LRP(EpsilonPlusFlat())
    _run(path, LatentAttributor(lrp, "1", grid=1, quantity="activation"), name="act")
    model, (x, _) = make_model(), make_dataset().tensors
    with AuditStore(path) as store:
        stored = store.read("attributions/act/relevance")
    assert stored.shape == (N, 3, 1, 1)
    np.testing.assert_allclose(stored[:, :, 0, 0], torch.relu(model[0](x)).mean((2, 3)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_max_pooled_activations_are_each_cell_s_maximum_over_the_pixels_overlapping_it(tmp_path):
    path = tmp_path / "audit.h5"
    lrp = LRP(EpsilonPlusFlat())
    for grid in (1, 2, 4):
        _run(path, LatentAttributor(lrp, "1", grid=grid, quantity="activation_max"), name=f"max{grid}")
    model, (x, _) = make_model(), make_dataset().tensors
    a = torch.relu(model[0](x)).detach().numpy()  # (N, 3, 6, 10)
    with AuditStore(path) as store:
        stored = {grid: store.read(f"attributions/max{grid}/relevance") for grid in (1, 2, 4)}
        assert store.attribution_info("max2")["params"]["quantity"] == "activation_max"
    close = {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(stored[1][:, :, 0, 0], a.max((2, 3)), **close)  # every position
    np.testing.assert_allclose(stored[2], a.reshape(N, 3, 2, 3, 2, 5).max((3, 5)), **close)  # cells of 3 × 5
    # 6 × 10 into 4 × 4: row cells [0, 1.5), [1.5, 3), [3, 4.5), [4.5, 6), column cells of 2.5 pixels; a pixel
    # that straddles two cells counts in both.
    rows, columns = [[0, 1], [1, 2], [3, 4], [4, 5]], [[0, 1, 2], [2, 3, 4], [5, 6, 7], [7, 8, 9]]
    expected = np.array([[a[:, :, r][:, :, :, c].max((2, 3)) for c in columns] for r in rows])  # (4, 4, N, 3)
    np.testing.assert_allclose(stored[4], expected.transpose(2, 3, 0, 1), **close)


def test_an_interrupted_latent_attribution_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    attributor = LatentAttributor(LRP(EpsilonPlusFlat()), "1", grid=3)
    _run(tmp_path / "whole.h5", attributor)
    with pytest.raises(_Interrupt):
        _run(tmp_path / "resumed.h5", attributor, on_batch=_interrupt_after(2))
    summary = _run(tmp_path / "resumed.h5", attributor)
    assert (summary["computed"], summary["skipped"]) == (N - 2 * BATCH, 2 * BATCH)
    whole, resumed = datasets_of(tmp_path / "whole.h5"), datasets_of(tmp_path / "resumed.h5")
    np.testing.assert_array_equal(resumed["attributions/latent/relevance"], whole["attributions/latent/relevance"])


def test_another_layer_or_grid_is_another_attribution_a_resumed_run_refuses(tmp_path):
    path = tmp_path / "audit.h5"
    lrp = LRP(EpsilonPlusFlat())
    _run(path, LatentAttributor(lrp, "1"))
    for other in (LatentAttributor(lrp, "0"), LatentAttributor(lrp, "1", grid=1)):
        with pytest.raises(StoreError, match=r"holds attribution 'latent' of model h1 with method 'latent'"):
            _run(path, other)
    _run(path, LatentAttributor(lrp, "0"), name="latent-conv")
    with AuditStore(path) as store:
        assert store.attributions() == ["latent", "latent-conv"]
        assert store.attribution_info("latent-conv")["shape"] == [N, 3, 2, 2]  # the default grid


def test_bad_latent_parameters_are_refused_by_name():
    lrp = LRP(EpsilonPlusFlat())
    with pytest.raises(BadInputError, match=r"^grid must be >= 1, got 0$"):
        LatentAttributor(lrp, "1", grid=0)
    with pytest.raises(BadInputError, match=r"^quantity must be one of 'relevance', 'activation', 'activation_max'; "
                                            r"got 'gradient'$"):
        LatentAttributor(lrp, "1", quantity="gradient")


class _Mismatched(LatentAttributor):
    """Declares rows of one shape and returns another."""

    def relevance_shape(self, model, x):
        return (3, 4, 4)


def test_rows_of_another_shape_than_declared_are_refused_naming_both(tmp_path):
    with pytest.raises(BadInputError) as caught:
        _run(tmp_path / "audit.h5", _Mismatched(LRP(EpsilonPlusFlat()), "1", grid=2))
    assert str(caught.value) == ("attributor 'latent' returned relevance of shape (8, 3, 2, 2) for inputs of shape "
                                 "(8, 2, 6, 10); expected (8, 3, 4, 4)")
    assert not (tmp_path / "audit.h5").exists()


def test_a_vit_block_s_latent_relevance_is_one_value_per_channel_summing_to_the_relevance_reaching_it():
    from spray.zoo.vit import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(28, 4, 4, 4, 64, 128, num_classes=3).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision's zero head explains nothing
    x, target = torch.rand(4, 3, 28, 28), torch.tensor([0, 1, 2, 0])
    lrp, block = LRP(EpsilonPlusFlat()), "encoder.layers.encoder_layer_2"
    rows, logits = LatentAttributor(lrp, block, grid=2).attribute(model, x, target)
    latent = lrp.latent(model, x, target, block)
    assert rows.shape == (4, 64, 1, 1)  # tokens (T, D): R_c over every token, whatever the grid
    torch.testing.assert_close(rows.flatten(1).sum(1), latent.relevance.flatten(1).sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows[:, :, 0, 0], latent.relevance.sum(1), rtol=1e-5, atol=1e-6)
    assert float(latent.relevance.abs().sum()) > 0
    torch.testing.assert_close(logits, latent.logits)
    activation = LatentAttributor(lrp, block, grid=2, quantity="activation").attribute(model, x, target)[0]
    torch.testing.assert_close(activation[:, :, 0, 0], latent.activation.mean(1))
    maximum = LatentAttributor(lrp, block, grid=2, quantity="activation_max").attribute(model, x, target)[0]
    torch.testing.assert_close(maximum[:, :, 0, 0], latent.activation.amax(1))  # the maximum over every token
