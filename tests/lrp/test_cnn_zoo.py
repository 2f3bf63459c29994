"""The zoo's CNNs beyond ResNet and VGG, explained as torchvision writes them: DenseNet (BatchNorms after
concatenations), MobileNetV2 (ReLU6, depthwise convolutions), EfficientNet-B0 (SiLU, squeeze-and-excitation
gating), ConvNeXt-T (LayerNorm over channels, layer scale, GELU). Per architecture and composite, in
float64: the accounting identity holds to rounding, BatchNorm folding leaves the logits equal to rounding,
and the model is left as found."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spray.cli import main
from spray.lrp import LRP, Epsilon, EpsilonGammaBox, EpsilonPlusFlat, rules
from spray.lrp.accounting import check, may_absorb
from spray.lrp.functional import Gating, Normalization, Scaling
from spray.zoo import (
    CNBlockConfig, convnext_tiny, densenet121, efficientnet_b0, mobilenet_v2, randomize_batch_norms,
    randomize_layer_norms,
)
from spray.store import AuditStore
from spray.testing import pipeline_text
from tests.data.factories import efficientnet_model, rgb_conv_data
from tests.lrp.test_tracing import _assert_left_as_found, _snapshot

#: Tiny members of each family: 16 × 16 inputs, 5 classes.
ARCHITECTURES = {
    "densenet121": lambda: densenet121(5, growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2),
    "mobilenet_v2": lambda: mobilenet_v2(5, width_mult=0.25, inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2]]),
    "efficientnet_b0": lambda: efficientnet_b0(5, stages=3, width_mult=0.25),
    "convnext_tiny": lambda: convnext_tiny(5, block_setting=[CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 2)],
                                           layer_scale=0.5),
}
COMPOSITES = [EpsilonPlusFlat(), Epsilon(), EpsilonGammaBox(low=-3.0, high=3.0)]


def _model(architecture: str) -> nn.Module:
    """The tiny model with drawn BatchNorm statistics and normalisation shifts (none is the identity)."""
    torch.manual_seed(0)
    model = randomize_layer_norms(randomize_batch_norms(ARCHITECTURES[architecture]()))
    return model.double().eval()


@pytest.mark.parametrize("composite", COMPOSITES, ids=lambda c: c.name)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_relevance_is_accounted_for_to_rounding_and_the_model_left_as_found(architecture, composite):
    model = _model(architecture)
    x, target = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([1, 4])
    with torch.no_grad():
        expected = model(x)
    before = _snapshot(model)
    relevance, logits, ledger = LRP(composite).balance(model, x, target)
    _assert_left_as_found(model, before)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-14)  # folding: equal to rounding
    f = logits.gather(1, target[:, None])[:, 0]
    total = relevance.flatten(1).sum(1)
    absorbed = sum(b.out - b.into for b in ledger)
    assert float((total + absorbed - f).abs().max()) <= 1e-12 * float(f.abs().max())
    check(relevance, f, ledger)


def test_densenet_batchnorms_after_concatenations_are_explained_on_their_own_with_epsilon():
    model = _model("densenet121")
    x, target = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 2])
    method = LRP(EpsilonPlusFlat())
    _, _, ledger = method.balance(model, x, target)
    rules_of = {b.name: b.rule for b in ledger}
    standalone = ["features.denseblock1.denselayer2.norm1", "features.transition1.norm", "features.norm5"]
    assert all(isinstance(rules_of[name], rules.Epsilon) for name in standalone)
    # the BatchNorm after each dense layer's 1x1 convolution is folded into it and leaves the graph
    folded = "features.denseblock1.denselayer2.norm2"
    assert folded not in rules_of
    assert dict(method.trace_record(model, x)["rules"])[folded] == "folded into features.denseblock1.denselayer2.conv1"
    shifts = {b.name: b for b in ledger if b.name in standalone}
    assert all(may_absorb(b) and float((b.out - b.into).abs().max()) > 0 for b in shifts.values())


def _traced_kinds(ledger: list) -> dict[str, type]:
    return {b.name: type(b.module) for b in ledger if isinstance(b.module, Gating | Normalization | Scaling)}


def test_efficientnet_squeeze_excitation_is_a_gating_whose_gate_branch_gets_no_relevance():
    model = _model("efficientnet_b0")
    x, target = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 2])
    _, _, ledger = LRP(EpsilonPlusFlat()).balance(model, x, target)
    assert _traced_kinds(ledger) == {f"features.{name}.block.{i}.mul": Gating
                                     for name, i in [("1.0", 1), ("2.0", 2), ("2.1", 2), ("3.0", 2), ("3.1", 2)]}
    gate_branch = [b for b in ledger if ".fc1" in b.name or ".fc2" in b.name]
    assert len(gate_branch) == 10 and all(float(b.out.abs().max()) == 0 for b in gate_branch)


def test_convnext_layer_norms_are_traced_normalisations_and_its_layer_scale_a_scaling():
    model = _model("convnext_tiny")
    x, target = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 2])
    _, _, ledger = LRP(EpsilonPlusFlat()).balance(model, x, target)
    kinds = _traced_kinds(ledger)
    # LayerNorm2d in the stem, the downsampling and the head; nn.LayerNorm (channels-last) in each block
    assert sorted(name for name, kind in kinds.items() if kind is Normalization) == [
        "classifier.0.layer_norm", "features.0.1.layer_norm", "features.1.0.block.2.layer_norm",
        "features.2.0.layer_norm", "features.3.0.block.2.layer_norm", "features.3.1.block.2.layer_norm"]
    assert sorted(name for name, kind in kinds.items() if kind is Scaling) == [
        "features.1.0.mul", "features.3.0.mul", "features.3.1.mul"]
    assert all(may_absorb(b) for b in ledger if isinstance(b.module, Normalization))


def test_an_efficientnet_is_attributed_and_analysed_from_the_command_line(tmp_path, capsys):
    store, pipeline = tmp_path / "e.h5", tmp_path / "p.toml"
    pipeline.write_text(pipeline_text("tiny"))
    assert main(["attribute", "--model", "tests.data.factories:efficientnet_model", "--data",
                 "tests.data.factories:rgb_conv_data", "--store", str(store), "--batch-size", "20"]) == 0
    assert main(["analyze", str(store), "--pipeline", str(pipeline)]) == 0
    capsys.readouterr()
    assert main(["info", str(store), "--json"]) == 0
    attribution = json.loads(capsys.readouterr().out)["attributions"]["epsilon_plus_flat"]
    assert attribution["done"] == 40 and attribution["shape"] == [40, 3, 8, 8]
    assert main(["rank", str(store), "--json"]) == 0
    assert {entry["class"] for entry in json.loads(capsys.readouterr().out)} == {0, 1}
    x, y = rgb_conv_data()[:4]
    relevance, logits = LRP(EpsilonPlusFlat()).attribute(efficientnet_model(), x, y)
    with AuditStore(store) as audit:  # the stored heatmaps are the engine's, and the relevance accounted for
        stored = audit.read("attributions/epsilon_plus_flat/relevance", slice(0, 4))
        share = audit.read("attributions/epsilon_plus_flat/input_share", slice(0, 4))
    torch.testing.assert_close(torch.as_tensor(stored), relevance, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(share, dtype=torch.float64),
                               relevance.flatten(1).sum(1).double() / logits.gather(1, y[:, None])[:, 0].double(),
                               rtol=1e-4, atol=1e-6)
