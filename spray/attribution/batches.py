"""One batch of the attribution: validate and stack the samples, explain them, check the outputs, make
thumbnails. :class:`BatchExplainer` is small and picklable, so the same batch is computed here
(:mod:`spray.attribution.runner`) or on a dask worker (:mod:`spray.attribution.distributed`) alike."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from spray.errors import BadInputError
from spray.lrp import accounting

__all__ = ["BatchExplainer", "ExplainedBatch", "count_outputs", "placement", "read_batches", "sample_input",
           "thumbnail_shape"]


def sample_input(dataset: Dataset, i: int) -> Tensor:
    """Dataset sample ``i``'s input, checked as a batch would check it."""
    return _as_input(i, _as_pair(i, dataset[i])[0])


def placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's parameters (CPU float32 for a model without any)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    return device, dtype


def count_outputs(model: nn.Module, x0: Tensor, *, dtype: torch.dtype, device: torch.device) -> int:
    """The model's number of outputs, from one forward pass on dataset sample 0.

    The pass also checks that the model leaves its input as it found it: LRP's first layer and the stored
    thumbnails read the input after the forward pass, so a model that edits it in place gets wrong maps.
    """
    x = x0.unsqueeze(0).to(device, dtype)
    watch = _InputWatch(model, x)
    with torch.no_grad(), watch:
        try:
            probe = model(x)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise BadInputError(
                f"the model cannot process dataset sample 0 (input shape {tuple(x0.shape)}, dtype "
                f"{dtype}): {exc}. Check that the data source matches the model's expected input"
            ) from None
    watch.check()
    if isinstance(probe, (Mapping, tuple, list)):
        raise BadInputError(
            f"the model returned {_describe_outputs(probe)} for one sample; spray explains one logits tensor "
            "of shape (batch, n_outputs): let the factory return a module whose forward returns that tensor "
            "(e.g. a wrapper returning model(x)['logits'])"
        )
    if not isinstance(probe, Tensor) or probe.ndim != 2:
        raise BadInputError(
            f"the model must return logits of shape (batch, n_outputs); it returned "
            f"{getattr(probe, 'shape', type(probe).__name__)} for one sample of shape {tuple(x0.shape)}"
        )
    return int(probe.shape[1])


def _describe_outputs(outputs: Mapping[Any, Any] | Sequence[Any]) -> str:
    """``a dict with keys 'logits' (1, 10), 'hidden' (1, 64)`` or ``a tuple of 2 items: (1, 10), None``."""

    def shape(value: Any) -> str:
        return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__

    if isinstance(outputs, Mapping):
        items = ", ".join(f"{key!r} {shape(value)}" for key, value in outputs.items())
        return f"a {type(outputs).__name__} with keys {items}"
    return f"a {type(outputs).__name__} of {len(outputs)} items: {', '.join(shape(v) for v in outputs)}"


