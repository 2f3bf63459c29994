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
from itertools import zip_longest
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from spray.attribution.batches import (
    BatchExplainer,
    ExplainedBatch,
    count_outputs,
    placement,
    read_batches,
    sample_input,
    thumbnail_shape,
)
from spray.attribution.config import AttributionRun, thumbnail_bounds
from spray.attribution.distributed import explain_on_cluster
from spray.data.images import check_same_files, pixel_bounds, source_record
from spray.errors import BadInputError, StoreError
from spray.scheduling import dask_client
from spray.store import AuditStore

__all__ = ["attribute_dataset"]


def attribute_dataset(
    store_path: str | Path, model: nn.Module, dataset: Dataset, run: AttributionRun
) -> dict[str, Any]:
    """Attribute every sample of ``dataset`` into the store at ``store_path`` (created if missing) as ``run``
    says (:class:`AttributionRun`: which attribution, and how).

    ``model``: the classifier; run in eval mode, each module's mode restored afterwards. ``dataset``:
    map-style, ``dataset[i] -> (x, y)``: ``x`` a floating tensor (or array) of one shape, ``y`` an integer
    label in ``[0, n_outputs)``. Integer inputs are refused rather than guessed at (is 255 white, or was the
    model trained on 0..255?): convert them in the dataset. The store's writer lock is held for the whole run.

    Returns:
        A JSON-serialisable summary: store, name, method, params, target, n_samples, computed (samples
        attributed by this call), skipped (already done), complete, seconds, attribute_seconds (time
        explaining, summed over workers), write_seconds (time inside store writes), scheduler.

    Raises:
        BadInputError: a sample, label or argument is unusable, or the attributor's output is non-finite
            (the message names the dataset indices; nothing of that batch is written).
        NonConservativeError: LRP creates or destroys relevance on the first batch (the message names
            the module); raised before the store is opened.
        StoreError: the store holds this attribution from another model, method, parameters or target, or
            (LRP) another traced graph of the model (``overwrite=True``), or samples of another dataset.
    """
    started = time.perf_counter()
    n, x0 = _size(dataset)
    input_shape = tuple(x0.shape)
    device, dtype = placement(model)
    thumb_shape = thumbnail_shape(input_shape, run.thumbnail_size)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        n_outputs = count_outputs(model, x0, dtype=dtype, device=device)
        # The graph the attributor explains (LRP's traced forward and rules) is part of the attribution's identity.
        record = getattr(run.attributor, "trace_record", None)
        trace = None if record is None else record(model, x0.unsqueeze(0).to(device, dtype))
        _check_label_names(run.label_names, n_outputs)
        # An image source's thumbnails show its pixels, not its (normalised) inputs.
        thumbnail_range = run.thumbnail_range or thumbnail_bounds(pixel_bounds(dataset))
        # Heatmaps are shaped like the input; an attributor of another quantity (latent relevance) says its shape.
        shape_of = getattr(run.attributor, "relevance_shape", None)
        shape = input_shape if shape_of is None else shape_of(model, x0.unsqueeze(0).to(device, dtype))
        explain = BatchExplainer(input_shape, n_outputs, run.target, run.relevance_dtype, thumb_shape,
                                 thumbnail_range, shape)
        if not run.allow_nonconservative and hasattr(run.attributor, "balance"):
            # Before the store is touched: a refused model leaves nothing behind.
            explain.check_accounting(model, dataset, run.attributor, range(min(run.batch_size, n)))
        with ExitStack() as stack:
            # The cluster first: a bad scheduler is refused before the store is touched.
            client = stack.enter_context(dask_client(run.scheduler)) if run.scheduler is not None else None
            created = not Path(store_path).exists()
            store = stack.enter_context(AuditStore(store_path, mode="a"))
            counts = _Counts()
            if created:
                path = Path(store_path).resolve()
                stack.push(lambda kind, *_: _drop_if_refused_empty(path, kind, counts.computed))
            batches = _pending_batches(store, run, dataset, n, shape, n_outputs, thumb_shape, trace)
            skipped = n - sum(len(b) for b in batches)
            if client is None:
                results: Iterable[ExplainedBatch] = (
                    explain(model, dataset, run.attributor, b, items)
                    for b, items in zip(batches, read_batches(dataset, batches, run.workers))
                )
            else:
                results = explain_on_cluster(client, run.recipe, model, n, run.attributor, explain, batches,
                                             shard_batches=run.shard_batches)
            _write_batches(store, run, results, skipped, n, counts)
            complete = store.attribution_info(run.attribution)["complete"]
    finally:
        for module, training in modes.items():
            module.train(training)
    identity = run.identity()
    return {
        "store": str(store_path),
        "name": run.attribution,
        "method": identity["method"],
        "params": identity["params"],
        "target": run.target,
        "n_samples": n,
        "computed": counts.computed,
        "skipped": skipped,
        "complete": complete,
        "seconds": round(time.perf_counter() - started, 3),
        "attribute_seconds": round(counts.attribute_seconds, 3),
        "write_seconds": round(counts.write_seconds, 3),
        "scheduler": run.scheduler,
    }


