"""Model and data factories for the dask tests (``tests.attribution.cluster_factories:NAME``).

Worker processes import them by name. ``SPRAY_TEST_SIGNALS`` (set by the ``dask_cluster`` fixture before
the workers start) names a folder through which a test talks to the workers: each model build inside a
worker appends its pid to ``builds``, and the dataset kills its worker process once, at sample
:data:`DIE_AT`, when the file ``kill`` exists (the first worker to remove it dies).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

N, CLASSES = 60, 4
DIE_AT = 20


def _signals() -> Path | None:
    folder = os.environ.get("SPRAY_TEST_SIGNALS")
    return Path(folder) if folder else None


def _in_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def model() -> nn.Module:
    """A small CNN for (2, 6, 10) inputs; every build inside a dask worker is recorded."""
    signals = _signals()
    if signals is not None and _in_worker():
        with open(signals / "builds", "a") as f:
            f.write(f"{os.getpid()}\n")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 5, CLASSES)
        )


class _Data(TensorDataset):
    def __getitem__(self, i: int):
        signals = _signals()
        if i == DIE_AT and signals is not None:
            try:
                (signals / "kill").unlink()  # atomic: only one process claims the kill
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return super().__getitem__(i)


def data() -> TensorDataset:
    """``N`` random (2, 6, 10) inputs with labels in ``[0, CLASSES)``."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(N, 2, 6, 10, generator=gen)
    return _Data(x, torch.randint(0, CLASSES, (N,), generator=gen))


def data_shorter_on_workers() -> TensorDataset:
    """The data, one sample short inside dask workers (as if a worker read another copy)."""
    full = data()
    return _Data(*(t[: N - 1] for t in full.tensors)) if _in_worker() else full


def data_with_nan() -> TensorDataset:
    """The data with a NaN in sample 21 (its attribution is not finite)."""
    dataset = data()
    dataset.tensors[0][21, 0, 0, 0] = float("nan")
    return dataset


def data_killing_workers() -> TensorDataset:
    """The data, killing every dask worker process that reads sample :data:`DIE_AT`."""

    class Deadly(TensorDataset):
        def __getitem__(self, i: int):
            if i == DIE_AT and _in_worker():
                os._exit(1)
            return super().__getitem__(i)

    return Deadly(*data().tensors)
