"""The audit store (docs/store.md): one chunked HDF5 file per audit, the single source of truth of every stage.

Layered one way, each module importing only those above it in this list:

- :mod:`~spray.store.schema`: the schema's checks on an open file (damaged content is refused, never read);
- :mod:`~spray.store.encoding`: how values are laid out in HDF5 (chunked rows, UTF-8 text, JSON attributes,
  nodes, blocks of bounded size);
- :mod:`~spray.store.journal`, :mod:`~spray.store.locking`, :mod:`~spray.store.transactions`: the rollback
  journal, the one-writer lock, and the file opened per all-or-nothing transaction;
- :mod:`~spray.store.info`: what a store holds, as a summary and as text;
- :mod:`~spray.store.audit_store`: :class:`AuditStore`, the API every other part of spray reads and writes
  the store through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from spray.store.audit_store import AuditStore
from spray.store.encoding import canonical, rewrite_text_variable_length, to_json
from spray.store.info import format_info
from spray.store.schema import NODE_ROOTS

if TYPE_CHECKING:
    import h5py

LATENT_METHOD = "latent"
"""The ``method`` of an attribution that holds latent relevance or activations at one layer
(spray.attribution.latent), not input heatmaps: an analysis reads it only when its pipeline names it."""

SCHEMA_VERSION = 1
"""The schema this spray writes and reads (docs/store.md)."""

MIGRATIONS: dict[int, Callable[[h5py.File], None]] = {}
"""``MIGRATIONS[v](f)`` rewrites an open store of schema ``v`` into schema ``v + 1`` (docs/store.md,
"Versioning"). A store opened for writing runs the chain up to :data:`SCHEMA_VERSION` in one transaction
(all or nothing, like any write); version 1 is the first, so there is none yet.

Both are read from this package whenever a store is opened or created, so the version and the migrations set
here are the ones every module of the store uses."""

__all__ = [
    "LATENT_METHOD", "MIGRATIONS", "NODE_ROOTS", "SCHEMA_VERSION", "AuditStore", "canonical", "format_info",
    "rewrite_text_variable_length", "to_json",
]