@dataclass
class _Counts:
    """What a run has done so far: samples written, seconds explaining (summed over workers), seconds writing."""

    computed: int = 0
    attribute_seconds: float = 0.0
    write_seconds: float = 0.0


def _size(dataset: Dataset) -> tuple[int, Any]:
    """The number of samples of a map-style, non-empty ``dataset``, and its first input."""
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise BadInputError("the dataset has no len(): spray needs a map-style dataset") from None
    if n == 0:
        raise BadInputError("the dataset is empty")
    return n, sample_input(dataset, 0)


def _check_label_names(label_names: Sequence[str] | None, n_outputs: int) -> None:
    if label_names is not None and len(label_names) != n_outputs:
        raise BadInputError(
            f"{len(label_names)} label names given for a model with {n_outputs} outputs: spray needs one name "
            "per model output, in output order (label i names output i). A folder: source names and "
            "numbers its classes by its sorted sub-folders, so it must hold one sub-folder per output, or "
            "name every output in a file (folder:PATH?names=FILE, one name per line, in output order) "
            "whose names its sub-folders are; an npz or hdf5 file or a dataset factory must give all "
            f"{n_outputs} names, or none (the outputs are then named 0, 1, ...)"
        )


def _pending_batches(
    store: AuditStore, run: AttributionRun, dataset: Dataset, n: int, shape: tuple[int, ...],
    n_outputs: int, thumb_shape: tuple[int, ...] | None, trace: dict[str, Any] | None,
) -> list[list[int]]:
    """Prepare the store's samples (an image source's files checked against those it recorded) and the
    attribution of rows of ``shape`` (created, or checked for resuming) and return the batches of the fixed
    grid not done yet."""
    recorded = store.attrs()
    label_names = run.label_names
    if label_names is None and not recorded["label_names"]:
        label_names = [str(i) for i in range(n_outputs)]
    record = {"name": run.dataset_name, "size": n, **source_record(dataset)}
    if recorded["dataset"] is not None:
        kept = check_same_files(recorded["dataset"], record, store.path, store.read("samples/label") >= 0)
        if kept != recorded["dataset"]:
            store.record_dataset(kept)
    store.prepare_samples(
        n,
        dataset=record,
        model={"name": run.model_name, "hash": run.model_hash},
        label_names=label_names,
        thumbnail_shape=thumb_shape,
    )
    name = run.attribution
    if run.overwrite or name not in store.attributions():
        store.create_attribution(name, input_shape=shape, n_outputs=n_outputs, dtype=run.relevance_dtype,
                                 attrs=run.stored_attrs(trace))
    else:
        wanted = {**run.identity(trace), "shape": [n, *shape], "dtype": run.relevance_dtype,
                  "n_outputs": n_outputs}
        _check_resumable(store.path, name, store.attribution_info(name), wanted, run.batch_size)
    done = store.read(f"attributions/{name}/done")
    size = run.batch_size
    return [list(range(s, min(s + size, n))) for s in range(0, n, size) if not done[s : s + size].all()]


