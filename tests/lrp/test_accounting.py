"""Relevance accounting (spray.lrp.accounting): the identity holds where the rules fit, and a rule that
creates relevance, or relevance created between modules, is named."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from spray.errors import NonConservativeError
from spray.lrp import LRP, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat, UntracedModelWarning
from spray.lrp.accounting import TOLERANCE, check, input_share, may_absorb
from spray.zoo import resnet18
from tests.data.factories import conv_data, power_mean_model


def _explained(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, target[:, None])[:, 0]


@pytest.mark.parametrize("composite", [EpsilonPlusFlat(), EpsilonGammaBox(low=-3.0, high=3.0),
                                       EpsilonAlpha2Beta1Flat()], ids=lambda c: c.name)
def test_resnet18_accounts_for_every_samples_relevance(composite):
    torch.manual_seed(0)
    model, x = resnet18(num_classes=10), torch.randn(4, 3, 16, 16)
    target = torch.tensor([0, 3, 5, 9])
    relevance, logits, ledger = LRP(composite).balance(model, x, target)
    f = _explained(logits, target).double()
    total = relevance.reshape(4, -1).sum(1, dtype=torch.float64)
    absorbed = sum(b.out - b.into for b in ledger)
    scale = max(f.abs().max(), f.abs().median())
    assert float((total + absorbed - f).abs().max()) <= TOLERANCE * scale
    # What absorbs has a bias: the head, and under γ the stabilisers of folded convolutions (zero biases).
    absorbing = [b for b in ledger if (b.out - b.into).abs().max() > 1e-6 * scale]
    assert "fc" in {b.name for b in absorbing} and all(may_absorb(b) for b in absorbing)
    check(relevance, f, ledger)


def test_balance_returns_what_attribute_returns():
    torch.manual_seed(0)
    model, x, target = resnet18(num_classes=10), torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    relevance, logits, _ = LRP(EpsilonPlusFlat()).balance(model, x, target)
    expected, expected_logits = LRP(EpsilonPlusFlat()).attribute(model, x, target)
    assert torch.equal(relevance, expected) and torch.equal(logits, expected_logits)


def test_a_rule_that_creates_relevance_is_named():
    x, y = conv_data()[:8]
    model = power_mean_model()
    relevance, logits, ledger = LRP(EpsilonPlusFlat()).balance(model, x, y)
    pool = next(b for b in ledger if b.name == "pool")
    assert not may_absorb(pool)
    torch.testing.assert_close(pool.into, 2 * pool.out, rtol=1e-5, atol=0.0)  # degree 2: twice the relevance
    with pytest.raises(NonConservativeError) as caught:
        check(relevance, _explained(logits, y), ledger)
    assert str(caught.value).startswith(
        "LRP creates relevance at module 'pool' (_PowerMean, rule Proportional(epsilon=1e-09)): batch sample "
    )
    assert str(caught.value).endswith(
        "but a module without a bias must pass on what it receives: the rule does not fit the function the "
        "module computes. Map one that does via the composite, names={'pool': ...} or types={_PowerMean: ...} "
        "(docs/lrp.md, 'Relevance accounting'), or pass --allow-nonconservative (allow_nonconservative=True) "
        "to attribute anyway."
    )


class _UntracedResidual(nn.Module):
    """A residual addition fx cannot trace (shape-dependent control flow): the hook engine sees it as a
    gradient, so both summands get the whole relevance of the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.pool, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(x))
        if h.shape[0] > 0:
            h = h + self.conv2(h)
        return self.fc(self.flatten(self.pool(self.relu(h))))


def test_relevance_created_between_modules_breaks_the_identity():
    torch.manual_seed(0)
    model, x, target = _UntracedResidual(), torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntracedModelWarning)
        relevance, logits, ledger = LRP(EpsilonPlusFlat()).balance(model, x, target)
    with pytest.raises(NonConservativeError, match=r"^LRP does not account for the relevance of batch sample "
                       r"\d: input relevance .* != explained logit .*Every module keeps its balance, so relevance "
                       r"is created or destroyed between modules"):
        check(relevance, logits[:, 0], ledger)


def test_input_share_is_nan_where_the_explained_output_is_zero():
    share = input_share(torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, 0.0]]), torch.tensor([4.0, 0.0, -1.5]))
    assert share[0] == 0.5 and torch.isnan(share[1]) and share[2] == -2.0
