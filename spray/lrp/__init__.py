"""spray's LRP engine: rules as autograd hooks, composites, canonisation by tracing, and :class:`Sum`.

``LRP(composite).attribute(model, x, target)`` explains class outputs; ``LRP(...).relevance`` starts at
any module. ``spray.lrp.Epsilon`` is the composite; the ε *rule* is ``spray.lrp.rules.Epsilon``.
See docs/lrp.md.
"""

from __future__ import annotations

from spray.lrp import rules
from spray.lrp.canonizers import fold_batchnorm
from spray.lrp.composites import (
    Composite,
    Epsilon,
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonPlusFlatAttnLRP,
    EpsilonGammaBox,
    EpsilonPlusFlat,
)
from spray.lrp.engine import LRP, Latent
from spray.lrp.layers import Sum
from spray.lrp.rules import (
    AlphaBeta,
    Flat,
    Gamma,
    Pass,
    Proportional,
    Rule,
    WinnerTakesAll,
    WSquare,
    ZBox,
    ZPlus,
)
from spray.lrp.tracing import UntracedModelWarning
from spray.lrp.transformer import AttnLRP, ConstantAttention

__all__ = [
    "LRP",
    "Latent",
    "AlphaBeta",
    "AttnLRP",
    "Composite",
    "ConstantAttention",
    "Epsilon",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonPlusFlatAttnLRP",
    "EpsilonGammaBox",
    "EpsilonPlusFlat",
    "Flat",
    "Gamma",
    "Pass",
    "Proportional",
    "Rule",
    "Sum",
    "UntracedModelWarning",
    "WSquare",
    "WinnerTakesAll",
    "ZBox",
    "ZPlus",
    "fold_batchnorm",
    "rules",
]
