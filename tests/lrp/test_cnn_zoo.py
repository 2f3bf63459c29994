"""The zoo's CNNs beyond ResNet and VGG, explained as torchvision writes them: DenseNet (BatchNorms after
concatenations). Per architecture and composite, in float64: the accounting identity holds to rounding,
BatchNorm folding leaves the logits equal to rounding, and the model is left as found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spray.lrp import LRP, Epsilon, EpsilonGammaBox, EpsilonPlusFlat, rules
from spray.lrp.accounting import check, may_absorb
from spray.zoo import densenet121, randomize_batch_norms
from tests.lrp.test_tracing import _assert_left_as_found, _snapshot

#: Tiny members of each family: 16 × 16 inputs, 5 classes.
ARCHITECTURES = {
    "densenet121": lambda: densenet121(5, growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2),
}
COMPOSITES = [EpsilonPlusFlat(), Epsilon(), EpsilonGammaBox(low=-3.0, high=3.0)]


def _model(architecture: str) -> nn.Module:
    """The tiny model with drawn BatchNorm statistics and normalisation shifts (none is the identity)."""
    torch.manual_seed(0)
    model = randomize_batch_norms(ARCHITECTURES[architecture]())
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
    _, _, ledger = LRP(EpsilonPlusFlat()).balance(model, x, target)
    rules_of = {b.name: b.rule for b in ledger}
    standalone = ["features.denseblock1.denselayer2.norm1", "features.transition1.norm", "features.norm5"]
    assert all(isinstance(rules_of[name], rules.Epsilon) for name in standalone)
    # the BatchNorm after each dense layer's 1x1 convolution is folded: an identity takes its place
    assert isinstance(next(b for b in ledger if b.name == "features.denseblock1.denselayer2.norm2").module,
                      nn.Identity)
    shifts = {b.name: b for b in ledger if b.name in standalone}
    assert all(may_absorb(b) and float((b.out - b.into).abs().max()) > 0 for b in shifts.values())
