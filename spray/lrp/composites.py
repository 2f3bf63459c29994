"""Composites: which rule explains which layer.

A composite maps layer types to rules and may give the *first* Linear/Conv layer in forward order its own
rule (flat, z^B), as the input layer sees pixels rather than activations. Users map their own rules to
exact qualified module names (``names``, as in ``model.named_modules()``) or to types (``types``, matched
along the module's class hierarchy). Precedence: ``names`` > ``types`` > first-layer rule > the composite's
type defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from spray._checks import check_real
from spray.errors import BadInputError
from spray.lrp import rules
from spray.lrp.functional import Activation, Addition, Gating, Normalization, Pooling, Scaling
from spray.lrp.layers import AVGPOOL_LAYERS, BATCHNORM_LAYERS, LINEAR_LAYERS, MAXPOOL_LAYERS, PASS_LAYERS, Sum
from spray.lrp.rules import (
    AlphaBeta, Bounds, Flat, Gamma, Pass, Proportional, Rule, SignalTakesAll, WinnerTakesAll, ZBox, ZPlus,
    _jsonable,
)
from spray.lrp.transformer import (
    AttnLRP, Concatenation, ConstantAttention, MultiheadAttentionCall, ScaledDotProductAttention, Slices,
)


def _lookup(table: Mapping[type, Rule], module: nn.Module) -> Rule | None:
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


def _rule_map(mapping: Any, name: str, valid_key: Any, keys: str) -> dict[Any, Rule]:
    """A user's ``names``/``types`` map checked: ``keys`` to Rule instances (stored parameters must not pass
    for rules)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping) or not all(
        valid_key(key) and isinstance(rule, Rule) for key, rule in mapping.items()
    ):
        raise BadInputError(f"{name} must map {keys} to spray.lrp rules, got {mapping!r:.80}")
    return dict(mapping)


class Composite:
    """Layer → rule map: ``dense`` for Linear, ``conv`` for Conv1d/Conv2d, ``first`` for the first of them.

    Every composite also explains unfolded BatchNorm and the traced layer/group normalisations (their σ
    held constant) with LRP-ε (``epsilon``), attention with its weights held constant (CP-LRP,
    spray.lrp.transformer), passes relevance through activations, Dropout, Flatten and Identity, splits it
    proportionally over average pooling, :class:`~spray.lrp.Sum` and the traced additions, means and
    scalings (spray.lrp.functional), passes it through traced functional activations, gives a sigmoid-gated
    product's relevance to the signal, a concatenation's slices to their inputs, and max pooling's
    relevance to the winning input.
    """

    name = "composite"

    def __init__(
        self,
        *,
        dense: Rule,
        conv: Rule,
        first: Rule | None = None,
        epsilon: float = 1e-6,
        names: Mapping[str, Rule] | None = None,
        types: Mapping[type[nn.Module], Rule] | None = None,
    ) -> None:
        self.dense = dense
        self.conv = conv
        self.first = first
        check_real(epsilon, "epsilon", minimum=0.0)
        self.epsilon = epsilon
        self.names = _rule_map(names, "names", lambda key: isinstance(key, str), "module names")
        self.types = _rule_map(types, "types", lambda key: isinstance(key, type) and issubclass(key, nn.Module),
                               "torch.nn.Module classes")
        proportional = Proportional()
        self._defaults: dict[type, Rule] = {
            nn.Linear: dense,
            nn.Conv1d: conv,
            nn.Conv2d: conv,
            Sum: proportional,
            Addition: proportional,
            Pooling: proportional,
            Scaling: proportional,
            Activation: Pass(),
            Gating: SignalTakesAll(),
            Normalization: rules.Epsilon(epsilon),
            MultiheadAttentionCall: ConstantAttention(epsilon),
            ScaledDotProductAttention: ConstantAttention(epsilon),
            Concatenation: Slices(),
            **dict.fromkeys(BATCHNORM_LAYERS, rules.Epsilon(epsilon)),
            **dict.fromkeys(PASS_LAYERS, Pass()),
            **dict.fromkeys(AVGPOOL_LAYERS, proportional),
            **dict.fromkeys(MAXPOOL_LAYERS, WinnerTakesAll()),
        }

    def rule(self, name: str, module: nn.Module, first: bool) -> Rule | None:
        """The rule for ``module`` (qualified ``name``); ``first``: it is the first Linear/Conv to run."""
        if name in self.names:
            return self.names[name]
        rule = _lookup(self.types, module)
        if rule is None and first and isinstance(module, LINEAR_LAYERS):
            rule = self.first
        return rule if rule is not None else _lookup(self._defaults, module)

    def _preset_params(self) -> dict[str, Any]:
        return {"dense": repr(self.dense), "conv": repr(self.conv), "first": repr(self.first),
                "epsilon": self.epsilon}

    def params(self) -> dict[str, Any]:
        """JSON-serialisable description: the preset's parameters plus any user name/type maps."""
        params = self._preset_params()
        if self.names:
            params["names"] = {name: repr(rule) for name, rule in self.names.items()}
        if self.types:
            params["types"] = {cls.__qualname__: repr(rule) for cls, rule in self.types.items()}
        return params


