"""Blocks of rows of bounded size: how many rows of a large array are read, written or worked on at once.

One rule for every part that streams a large array along its first axis (the audit store's reads and writes,
the heatmap preprocessor's float64 working set), so that none holds more than a block of it at a time.
"""

from __future__ import annotations

BLOCK_BYTES = 64 << 20
"""Bytes of one block."""


def block_rows(row_bytes: int, chunk_rows: int | None = None) -> int:
    """Rows in one block of rows of ``row_bytes`` bytes: :data:`BLOCK_BYTES` of them, at least one row; with
    ``chunk_rows``, rounded down to whole chunks of that many rows (at least one chunk), so that no chunk of a
    chunked array is read twice."""
    rows = max(1, BLOCK_BYTES // max(1, row_bytes))
    return rows if chunk_rows is None else max(chunk_rows, rows // chunk_rows * chunk_rows)
