"""Explain every sample of a dataset, batch by batch, into the audit store; an interrupted run resumes.

Batches are a fixed grid over the dataset (``[0, b), [b, 2b), ...`` for batch size ``b``) and a batch's
done flags are written in the same store transaction as its data, after the data. A resumed run computes
exactly the batches not yet done, with the same members, so its result equals an uninterrupted run's.
Where a batch is computed (here, or on a dask worker: ``attribution/distributed.py``) does not change it:
this process writes every batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from spray.attribution.distributed import WorkerRecipe, explain_on_cluster
from spray.errors import BadInputError, StoreError
from spray.lrp import accounting
from spray.scheduling import dask_client, local_workers
from spray.store import AuditStore, canonical

__all__ = ["attribute_dataset"]

_TARGETS = ("label", "prediction")
_RELEVANCE_DTYPES = ("float32", "float16")


def attribute_dataset(
    store_path: str | Path,
    model: nn.Module,
    dataset: Dataset,
    attributor: Any,
    *,
    model_hash: str,
    model_name: str,
    dataset_name: str,
    name: str | None = None,
    target: str = "label",
    batch_size: int = 32,
    label_names: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    thumbnail_size: int | None = 64,
    thumbnail_range: tuple[float, float] | None = None,
    relevance_dtype: str = "float32",
    on_batch: Callable[[int, int], None] | None = None,
    scheduler: str | None = None,
    recipe: WorkerRecipe | None = None,
    shard_batches: int = 4,
    allow_nonconservative: bool = False,
) -> dict[str, Any]:
    """Attribute every sample of ``dataset`` into the store at ``store_path`` (created if missing).

    Args:
        store_path: the audit store (HDF5); its writer lock is held for the whole run.
        model: the classifier; run in eval mode, each module's mode restored afterwards.
        dataset: map-style, ``dataset[i] -> (x, y)``: ``x`` a floating tensor (or array) of one shape,
            ``y`` an integer label in ``[0, n_outputs)``. Integer inputs are refused rather than guessed
            at (is 255 white, or was the model trained on 0..255?): convert them in the dataset.
        attributor: follows the attributor contract (docs/architecture.md): ``name``, ``params()``,
            ``attribute(model, x, target) -> (relevance, logits)``.
        model_hash, model_name, dataset_name: identify the run in the store (``model_hash``: sha256 of
            the weights, see ``spray.data.model_hash``).
        name: the attribution's name in the store; default ``attributor.name``.
        target: ``"label"`` explains the true label, ``"prediction"`` the model's argmax.
        batch_size: samples per batch (and per store transaction). A resumed run must use the batch size
            the attribution was started with, so its batches, and results, match an uninterrupted run.
        label_names: class names, recorded in the store (default: the class indices as text).
        overwrite: start over, replacing an attribution of this name (whatever made it).
        progress: show a progress bar on stderr.
        thumbnail_size: thumbnails of (C, H, W) inputs are area-downsampled to at most this size per
            side and stored as uint8; ``None`` or 0 for none. Written once, with the samples.
        thumbnail_range: ``(low, high)`` input values mapped to 0 and 255; default each sample's min/max.
        relevance_dtype: ``"float32"`` or ``"float16"`` (half the size; values beyond ±65504 are an error).
        on_batch: called as ``on_batch(start, stop)`` after each batch is committed to the store.
        scheduler: None explains in this process. ``"local:N"`` (a LocalCluster of N worker processes on
            127.0.0.1) or a dask scheduler's address shards the batches over dask workers: each worker
            rebuilds the model and data from ``recipe`` once and receives ``model``'s weights from here;
            this process stays the store's only writer (docs/distributed.md). The batches, and so the
            stored values, are the same either way.
        recipe: with ``scheduler``: the ``MOD:FACTORY`` of the model and the data source spec the
            workers open (``model`` and ``dataset`` must be what they build).
        shard_batches: with ``scheduler``: batches per dask task (a contiguous range of samples); a
            worker that dies costs at most its unfinished shards.
        allow_nonconservative: skip the check of an LRP attributor's relevance accounting on the first
            batch (docs/lrp.md, "Relevance accounting").

    Returns:
        A JSON-serialisable summary: store, name, method, params, target, n_samples, computed (samples
        attributed by this call), skipped (already done), complete, seconds, attribute_seconds (time
        explaining, summed over workers), write_seconds (time inside store writes), scheduler.

    Raises:
        BadInputError: a sample, label or argument is unusable, or the attributor's output is non-finite
            (the message names the dataset indices; nothing of that batch is written).
        NonConservativeError: LRP creates or destroys relevance on the first batch (the message names
            the module); raised before the store is opened.
        StoreError: the store holds this attribution from another model, method, parameters or target
            (pass ``overwrite=True``), or samples of another dataset.
    """
    started = time.perf_counter()
    if target not in _TARGETS:
        raise BadInputError(f"target must be one of {_TARGETS}, got {target!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if relevance_dtype not in _RELEVANCE_DTYPES:
        raise BadInputError(f"relevance_dtype must be one of {_RELEVANCE_DTYPES}, got {relevance_dtype!r}")
    if thumbnail_range is not None:
        low, high = (float(v) for v in thumbnail_range)
        if not high > low:
            raise BadInputError(f"thumbnail_range must be (low, high) with high > low, got {thumbnail_range}")
        thumbnail_range = (low, high)
    local_workers(scheduler)
    if scheduler is not None and not isinstance(recipe, WorkerRecipe):
        raise BadInputError(
            f"scheduler={scheduler!r} needs recipe=WorkerRecipe(model=MOD:FACTORY, data=SOURCE): dask workers "
            "build the model and open the data themselves"
        )
    if isinstance(shard_batches, bool) or not isinstance(shard_batches, int) or shard_batches < 1:
        raise BadInputError(f"shard_batches must be a positive integer, got {shard_batches!r}")
    for attr in ("name", "params", "attribute"):
        if not hasattr(attributor, attr):
            raise BadInputError(f"attributor {attributor!r} lacks {attr!r} (see the attributor contract)")
    name = name or attributor.name
    method = attributor.name
    params = canonical(attributor.params())

    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise BadInputError("the dataset has no len(): spray needs a map-style dataset") from None
    if n == 0:
        raise BadInputError("the dataset is empty")
    x0 = _as_input(0, _as_pair(0, dataset[0])[0])
    input_shape = tuple(x0.shape)
    device, dtype = _placement(model)
    thumb_shape = _thumbnail_shape(input_shape, thumbnail_size)

    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        n_outputs = _probe(model, x0, dtype=dtype, device=device)
        if label_names is not None and len(label_names) != n_outputs:
            raise BadInputError(
                f"{len(label_names)} label names given for a model with {n_outputs} outputs: spray needs one name "
                "per model output, in output order (label i names output i). A folder: source names and "
                "numbers its classes by its sorted sub-folders, so it must hold one sub-folder per output "
                f"(a subset would be labelled wrongly); an npz or hdf5 file or a dataset factory must give all "
                f"{n_outputs} names, or none (the outputs are then named 0, 1, ...)"
            )
        explain = BatchExplainer(input_shape, n_outputs, target, relevance_dtype, thumb_shape, thumbnail_range)
        if not allow_nonconservative and hasattr(attributor, "balance"):
            # Before the store is touched: a refused model leaves nothing behind.
            explain.check_accounting(model, dataset, attributor, range(min(batch_size, n)))

        with ExitStack() as stack:
            # The cluster first: a bad scheduler is refused before the store is touched.
            client = stack.enter_context(dask_client(scheduler)) if scheduler is not None else None
            created = not Path(store_path).exists()
            store = stack.enter_context(AuditStore(store_path, mode="a"))
            computed = 0
            if created:
                stack.push(lambda kind, *_: _drop_if_refused_empty(Path(store_path).resolve(), kind, computed))
            if label_names is None and not store.attrs()["label_names"]:
                label_names = [str(i) for i in range(n_outputs)]
            store.prepare_samples(
                n,
                dataset={"name": dataset_name, "size": n},
                model={"name": model_name, "hash": model_hash},
                label_names=label_names,
                thumbnail_shape=thumb_shape,
            )
            wanted = {
                "method": method,
                "params": params,
                "target": target,
                "model_hash": model_hash,
                "shape": [n, *input_shape],
                "dtype": relevance_dtype,
                "n_outputs": n_outputs,
            }
            if overwrite or name not in store.attributions():
                create = True
            else:
                have = store.attribution_info(name)
                _check_resumable(store.path, name, have, wanted, batch_size)
                create = False
            if create:
                store.create_attribution(
                    name,
                    input_shape=input_shape,
                    n_outputs=n_outputs,
                    dtype=relevance_dtype,
                    attrs={
                        "method": method,
                        "params": params,
                        "model_hash": model_hash,
                        "model_name": model_name,
                        "batch_size": batch_size,
                        "target": target,
                    },
                )
            done = store.read(f"attributions/{name}/done")
            batches = [
                list(range(s, min(s + batch_size, n)))
                for s in range(0, n, batch_size)
                if not done[s : s + batch_size].all()
            ]
            skipped = n - sum(len(b) for b in batches)
            if client is None:
                results: Iterable[ExplainedBatch] = (explain(model, dataset, attributor, b) for b in batches)
            else:
                results = explain_on_cluster(
                    client, recipe, model, n, attributor, explain, batches, shard_batches=shard_batches
                )
            computed, attribute_seconds, write_seconds = 0, 0.0, 0.0
            bar = tqdm(
                total=n, initial=skipped, disable=not progress, file=sys.stderr, unit="sample",
                desc=f"attribute {name}", dynamic_ncols=True,
            )
            try:
                for batch in results:
                    attribute_seconds += batch.seconds
                    tick = time.perf_counter()
                    store.write_batch(
                        name,
                        batch.start,
                        relevance=batch.relevance,
                        logits=batch.logits,
                        target=batch.target,
                        labels=batch.labels,
                        index=batch.index,
                        thumbnails=batch.thumbnails,
                        input_share=batch.input_share,
                    )
                    write_seconds += time.perf_counter() - tick
                    computed += len(batch.index)
                    bar.update(len(batch.index))
                    if on_batch is not None:
                        on_batch(batch.start, batch.start + len(batch.index))
            finally:
                bar.close()
            complete = store.attribution_info(name)["complete"]
    finally:
        for module, training in modes.items():
            module.train(training)

    return {
        "store": str(store_path),
        "name": name,
        "method": method,
        "params": params,
        "target": target,
        "n_samples": n,
        "computed": computed,
        "skipped": skipped,
        "complete": complete,
        "seconds": round(time.perf_counter() - started, 3),
        "attribute_seconds": round(attribute_seconds, 3),
        "write_seconds": round(write_seconds, 3),
        "scheduler": scheduler,
    }


def _check_resumable(
    path: Path, name: str, have: dict[str, Any], wanted: dict[str, Any], batch_size: int
) -> None:
    """Raise unless the stored attribution ``name`` is the one asked for, started with ``batch_size``."""
    differ = [key for key, value in wanted.items() if have[key] != value]
    if differ:
        details = "; ".join(f"{key}: store {have[key]!r}, this run {wanted[key]!r}" for key in differ)
        raise StoreError(
            f"store {path} holds attribution {name!r} of model {have['model_hash']} with method "
            f"{have['method']!r}, params {have['params']}, target {have['target']!r} ({details}); pass "
            "overwrite=True (--overwrite) to replace it, or choose another name (--name)"
        )
    if not have["complete"] and have["batch_size"] != batch_size:
        raise BadInputError(
            f"attribution {name!r} in {path} was started with batch size {have['batch_size']} and is "
            f"{have['done']}/{have['n']} done; resume with batch_size={have['batch_size']} (--batch-size "
            f"{have['batch_size']}) so the result equals an uninterrupted run, or pass overwrite=True "
            "(--overwrite) to start over"
        )


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's parameters (CPU float32 for a model without any)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    return device, dtype


def _drop_if_refused_empty(path: Path, kind: type[BaseException] | None, computed: int) -> None:
    """Remove a store this run created when its input is refused before any batch is written (a bad sample
    in the first batch, an unreadable image): a refusal leaves no store that holds nothing. Called with
    the writer lock still held. Other failures (an interrupt, dying workers) keep the store, whose
    attribution resumes like any interrupted run's."""
    if kind is not None and issubclass(kind, BadInputError) and computed == 0:
        path.unlink(missing_ok=True)