class _InputWatch:
    """Finds the module whose code edits the model's input tensor in place during one forward pass.

    Every module's forward is bracketed by hooks that compare the input with a copy taken before the pass.
    A change first seen when module M *starts* was made by the code of the module running around it; one
    first seen when M *ends* was made by M's own code (a change inside M's children is seen at theirs).
    """

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        self.model, self.x, self.copy = model, x, x.detach().clone()
        self.running: list[str] = []
        self.culprit: str | None = None
        self.handles: list[Any] = []

    def __enter__(self) -> _InputWatch:
        for name, module in self.model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._starts(name)))
            self.handles.append(module.register_forward_hook(self._ends(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _changed(self) -> bool:
        return self.culprit is None and not self._same()

    def _same(self) -> bool:
        """Input equal to its copy, NaN where the copy has NaN (a NaN input is refused later, by name)."""
        return torch.equal(self.x, self.copy) or bool(
            ((self.x == self.copy) | (self.x.isnan() & self.copy.isnan())).all()
        )

    def _starts(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if self._changed():
                self.culprit = self.running[-1] if self.running else ""
            self.running.append(name)

        return hook

    def _ends(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.running.pop()
            if self._changed():
                self.culprit = name

        return hook

    def check(self) -> None:
        """Raise :class:`BadInputError` naming the module if the input changed during the pass."""
        if self.culprit is None and self._same():
            return
        name = self.culprit or ""
        module = self.model.get_submodule(name)
        where = f"module {name!r} ({type(module).__name__})" if name else f"the forward of {type(module).__name__}"
        raise BadInputError(
            f"the model modifies its input tensor in place ({where}); spray reads the input after the "
            "forward pass to explain it, so the maps would be wrong: make that step out of place "
            "(e.g. x = x - mean instead of x.sub_(mean), or clone the input first)"
        )


@dataclass(frozen=True)
class ExplainedBatch:
    """One batch's rows for :meth:`AuditStore.write_batch`, and the seconds it took to compute."""

    start: int
    relevance: np.ndarray
    logits: np.ndarray
    target: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    thumbnails: np.ndarray | None
    input_share: np.ndarray
    seconds: float


@dataclass(frozen=True)
class BatchExplainer:
    """Explains a batch of dataset positions with a given model, dataset and attributor.

    Holds only what the client decided (shapes, target mode, dtypes, thumbnail geometry), so it is small
    and picklable: dask workers receive it and call it with the model and data they built themselves.
    """

    input_shape: tuple[int, ...]
    n_outputs: int
    target: str
    relevance_dtype: str
    thumbnail_shape: tuple[int, int, int] | None
    thumbnail_range: tuple[tuple[float, ...], tuple[float, ...]] | None
    relevance_shape: tuple[int, ...] | None = None
    """One sample's relevance; None: the input's (a heatmap). Latent relevance has the layer's (C, g, g)."""

    def __call__(
        self, model: nn.Module, dataset: Dataset, attributor: Any, positions: Sequence[int],
        items: Sequence[Any] | None = None,
    ) -> ExplainedBatch:
        """Explain samples ``positions`` of ``dataset``; ``items``, when given, are those samples read
        already (:func:`read_batches`)."""
        tick = time.perf_counter()
        index, x, labels, explained = self._inputs(model, dataset, positions, items)
        relevance, logits = attributor.attribute(model, x, explained)
        shape = (len(x), *(self.relevance_shape or self.input_shape))
        relevance, logits = _checked_outputs(
            attributor.name, index, x, shape, relevance, logits, self.n_outputs, self.relevance_dtype
        )
        thumbs = _thumbnails(x, self.thumbnail_shape, self.thumbnail_range) if self.thumbnail_shape else None
        target = explained.detach().cpu().numpy().astype(np.int64)
        explained_logits = torch.from_numpy(logits[np.arange(len(x)), target])
        share = accounting.input_share(torch.from_numpy(relevance), explained_logits)
        return ExplainedBatch(
            start=int(index[0]),
            relevance=relevance,
            logits=logits,
            target=target,
            labels=labels.numpy(),
            index=index.numpy(),
            thumbnails=thumbs,
            input_share=share.numpy().astype(np.float32),
            seconds=time.perf_counter() - tick,
        )

    def check_accounting(
        self, model: nn.Module, dataset: Dataset, attributor: Any, positions: Sequence[int]
    ) -> None:
        """Raise :class:`NonConservativeError` unless LRP accounts for the relevance of these samples
        (spray.lrp.accounting); ``attributor`` has ``balance`` (spray.lrp.LRP)."""
        _, x, _, explained = self._inputs(model, dataset, positions)
        relevance, logits, ledger = attributor.balance(model, x, explained)
        accounting.check(relevance, logits.gather(1, explained[:, None])[:, 0], ledger)

    def _inputs(
        self, model: nn.Module, dataset: Dataset, positions: Sequence[int], items: Sequence[Any] | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(dataset indices, x on the model's device and dtype, labels, explained outputs)."""
        items = [dataset[i] for i in positions] if items is None else items
        index, x, labels = _collate(
            list(zip(positions, items, strict=True)), input_shape=self.input_shape, n_outputs=self.n_outputs
        )
        device, dtype = placement(model)
        x = x.to(device, dtype)
        if self.target == "prediction":
            with torch.no_grad():
                explained = model(x).argmax(dim=1)
        else:
            explained = labels.to(device)
        return index, x, labels, explained


class _Caught(Dataset):
    """``dataset`` whose samples' exceptions are returned, not raised: a DataLoader worker would re-raise
    them in this process as another message ("Caught ... in DataLoader worker process 0 ..."), where the
    bad-input message must stay the one the dataset wrote. An exit in user code is returned too."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        try:
            return self.dataset[i]
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - raised again in the reading process
            return _Failed(exc)


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def read_batches(dataset: Dataset, batches: Sequence[list[int]], workers: int) -> Iterator[list[Any]]:
    """The samples of each batch, in order: read here (``workers`` 0) or by ``workers`` DataLoader worker
    processes, each reading whole batches ahead (two per worker), so decoding overlaps explaining."""
    if workers == 0:
        yield from ([dataset[i] for i in batch] for batch in batches)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_Caught(dataset), batch_sampler=batches, num_workers=workers, collate_fn=list,
                        persistent_workers=False)
    for items in loader:
        failed = next((item for item in items if isinstance(item, _Failed)), None)
        if failed is not None:
            raise failed.error
        yield items


def _as_pair(i: int, item: Any) -> tuple[Any, Any]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise BadInputError(
            f"dataset sample {i} is a {type(item).__name__}; a dataset must yield (x, y) pairs"
        )
    return item[0], item[1]


def _as_input(i: int, x: Any) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise BadInputError(f"dataset sample {i}: x is a {type(x).__name__}, expected a tensor")
    if not x.dtype.is_floating_point:
        raise BadInputError(
            f"dataset sample {i} has dtype {x.dtype}; spray explains floating-point inputs: convert them "
            "in the dataset to the scale the model was trained on (e.g. x.float() / 255)"
        )
    return x


def _as_label(i: int, y: Any, n_outputs: int) -> int:
    if isinstance(y, Tensor) and y.numel() == 1 and not (y.dtype.is_floating_point or y.dtype == torch.bool):
        y = int(y.item())
    elif isinstance(y, np.ndarray) and y.size == 1 and y.dtype.kind in "iu":
        y = int(y.item())
    elif isinstance(y, np.integer):
        y = int(y)
    if isinstance(y, bool) or not isinstance(y, int):
        raise BadInputError(f"dataset sample {i} has label {y!r}; labels must be integers")
    if not 0 <= y < n_outputs:
        raise BadInputError(
            f"dataset sample {i} has label {y}, outside [0, {n_outputs}) for a model with {n_outputs} outputs"
        )
    return y


def _collate(
    items: list[tuple[int, Any]], *, input_shape: tuple[int, ...], n_outputs: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate and stack a batch: (dataset indices, x, labels)."""
    xs, ys = [], []
    for i, item in items:
        x, y = _as_pair(i, item)
        x = _as_input(i, x)
        if tuple(x.shape) != input_shape:
            raise BadInputError(
                f"dataset sample {i} has shape {tuple(x.shape)}, but sample 0 has {input_shape}: all samples "
                "must have one shape (resize them in the dataset)"
            )
        xs.append(x)
        ys.append(_as_label(i, y, n_outputs))
    positions = torch.tensor([i for i, _ in items], dtype=torch.int64)
    return positions, torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def _checked_outputs(
    method: str, positions: Tensor, x: Tensor, shape: tuple[int, ...], relevance: Any, logits: Any,
    n_outputs: int, dtype: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The attributor's outputs as numpy (relevance in ``dtype``), after checking shapes (relevance:
    ``shape``) and finiteness."""
    if not isinstance(relevance, Tensor) or not isinstance(logits, Tensor):
        raise BadInputError(f"attributor {method!r} must return (relevance, logits) tensors")
    if tuple(relevance.shape) != shape:
        raise BadInputError(
            f"attributor {method!r} returned relevance of shape {tuple(relevance.shape)} for inputs of "
            f"shape {tuple(x.shape)}" + ("" if shape == tuple(x.shape) else f"; expected {shape}")
        )
    if logits.shape != (x.shape[0], n_outputs):
        raise BadInputError(
            f"attributor {method!r} returned logits of shape {tuple(logits.shape)}, expected "
            f"{(x.shape[0], n_outputs)}"
        )
    rel = relevance.detach().cpu().numpy().astype(dtype, copy=False)
    out = logits.detach().cpu().numpy().astype(np.float32, copy=False)
    finite = np.isfinite(rel.reshape(len(rel), -1)).all(axis=1) & np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = positions.numpy()[~finite].tolist()
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        hint = " (or relevance beyond float16's range: use float32)" if dtype == "float16" else ""
        raise BadInputError(
            f"attributor {method!r} produced non-finite relevance or logits{hint} for dataset samples "
            f"{shown}; check these inputs for NaN/inf and the model's numerics (nothing of this batch "
            "was written; earlier batches are kept)"
        )
    return rel, out


def thumbnail_shape(input_shape: tuple[int, ...], size: int | None) -> tuple[int, int, int] | None:
    """(C, h, w) with max(h, w) <= size, keeping the aspect ratio; None unless inputs are (C, H, W)."""
    if not size or len(input_shape) != 3:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BadInputError(f"thumbnail_size must be a positive integer or None, got {size!r}")
    c, h, w = input_shape
    scale = min(1.0, size / max(h, w))
    return c, max(1, round(h * scale)), max(1, round(w * scale))


def _thumbnails(
    x: Tensor, shape: tuple[int, int, int], value_range: tuple[tuple[float, ...], tuple[float, ...]] | None
) -> np.ndarray:
    """uint8 thumbnails (B, *shape): ``value_range`` (low, high: one value, or one per channel; default:
    each sample's min/max) maps to 0..255.

    Area averaging is linear, so pooling first and scaling after gives the same values for less work.
    """
    x = x.detach().float().cpu()
    if value_range is None:
        flat = x.numpy().reshape(len(x), -1)
        low = flat.min(axis=1).reshape(-1, 1, 1, 1)
        span = np.maximum(flat.max(axis=1).reshape(-1, 1, 1, 1) - low, 1e-12)
    else:
        low = np.asarray(value_range[0], dtype=np.float32).reshape(-1, 1, 1)
        span = np.asarray(value_range[1], dtype=np.float32).reshape(-1, 1, 1) - low
    if tuple(x.shape[-2:]) != shape[-2:]:
        x = F.interpolate(x, size=shape[-2:], mode="area")
    scaled = np.clip((x.numpy() - low) / span, 0.0, 1.0)
    return np.rint(scaled * 255.0).astype(np.uint8)
