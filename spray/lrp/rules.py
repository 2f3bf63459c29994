"""LRP rules: how one layer hands the relevance of its output to its inputs.

Every rule is an instance of the modified-gradient trick (docs/lrp.md, "How it works"). For a layer ``z = f(x)`` and the
relevance ``R`` of its output::

    R_in = Σ_t x_t ⊙ ∂/∂x_t [ Σ_j z'_j · stopgrad(R_j / stab(z'_j)) ],   z' = Σ_t f(x_t; w_t, b_t)

where each term ``t`` evaluates the layer on a rule-modified input ``x_t`` with rule-modified parameters
(e.g. z⁺: ``f(x⁺; w⁺) + f(x⁻; w⁻)``) and ``stab(z) = z + ε·sign(z)`` with ``sign(0) = 1``. The engine calls
:meth:`Rule.redistribute` from autograd's backward pass, so the relevance flowing between layers is carried
by autograd as if it were a gradient. Rules that use the layer as it is (ε, proportional, winner-takes-all)
reuse the graph of the forward pass instead of evaluating the layer again.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spray._checks import check_real
from spray.errors import BadInputError, UnsupportedLayerError
from spray.lrp.layers import LINEAR_LAYERS

#: Stabiliser of the rules whose denominators cannot cancel (z⁺, αβ, flat, w², z^B): it only guards 0/0.
_GUARD = 1e-12

_Params = tuple[Tensor, Tensor | None]
#: One term of z': the layer's input as modified by the rule, and its modified (weight, bias).
_Term = tuple[Tensor, _Params]


def stabilise(z: Tensor, epsilon: float) -> Tensor:
    """``z + ε·sign(z)`` with ``sign(0) = 1``: moves the denominator away from zero, keeping its sign."""
    step = z.new_tensor(epsilon)
    return torch.where(z >= 0, step, -step).add_(z)  # -0.0 >= 0 holds: sign(±0) = 1


def _forward(module: nn.Module, x: Tensor, params: _Params) -> Tensor:
    """A Linear/Conv layer evaluated with other parameters."""
    weight, bias = params
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)  # Conv1d/Conv2d, honouring padding_mode


def _share(inputs: Sequence[Tensor], z: Tensor, relevance: Tensor, epsilon: float) -> tuple[Tensor, ...]:
    """``x ⊙ ∂/∂x [Σ_j z_j · stopgrad(R_j / stab(z_j))]`` for every input ``x``; ``z`` has a graph to them."""
    grads = torch.autograd.grad(
        z, inputs, relevance / stabilise(z.detach(), epsilon), allow_unused=True, materialize_grads=True
    )
    return tuple(x.detach() * grad for x, grad in zip(inputs, grads, strict=True))


def _total(tensors: Iterable[Tensor]) -> Tensor:
    """The sum of tensors (Python's ``sum`` would first add them to 0, a copy of the whole first one)."""
    return functools.reduce(operator.add, tensors)


def _redistribute(module: nn.Module, terms: Sequence[_Term], relevance: Tensor, epsilon: float,
                  nonnegative: bool = False) -> Tensor:
    """The modified-gradient formula of the module docstring for a one-input Linear/Conv layer.

    ``nonnegative``: ``z' ≥ 0`` by construction (positive contributions only), where ``stab(z')`` is
    ``z' + ε``, the same numbers as :func:`stabilise` in one pass instead of three. ``z'`` and the gradients
    are this function's own tensors, so the arithmetic after the layer's evaluation runs in place (large
    new tensors cost page faults on the CPU).
    """
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_(True) for x, _ in terms]
        z = _total(_forward(module, x, params) for x, (_, params) in zip(leaves, terms, strict=True))
    denominator = z.detach().add_(epsilon) if nonnegative else stabilise(z.detach(), epsilon)
    grads = torch.autograd.grad(z, leaves, torch.div(relevance, denominator, out=denominator))
    return _total(grad.mul_(x.detach()) for x, grad in zip(leaves, grads, strict=True))


def _signs(x: Tensor) -> tuple[Tensor, ...]:
    """``(x⁺, x⁻)``, or ``(x,)`` where ``x`` has no negative entry (after a ReLU): the terms of ``x⁻`` would
    only add zeros."""
    if x.numel() and bool(x.amin() < 0):
        return x.clamp(min=0), x.clamp(max=0)
    return (x,)


#: Input bounds of the z^B rule: a number, or a tensor (or nested list) broadcastable to the layer input.
Bounds = float | Tensor | Sequence


