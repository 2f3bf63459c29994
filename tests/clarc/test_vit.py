"""ClArC on a Vision Transformer: the layer's tokens (B, T, D) are read with their D channels (spray._layout)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from spray.clarc import AClArC, RRClArC, isolate_artifact, paste, project_model
from spray.clarc.activations import activations, candidate_layers, default_layer, pool
from spray.clarc.tcav import directional_derivatives
from spray.training import TrainingConfig, train_model
from spray.zoo.vit import VisionTransformer

BLOCK = "encoder.layers.encoder_layer_2"


def small_vit(seed: int = 0) -> VisionTransformer:
    """The ViT of the task: 28 px, patch 4 (49 tokens and the class token), 4 blocks of 4 heads, width 64."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VisionTransformer(28, 4, 4, 4, 64, 128, num_classes=2)


@pytest.fixture(scope="module")
def vit_audit():
    """A small ViT trained on noise images whose class 1 is brighter, 24 of its 32 samples with a white
    corner patch; the artifact isolated at :data:`BLOCK` from the stamped samples against the rest."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.rand(64, 3, 28, 28, generator=g) * 0.5 + 0.1 * y[:, None, None, None]
    stamped = torch.nonzero(y == 1).flatten()[:24]
    x[stamped, :, :4, :4] = 1.0
    dataset = TensorDataset(x, y)
    model = small_vit()
    train_model(model, dataset, TrainingConfig(epochs=4, batch_size=16, lr=1e-3, seed=0), progress=False)
    model.eval()
    rest = np.setdiff1d(torch.nonzero(y == 1).flatten().numpy(), stamped.numpy())
    artifact = isolate_artifact(model, dataset, stamped.numpy(), rest, label=1, layer=BLOCK)
    return SimpleNamespace(model=model, dataset=dataset, x=x, y=y, stamped=stamped, artifact=artifact)


def _pasted_logit_shift(model, audit) -> float:
    """Mean change of class 1's logit on class-0 samples when the artifact is pasted into them."""
    x0 = audit.x[audit.y == 0]
    found = audit.artifact.localization
    with torch.no_grad():
        return float((model(paste(x0, found.patch, found.mask))[:, 1] - model(x0)[:, 1]).mean())


def test_a_vit_block_s_activations_are_read_with_its_width_as_channels(vit_audit):
    a = activations(vit_audit.model, BLOCK, vit_audit.x[:3])
    assert a.shape == (3, 64, 50)  # (B, D, T): tokens (B, T, D) in their canonical view
    assert pool(a).shape == pool(a, grid=2).shape == (3, 64)  # tokens have no 2-D grid
    assert vit_audit.artifact.direction.shape == (64,)
    assert vit_audit.artifact.clean_mean.shape == (64, 50)


def test_a_vit_s_layer_candidates_are_its_blocks_and_the_default_is_its_last_norm():
    model, x = small_vit(), torch.rand(2, 3, 28, 28)
    assert default_layer(model, x) == "encoder.ln"
    assert candidate_layers(model, x) == [f"encoder.layers.encoder_layer_{i}" for i in (1, 2, 3)] + ["encoder.ln"]


def test_p_clarc_on_a_vit_sets_every_sample_s_cav_score_to_the_clean_mean(vit_audit):
    artifact, x = vit_audit.artifact, vit_audit.x
    v = artifact.direction
    before = pool(activations(vit_audit.model, BLOCK, x)) @ v
    corrected = project_model(vit_audit.model, BLOCK, v, artifact.clean_mean)
    after = pool(activations(corrected, BLOCK, x)) @ v
    clean = float(artifact.clean_mean.mean(1) @ v)
    assert float(before.std()) > 0.1
    torch.testing.assert_close(after, torch.full_like(after, clean), atol=1e-4, rtol=0)


def test_a_clarc_on_a_vit_lowers_the_pasted_artifact_s_pull_towards_its_class(vit_audit):
    corrected = AClArC(epochs=2, batch_size=16, lr=1e-3, seed=0).fit(
        vit_audit.model, vit_audit.dataset, vit_audit.artifact, progress=False).model_
    before, after = _pasted_logit_shift(vit_audit.model, vit_audit), _pasted_logit_shift(corrected, vit_audit)
    assert before > 0.05
    assert after < before / 2


def test_rr_clarc_on_a_vit_lowers_the_sensitivity_along_the_cav_below_plain_fine_tuning_s(vit_audit):
    artifact, x = vit_audit.artifact, vit_audit.x[vit_audit.stamped]

    def sensitivity(lam: float) -> float:
        corrected = RRClArC(lam=lam, epochs=2, batch_size=16, lr=1e-3, seed=0).fit(
            vit_audit.model, vit_audit.dataset, artifact, progress=False).model_
        return float(directional_derivatives(corrected, BLOCK, x, artifact.direction, 1).abs().mean())

    # The same fine-tuning without the penalty (λ = 0) is the reference: cross-entropy alone moves it too.
    assert sensitivity(1e3) < sensitivity(0.0) / 2


def test_spray_clarc_corrects_a_vit_at_its_default_layer_and_at_a_block_given_by_name(tmp_path, capsys):
    from spray.cli import main
    from spray.clarc import load_corrected
    from spray.testing import pipeline_text
    from tests.data.factories import vit_data, vit_model

    store, pipeline = tmp_path / "vit.h5", tmp_path / "p.toml"
    pipeline.write_text(pipeline_text("tiny"))
    vit = ["--model", "tests.data.factories:vit_model", "--data", "tests.data.factories:vit_data"]
    assert main(["attribute", *vit, "--store", str(store), "--batch-size", "8"]) == 0
    assert main(["analyze", str(store), "--pipeline", str(pipeline)]) == 0
    clarc = ["clarc", str(store), "--cluster", "top", "--method", "pclarc", *vit, "--json"]
    capsys.readouterr()
    for layer, expected in ((None, "encoder.ln"), ("encoder.layers.encoder_layer_0",) * 2):
        assert main([*clarc, "--out", str(tmp_path / expected)] + ([] if layer is None else ["--layer", layer])) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["layer"] == expected
        corrected = load_corrected(vit_model(), result["weights"])
        x = vit_data().tensors[0]
        a = activations(corrected, expected, x)
        assert a.shape == (40, 8, 5)
        basis = corrected.get_submodule(expected).projection.v.reshape(-1, 8)
        scores = pool(a) @ basis.T  # (40, k): every sample's CAV scores are the clean samples' mean's
        torch.testing.assert_close(scores, scores[:1].expand_as(scores), atol=1e-5, rtol=0)
