"""Attribution sharded over dask.distributed workers; the client stays the store's only writer.

The client (``attribute_dataset(..., scheduler=...)``) sends each worker the model's weights once
(broadcast), cuts the pending batches into shards of consecutive batches (a contiguous range of samples),
and submits one task per shard, a bounded number at a time. A worker builds the model and opens the data
from their specs (:class:`WorkerRecipe`) on its first shard of a run and keeps them for the run's other
shards; it returns the explained batches, and the client writes them batch by batch into the store with
the single-process transactions. Why not per-shard files joined by an HDF5 virtual dataset:
docs/distributed.md.

The worker-side cache (:data:`_BUILT`) is process state on purpose: it is what makes a worker build the
model once per run rather than once per shard. It holds one run's model and data, keyed by a token that is
new for every run, so a later run (new weights, changed data) never sees a stale entry.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from spray.attribution.batches import BatchExplainer, ExplainedBatch
from spray.errors import BadInputError, SprayError
from spray.scheduling import map_on, task_window
from spray.usercode import guarded


__all__ = ["WorkerRecipe", "explain_on_cluster"]

_LOCK = threading.Lock()
_BUILT: dict[str, tuple[nn.Module, Dataset]] = {}


@dataclass(frozen=True)
class WorkerRecipe:
    """How a dask worker rebuilds what the client explains with.

    ``model``: the ``MOD:FACTORY`` that builds the model (its weights come from the client);
    ``data``: the source spec (``MOD:FACTORY``, ``npz:PATH``, ``hdf5:PATH``, ``folder:PATH``), opened on
    the worker, so paths must be valid there; ``transform``: an image source's preprocessing spec
    (``ImageTransform.to_dict()``), or None; ``skip_unreadable``: leave out image files that cannot be
    decoded; ``device``: where the workers run the model (``cpu``, ``cuda``, ``cuda:N``, ``mps``; each
    worker must have it). Both modules must be importable on every worker.
    """

    model: str
    data: str
    transform: dict[str, Any] | None = None
    skip_unreadable: bool = False
    device: str = "cpu"


def explain_on_cluster(
    client: Any,
    recipe: WorkerRecipe,
    model: nn.Module,
    n: int,
    attributor: Any,
    explain: BatchExplainer,
    batches: Sequence[list[int]],
    *,
    shard_batches: int,
) -> Iterator[ExplainedBatch]:
    """Yield every batch of ``batches`` explained on the workers of ``client``, shard by shard as they end.

    ``model``'s weights are sent to the workers; ``n`` is the dataset's length seen here (workers must see
    the same); ``explain`` is the client's :class:`~spray.attribution.batches.BatchExplainer`.
    """
    shards = _shards(batches, shard_batches)
    if not shards:
        return
    weights = _Weights(client, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    token = uuid.uuid4().hex

    def arguments(shard: list[list[int]]) -> tuple[Any, ...]:
        return (token, recipe, weights.future(), n, attributor, explain, shard)

    for _, explained in map_on(
        client, _explain_shard, shards, arguments, window=task_window(client), progress=False
    ):
        yield from explained
    client.run(_forget, token, on_error="ignore")  # a worker lost by now has nothing left to free


class _Weights:
    """The model's state dict on the workers, sent again once dask has lost every copy of it.

    Broadcast copies do not last: dask's active memory manager drops replicas that no task needs, and a
    worker that dies takes its copy along. A shard submitted after the last copy was lost (or resubmitted by
    :func:`~spray.scheduling.map_on` because it was) gets a fresh scatter.
    """

    def __init__(self, client: Any, state: dict[str, Any]) -> None:
        self._client = client
        self._state = state
        self._future: Any = None

    def future(self) -> Any:
        """A future of the state dict that the cluster still holds."""
        if self._future is None or self._future.status != "finished":
            # A list, so that the state dict travels as one object rather than one future per tensor.
            (self._future,) = self._client.scatter([self._state], broadcast=True, hash=False)
        return self._future


def _shards(batches: Sequence[list[int]], size: int) -> list[list[list[int]]]:
    """Consecutive batches grouped by at most ``size``; a gap (batches already done) starts a new shard."""
    shards: list[list[list[int]]] = []
    for batch in batches:
        last = shards[-1] if shards else None
        if last is not None and len(last) < size and last[-1][-1] + 1 == batch[0]:
            last.append(batch)
        else:
            shards.append([batch])
    return shards


def _explain_shard(
    token: str,
    recipe: WorkerRecipe,
    weights: dict[str, Any],
    n: int,
    attributor: Any,
    explain: BatchExplainer,
    shard: list[list[int]],
) -> list[ExplainedBatch]:
    """Worker side: the shard's batches, explained with this run's model and data (built on first use).

    One shard at a time per worker process: the model is shared, and LRP hooks it for each batch.
    """
    with _LOCK, guarded(f"on dask worker {_worker_name()}: the model or dataset code"):
        if token not in _BUILT:
            _BUILT.clear()
            _BUILT[token] = _build(recipe, weights, n)
        model, dataset = _BUILT[token]
        return [explain(model, dataset, attributor, positions) for positions in shard]


def _build(recipe: WorkerRecipe, weights: dict[str, Any], n: int) -> tuple[nn.Module, Dataset]:
    """The model (the client's weights loaded) and the dataset, as this worker builds them."""
    from spray.data import ImageTransform, load_model, open_source

    where = _worker_name()
    try:
        model = load_model(recipe.model, device=recipe.device)
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise BadInputError(
                f"model {recipe.model!r} built here does not fit the client's weights ({exc}); workers must "
                "run the same version of the model's code as the client"
            ) from None
        transform = ImageTransform.from_dict(recipe.transform) if recipe.transform else None
        dataset = open_source(recipe.data, transform, skip_unreadable=recipe.skip_unreadable)
        have = len(dataset)  # type: ignore[arg-type]
        if have != n:
            raise BadInputError(
                f"data {recipe.data!r} has {have} samples here but {n} on the client; workers must see the "
                "same data (use absolute paths on a shared file system)"
            )
    except SprayError as exc:
        raise type(exc)(f"on dask worker {where}: {exc} (see docs/distributed.md)") from None
    return model.eval(), dataset


def _forget(token: str) -> None:
    """Worker side: drop the run's model and data once the run is over."""
    with _LOCK:
        _BUILT.pop(token, None)


def _worker_name() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not inside a dask worker
        return "(not a dask worker)"
