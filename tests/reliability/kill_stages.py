"""The three stages the kill tests interrupt, kill points inside them, and a value-by-value store comparison.

Imported by the tests and by the child processes they SIGKILL (``python -c``, this folder on sys.path).
Kill points are counted events of one process:

- ``store_write``: a write of HDF5 bytes into the store file (spray.store.journal.JournaledFile._store_write),
  i.e. inside an HDF5 call (a dataset write, a metadata flush at close);
- ``journal_append``: a record appended to the store's rollback journal;
- ``step``: an optimizer step of the ClArC fine-tuning;
- ``torch_save``: a checkpoint or weights file being saved.

``how``: ``"before"`` the event, ``"torn"`` half way through it (half of the bytes written; a step is
indivisible, so "torn" means after it), or ``"after"`` it.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spray.testing import pipeline_text

EVENTS = ("store_write", "journal_append", "step", "torch_save")
HOWS = ("before", "torn", "after")

#: What :func:`analysis` runs (the full-disk tests also give it to `spray analyze` as a file).
ANALYSIS_PIPELINE = pipeline_text()

#: Attributes that legitimately differ between two runs of a stage: creation and write times, and the
#: random id of an attribution created anew (a resumed attribution keeps its id; a fresh one gets its own).
TIME_ATTRS = {("/", "created"), ("attribution", "created"), ("attribution", "attribution_id"),
              ("node", "spray_node")}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def hooked(on_event: Callable[[str, str], None]) -> Iterator[None]:
    """Call ``on_event(event, phase)`` at every event, with phase "before", "torn" (half done) or "after".

    For writes, "torn" comes after the first half of the bytes reached the file.
    """
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from spray.store.journal import JournaledFile

    store_write, journal_append, save = JournaledFile._store_write, JournaledFile._journal_append, torch.save

    def hooked_store_write(self, data, offset):
        view = memoryview(data).cast("B")
        half = len(view) // 2
        on_event("store_write", "before")
        store_write(self, view[:half], offset)
        on_event("store_write", "torn")
        store_write(self, view[half:], offset + half)
        on_event("store_write", "after")

    def hooked_journal_append(self, record):
        view = memoryview(record).cast("B")
        on_event("journal_append", "before")
        journal_append(self, view[: len(view) // 2])
        on_event("journal_append", "torn")
        journal_append(self, view[len(view) // 2 :])
        on_event("journal_append", "after")

    def hooked_save(obj, f, *args, **kwargs):
        on_event("torch_save", "before")
        save(obj, f, *args, **kwargs)
        size = os.path.getsize(f)
        with open(f, "r+b") as file:  # what a kill half way through the save leaves
            data = file.read()
            file.truncate(size // 2)
        on_event("torch_save", "torn")
        Path(f).write_bytes(data)
        on_event("torch_save", "after")

    def step_hook(optimizer, args, kwargs):
        on_event("step", "before")
        on_event("step", "torn")
        on_event("step", "after")

    JournaledFile._store_write = hooked_store_write
    JournaledFile._journal_append = hooked_journal_append
    torch.save = hooked_save
    handle = register_optimizer_step_post_hook(step_hook)
    try:
        yield
    finally:
        JournaledFile._store_write, JournaledFile._journal_append, torch.save = store_write, journal_append, save
        handle.remove()


@contextmanager
def counting() -> Iterator[Counter]:
    """Count the events of the block (to choose kill points within a stage)."""
    counts: Counter = Counter()

    def count(event: str, phase: str) -> None:
        if phase == "before":
            counts[event] += 1

    with hooked(count):
        yield counts


def arm(event: str, n: int, how: str) -> None:
    """SIGKILL this process at the ``n``-th ``event`` (1-based), ``how`` far into it; for the children."""
    if event not in EVENTS or how not in HOWS:
        raise ValueError(f"unknown kill point {event}/{how}")
    seen = Counter()

    def kill(event_: str, phase: str) -> None:
        if event_ == event:
            if phase == "before":
                seen[event_] += 1
            if seen[event_] == n and phase == how:
                _die()

    global _armed
    _armed = hooked(kill)  # kept: a collected context manager would undo the hooks
    _armed.__enter__()  # for the rest of this (short-lived) process


_armed = None


# ---------------------------------------------------------------------------------------------- the stages


def tiny_model():
    """A small CNN for 1×12×12 inputs and 3 classes (seeded)."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
        ).eval()


