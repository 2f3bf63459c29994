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
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from spray._checks import check_choice, check_int
from spray.attribution.batches import (
    BatchExplainer,
    ExplainedBatch,
    count_outputs,
    placement,
    read_batches,
    sample_input,
    thumbnail_shape,
)
from spray.attribution.distributed import WorkerRecipe, explain_on_cluster
from spray.data.images import check_same_files, pixel_bounds, source_record
from spray.errors import BadInputError, StoreError
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
    workers: int = 0,
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
        thumbnail_range: ``(low, high)`` input values mapped to 0 and 255, numbers or one per channel;
            default: an image source's pixel range (its inputs of pixel values 0 and 1, so thumbnails
            show the un-normalised image), else each sample's min/max.
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
        workers: without ``scheduler``: DataLoader worker processes that read (decode) the samples ahead
            of the batch being explained, in batch order; 0 reads them here.

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
    check_choice(target, "target", _TARGETS)
    check_int(batch_size, "batch_size", minimum=1)
    check_choice(relevance_dtype, "relevance_dtype", _RELEVANCE_DTYPES)
    if thumbnail_range is None:
        thumbnail_range = pixel_bounds(dataset)  # an image source's thumbnails show its pixels, not its inputs
    if thumbnail_range is not None:
        low, high = (np.asarray(v, dtype=float).ravel() for v in thumbnail_range)
        if low.shape != high.shape or not (high > low).all():
            raise BadInputError(f"thumbnail_range must be (low, high) with high > low, got {thumbnail_range}")
        thumbnail_range = (tuple(low.tolist()), tuple(high.tolist()))
    local_workers(scheduler)
    if scheduler is not None and not isinstance(recipe, WorkerRecipe):
        raise BadInputError(
            f"scheduler={scheduler!r} needs recipe=WorkerRecipe(model=MOD:FACTORY, data=SOURCE): dask workers "
            "build the model and open the data themselves"
        )
    check_int(shard_batches, "shard_batches", minimum=1)
    check_int(workers, "workers", minimum=0)
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
    x0 = sample_input(dataset, 0)
    input_shape = tuple(x0.shape)
    device, dtype = placement(model)
    thumb_shape = thumbnail_shape(input_shape, thumbnail_size)

    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        n_outputs = count_outputs(model, x0, dtype=dtype, device=device)
        if label_names is not None and len(label_names) != n_outputs:
            raise BadInputError(
                f"{len(label_names)} label names given for a model with {n_outputs} outputs: spray needs one name "
                "per model output, in output order (label i names output i). A folder: source names and "
                "numbers its classes by its sorted sub-folders, so it must hold one sub-folder per output, or "
                "name every output in a file (folder:PATH?names=FILE, one name per line, in output order) "
                "whose names its sub-folders are; an npz or hdf5 file or a dataset factory must give all "
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
            recorded = store.attrs()
            if label_names is None and not recorded["label_names"]:
                label_names = [str(i) for i in range(n_outputs)]
            record = {"name": dataset_name, "size": n, **source_record(dataset)}
            if recorded["dataset"] is not None:
                check_same_files(recorded["dataset"], record, store.path)
            store.prepare_samples(
                n,
                dataset=record,
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
                results: Iterable[ExplainedBatch] = (
                    explain(model, dataset, attributor, b, items)
                    for b, items in zip(batches, read_batches(dataset, batches, workers))
                )
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


def _drop_if_refused_empty(path: Path, kind: type[BaseException] | None, computed: int) -> None:
    """Remove a store this run created when its input is refused before any batch is written (a bad sample
    in the first batch, an unreadable image): a refusal leaves no store that holds nothing. Called with
    the writer lock still held. Other failures (an interrupt, dying workers) keep the store, whose
    attribution resumes like any interrupted run's."""
    if kind is not None and issubclass(kind, BadInputError) and computed == 0:
        path.unlink(missing_ok=True)
