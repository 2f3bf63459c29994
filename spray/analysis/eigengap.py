"""Number of clusters proposed by the eigengap heuristic (von Luxburg 2007, §8.3).

For a graph made of c well separated groups, the normalised Laplacian has c eigenvalues near 0 and then a
jump; the position of the largest jump among the smallest eigenvalues estimates c.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spray.analysis._common import check_int
from spray.errors import BadInputError


def eigengaps(eigenvalues: Any) -> np.ndarray:
    """Gaps ``g[j] = λ_{j+2} − λ_{j+1}`` (0-based ``g[j]`` follows the ``j+1`` smallest eigenvalues).

    ``eigenvalues`` must be 1-D, finite, ascending, with at least 2 entries; returns ``(m − 1,)`` float64.
    ``g[k − 1]`` is the gap that proposes k clusters.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 2:
        raise BadInputError(f"eigenvalues must be 1-D with at least 2 entries, got shape {lam.shape}")
    if not np.isfinite(lam).all():
        raise BadInputError("eigenvalues has non-finite entries")
    gaps = np.diff(lam)
    if (gaps < -1e-9 * max(1.0, float(np.abs(lam).max()))).any():
        raise BadInputError("eigenvalues must be sorted ascending (as SpectralEmbedding.eigenvalues_ is)")
    return np.clip(gaps, 0.0, None)


def propose_n_clusters(eigenvalues: Any, max_clusters: int | None = None) -> int:
    """``k = argmax_{1 ≤ k ≤ K} (λ_{k+1} − λ_k)`` with eigenvalues ascending and ``K = min(m − 1, max_clusters)``.

    Returns k ≥ 1 (k = 1: no cluster structure stands out). The first k attaining the maximum wins on ties.
    """
    gaps = eigengaps(eigenvalues)
    if max_clusters is not None:
        gaps = gaps[: check_int(max_clusters, "max_clusters", minimum=1)]
    return int(np.argmax(gaps)) + 1