class _Preset(Composite):
    """A named composite; its parameters are its constructor's, so ``params()`` can rebuild it."""

    def _preset_params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}


class Epsilon(_Preset):
    """LRP-ε for every Linear/Conv layer (the rule captum's ``LRP`` uses by default, with ε = 1e-9)."""

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6, *, names: Mapping[str, Rule] | None = None,
                 types: Mapping[type[nn.Module], Rule] | None = None) -> None:
        rule = rules.Epsilon(epsilon)
        super().__init__(dense=rule, conv=rule, epsilon=epsilon, names=names, types=types)


class EpsilonPlusFlat(_Preset):
    """First Linear/Conv flat, other convolutions z⁺, dense layers ε."""

    name = "epsilon_plus_flat"

    def __init__(self, epsilon: float = 1e-6, *, names: Mapping[str, Rule] | None = None,
                 types: Mapping[type[nn.Module], Rule] | None = None) -> None:
        super().__init__(dense=rules.Epsilon(epsilon), conv=ZPlus(), first=Flat(), epsilon=epsilon,
                         names=names, types=types)


class EpsilonGammaBox(_Preset):
    """First Linear/Conv z^B with pixel bounds ``[low, high]``, other convolutions γ, dense layers ε.

    ``low``/``high``: numbers, or tensors (nested lists) broadcastable to the model input, e.g. per
    channel ``(C, 1, 1)`` after input normalisation; ``epsilon`` also stabilises the γ rule.
    """

    name = "epsilon_gamma_box"

    def __init__(self, low: Bounds, high: Bounds, gamma: float = 0.25, epsilon: float = 1e-6,
                 *, names: Mapping[str, Rule] | None = None,
                 types: Mapping[type[nn.Module], Rule] | None = None) -> None:
        super().__init__(dense=rules.Epsilon(epsilon), conv=Gamma(gamma, epsilon), first=ZBox(low, high),
                         epsilon=epsilon, names=names, types=types)
        self.low = low
        self.high = high
        self.gamma = gamma

    def _preset_params(self) -> dict[str, Any]:
        return {"low": _jsonable(self.low), "high": _jsonable(self.high), "gamma": self.gamma,
                "epsilon": self.epsilon}


class EpsilonAlpha2Beta1(_Preset):
    """Convolutions α2β1, dense layers ε."""

    name = "epsilon_alpha2_beta1"

    def __init__(self, epsilon: float = 1e-6, *, names: Mapping[str, Rule] | None = None,
                 types: Mapping[type[nn.Module], Rule] | None = None) -> None:
        super().__init__(dense=rules.Epsilon(epsilon), conv=AlphaBeta(2.0, 1.0), epsilon=epsilon,
                         names=names, types=types)


class EpsilonAlpha2Beta1Flat(_Preset):
    """First Linear/Conv flat, other convolutions α2β1, dense layers ε."""

    name = "epsilon_alpha2_beta1_flat"

    def __init__(self, epsilon: float = 1e-6, *, names: Mapping[str, Rule] | None = None,
                 types: Mapping[type[nn.Module], Rule] | None = None) -> None:
        super().__init__(dense=rules.Epsilon(epsilon), conv=AlphaBeta(2.0, 1.0), first=Flat(),
                         epsilon=epsilon, names=names, types=types)


class EpsilonPlusFlatAttnLRP(EpsilonPlusFlat):
    """:class:`EpsilonPlusFlat` with AttnLRP (Achtibat et al., ICML 2024) for attention, both kinds
    (``nn.MultiheadAttention`` calls and ``F.scaled_dot_product_attention``): relevance flows through the
    softmax to queries and keys instead of holding the attention weights constant (docs/lrp.md, "Transformers")."""

    name = "epsilon_plus_flat_attnlrp"

    def __init__(self, epsilon: float = 1e-6, *, names: Mapping[str, Rule] | None = None,
                 types: Mapping[type[nn.Module], Rule] | None = None) -> None:
        super().__init__(epsilon, names=names, types=types)
        attention = AttnLRP(epsilon)
        self._defaults.update({MultiheadAttentionCall: attention, ScaledDotProductAttention: attention})
