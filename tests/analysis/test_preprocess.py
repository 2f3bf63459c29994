"""HeatmapPreprocessor: channel reduction, area pooling, normalisation, chunked reading, bad rows."""

from __future__ import annotations

import dask.array as da
import h5py
import numpy as np
import pytest

from spray.analysis.preprocess import HeatmapPreprocessor, _pool, area_pooling_matrix
from spray.errors import BadInputError


def test_hand_example_sum_pooling_and_max_abs_normalisation():
    R = np.zeros((1, 2, 4, 4), dtype=np.float32)
    R[0, 0] = np.arange(16).reshape(4, 4)
    R[0, 1] = -1.0
    out = HeatmapPreprocessor(channel_reduction="sum", grid=2, normalization="max_abs").fit_transform(R)
    # channel sum: arange - 1; 2x2 sum-pool of [[-1,0,1,2],[3,4,5,6],...] blocks
    pooled = np.array([[-1 + 0 + 3 + 4, 1 + 2 + 5 + 6], [7 + 8 + 11 + 12, 9 + 10 + 13 + 14]], dtype=np.float64)
    np.testing.assert_allclose(out[0], (pooled / np.abs(pooled).max()).ravel(), rtol=1e-6)
    assert out.dtype == np.float32 and out.shape == (1, 4)


@pytest.mark.parametrize(
    ("reduction", "absolute", "expected"),
    [
        ("sum", False, [-1.0, 3.0]),
        ("sum", True, [1.0, 3.0]),
        ("abs_sum", False, [3.0, 5.0]),
        ("l2", False, [np.sqrt(5.0), np.sqrt(17.0)]),
    ],
)
def test_channel_reductions_then_optional_absolute(reduction, absolute, expected):
    R = np.array([[[[1.0, 4.0]], [[-2.0, -1.0]]]])  # (n=1, C=2, H=1, W=2)
    out = HeatmapPreprocessor(channel_reduction=reduction, absolute=absolute, normalization=None).fit_transform(R)
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


def test_keeping_channels_pools_each_channel_into_channel_major_features():
    # Concept-level SpRAy: (n, C, H, W) latent relevance -> (n, C * g_h * g_w), channel by channel its cells.
    R = np.zeros((1, 2, 2, 4))
    R[0, 0] = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    R[0, 1] = -1.0
    preprocessor = HeatmapPreprocessor(channel_reduction="keep", grid=2, normalization="l2").fit(R)
    out = preprocessor.transform(R)
    assert preprocessor.grid_shape_ == (2, 2) and preprocessor.n_features_out_ == 8 and out.shape == (1, 8)
    expected = np.array([3.0, 7.0, 11.0, 15.0, -2.0, -2.0, -2.0, -2.0])  # 2 x 4 into 2 x 2 cells of 1 x 2
    np.testing.assert_allclose(out[0], expected / np.linalg.norm(expected), rtol=1e-6)


@pytest.mark.parametrize(("normalization", "denominator"), [("sum", 6.0), ("l2", np.sqrt(14.0)), ("max_abs", 3.0)])
def test_normalisations_divide_each_row_by_its_own_scale(normalization, denominator):
    R = np.array([[[1.0, 2.0, 3.0]], [[0.0, 0.0, 0.0]]])  # (n=2, H=1, W=3)
    out = HeatmapPreprocessor(normalization=normalization).fit_transform(R)
    np.testing.assert_allclose(out[0], np.array([1, 2, 3]) / denominator, rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)


def test_non_divisible_size_uses_area_pooling_that_conserves_the_total():
    rng = np.random.default_rng(0)
    R = rng.normal(size=(3, 1, 7, 10))
    out = HeatmapPreprocessor(grid=3, normalization=None).fit_transform(R)
    assert out.shape == (3, 9)
    np.testing.assert_allclose(out.sum(axis=1), R.sum(axis=(1, 2, 3)), rtol=1e-5)
    P = area_pooling_matrix(7, 3)
    np.testing.assert_allclose(P.sum(axis=0), 1.0)
    np.testing.assert_allclose(P.sum(axis=1), 7 / 3)