def _probe(model: nn.Module, x0: Tensor, *, dtype: torch.dtype, device: torch.device) -> int:
    """The model's number of outputs, from one forward pass on dataset sample 0."""
    with torch.no_grad():
        try:
            probe = model(x0.unsqueeze(0).to(device, dtype))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise BadInputError(
                f"the model cannot process dataset sample 0 (input shape {tuple(x0.shape)}, dtype "
                f"{dtype}): {exc}. Check that the data source matches the model's expected input"
            ) from None
    if not isinstance(probe, Tensor) or probe.ndim != 2:
        raise BadInputError(
            f"the model must return logits of shape (batch, n_outputs); it returned "
            f"{getattr(probe, 'shape', type(probe).__name__)} for one sample of shape {tuple(x0.shape)}"
        )
    return int(probe.shape[1])


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
    thumbnail_range: tuple[float, float] | None

    def __call__(
        self, model: nn.Module, dataset: Dataset, attributor: Any, positions: Sequence[int]
    ) -> ExplainedBatch:
        tick = time.perf_counter()
        index, x, labels, explained = self._inputs(model, dataset, positions)
        relevance, logits = attributor.attribute(model, x, explained)
        relevance, logits = _checked_outputs(
            attributor.name, index, x, relevance, logits, self.n_outputs, self.relevance_dtype
        )
        thumbs = _thumbnails(x, self.thumbnail_shape, self.thumbnail_range) if self.thumbnail_shape else None
        target = explained.detach().cpu().numpy().astype(np.int64)
        share = accounting.input_share(torch.from_numpy(relevance), torch.from_numpy(logits[np.arange(len(x)), target]))
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
        self, model: nn.Module, dataset: Dataset, positions: Sequence[int]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(dataset indices, x on the model's device and dtype, labels, explained outputs)."""
        index, x, labels = _collate(
            [(i, dataset[i]) for i in positions], input_shape=self.input_shape, n_outputs=self.n_outputs
        )
        device, dtype = _placement(model)
        x = x.to(device, dtype)
        if self.target == "prediction":
            with torch.no_grad():
                explained = model(x).argmax(dim=1)
        else:
            explained = labels.to(device)
        return index, x, labels, explained


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
    method: str, positions: Tensor, x: Tensor, relevance: Any, logits: Any, n_outputs: int, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """The attributor's outputs as numpy (relevance in ``dtype``), after checking shapes and finiteness."""
    if not isinstance(relevance, Tensor) or not isinstance(logits, Tensor):
        raise BadInputError(f"attributor {method!r} must return (relevance, logits) tensors")
    if relevance.shape != x.shape:
        raise BadInputError(
            f"attributor {method!r} returned relevance of shape {tuple(relevance.shape)} for inputs of "
            f"shape {tuple(x.shape)}"
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


def _thumbnail_shape(input_shape: tuple[int, ...], size: int | None) -> tuple[int, int, int] | None:
    """(C, h, w) with max(h, w) <= size, keeping the aspect ratio; None unless inputs are (C, H, W)."""
    if not size or len(input_shape) != 3:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BadInputError(f"thumbnail_size must be a positive integer or None, got {size!r}")
    c, h, w = input_shape
    scale = min(1.0, size / max(h, w))
    return c, max(1, round(h * scale)), max(1, round(w * scale))


def _thumbnails(
    x: Tensor, shape: tuple[int, int, int], value_range: tuple[float, float] | None
) -> np.ndarray:
    """uint8 thumbnails (B, *shape): ``value_range`` (default: each sample's min/max) maps to 0..255.

    Area averaging is linear, so pooling first and scaling after gives the same values for less work.
    """
    x = x.detach().float().cpu()
    if value_range is None:
        flat = x.numpy().reshape(len(x), -1)
        low = flat.min(axis=1).reshape(-1, 1, 1, 1)
        span = np.maximum(flat.max(axis=1).reshape(-1, 1, 1, 1) - low, 1e-12)
    else:
        low, span = value_range[0], value_range[1] - value_range[0]
    if tuple(x.shape[-2:]) != shape[-2:]:
        x = F.interpolate(x, size=shape[-2:], mode="area")
    scaled = np.clip((x.numpy() - low) / span, 0.0, 1.0)
    return np.rint(scaled * 255.0).astype(np.uint8)
