"""RR-ClArC: fine-tune with a penalty on the model's sensitivity along the artifact direction.

Loss per batch: ``CE(f(x), y) + λ · mean_batch (∇_a f_y(x) · v)²`` where ``a`` is the layer's activation,
``f_y`` the logit of the sample's true class, and ``v`` the unit CAV broadcast over the spatial positions,
so ``∇_a f_y · v = Σ_{c,h,w} ∂f_y/∂a_{chw} v_c`` is the derivative of ``f_y`` when the activation moves by
``v`` at every position (the direction the CAV was fitted in, on spatially pooled activations). The
gradient is taken with ``create_graph=True`` so the penalty is itself differentiated (a second-order term).
The model then learns to decide the same way whether or not the artifact direction is present, without
ever seeing the artifact pasted anywhere. With a subspace CAV (orthonormal rows ``v_1..v_k``) the penalty
is the sum over its directions, ``Σ_j (∇_a f_y · v_j)²``: the model is made insensitive to the whole
subspace.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from spray._checks import check_real
from spray.clarc.activations import along_channels, layer_output
from spray.clarc.artifact import ArtifactModel
from spray.clarc.finetune import FinetuningCorrector, Objective
from spray.training import eval_mode

LAMBDA = 10.0
EPOCHS = 10
LR = 1e-2
MAX_GRAD_NORM = 1.0
"""Each step's gradient is clipped to this norm. The penalty's gradient grows with the penalty itself (it is
the derivative of a square of derivatives), so a step too long for its curvature feeds on itself: on the
benchmark's full-size Waterbirds-like set the penalty went 0.49 → 2·10³ in four SGD steps and was infinite in
epoch 5, in every run (docs/clarc.md §25, §27); clipped, the same run converged (penalty 0.49 → 5·10⁻³)."""


def rr_penalty(grad: Tensor, v: Tensor) -> Tensor:
    """``mean_n Σ_j (Σ_{c,...} grad_{n,c,...} v_{jc})²`` for ``grad`` (n, C, ...) and ``v`` (C,) or (k, C)."""
    return sum((grad * along_channels(row, grad)).flatten(1).sum(1).square().mean()
               for row in v.reshape(-1, v.shape[-1]))


class RRClArC(FinetuningCorrector):
    """Right-Reason ClArC: fine-tune with cross-entropy plus ``lam`` × the penalty of :func:`rr_penalty`.

    Args:
        lam: λ, the penalty's weight (≥ 0).
        epochs, lr, batch_size, seed: of the fine-tuning (SGD with momentum), see spray.clarc.finetune.
        trainable: ``"after"`` fine-tunes the modules after the artifact's layer, ``"all"`` the model.
        max_grad_norm: each step's gradient clipped to this norm (:data:`MAX_GRAD_NORM`), None: not clipped.
    """

    name = "rrclarc"

    def __init__(self, *, lam: float = LAMBDA, epochs: int = EPOCHS, lr: float = LR, batch_size: int = 64,
                 seed: int = 0, trainable: str = "after", optimizer: str = "sgd",
                 max_grad_norm: float | None = MAX_GRAD_NORM) -> None:
        super().__init__(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, trainable=trainable,
                         optimizer=optimizer, max_grad_norm=max_grad_norm)
        self.lam = lam

    def method_params(self) -> dict[str, Any]:
        return {"lambda": self.lam, "max_grad_norm": self.max_grad_norm}

    def objective(self, artifact: ArtifactModel) -> Objective:
        check_real(self.lam, "lambda", minimum=0.0)
        layer, v, lam = artifact.layer, artifact.basis, self.lam

        def loss(model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
            ce = F.cross_entropy(model(x), y)
            # The sensitivity of the model as deployed: in training mode, dropout after the layer would
            # make the gradient a random masking of it, and the penalty's variance would punish every
            # channel v touches, not the direction; BatchNorm would couple the samples of a batch. The
            # penalty is differentiated twice, which torch's fused attention kernels do not implement on
            # the CPU (a ViT's nn.MultiheadAttention): attention takes the math kernel here.
            with eval_mode(model), sdpa_kernel(SDPBackend.MATH):
                a, logits = layer_output(model, layer, x, differentiable=True)
                (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), a, create_graph=True)
            return ce + lam * rr_penalty(grad, v)

        return loss
