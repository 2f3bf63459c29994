"""Seeded, deterministic torch blocks that leave the caller's random state and settings as they found them.

The training loop (spray.training), ClArC's fine-tuning and seeded model construction all run inside
:func:`seeded`, so the same seed gives the same weights and nothing leaks into the caller's global state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int | None = None, *, deterministic: bool = False) -> Iterator[None]:
    """Run the block on a private copy of torch's global CPU random state, seeded with ``seed`` (None: a
    copy of the caller's state); with ``deterministic`` also on deterministic kernels (warn-only, since a
    few CPU ops have no deterministic variant). Random state and the determinism setting are restored."""
    was = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was, warn_only=was_warn_only)
