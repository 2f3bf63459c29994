"""The group's spectral map: its power spectra read in one pass, its gain per ring of spatial frequency (the kind
rule choosing it for a blur: tests/clarc/test_transform.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from spray.clarc.spectrum import Spectrum, radial_bins, spectra, spectral_map


def test_rings_count_cycles_across_the_image():
    assert radial_bins(4, 4).tolist() == [[0, 1, 2, 1], [1, 1, 2, 1], [2, 2, 3, 2], [1, 1, 2, 1]]
    # a wide image: a ring is cycles across its longer side
    assert radial_bins(2, 4).tolist() == [[0, 1, 2, 1], [2, 2, 3, 2]]


def test_the_spectra_are_the_mean_and_the_centred_power_read_in_one_pass():
    x = torch.rand(11, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    found = spectra(TensorDataset(x, torch.zeros(11)), np.arange(11), chunk=4)
    mean = x.double().mean(0)
    power = torch.fft.fft2(x.double() - mean).abs().square().mean(0)
    assert found.size == 11 and torch.allclose(found.mean, mean.float(), atol=1e-7)
    assert torch.allclose(found.power.double(), power, rtol=1e-5, atol=1e-9)


def ring_filter(x: torch.Tensor, gains: list[float]) -> torch.Tensor:
    """``x`` filtered with ``gains[r]`` on ring ``r`` (circularly)."""
    gain = torch.tensor(gains, dtype=torch.float64)[radial_bins(*x.shape[-2:])]
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * gain).real.float()


def test_a_filter_constant_on_rings_is_found_exactly_and_reproduced():
    # the same 20 images in both groups, the cluster's low-passed ring by ring: the gains are the filter's, the
    # offset nothing, and the map turns the rest into the cluster
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    gains = [1.0, 0.9, 0.6, 0.3, 0.1, 0.05, 0.02]
    blurred = ring_filter(x, gains)
    data = TensorDataset(torch.cat([blurred, x]), torch.ones(40))
    found = spectral_map(spectra(data, np.arange(20)), spectra(data, np.arange(20, 40)))
    bins = radial_bins(8, 8)
    assert torch.allclose(found.gain[0], torch.tensor(gains)[bins], atol=1e-5)
    assert found.gain.shape == (1, 8, 8) and found.offset.abs().max() < 1e-5
    assert isinstance(found, Spectrum) and found.kind == "spectral"
    assert torch.allclose(found(x), blurred, atol=1e-5)


def test_a_flat_spectrum_is_the_intensity_map_a_gain_per_channel_a_colour_cast():
    # x' = 0.3 + 0.7 x on channel 0 and 0.1 + 0.5 x on channel 1: every ring's gain is the channel's, the
    # offset its lift, as a cast's or a lifted background's
    x = torch.rand(20, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    cast = torch.stack([0.3 + 0.7 * x[:, 0], 0.1 + 0.5 * x[:, 1]], 1)
    data = TensorDataset(torch.cat([cast, x]), torch.ones(40))
    found = spectral_map(spectra(data, np.arange(20)), spectra(data, np.arange(20, 40)))
    assert torch.allclose(found.gain[0], torch.tensor(0.7), atol=1e-5)
    assert torch.allclose(found.gain[1], torch.tensor(0.5), atol=1e-5)
    assert torch.allclose(found(x), cast, atol=1e-5)


def test_a_ring_where_the_rest_has_no_power_keeps_its_gain_of_one():
    # constant images vary only in brightness: every ring but the 0th has no power in the rest
    x = torch.rand(10, 1, 1, 1, generator=torch.Generator().manual_seed(3)).expand(10, 1, 4, 4)
    data = TensorDataset(torch.cat([2 * x, x]), torch.ones(20))
    found = spectral_map(spectra(data, np.arange(10)), spectra(data, np.arange(10, 20)))
    assert found.gain[0, 0, 0] == pytest.approx(2.0, rel=1e-5)
    assert torch.equal(found.gain.flatten()[1:], torch.ones(15))