@pytest.mark.parametrize(("shape", "grid"), [((8, 8), (8, 8)), ((12, 8), (4, 2)), ((12, 8), (5, 2)), ((7, 10), (3, 3))])
def test_pooling_shortcuts_equal_the_pooling_matrices(shape, grid):
    """Identity grid (no work), dividing sizes (reshape-sum) and the general case agree with P_h m P_w^T."""
    maps = np.random.default_rng(2).normal(size=(3, *shape))
    ph, pw = area_pooling_matrix(shape[0], grid[0]), area_pooling_matrix(shape[1], grid[1])
    np.testing.assert_allclose(_pool(maps, ph, pw), (ph @ maps @ pw.T).reshape(3, -1), rtol=1e-12, atol=1e-12)


def test_grid_larger_than_the_map_keeps_full_resolution():
    out = HeatmapPreprocessor(grid=32, normalization=None).fit_transform(np.ones((2, 3, 8, 8)))
    assert out.shape == (2, 64)
    np.testing.assert_allclose(out, 3.0)


def test_chunked_h5py_and_dask_inputs_equal_in_memory_result(tmp_path):
    rng = np.random.default_rng(1)
    R = rng.normal(size=(37, 3, 16, 16)).astype(np.float32)
    R[5] = 0.0
    expected = HeatmapPreprocessor(grid=8).fit_transform(R)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f.create_dataset("relevance", data=R, chunks=(4, 3, 16, 16))
    with h5py.File(tmp_path / "r.h5", "r") as f:
        maps = HeatmapPreprocessor(grid=8, batch_size=5).preprocess(f["relevance"])
        np.testing.assert_array_equal(maps.features, expected)
        np.testing.assert_array_equal(np.flatnonzero(maps.zero), [5])
        np.testing.assert_array_equal(HeatmapPreprocessor(grid=8).fit_transform(f["relevance"]), expected)
    out = HeatmapPreprocessor(grid=8, batch_size=6).fit_transform(da.from_array(R, chunks=(10, 3, 16, 16)))
    np.testing.assert_array_equal(out, expected)


def test_blocks_of_rows_give_the_in_memory_result_and_name_positions_across_blocks():
    R = np.random.default_rng(3).normal(size=(23, 2, 8, 8))
    blocks = [R[0:10], R[10:20], R[20:23]]
    np.testing.assert_array_equal(HeatmapPreprocessor(grid=4).preprocess_blocks(blocks, R.shape).features,
                                  HeatmapPreprocessor(grid=4).fit_transform(R))
    R[12, 1, 0, 0] = np.nan
    with pytest.raises(BadInputError, match=r"positions \[12\]"):
        HeatmapPreprocessor().preprocess_blocks([R[0:10], R[10:23]], R.shape)
    with pytest.raises(BadInputError, match=r"shape \(n, C, H, W\) or \(n, H, W\), got \(23, 128\)"):
        HeatmapPreprocessor().preprocess_blocks([], (23, 128))


def test_non_finite_values_raise_naming_the_sample_positions():
    R = np.ones((10, 1, 4, 4))
    R[3, 0, 1, 1] = np.nan
    R[7, 0, 0, 0] = np.inf
    with pytest.raises(BadInputError, match=r"positions \[3, 7\].*drop_nonfinite"):
        HeatmapPreprocessor(batch_size=3).fit_transform(R)


def test_drop_nonfinite_removes_rows_and_records_them():
    R = np.ones((6, 4, 4))
    R[2, 0, 0] = np.nan
    pre = HeatmapPreprocessor(drop_nonfinite=True).fit(R)
    maps = pre.preprocess(R)
    assert maps.features.shape == (5, 16)
    np.testing.assert_array_equal(maps.features, pre.transform(R))
    np.testing.assert_array_equal(maps.dropped, [2])
    np.testing.assert_array_equal(np.flatnonzero(maps.kept), [0, 1, 3, 4, 5])
    assert not maps.zero.any()
    assert (pre.input_shape_, pre.grid_shape_, pre.n_features_out_) == ((6, 4, 4), (4, 4), 16)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"channel_reduction": "max"}, "channel_reduction"),
        ({"grid": 0}, "grid"),
        ({"normalization": "z"}, "normalization"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(BadInputError, match=name):
        HeatmapPreprocessor(**kwargs).fit_transform(np.ones((2, 4, 4)))


def test_bad_input_shape_is_reported():
    with pytest.raises(BadInputError, match=r"R must have shape"):
        HeatmapPreprocessor().fit_transform(np.ones((2, 4)))
