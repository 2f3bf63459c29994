"""Attribution: methods by name (methods.py) and the runner that explains a dataset into the store."""

from __future__ import annotations

from spray.attribution.runner import attribute_dataset

__all__ = ["attribute_dataset"]