def _check_bounds(value: Any, name: str) -> Bounds:
    """A z^B bound: a finite number, or a tensor / nested list of finite numbers."""
    if isinstance(value, bool):
        raise BadInputError(f"{name} must be a number or a tensor of numbers, got {value!r}")
    try:
        finite = bool(torch.isfinite(torch.as_tensor(value, dtype=torch.float64)).all())
    except (TypeError, ValueError, RuntimeError):
        finite = False
    if not finite:
        raise BadInputError(f"{name} must be a finite number or a tensor of finite numbers, got {value!r:.80}")
    return value


def _jsonable(value: Bounds) -> float | list:
    if isinstance(value, int | float):
        return float(value)
    return torch.as_tensor(value, dtype=torch.float64).tolist()


class Rule:
    """Base of all rules: :meth:`redistribute` maps output relevance to one relevance per input."""

    def check(self, name: str, module: nn.Module) -> None:
        """Raise :class:`UnsupportedLayerError` if this rule cannot explain ``module`` (called ``name``)."""

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        """Relevance per input, shaped like the inputs.

        ``inputs``: the layer's inputs, leaves that require grad; ``output``: the layer applied to them, with
        its graph; ``relevance``: shaped like ``output``.
        """
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters of the rule."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.params().items())
        return f"{type(self).__name__}({args})"


class Epsilon(Rule):
    """LRP-ε: contributions ``x_i w_ij`` over ``z_j + ε·sign(z_j)`` (bias included in ``z_j``).

    Works for any module that is linear (affine) in its inputs: Linear, Conv, unfolded BatchNorm.
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        check_real(epsilon, "epsilon", minimum=0.0)
        self.epsilon = epsilon

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        return _share(inputs, output, relevance, self.epsilon)

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}


class Proportional(Epsilon):
    """Split relevance in proportion to contributions (ε-rule with a vanishing ε): average pooling, Sum."""

    def __init__(self, epsilon: float = 1e-9) -> None:
        super().__init__(epsilon)


class _WeightRule(Rule):
    """A rule that evaluates the layer with modified weights: Linear, Conv1d and Conv2d only."""

    def check(self, name: str, module: nn.Module) -> None:
        if not isinstance(module, LINEAR_LAYERS):
            raise UnsupportedLayerError(
                f"rule {self!r} modifies weights and applies to Linear, Conv1d or Conv2d layers only, but "
                f"module {name!r} is a {type(module).__qualname__}; map another rule to it in the composite"
            )


class Gamma(_WeightRule):
    """LRP-γ, generalised to outputs of either sign: contributions of the output's sign are boosted by γ.

    For ``z_j ≥ 0``: contributions ``x_i w_ij + γ (x_i w_ij)⁺``, bias ``b + γ b⁺``; for ``z_j < 0``:
    ``x_i w_ij + γ (x_i w_ij)⁻``, bias ``b + γ b⁻``; ε-stabilised denominators. With non-negative inputs and
    a positive output this is the γ rule of Montavon et al. (2019); the negative branch (Andéol et al.
    2021, zennit's ``Gamma``) matters where relevance reaches a negative pre-activation, as through a
    residual sum.
    """

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6) -> None:
        self.gamma = check_real(gamma, "gamma", minimum=0.0)
        check_real(epsilon, "epsilon", minimum=0.0)
        self.epsilon = epsilon

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        x, weight, bias = inputs[0], module.weight, module.bias
        split = _signs(x)
        negative = output.detach() < 0
        result = torch.zeros_like(x)
        for outputs, boosted, other in ((~negative, "min", "max"), (negative, "max", "min")):
            share = relevance * outputs
            if not share.any():  # after a ReLU, negative outputs hold no relevance
                continue
            same_sign = (self._boost(weight, boosted), None if bias is None else self._boost(bias, boosted))
            terms = [(part, params) for part, params in zip(split, (same_sign, (self._boost(weight, other), None)))]
            result = result + _redistribute(module, terms, share, self.epsilon)
        return (result,)

    def _boost(self, param: Tensor, sign: str) -> Tensor:
        """``p + γ p⁺`` (``sign="min"``) or ``p + γ p⁻`` (``"max"``)."""
        return param + self.gamma * param.clamp(**{sign: 0})

    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "epsilon": self.epsilon}


class AlphaBeta(_WeightRule):
    """LRP-αβ: ``α`` × positive shares − ``β`` × negative shares of ``x_i w_ij`` (bias ignored), α − β = 1."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0) -> None:
        check_real(alpha, "alpha", minimum=0.0)
        check_real(beta, "beta", minimum=0.0)
        if alpha - beta != 1:
            raise BadInputError(f"AlphaBeta needs alpha - beta = 1, got alpha={alpha}, beta={beta}")
        self.alpha = alpha
        self.beta = beta

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        split = _signs(inputs[0])
        positive = _redistribute(module, _signed_terms(split, module.weight, True), relevance, _GUARD, True)
        if self.beta == 0:
            return (positive if self.alpha == 1 else self.alpha * positive,)
        negative = _redistribute(module, _signed_terms(split, module.weight, False), relevance, _GUARD)
        return (self.alpha * positive - self.beta * negative,)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}


