"""Models to audit: built by a user's ``MOD:FACTORY``, weights from a state_dict file, a stable hash."""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spray._checks import check_regular_file
from spray.data._imports import call_factory
from spray.errors import BadInputError


def load_model(spec: str, weights: str | Path | None = None, device: str = "cpu") -> nn.Module:
    """Build the model ``spec`` names, load ``weights`` (``torch.load(weights_only=True)``), eval mode, on
    ``device`` (:func:`device_named`)."""
    place = device_named(device)
    model = call_factory(spec, "model")
    if not isinstance(model, nn.Module):
        raise BadInputError(f"model {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model.to(place).eval()


_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")


def device_named(name: str) -> torch.device:
    """The torch device ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, refused unless this machine has it."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise BadInputError(f"device must be cpu, cuda, cuda:N or mps, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "a build without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU seen"
            raise BadInputError(f"device {name!r} is not available: torch {torch.__version__} here is {built}; "
                                "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadInputError(f"device {name!r} is not available: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                                f"cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BadInputError(f"device {name!r} is not available: this machine has no Apple GPU (MPS); use --device cpu")
    return device


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a state_dict file into ``model``, refusing anything but plain tensors (no pickled code)."""
    path = Path(weights)
    if not path.exists():
        raise BadInputError(f"weights file {path} does not exist")
    state = safe_load(path, "weights file")
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


def safe_load(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file it refuses or cannot read is bad input.

    weights_only unpickles tensors and plain containers only, so a file cannot run code; torch's own message
    for a refused file suggests ``weights_only=False``, which spray never does, so only its reason is kept.
    """
    check_regular_file(path, f"a {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4 ...": the error below says it all
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        # torch's reason, up to its advice (to allowlist globals or to drop weights_only, never followed here)
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\s*\n|$)", str(exc), re.S)
        reason = found.group(1).strip() if found else type(exc).__name__
        raise BadInputError(
            f"{what} {path} cannot be loaded safely ({reason}): it is not "
            "a state_dict saved by torch.save, or it holds objects other than tensors, whose loading could run "
            "code; spray loads weights with torch.load(weights_only=True) only. Save weights with "
            "torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for foreign or truncated files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(
            f"{what} {path} cannot be read by torch.load ({reason}); save weights with "
            "torch.save(model.state_dict(), path)"
        ) from None


def model_hash(model: nn.Module) -> str:
    """sha256 (hex) over the state_dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
