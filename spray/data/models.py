"""Models to audit: built by a user's ``MOD:FACTORY``, weights from a state_dict file, a stable hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from spray.data._imports import call_factory
from spray.errors import BadInputError


def load_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """Build the model ``spec`` names, load ``weights`` (``torch.load(weights_only=True)``), eval mode."""
    model = call_factory(spec, "model")
    if not isinstance(model, nn.Module):
        raise BadInputError(f"model {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a state_dict file into ``model``, refusing anything but plain tensors (no pickled code)."""
    path = Path(weights)
    if not path.is_file():
        raise BadInputError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for foreign or unsafe files
        raise BadInputError(
            f"weights file {path} cannot be loaded safely (weights_only=True): {exc}. Save weights with "
            "torch.save(model.state_dict(), path)"
        ) from None
    # Training checkpoints often nest the weights: {"state_dict": ..., "epoch": ...}.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(
            f"weights file {path} does not hold a state_dict (a dict of name -> tensor) but "
            f"{type(state).__name__}; save weights with torch.save(model.state_dict(), path)"
        )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing keys {missing[:10]}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected[:10]}")
        if shapes:
            problems.append(f"shape mismatches {shapes[:10]}")
        if unexpected and all(k.startswith("module.") for k in unexpected):
            problems.append("the file's keys start with 'module.' (saved from DataParallel): save "
                            "model.module.state_dict() instead")
        raise BadInputError(f"weights file {path} does not match the model: {'; '.join(problems)}")
    model.load_state_dict(state)


def model_hash(model: nn.Module) -> str:
    """sha256 (hex) over the state_dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
