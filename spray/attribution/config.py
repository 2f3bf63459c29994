"""One attribution run as a value: what identifies the attribution in the store, and how this run goes.

The CLI, run files, the workflow, the demo and the distributed path build an :class:`AttributionRun` once
and hand it to :func:`spray.attribution.attribute_dataset`; what the store records of the attribution, and
what a resumed run must repeat, is derived from it here (:meth:`AttributionRun.identity`), nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spray._checks import check_choice, check_int
from spray.attribution.distributed import WorkerRecipe
from spray.attribution.methods import Attributor
from spray.errors import BadInputError
from spray.scheduling import local_workers
from spray.store import canonical

__all__ = ["AttributionRun", "thumbnail_bounds"]

TARGETS = ("label", "prediction")
RELEVANCE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class AttributionRun:
    """An attribution of a dataset into an audit store, checked when it is made (a :class:`BadInputError`
    names the field).

    What the attribution is (recorded with it; a run that resumes it must ask for the same):
        attributor: follows the attributor contract (docs/architecture.md): ``name``, ``params()``,
            ``attribute(model, x, target) -> (relevance, logits)``; its name and params are the method's.
        model_hash: sha256 of the model's weights (``spray.data.model_hash``).
        target: ``"label"`` explains the true label, ``"prediction"`` the model's argmax.
        relevance_dtype: ``"float32"`` or ``"float16"`` (half the size; values beyond ±65504 are an error).
        name: the attribution's name in the store; default ``attributor.name`` (see :attr:`attribution`).
    What it is of (recorded, not compared): ``model_name``, ``dataset_name``, ``label_names`` (class names,
    default the class indices as text).
    How the samples are stored: ``batch_size`` samples per batch and store transaction (a resumed run must
    use the batch size the attribution was started with, so its batches, and results, match an uninterrupted
    run); ``thumbnail_size``: thumbnails of (C, H, W) inputs are area-downsampled to at most this size per
    side and stored as uint8 (``None`` or 0 for none); ``thumbnail_range``: ``(low, high)`` input values
    mapped to 0 and 255, numbers or one per channel; default: an image source's pixel range (its inputs of
    pixel values 0 and 1, so thumbnails show the un-normalised image), else each sample's min/max.
    How this run goes (no effect on the stored values):
        overwrite: start over, replacing an attribution of this name (whatever made it).
        progress: show a progress bar on stderr.
        scheduler: None explains in this process. ``"local:N"`` (a LocalCluster of N worker processes on
            127.0.0.1) or a dask scheduler's address shards the batches over dask workers, which rebuild
            the model and data from ``recipe`` (the ``MOD:FACTORY`` of the model and the data source spec;
            the model and dataset given to the runner must be what they build) and receive the model's
            weights from the client, the store's only writer (docs/distributed.md).
        shard_batches: with ``scheduler``: batches per dask task; a dying worker costs at most its
            unfinished shards.
        allow_nonconservative: skip the check of an LRP attributor's relevance accounting on the first
            batch (docs/lrp.md, "Relevance accounting").
        workers: without ``scheduler``: DataLoader worker processes that read (decode) the samples ahead
            of the batch being explained, in batch order; 0 reads them here.
        on_batch: called as ``on_batch(start, stop)`` after each batch is committed to the store.
    """

    attributor: Attributor
    model_hash: str
    model_name: str
    dataset_name: str
    name: str | None = None
    target: str = "label"
    relevance_dtype: str = "float32"
    label_names: Sequence[str] | None = None
    batch_size: int = 32
    thumbnail_size: int | None = 64
    thumbnail_range: tuple[float, float] | None = None
    overwrite: bool = False
    progress: bool = True
    scheduler: str | None = None
    recipe: WorkerRecipe | None = None
    shard_batches: int = 4
    allow_nonconservative: bool = False
    workers: int = 0
    on_batch: Callable[[int, int], None] | None = None

    def __post_init__(self) -> None:
        check_choice(self.target, "target", TARGETS)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_choice(self.relevance_dtype, "relevance_dtype", RELEVANCE_DTYPES)
        object.__setattr__(self, "thumbnail_range", thumbnail_bounds(self.thumbnail_range))
        local_workers(self.scheduler)
        if self.scheduler is not None and not isinstance(self.recipe, WorkerRecipe):
            raise BadInputError(
                f"scheduler={self.scheduler!r} needs recipe=WorkerRecipe(model=MOD:FACTORY, data=SOURCE): dask "
                "workers build the model and open the data themselves"
            )
        check_int(self.shard_batches, "shard_batches", minimum=1)
        check_int(self.workers, "workers", minimum=0)
        for attr in ("name", "params", "attribute"):
            if not hasattr(self.attributor, attr):
                raise BadInputError(f"attributor {self.attributor!r} lacks {attr!r} (see the attributor contract)")

    @property
    def attribution(self) -> str:
        """The attribution's name in the store: ``name``, else the method's."""
        return self.name or self.attributor.name

    def identity(self, trace: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What identifies the attribution, as the store records it: ``method``, ``params`` (canonical JSON
        values), ``model_hash``, ``target``, and ``trace``, the attributor's ``trace_record(model, x)`` of the
        model's graph where it has one (LRP: ``hash`` and ``rules``; the weights alone do not say which
        forward ran). With the relevance's shape and dtype and the model's number of outputs, a run may
        resume a stored attribution only if all of these are equal (a trace only where both have one)."""
        identity = {"method": self.attributor.name, "params": canonical(self.attributor.params()),
                    "model_hash": self.model_hash, "target": self.target}
        return identity if trace is None else {**identity, "trace": canonical(dict(trace))}

    def stored_attrs(self, trace: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The attrs a new attribution is created with: :meth:`identity`, the model's name, the batch size."""
        return {**self.identity(trace), "model_name": self.model_name, "batch_size": self.batch_size}


def thumbnail_bounds(value: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(low, high)``, numbers or one per channel, as two tuples of floats with high > low; None stays None."""
    if value is None:
        return None
    low, high = (tuple(np.asarray(v, dtype=float).ravel().tolist()) for v in value)
    if len(low) != len(high) or not all(h > lo for lo, h in zip(low, high)):
        raise BadInputError(f"thumbnail_range must be (low, high) with high > low, got {value}")
    return low, high
