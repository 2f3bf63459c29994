"""Attribution methods by name: our LRP composites and captum's gradient family.

Every method follows the attributor contract of docs/architecture.md: ``attribute(model, x, target)``
returns ``(relevance, logits)``, ``name`` and ``params()`` describe it for the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from spray._checks import check_choice, check_int, check_real
from spray.errors import BadInputError


class Attributor(Protocol):
    """What the attribution runner needs from a method."""

    name: str

    def params(self) -> dict[str, Any]: ...

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]: ...


_GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad")


class GradientAttributor:
    """A captum gradient method (saliency, input×gradient, integrated gradients, SmoothGrad).

    Parameters are checked (a bad one is a BadInputError naming it) and stored unchanged; ``seed`` makes
    SmoothGrad's noise reproducible (the noise of a batch
    depends on the seed only, so a resumed run with the same batch size writes the same values) without
    touching the global random state.
    """

    def __init__(
        self,
        method: str,
        *,
        n_steps: int = 32,
        baseline: float = 0.0,
        nt_samples: int = 16,
        noise_level: float = 0.1,
        seed: int = 0,
    ) -> None:
        check_choice(method, "method", _GRADIENT_METHODS)
        check_int(n_steps, "n_steps", minimum=1)
        check_real(baseline, "baseline")
        check_int(nt_samples, "nt_samples", minimum=1)
        check_real(noise_level, "noise_level", minimum=0.0)
        check_int(seed, "seed", minimum=0)
        self.method = method
        self.n_steps = n_steps
        self.baseline = baseline
        self.nt_samples = nt_samples
        self.noise_level = noise_level
        self.seed = seed

    @property
    def name(self) -> str:
        return self.method

    def params(self) -> dict[str, Any]:
        if self.method == "integrated_gradients":
            return {"n_steps": self.n_steps, "baseline": self.baseline}
        if self.method == "smoothgrad":
            return {"nt_samples": self.nt_samples, "noise_level": self.noise_level, "seed": self.seed}
        return {}

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        from captum import attr

        with torch.no_grad():
            logits = model(x)
        inputs = x.detach().clone().requires_grad_(True)
        if self.method == "saliency":
            relevance = attr.Saliency(model).attribute(inputs, target=target, abs=False)
        elif self.method == "input_x_gradient":
            relevance = attr.InputXGradient(model).attribute(inputs, target=target)
        elif self.method == "integrated_gradients":
            relevance = attr.IntegratedGradients(model).attribute(
                inputs, baselines=self.baseline, target=target, n_steps=self.n_steps
            )
        else:  # smoothgrad
            # Noise is relative to each batch's value range, as in Smilkov et al. (2017).
            stdev = float(self.noise_level * (x.max() - x.min()).clamp(min=1e-12))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                relevance = attr.NoiseTunnel(attr.Saliency(model)).attribute(
                    inputs, nt_type="smoothgrad", nt_samples=self.nt_samples, stdevs=stdev,
                    target=target, abs=False,
                )
        for p in model.parameters():
            p.grad = None
        return relevance.detach(), logits.detach()


def _lrp(composite_name: str) -> Callable[..., Attributor]:
    def build(**params: Any) -> Attributor:
        from spray import lrp

        return lrp.LRP(getattr(lrp, composite_name)(**params))

    return build


def _gradient(method: str) -> Callable[..., Attributor]:
    return lambda **params: GradientAttributor(method, **params)


_METHODS: dict[str, Callable[..., Attributor]] = {
    "epsilon_plus_flat": _lrp("EpsilonPlusFlat"),
    "epsilon_plus_flat_attnlrp": _lrp("EpsilonPlusFlatAttnLRP"),
    "epsilon_gamma_box": _lrp("EpsilonGammaBox"),
    "epsilon_alpha2_beta1": _lrp("EpsilonAlpha2Beta1"),
    "epsilon_alpha2_beta1_flat": _lrp("EpsilonAlpha2Beta1Flat"),
    "epsilon": _lrp("Epsilon"),
    **{method: _gradient(method) for method in _GRADIENT_METHODS},
}


def available_methods() -> list[str]:
    """Names accepted by :func:`get_method` (and ``spray attribute --method``)."""
    return sorted(_METHODS)


def method_params(name: str, params: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """``params`` of method ``name`` for ``dataset``: EpsilonGammaBox's pixel box (``low``, ``high``), when
    neither is given, is an image source's input range per channel, shape (C, 1, 1) (its inputs of pixel
    values 0 and 1, after normalisation: spray.data.images.pixel_bounds)."""
    from spray.data.images import pixel_bounds

    bounds = pixel_bounds(dataset) if name == "epsilon_gamma_box" and not {"low", "high"} & set(params) else None
    if bounds is None:
        return params
    low, high = ([[[v]] for v in values] for values in bounds)
    return {**params, "low": low, "high": high}


def get_method(name: str, **params: Any) -> Attributor:
    """Build an attributor by name; unknown names or parameters are a :class:`BadInputError`."""
    try:
        factory = _METHODS[name]
    except KeyError:
        raise BadInputError(
            f"unknown attribution method {name!r}; choose one of: {', '.join(available_methods())}"
        ) from None
    try:
        return factory(**params)
    except (TypeError, BadInputError) as exc:
        raise BadInputError(f"bad parameters {params} for attribution method {name!r}: {exc}") from None


def recorded_method(info: dict[str, Any]) -> Attributor:
    """The attributor an attribution of the store was made with, from its record (``AuditStore.attribution_info``:
    ``method`` and ``params``): a method of :func:`get_method`, or a latent attribution
    (spray.attribution.latent.LatentAttributor: its composite, layer, grid and quantity), so that a re-audit
    attributes a corrected model as the original audit did, whichever kind the analysis read."""
    from spray.attribution.latent import LatentAttributor
    from spray.store import LATENT_METHOD

    name, params = info["method"], info["params"]
    if name != LATENT_METHOD:
        return get_method(name, **params)
    lrp = get_method(params["composite"], **params["composite_params"])
    return LatentAttributor(lrp, params["layer"], int(params["grid"]), params["quantity"])