def _signed_terms(split: tuple[Tensor, ...], weight: Tensor, positive: bool) -> list[_Term]:
    """Terms ``f(x⁺; w⁺) + f(x⁻; w⁻)`` (``positive``) or ``f(x⁺; w⁻) + f(x⁻; w⁺)`` for ``split = (x⁺, x⁻)``
    or ``(x⁺,)``: the contributions ``x_i w_ij`` of one sign (no bias)."""
    clamps = ({"min": 0}, {"max": 0}) if positive else ({"max": 0}, {"min": 0})
    return [(part, (weight.clamp(**clamp), None)) for part, clamp in zip(split, clamps)]


class ZPlus(AlphaBeta):
    """z⁺ (α1β0): only positive contributions ``(x_i w_ij)⁺`` count (bias ignored)."""

    def __init__(self) -> None:
        super().__init__(alpha=1.0, beta=0.0)

    def params(self) -> dict[str, Any]:
        return {}


class Flat(_WeightRule):
    """Flat: every weight 1 and every input 1, so relevance spreads uniformly over each receptive field."""

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        params = (torch.ones_like(module.weight), None)
        return (_redistribute(module, [(torch.ones_like(inputs[0]), params)], relevance, _GUARD, True),)


class WSquare(_WeightRule):
    """w²: contributions ``w_ij²`` (input set to 1, bias ignored)."""

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        params = (module.weight.square(), None)
        return (_redistribute(module, [(torch.ones_like(inputs[0]), params)], relevance, _GUARD, True),)


class ZBox(_WeightRule):
    """z^B for pixel layers with inputs in ``[low, high]``: ``x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻`` (no bias).

    ``low``/``high``: numbers, or tensors (nested lists) broadcastable to the layer input, e.g. per channel
    ``(C, 1, 1)`` after input normalisation.
    """

    def __init__(self, low: Bounds, high: Bounds) -> None:
        self.low = _check_bounds(low, "low")
        self.high = _check_bounds(high, "high")

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        x, weight = inputs[0], module.weight
        low = torch.zeros_like(x) + torch.as_tensor(self.low, dtype=x.dtype, device=x.device)
        high = torch.zeros_like(x) + torch.as_tensor(self.high, dtype=x.dtype, device=x.device)
        terms: list[_Term] = [
            (x, (weight, None)),
            (low, (-weight.clamp(min=0), None)),
            (high, (-weight.clamp(max=0), None)),
        ]
        return (_redistribute(module, terms, relevance, _GUARD),)

    def params(self) -> dict[str, Any]:
        return {"low": _jsonable(self.low), "high": _jsonable(self.high)}


class Pass(Rule):
    """Identity: relevance passes unchanged (reshaped to the input): activations, Dropout, Flatten."""

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        return (relevance.reshape(inputs[0].shape),)


class WinnerTakesAll(Rule):
    """Max pooling: each output's relevance goes to the input that won the max (autograd's routing)."""

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        return torch.autograd.grad(output, inputs, relevance)


class SignalTakesAll(Rule):
    """Gating ``signal * gate``: the gate held constant, the signal takes all relevance, the gate none.

    The "signal-take-all" rule of Arras et al. (2017, 2019) for the gates of LSTMs, as Ali et al. (2022)
    hold attention and normalisation factors constant: the gate decides how much of the signal passes, and
    the signal is what is explained. Relevance broadcast over the signal's dimensions is summed back to it.
    """

    def redistribute(
        self, module: nn.Module, inputs: Sequence[Tensor], output: Tensor, relevance: Tensor
    ) -> tuple[Tensor, ...]:
        return tuple(torch.zeros_like(x) if i == module.gate else relevance.sum_to_size(x.shape)
                     for i, x in enumerate(inputs))