def tiny_images(n: int = 90):
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.rand(n, 1, 12, 12, generator=g), torch.arange(n) % 3)


def attribution(store: str | Path, **kwargs: Any) -> dict[str, Any]:
    """EpsilonPlusFlat LRP of 90 images, 12 batches of 8, into ``store``; resumes what is there.
    ``kwargs`` go to the AttributionRun (e.g. on_batch)."""
    from spray.attribution import AttributionRun, attribute_dataset
    from spray.attribution.methods import get_method
    from spray.data import model_hash

    model = tiny_model()
    return attribute_dataset(store, model, tiny_images(), AttributionRun(
        get_method("epsilon_plus_flat"), model_hash=model_hash(model), model_name="tiny", dataset_name="tiny",
        batch_size=8, progress=False, **kwargs,
    ))


def analysis(store: str | Path, **kwargs: Any) -> dict[str, Any]:
    """A small SpRAy pipeline (kNN, spectral, k-means, HDBSCAN, FDA) over every class of ``store``.
    ``kwargs`` go to analyze (e.g. on_node)."""
    from spray.pipeline import analyze, pipeline_from_text

    return analyze(str(store), pipeline_from_text(ANALYSIS_PIPELINE), progress=False, **kwargs).to_dict()


def synthetic_store(path: str | Path) -> Path:
    """An attributed store for :func:`analysis`: 3 classes of 40 heatmaps, one with a planted cluster."""
    from spray.testing import make_heatmaps, write_store

    return write_store(path, make_heatmaps(n_per_class=40, n_classes=3, size=16, poisoned=1, seed=5))


def clarc(store: str | Path, cluster: str, weights: str | Path, out: str | Path) -> dict[str, Any]:
    """A-ClArC, 2 epochs, of the demo CNN (``weights``) on the demo's training split."""
    import torch

    from spray.clarc import ClarcConfig, Tuning, clarc_from_store
    from spray.demo.digits import default_poisoned_digits
    from spray.demo.model import build_model

    data = default_poisoned_digits(0)
    model = build_model(len(data.label_names))
    model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    config = ClarcConfig("aclarc", out, cluster=cluster, tuning=Tuning(epochs=2, seed=0), progress=False)
    result = clarc_from_store(store, model.eval(), data.as_dataset("train"), config)
    return {"run": result.run, "weights": str(result.weights)}


# ---------------------------------------------------------------------------------------------- comparison


def store_contents(path: str | Path) -> dict[tuple[str, str], Any]:
    """Every dataset (``(name, "")`` -> array) and every attribute (``(object, key)`` -> value) of an
    HDF5 file, except the attributes of :data:`TIME_ATTRS`. JSON text attributes are decoded."""
    found: dict[tuple[str, str], Any] = {}

    def kind(name: str, obj: Any) -> str:
        if name == "/":
            return "/"
        if "spray_node" in obj.attrs:
            return "node"
        return "attribution" if obj.name.startswith("/attributions/") and isinstance(obj, h5py.Group) else "other"

    def record(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found[(obj.name, "")] = obj[()]
        for key, value in obj.attrs.items():
            if (kind(name, obj), key) in TIME_ATTRS:
                continue
            if isinstance(value, (str, bytes)):
                text = value.decode() if isinstance(value, bytes) else value
                try:
                    value = json.loads(text)
                except ValueError:
                    value = text
            found[(obj.name, key)] = value

    with h5py.File(path, "r") as f:
        record("/", f)
        f.visititems(record)
    return found


def assert_same_contents(got: dict, want: dict, normalise: Callable[[tuple[str, str], Any], Any] = None) -> int:
    """Assert equal keys and values (arrays exactly, dtype included; NaN equals NaN); returns the count."""
    normalise = normalise or (lambda key, value: value)
    assert sorted(got) == sorted(want), (set(got) ^ set(want))
    for key in want:
        a, b = normalise(key, got[key]), normalise(key, want[key])
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, key
            np.testing.assert_array_equal(a, b, err_msg=str(key))
        else:
            assert a == b, key
    return len(want)
