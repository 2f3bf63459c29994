"""Heatmaps -> flat feature vectors for SpRAy: channel reduction, area pooling, per-map normalisation.

The input may be larger than memory (an h5py dataset of full-size relevance maps, or the audit store's blocks
of them): it is read in batches along the sample axis and only the small pooled output, ``(n, g_h * g_w)``
float32, is ever held whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spray._blocks import block_rows
from spray.analysis._common import check_choice, check_int
from spray.errors import BadInputError

CHANNEL_REDUCTIONS = ("sum", "abs_sum", "l2", "keep")
NORMALIZATIONS = ("max_abs", "sum", "l2", None)


def area_pooling_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` weights of each input pixel in each output cell, by overlap length.

    Output cell ``i`` covers ``[i*s, (i+1)*s)`` with ``s = size_in/size_out`` in pixel units; the weight of pixel
    ``j`` is the length of its overlap with that interval. Every column sums to 1, so pooling conserves the
    total relevance exactly; with ``size_in % size_out == 0`` this is plain sum-pooling by an integer factor.
    """
    edges = np.arange(size_out + 1, dtype=np.float64) * (size_in / size_out)
    lo = np.maximum(edges[:-1, None], np.arange(size_in)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(size_in)[None, :] + 1)
    return np.clip(hi - lo, 0.0, None)


@dataclass(frozen=True)
class PreprocessedMaps:
    """Features of one :meth:`HeatmapPreprocessor.preprocess` call and the input rows they stand for."""

    features: np.ndarray
    """(n_kept, g_h * g_w) float32, one row per kept input row, in input order."""
    kept: np.ndarray
    """(n,) bool over the input rows: False where a row was dropped for non-finite values."""
    zero: np.ndarray
    """(n,) bool: the channel-reduced map is exactly 0 everywhere (no relevance; an all-zero feature row)."""

    @property
    def dropped(self) -> np.ndarray:
        """Input positions (int64) removed for non-finite values (empty unless ``drop_nonfinite``)."""
        return np.flatnonzero(~self.kept)


