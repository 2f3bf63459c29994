"""Relevance accounting: where the relevance of an explained output goes, per sample.

Every LRP rule passes on the relevance that reaches a layer, except what a constant part of the layer (a
bias, a BatchNorm's shift, a constant summand) and the stabilisers absorb. Per sample, the *accounting
identity* is therefore

    Σ R_input + Σ_modules (R_out − R_in) = f        (f: the explained logit)

and a module without a constant part must keep ``R_in = R_out`` whatever its rule. :func:`check` verifies
both on a batch and names the first module, in backward order, where the balance breaks (docs/lrp.md,
"Relevance accounting").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from spray.errors import NonConservativeError
from spray.lrp.engine import Balance
from spray.lrp.functional import Addition, Normalization
from spray.lrp.layers import BATCHNORM_LAYERS
from spray.lrp.transformer import AttnLRP, Concatenation, MultiheadAttentionCall

#: Relative tolerance of the accounting identity and of each bias-free module's balance, as a fraction of
#: max(|f|, median |f|) over the batch (float32; measured errors are below 1e-6, docs/lrp.md).
TOLERANCE = 1e-4


def input_share(relevance: Tensor, explained: Tensor) -> Tensor:
    """Σ R_input / f per sample (B,), float64; NaN where the explained output f is exactly 0."""
    total = relevance.detach().reshape(len(relevance), -1).sum(1, dtype=torch.float64)
    f = explained.detach().to(torch.float64)
    return torch.where(f != 0, total / torch.where(f != 0, f, 1.0), torch.nan)


def may_absorb(balance: Balance) -> bool:
    """Whether the module has a constant part that may absorb relevance: a bias (also of an attention's
    projections), a BatchNorm's or a traced normalisation's shift, a constant summand (an :class:`Addition`
    of a single tensor, as a position embedding is), a constant concatenated to the tokens (a class token,
    :class:`Concatenation`), or a softmax explained by :class:`AttnLRP`."""
    module = balance.module
    return (
        isinstance(getattr(module, "bias", None), Tensor)
        or isinstance(module, (*BATCHNORM_LAYERS, Normalization, Concatenation))
        or (isinstance(module, Addition) and balance.inputs == 1)
        or (isinstance(module, MultiheadAttentionCall) and module.biased)
        or isinstance(balance.rule, AttnLRP)
    )


def check(relevance: Tensor, explained: Tensor, ledger: Sequence[Balance], *,
          tolerance: float = TOLERANCE) -> None:
    """Raise :class:`NonConservativeError` unless the batch's relevance is accounted for.

    ``relevance`` (B, ...): input relevance; ``explained`` (B,): the explained logits; ``ledger``: the
    modules' balances as :meth:`spray.lrp.LRP.balance` returns them (backward order).
    """
    f = explained.detach().to(torch.float64)
    scale = float(torch.maximum(f.abs().max(), f.abs().median()))
    limit = tolerance * scale
    for balance in ledger:
        error = (balance.into - balance.out).abs()
        if not may_absorb(balance) and bool((error > limit).any()):
            raise NonConservativeError(_message(balance, error, f, limit))
    total = relevance.detach().reshape(len(relevance), -1).sum(1, dtype=torch.float64)
    absorbed = sum((b.out - b.into for b in ledger), torch.zeros_like(f))
    error = (total + absorbed - f).abs()
    if bool((error > limit).any()):
        i = int(error.argmax())
        raise NonConservativeError(
            f"LRP does not account for the relevance of batch sample {i}: input relevance "
            f"{float(total[i]):.6g} + absorbed {float(absorbed[i]):.6g} != explained logit {float(f[i]):.6g} "
            f"(tolerance {limit:.3g}). Every module keeps its balance, so relevance is created or destroyed "
            "between modules, by operations of the forward that have no rule (a model fx could not trace: see "
            "the UntracedModelWarning; route additions through spray.lrp.Sum). Pass --allow-nonconservative "
            "(allow_nonconservative=True) to attribute anyway."
        )


def _message(balance: Balance, error: Tensor, f: Tensor, limit: float) -> str:
    i = int(error.argmax())
    kind = type(balance.module).__qualname__
    return (
        f"LRP {'creates' if abs(float(balance.into[i])) > abs(float(balance.out[i])) else 'destroys'} relevance "
        f"at module {balance.name!r} ({kind}, rule {balance.rule!r}): batch sample {i} reaches it "
        f"with {float(balance.out[i]):.6g} and leaves it with {float(balance.into[i]):.6g} (explained logit "
        f"{float(f[i]):.6g}, tolerance {limit:.3g}), but a module without a bias must pass on what it "
        f"receives: the rule does not fit the function the module computes. Map one that does via the "
        f"composite, names={{{balance.name!r}: ...}} or types={{{kind}: ...}} (docs/lrp.md, 'Relevance "
        f"accounting'), or pass --allow-nonconservative (allow_nonconservative=True) to attribute anyway."
    )
