"""One exception hierarchy for every user-facing failure.

Anything derived from :class:`SprayError` is the user's to fix (bad input, a locked store, a wrong
parameter); the CLI prints its message and exits with code 2. Any other exception is a bug in spray and
exits with code 1.
"""

from __future__ import annotations


class SprayError(Exception):
    """Base of every error whose message tells the user what was wrong and how to fix it."""


class BadInputError(SprayError, ValueError):
    """Input data, a model, a factory or a parameter is not what spray can work with."""


class UnsupportedLayerError(BadInputError):
    """A model contains a layer the LRP engine has no rule for; the message names the layer."""


class StoreError(SprayError):
    """The audit store cannot be used as asked (missing, unwritable, foreign, corrupt)."""


class StoreLockedError(StoreError):
    """Another process holds the store's writer lock."""


class SchemaError(StoreError):
    """The store's schema version is unknown to this spray (too old, too new, or not a spray store)."""


class PipelineError(BadInputError):
    """A pipeline file is malformed or names an unknown node or parameter."""


class GroupSizeError(BadInputError):
    """A group (a cluster, the rest of its class, an inferred group) is smaller than a fit needs: a CAV, a DFR
    head, GroupDRO. ``--method auto`` skips a candidate that raises it and chooses among the others."""


class DivergedError(BadInputError):
    """A fine-tuning's loss became non-finite; the message names the epoch. ``--method auto`` skips a candidate
    that raises it and chooses among the others."""


class NonConservativeError(BadInputError):
    """LRP created or destroyed relevance where its rules should conserve it; the message names where."""


def dataset_size_error(given: int, held: int, store: object) -> BadInputError:
    """The refusal of a dataset (``--data``) of ``given`` samples for audit store ``store`` of ``held``: the
    commands that re-create the explained inputs (clarc, evaluate, report, export) need the audited data."""
    return BadInputError(
        f"the dataset given (--data) has {given} samples, but audit store {store} holds {held}: pass the dataset "
        "the store was attributed from"
    )
