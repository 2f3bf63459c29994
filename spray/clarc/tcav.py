"""TCAV: does the model's output move when the activation moves along the artifact's direction?

Testing with Concept Activation Vectors (Kim et al. 2018). At a layer ``l`` with activation ``a(x)``, a CAV
``v`` (C,) is fitted on pooled activations of *concept* samples (the test data with the artifact in every
sample) against *random* ones (the same samples without it: the pairs differ only by the artifact). The
directional derivative of the class logit ``f_k`` along ``v`` is

``S_k(x) = Σ_{c,h,w} ∂f_k/∂a_{chw}(x) · v_c``   (``v`` at every position, as RR-ClArC's penalty reads it),

and over the class's samples ``X_k`` the **TCAV score** is ``|{x ∈ X_k : S_k(x) > 0}| / |X_k|``: 1.0 when
the artifact direction always raises the class's logit, 0.5 when its sign is random (no consistent use),
with the **magnitude** ``mean |S_k(x)|`` (0: insensitive).

The layer is not the corrected one: P- and RR-ClArC zero the derivative along the corrected layer's own
CAV by construction, so a CAV fitted independently at another layer is the fair witness
(:func:`tcav_layer`). Each model gets its own CAV, fitted on its own activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from spray.clarc.activations import along_channels, layer_output, pooled_activations, resolve_layer
from spray.clarc.cav import CAV
from spray.errors import BadInputError
from spray.training import eval_mode, sample_chunks


@dataclass(frozen=True)
class Tcav:
    """A model's TCAV figures for one class at one layer: ``score`` (share of positive directional
    derivatives), ``magnitude`` (mean |directional derivative|), ``cav_auc`` (held-out AUC of the CAV
    fitted there), ``n`` (samples of the class the derivatives were taken on)."""

    layer: str
    score: float
    magnitude: float
    cav_auc: float
    n: int


@torch.no_grad()
def _feature_maps(model: nn.Module, x: Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, output shape without the batch axis)`` of every leaf module whose output is a feature map
    (a tensor with channels and spatial axes), in the order they run in a forward pass of ``x``."""
    found: list[tuple[str, tuple[int, ...]]] = []

    def hook(name: str):
        def record(_module: nn.Module, _args: tuple, output: object) -> None:
            if isinstance(output, Tensor) and output.dim() >= 3 and name not in dict(found):
                found.append((name, tuple(output.shape[1:])))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if name and next(module.children(), None) is None]
    try:
        with eval_mode(model):
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return found


def tcav_layer(model: nn.Module, corrected: str, x: Tensor) -> str | None:
    """The layer TCAV measures at, other than ``corrected`` (the layer ClArC corrected): the last feature
    map that runs before ``corrected`` and differs from its output in shape (another block: an adjacent
    convolution and its activation would share the corrected layer's space); failing that, the first such
    map after it. None if the model has no other feature map. ``x``: a batch of inputs (one sample runs)."""
    resolve_layer(model, corrected)
    maps = _feature_maps(model, x)
    names = [name for name, _ in maps]
    inside = corrected + "."
    own = [i for i, name in enumerate(names) if name == corrected or name.startswith(inside)]
    if not own:
        raise BadInputError(f"layer {corrected!r} did not run in the model's forward pass; choose one that does")
    shape = maps[own[-1]][1]
    other = [i for i, (name, s) in enumerate(maps) if s != shape and i not in own]
    before = [i for i in other if i < own[0]]
    after = [i for i in other if i > own[-1]]
    chosen = before[-1] if before else (after[0] if after else None)
    return None if chosen is None else names[chosen]


def directional_derivatives(model: nn.Module, layer: str, x: Tensor, v: Tensor, target: int,
                            batch_size: int = 64) -> Tensor:
    """``S_target(x_i)`` (n,) along ``v`` (C,) at ``layer`` (see the module docstring), in eval mode."""
    out = []
    with eval_mode(model), torch.enable_grad():
        for i in range(0, len(x), batch_size):
            a, logits = layer_output(model, layer, x[i : i + batch_size], differentiable=True)
            (gradient,) = torch.autograd.grad(logits[:, target].sum(), a)
            out.append((gradient * along_channels(v, gradient)).flatten(1).sum(1).detach())
    return torch.cat(out)


def tcav(model: nn.Module, layer: str, *, concept: Dataset, random: Dataset, inputs: Dataset, target: int,
         random_state: int = 0) -> Tcav:
    """TCAV of class ``target`` at ``layer``: a signal CAV fitted on the pooled activations of the ``concept``
    samples against the ``random`` ones, derivatives taken on the ``inputs`` samples (the class's); each read
    :data:`~spray.training.CHUNK` samples at a time, so that a test set need not fit in memory."""
    if len(inputs) == 0:  # type: ignore[arg-type]
        raise BadInputError(f"TCAV needs samples of class {target} to take derivatives on; the test data has none")

    def pooled(dataset: Dataset) -> np.ndarray:
        return pooled_activations(model, layer, dataset, np.arange(len(dataset)))[0].numpy()  # type: ignore[arg-type]

    cav = CAV("signal", random_state=random_state).fit(pooled(concept), pooled(random))
    v = torch.from_numpy(cav.direction_)
    derivatives = torch.cat([directional_derivatives(model, layer, x, v, target)
                             for x, _ in sample_chunks(inputs, np.arange(len(inputs)))])  # type: ignore[arg-type]
    return Tcav(layer, float((derivatives > 0).float().mean()), float(derivatives.abs().mean()), cav.auc_,
                len(derivatives))