def _write_batches(
    store: AuditStore, run: AttributionRun, results: Iterable[ExplainedBatch], skipped: int, n: int,
    counts: _Counts,
) -> None:
    """Write each explained batch into the store as it comes (one transaction each), counting in ``counts``."""
    bar = tqdm(
        total=n, initial=skipped, disable=not run.progress, file=sys.stderr, unit="sample",
        desc=f"attribute {run.attribution}", dynamic_ncols=True,
    )
    try:
        for batch in results:
            counts.attribute_seconds += batch.seconds
            tick = time.perf_counter()
            store.write_batch(
                run.attribution,
                batch.start,
                relevance=batch.relevance,
                logits=batch.logits,
                target=batch.target,
                labels=batch.labels,
                index=batch.index,
                thumbnails=batch.thumbnails,
                input_share=batch.input_share,
            )
            counts.write_seconds += time.perf_counter() - tick
            counts.computed += len(batch.index)
            bar.update(len(batch.index))
            if run.on_batch is not None:
                run.on_batch(batch.start, batch.start + len(batch.index))
    finally:
        bar.close()


def _check_resumable(
    path: Path, name: str, have: dict[str, Any], wanted: dict[str, Any], batch_size: int
) -> None:
    """Raise unless the stored attribution ``name`` is the one asked for, started with ``batch_size``."""
    differ = [key for key, value in wanted.items() if key != "trace" and have[key] != value]
    if differ:
        details = "; ".join(f"{key}: store {have[key]!r}, this run {wanted[key]!r}" for key in differ)
        raise StoreError(
            f"store {path} holds attribution {name!r} of model {have['model_hash']} with method "
            f"{have['method']!r}, params {have['params']}, target {have['target']!r} ({details}); pass "
            "overwrite=True (--overwrite) to replace it, or choose another name (--name)"
        )
    # Attributions made before spray recorded the trace have none: they resume as before.
    if "trace" in have and "trace" in wanted and have["trace"] != wanted["trace"]:
        raise StoreError(
            f"store {path} holds attribution {name!r} of another graph of this model: same weights, but the "
            f"traced forward or its rules differ (trace sha256: store {have['trace']['hash']}, this run "
            f"{wanted['trace']['hash']}{_first_difference(have['trace']['rules'], wanted['trace']['rules'])}); "
            "pass overwrite=True (--overwrite) to replace it, or choose another name (--name)"
        )
    if not have["complete"] and have["batch_size"] != batch_size:
        raise BadInputError(
            f"attribution {name!r} in {path} was started with batch size {have['batch_size']} and is "
            f"{have['done']}/{have['n']} done; resume with batch_size={have['batch_size']} (--batch-size "
            f"{have['batch_size']}) so the result equals an uninterrupted run, or pass overwrite=True "
            "(--overwrite) to start over"
        )


def _first_difference(stored: list[list[str]], wanted: list[list[str]]) -> str:
    """``"; first difference: ..."`` naming the first module, in forward order, whose rule or place differs
    between two traces' ``[[name, rule], ...]``; empty where the rules agree."""
    for old, new in zip_longest(stored, wanted):
        if old == new:
            continue
        if old is None:
            return f"; first difference: {new[0]!r} ({new[1]}) is new in this run"
        if new is None:
            return f"; first difference: {old[0]!r} ({old[1]}) is not in this run"
        if old[0] == new[0]:
            return f"; first difference: {old[0]!r} has rule {old[1]} in the store, {new[1]} in this run"
        return f"; first difference: the store has {old[0]!r} ({old[1]}) where this run has {new[0]!r} ({new[1]})"
    return ""


def _drop_if_refused_empty(path: Path, kind: type[BaseException] | None, computed: int) -> None:
    """Remove a store this run created when its input is refused before any batch is written (a bad sample
    in the first batch, an unreadable image): a refusal leaves no store that holds nothing. Called with
    the writer lock still held. Other failures (an interrupt, dying workers) keep the store, whose
    attribution resumes like any interrupted run's."""
    if kind is not None and issubclass(kind, BadInputError) and computed == 0:
        path.unlink(missing_ok=True)