class HeatmapPreprocessor:
    """Turn relevance maps ``(n, C, H, W)`` or ``(n, H, W)`` into SpRAy feature vectors ``(n, g_h * g_w)``
    (``(n, C * g_h * g_w)`` with ``channel_reduction="keep"``).

    Steps, per sample (in float64, output float32):

    1. channel reduction: ``"sum"`` Σ_c R, ``"abs_sum"`` Σ_c |R|, ``"l2"`` sqrt(Σ_c R²); ``"keep"`` keeps
       every channel (concept-level SpRAy: the channels of a latent attribution are the concepts, and
       the features are channel-major, channel by channel its pooled cells);
    2. ``absolute=True``: take |·| of the reduced map;
    3. area pooling to ``g_h = min(grid, H)`` × ``g_w = min(grid, W)`` cells: sum-pooling when the sizes divide,
       otherwise overlap-weighted area pooling (:func:`area_pooling_matrix`); both conserve the map's sum;
    4. normalisation of the flattened map: ``"max_abs"`` x / max|x|, ``"sum"`` x / |Σx|
       (the absolute value keeps the map's orientation when its total relevance is negative),
       ``"l2"`` x / ‖x‖₂, ``None`` unchanged. A map whose denominator is 0 is left unchanged.

    ``transform`` returns only the feature matrix (like any scikit-learn transformer); :meth:`preprocess`
    returns it with the row bookkeeping of that call (:class:`PreprocessedMaps`). The feature rows are the
    input rows that were kept, in order: all of them, or, with ``drop_nonfinite=True``, the finite ones.
    ``fit`` learns only the shapes: ``input_shape_``, ``grid_shape_`` ``(g_h, g_w)``, ``n_features_out_``.

    Without ``drop_nonfinite`` a non-finite value raises :class:`~spray.errors.BadInputError` naming the
    sample positions. ``batch_size`` (rows read at once) defaults to ~64 MB of float64 working memory,
    rounded to the h5py chunking of the input when it has one.
    """

    def __init__(
        self,
        channel_reduction: str = "sum",
        absolute: bool = False,
        grid: int = 32,
        normalization: str | None = "max_abs",
        drop_nonfinite: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.channel_reduction = channel_reduction
        self.absolute = absolute
        self.grid = grid
        self.normalization = normalization
        self.drop_nonfinite = drop_nonfinite
        self.batch_size = batch_size

    def _check_params(self) -> None:
        check_choice(self.channel_reduction, "channel_reduction", CHANNEL_REDUCTIONS)
        check_choice(self.normalization, "normalization", NORMALIZATIONS)
        check_int(self.grid, "grid", minimum=1)
        if self.batch_size is not None:
            check_int(self.batch_size, "batch_size", minimum=1)

    @staticmethod
    def _check_input(R: Any) -> Any:
        if not hasattr(R, "shape") or not hasattr(R, "dtype"):
            R = np.asarray(R)
        HeatmapPreprocessor._check_shape(tuple(int(s) for s in R.shape))
        if np.dtype(R.dtype).kind not in "fiu":
            raise BadInputError(f"R must be a numeric (float or int) array, got dtype {R.dtype}")
        return R

    @staticmethod
    def _check_shape(shape: tuple[int, ...]) -> None:
        if len(shape) not in (3, 4):
            raise BadInputError(f"R must have shape (n, C, H, W) or (n, H, W), got {shape}")
        if shape[0] < 1 or any(s < 1 for s in shape[1:]):
            raise BadInputError(f"R must have at least one sample and non-empty maps, got shape {shape}")

    def fit(self, R: Any, y: Any = None) -> HeatmapPreprocessor:
        """Check the parameters and the input; learn the shapes (the transform itself learns nothing)."""
        self._check_params()
        shape = tuple(int(s) for s in self._check_input(R).shape)
        self.input_shape_ = shape
        self.grid_shape_ = (min(self.grid, shape[-2]), min(self.grid, shape[-1]))
        self.n_features_out_ = self._kept_channels(shape) * self.grid_shape_[0] * self.grid_shape_[1]
        return self

    def fit_transform(self, R: Any, y: Any = None) -> np.ndarray:
        return self.fit(R).transform(R)

    def transform(self, R: Any) -> np.ndarray:
        """Features ``(n_kept, g_h * g_w)`` float32 of the kept rows."""
        return self.preprocess(R).features

    def preprocess(self, R: Any) -> PreprocessedMaps:
        """The features and which input rows they are (chunk by chunk: R may be an h5py or dask array)."""
        self._check_params()
        R = self._check_input(R)
        shape = tuple(int(s) for s in R.shape)
        chunks = getattr(R, "chunks", None)  # whole h5py chunks per read
        whole = chunks[0] if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], int) else None
        batch = self.batch_size or block_rows(int(np.prod(shape[1:])) * 8, whole)  # a float64 working set
        return self.preprocess_blocks((R[start : start + batch] for start in range(0, shape[0], batch)), shape)

    def preprocess_blocks(self, blocks: Iterable[Any], shape: Sequence[int]) -> PreprocessedMaps:
        """:meth:`preprocess` of the input of shape ``shape`` given as consecutive blocks of its rows (numpy or
        lazy arrays, e.g. read from the audit store block by block); ``batch_size`` does not apply."""
        self._check_params()
        shape = tuple(int(s) for s in shape)
        self._check_shape(shape)
        n, (H, W) = shape[0], shape[-2:]
        C = shape[1] if len(shape) == 4 else 1
        gh, gw = min(self.grid, H), min(self.grid, W)
        ph, pw = area_pooling_matrix(H, gh), area_pooling_matrix(W, gw)

        out = np.empty((n, self._kept_channels(shape) * gh * gw), dtype=np.float32)
        nonfinite = np.zeros(n, dtype=bool)
        zero = np.zeros(n, dtype=bool)
        start = 0
        for block in blocks:
            if hasattr(block, "compute"):  # dask (or any lazy array)
                block = block.compute()
            stop = start + len(block)
            block = np.asarray(block, dtype=np.float64).reshape(stop - start, C, H, W)
            out[start:stop], nonfinite[start:stop], zero[start:stop] = self._process(block, ph, pw)
            start = stop

        bad = np.flatnonzero(nonfinite)
        if bad.size and not self.drop_nonfinite:
            raise BadInputError(
                f"R has non-finite values (NaN or inf) in {bad.size} sample(s) at positions "
                f"{bad[:20].tolist()}{' ...' if bad.size > 20 else ''}; fix the attributions or pass "
                f"drop_nonfinite=True to drop those samples"
            )
        return PreprocessedMaps(out[~nonfinite] if bad.size else out, ~nonfinite, zero & ~nonfinite)

    def _kept_channels(self, shape: tuple[int, ...]) -> int:
        """Channels left after the channel reduction: all with ``"keep"``, else one."""
        return shape[1] if self.channel_reduction == "keep" and len(shape) == 4 else 1

    def _process(self, block: np.ndarray, ph: np.ndarray, pw: np.ndarray) -> tuple[np.ndarray, ...]:
        nonfinite = ~np.isfinite(block).all(axis=(1, 2, 3))
        if nonfinite.any():
            block = np.where(nonfinite[:, None, None, None], 0.0, block)
        if self.channel_reduction == "keep":
            b, c, h, w = block.shape
            maps = block.reshape(b * c, h, w)
        elif block.shape[1] == 1:  # one channel: every reduction is the map itself or its absolute value
            maps = block[:, 0] if self.channel_reduction == "sum" else np.abs(block[:, 0])
        elif self.channel_reduction == "sum":
            maps = block.sum(axis=1)
        elif self.channel_reduction == "abs_sum":
            maps = np.abs(block).sum(axis=1)
        else:
            maps = np.sqrt(np.square(block).sum(axis=1))
        if self.absolute:
            maps = np.abs(maps)
        zero = ~maps.reshape(len(block), -1).any(axis=1)
        pooled = _pool(maps, ph, pw).reshape(len(block), -1)

        if self.normalization is not None:
            if self.normalization == "max_abs":
                denom = np.abs(pooled).max(axis=1)
            elif self.normalization == "sum":
                denom = np.abs(pooled.sum(axis=1))
            else:
                denom = np.linalg.norm(pooled, axis=1)
            denom = np.where(denom > 0, denom, 1.0)
            pooled = pooled / denom[:, None]
        return pooled.astype(np.float32), nonfinite, zero


def _pool(maps: np.ndarray, ph: np.ndarray, pw: np.ndarray) -> np.ndarray:
    """``ph @ m @ pwᵀ`` of every map ``m`` in ``maps`` (b, H, W), flattened to (b, g_h * g_w).

    The same numbers without the matmuls where the pooling matrices are simple: none at all when the grid is
    the native size (identity matrices), a reshape-sum when the sizes divide (0/1 block matrices).
    """
    b, H, W = maps.shape
    gh, gw = ph.shape[0], pw.shape[0]
    if (gh, gw) == (H, W):
        return maps.reshape(b, -1)
    if H % gh == 0 and W % gw == 0:
        return maps.reshape(b, gh, H // gh, gw, W // gw).sum(axis=(2, 4)).reshape(b, -1)
    return (ph @ maps @ pw.T).reshape(b, -1)
