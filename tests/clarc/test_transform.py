"""The artifact as a transformation: the kind rule (coverage, agreed area of the pasted mask, the model's view of
the transplant and of the spectral map), the group's moments read once, the mean shift and intensity map, A-ClArC
adding them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from spray.clarc.augmentive import AClArC
from spray.clarc.spectrum import Spectrum, radial_bins
from spray.clarc.transform import (AGREEMENT, CHANCE_SDS, GAIN_SUPPORT, GLOBAL_COVERAGE, GLOBAL_GAIN, MIN_AGREED_AREA,
                                   MIN_SPREAD, Either, Intensity, KindFigures, Paste, Transformations, Transplant,
                                   agreed_area, artifact_kind, artifact_transform, chance_sd, coverage,
                                   difference_mask, group_moments, intensity_map, kind_figures, separation, spread,
                                   transplant)
from spray.errors import BadInputError
from tests.clarc.conftest import OnePlace


@dataclass(frozen=True)
class Masked:
    label: int
    mask: torch.Tensor
    patch: torch.Tensor
    artifact_index: np.ndarray
    rest_index: np.ndarray

    @property
    def localization(self) -> OnePlace:
        return OnePlace(self.mask, len(self.artifact_index))


def artifact(share: float) -> Masked:
    """An artifact of class 1 (samples 0, 1) vs the rest (2, 3) whose mask covers ``share`` of 4×4 pixels."""
    mask = torch.zeros(4, 4)
    mask.view(-1)[: round(16 * share)] = 1.0
    return Masked(1, mask, torch.full((1, 4, 4), 9.0), np.array([0, 1]), np.array([2, 3]))


def dataset(side: int = 4) -> TensorDataset:
    """Class 1 (samples 0–3) and class 0 of ``side`` × ``side`` images; the cluster (0, 1) is brighter than the
    rest of its class by 2 at every pixel, and the rest does not vary."""
    x = torch.zeros(6, 1, side, side)
    x[0] += 3.0
    x[1] += 1.0
    x[4:] = 5.0
    return TensorDataset(x, torch.tensor([1, 1, 1, 1, 0, 0]))


def kind_of(found, data: TensorDataset | None = None, model: torch.nn.Module | None = None) -> str:
    return artifact_kind(Transformations(found, dataset() if data is None else data), model)


def test_an_artifact_covering_half_the_image_or_more_is_global():
    assert coverage(artifact(0.25).mask) == 0.25
    assert kind_of(artifact(0.25)) == "local"
    assert kind_of(artifact(GLOBAL_COVERAGE)) == "global"
    assert kind_of(artifact(1.0)) == "global"


OPEN = "the artifact's masks leave its kind open: reading it off the model needs the model"


def test_masks_that_agree_on_no_region_leave_the_kind_to_the_model():
    # A quarter of the image, but no pixel in (nearly) every sample's mask: LRP on each sample's own content
    # (a global confounder), or on a sticker at another place in each sample (a moving artifact).
    diffuse = replace(artifact(0.25), mask=artifact(0.25).mask * 0.9)
    assert coverage(diffuse.mask) == pytest.approx(0.225) and agreed_area(diffuse.mask) == 0.0
    with pytest.raises(ValueError, match=OPEN):
        kind_of(diffuse)


def test_the_kind_rule_on_its_figures():
    assert KindFigures(GLOBAL_COVERAGE, 0.5).kind == "global"
    assert KindFigures(0.2, MIN_AGREED_AREA).kind == "local"
    # Masks apart read a moving artifact; the model overturns it where the intensity map's result lies nearer the
    # group than the transplant's by CHANCE_SDS × 0.0625 = 0.125 or more (no spectral map asked here).
    moving, shifted = {"moving": 0.55, "global": 0.8}, {"moving": 0.8, "global": 0.55}
    assert KindFigures(0.2, 0.0, spread=MIN_SPREAD, reproduction=moving, chance=0.0625).kind == "moving"
    assert KindFigures(0.2, 0.0, spread=MIN_SPREAD, reproduction=shifted, chance=0.0625).kind == "global"
    for tie in ({"moving": 0.7, "global": 0.7}, {"moving": 0.8, "global": 0.7}, {"moving": 0.25, "global": 0.65}):
        assert KindFigures(0.2, 0.0, spread=MIN_SPREAD, reproduction=tie, chance=0.0625).kind == "moving"  # a tie
    beyond = {"moving": 0.85, "global": 0.7}  # separations 0.35 and 0.2: the transplant's 0.15 further
    assert KindFigures(0.2, 0.0, spread=MIN_SPREAD, reproduction=beyond, chance=0.0625).kind == "global"
    # Masks in one place (a sub-style of the class) are never moving, however well the transplant reproduces it.
    assert KindFigures(0.2, 0.0, spread=MIN_SPREAD - 0.01, reproduction={"moving": 0.5, "global": 0.8},
                       chance=0.0625).kind == "global"
    # A contrast changed by the group's intensity map is global, whatever the masks agree on; kept, it is not
    for gain in (GLOBAL_GAIN, 1 / GLOBAL_GAIN, 0.5, 2.0):
        figures = KindFigures(0.2, 0.3, gain)
        assert figures.contrast and not figures.open and figures.kind == "global"
    for gain in (np.nextafter(GLOBAL_GAIN, 1), 1.0, np.nextafter(1 / GLOBAL_GAIN, 0)):
        assert KindFigures(0.2, 0.3, gain).kind == "local" and KindFigures(0.2, 0.0, gain).open
    # A global artifact is spectral (a blur), read off the contrast or the masks alike, unless the model tells the
    # spectral map's result from the group (CHANCE_SDS × 0.0625 = 0.125 off 0.5 or more) and the intensity map's less
    spectral, flat, told = {"global": 0.8, "spectral": 0.6}, {"global": 0.7, "spectral": 0.7}, {"global": 0.5625,
                                                                                               "spectral": 0.375}
    assert CHANCE_SDS * 0.0625 == 0.125
    assert KindFigures(0.2, 0.3, 0.5, reproduction=spectral, chance=0.0625).kind == "spectral"
    assert KindFigures(0.2, 0.3, 0.5, reproduction=flat, chance=0.0625).kind == "spectral"  # a tie: the spectral map
    assert KindFigures(0.2, 0.3, 0.5, reproduction=told, chance=0.0625).kind == "global"
    within = {**told, "spectral": 0.376}
    assert KindFigures(0.2, 0.3, 0.5, reproduction=within, chance=0.0625).kind == "spectral"
    assert KindFigures(0.2, 0.3, 0.5).kind == "global"  # the model not asked: the intensity map
    assert KindFigures(0.2, 0.0, spread=0.0, reproduction={"moving": 0.5, **told}, chance=0.0625).kind == "global"
    moving_told = KindFigures(0.2, 0.0, spread=MIN_SPREAD, reproduction={"moving": 0.5, **told}, chance=0.0625)
    assert moving_told.kind == "moving"
    assert KindFigures(0.2, MIN_AGREED_AREA, reproduction=told, chance=0.0625).kind == "local"


def test_the_spread_of_masks_is_the_rms_distance_of_their_centroids_over_the_image_side():
    masks = torch.zeros(4, 8, 8)
    for i, (r, c) in enumerate([(0, 0), (0, 6), (6, 0), (6, 6)]):
        masks[i, r : r + 2, c : c + 2] = 1.0  # centroids 3 rows and 3 columns from their mean
    assert spread(masks) == pytest.approx(18**0.5 / 8)
    assert spread(masks[:1].expand(3, 8, 8)) == 0.0
    assert spread(torch.zeros(2, 8, 8)) == 0.0  # no mass: at the centre


def test_a_local_artifact_needs_an_agreed_area_of_at_least_the_minimum():
    mask = torch.full((20, 20), 0.2)
    mask.view(-1)[:4] = AGREEMENT  # 4 of 400 pixels: the minimum, 1 %
    assert agreed_area(mask) == MIN_AGREED_AREA == 0.01
    assert kind_of(replace(artifact(0.25), mask=mask), dataset(20)) == "local"
    mask.view(-1)[3] = AGREEMENT - 0.01
    assert agreed_area(mask) == 0.0075
    with pytest.raises(ValueError, match=OPEN):
        kind_of(replace(artifact(0.25), mask=mask), dataset(20))


def lifted_class(stamped: bool) -> tuple[TensorDataset, Masked]:
    """Class 1 of 8×8 images, the 4 samples' strokes in rows 4-5; the cluster (samples 0, 1) has its background
    lifted to 0.3 (``x' = 0.3 + 0.7 x``, the benchmark's brightness) and, if ``stamped``, row 0 set to 1 too.
    Every sample's mask covers the strokes (as LRP along a brightness CAV lands on the digit), and the stamp."""
    x = torch.zeros(4, 1, 8, 8)
    x[:, 0, 4:6] = 1.0
    x[:2] = 0.3 + 0.7 * x[:2]
    mask = torch.zeros(8, 8)
    mask[4:6] = 1.0
    if stamped:
        x[:2, 0, 0] = mask[0] = 1.0
    return TensorDataset(x, torch.ones(4, dtype=torch.long)), Masked(1, mask, x[:2].mean(0), np.array([0, 1]),
                                                                     np.array([2, 3]))


def test_masks_that_agree_only_on_the_class_s_own_content_leave_the_kind_open():
    # Brightness: the masks agree on the strokes, a quarter of the image, but there the cluster equals the
    # rest of its class (0.3 + 0.7 * 1 = 1), so the pasted mask agrees nowhere.
    data, lifted = lifted_class(stamped=False)
    assert agreed_area(lifted.mask) == 0.25 and agreed_area(Transformations(lifted, data).local.mask) == 0.0
    with pytest.raises(ValueError, match=OPEN):
        artifact_transform(lifted, data)
    # A stamp in row 0 as well: the cluster differs there and every mask covers it, so it is local.
    data, stamped = lifted_class(stamped=True)
    assert agreed_area(Transformations(stamped, data).local.mask) == 0.125
    assert kind_of(stamped, data) == "local"
    assert isinstance(artifact_transform(stamped, data), Paste)


@dataclass(frozen=True)
class Localized:
    masks: torch.Tensor


@dataclass(frozen=True)
class Seen:
    """An artifact model as the kind rule reads it: masks, indices, and the CAV at ``layer``."""

    label: int
    mask: torch.Tensor
    patch: torch.Tensor
    artifact_index: np.ndarray
    rest_index: np.ndarray
    localization: Localized
    layer: str = "1"
    direction: torch.Tensor = torch.ones(1)


def bright_pixels(brightest: bool = False) -> torch.nn.Module:
    """A model whose layer ``1`` sees how far pixels rise above 0.5, ``relu(x − 0.5)``; with ``brightest``, its
    layer ``3`` sees the most any pixel does."""
    top = (torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 2)) if brightest else (
        torch.nn.Flatten(), torch.nn.Linear(64, 2))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.ReLU(), *top)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(-0.5)
    return model.eval()


def test_a_sticker_at_another_corner_in_each_sample_is_moving_a_lifted_background_global():
    # Four 8×8 samples with a 2×2 sticker at another corner each; the rest of the class is blank; the model sees
    # the brightest pixel. The mean shift spreads a quarter of a sticker over every corner, under the 0.5 the
    # model sees; the transplant pastes each sticker (its mask softened at the edge away from the corner).
    x = torch.zeros(8, 1, 8, 8)
    masks = torch.zeros(4, 8, 8)
    for i, (r, c) in enumerate([(0, 0), (0, 6), (6, 0), (6, 6)]):
        x[i, 0, r : r + 2, c : c + 2] = masks[i, r : r + 2, c : c + 2] = 1.0
    data = TensorDataset(x, torch.ones(8, dtype=torch.long))
    moving = Seen(1, masks.mean(0), x[:4].mean(0), np.arange(4), np.arange(4, 8), Localized(masks), layer="3")
    assert coverage(moving.mask) == 0.0625 and agreed_area(Transformations(moving, data).local.mask) == 0.0
    figures = kind_figures(Transformations(moving, data), bright_pixels(brightest=True))
    assert figures.reproduction == {"moving": 0.5, "global": 1.0, "spectral": 1.0} and figures.spread > MIN_SPREAD
    assert figures.kind == "moving"
    transplanted = artifact_transform(moving, data, model=bright_pixels(brightest=True))
    assert isinstance(transplanted, Transplant) and transplanted.kind == "moving"
    out = transplanted(torch.zeros(6, 1, 8, 8))
    assert all(any(torch.equal(o.bool(), x[j].bool()) for j in range(4)) for o in out)  # one whole sticker each
    assert torch.equal(out, transplanted(torch.zeros(6, 1, 8, 8)))  # the same draws for the same batch
    # The background lifted to 0.6 behind strokes in rows 4-5: the mean shift lifts the rest exactly so; the
    # transplant pastes where the masks (the strokes) and the difference (the background) meet: nothing.
    x = torch.zeros(8, 1, 8, 8)
    x[:, 0, 4:6] = 1.0
    x[:4] = 0.6 + 0.4 * x[:4]
    strokes = torch.zeros(4, 8, 8)
    strokes[:, 4:6] = 1.0
    data = TensorDataset(x, torch.ones(8, dtype=torch.long))
    lifted = Seen(1, strokes.mean(0), x[:4].mean(0), np.arange(4), np.arange(4, 8), Localized(strokes))
    figures = kind_figures(Transformations(lifted, data), bright_pixels())
    # (the rest does not vary: the spectral map is the mean shift too, and a tie goes to the spectral map)
    assert figures.reproduction == {"moving": 1.0, "global": 0.5, "spectral": 0.5} and figures.kind == "spectral"
    # The same strokes with the masks at one place: not moving even were the transplant the better reproduction.
    assert figures.spread < MIN_SPREAD
    mapped = artifact_transform(lifted, data, model=bright_pixels())
    assert isinstance(mapped, Spectrum) and torch.allclose(mapped(x[4:]), x[:4], atol=1e-6)


def test_chance_sd_is_the_spread_of_aucs_of_two_samples_of_one_distribution():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    for group, rest in [(10, 340), (35, 315), (105, 245)]:
        truth = np.r_[np.ones(group), np.zeros(rest)]
        aucs = [roc_auc_score(truth, rng.normal(size=group + rest)) for _ in range(4000)]
        assert np.std(aucs) == pytest.approx(chance_sd(group, rest), rel=0.05)
    assert chance_sd(35, 315) == pytest.approx((351 / (12 * 35 * 315)) ** 0.5)


@pytest.mark.parametrize("found, kind", [
    ({"global": 0.039, "spectral": 0.524}, "spectral"),  # the intensity map overshoots: further from 0.5
    ({"global": 0.448, "spectral": 0.543}, "spectral"),  # both within chance: the spectral map, which nests it
    ({"global": 0.515, "spectral": 0.524}, "spectral"),
    ({"global": 0.84, "spectral": 0.59}, "spectral"),    # the CNN's blur: the spectral map told apart less
    ({"global": 0.735, "spectral": 0.764}, "global"),    # the spectral map told apart, the intensity map less
    ({"global": 0.30, "spectral": 0.66}, "spectral"),    # told apart, but the intensity map further (either way)
])
def test_a_global_artifact_takes_the_spectral_map_unless_told_apart_and_the_intensity_map_less(found, kind):
    chance = chance_sd(35, 315)  # 0.0515: the spectral map is told apart from 0.103 off 0.5
    figures = KindFigures(coverage=1.0, agreed_area=0.0, gain=0.5, reproduction=found, chance=chance)
    assert figures.kind == kind


def test_a_moving_artifact_is_the_transplant_unless_the_intensity_map_is_nearer_chance_either_way():
    assert separation(0.39) == pytest.approx(separation(0.61)) == pytest.approx(0.11)
    open_figures = KindFigures(coverage=0.1, agreed_area=0.0, spread=0.3, chance=0.05,
                               reproduction={"moving": 0.25, "global": 0.60, "spectral": 0.60})
    # the transplant overshoots further than the intensity map falls short, by more than 2 × 0.05: not moving
    assert open_figures.open and open_figures.kind == "spectral"
    assert replace(open_figures, reproduction={"moving": 0.45, "global": 0.60, "spectral": 0.60}).kind == "moving"
    assert replace(open_figures, spread=0.1, reproduction={"moving": 0.5, "global": 0.9, "spectral": 0.55}).kind == (
        "spectral")


def test_masks_that_agree_on_a_little_but_lie_apart_leave_the_kind_open():
    # Four 8×8 samples, each with a 2×2 sticker at another corner and a 2×2 block at the centre that the rest of
    # the class lacks (a small group's chance overlap): the masks agree on the block, 6 % of the image, but the
    # transplant's masks (sticker and block) lie apart. With every sticker at one corner the artifact is local.
    def seen(corners):
        x, masks = torch.zeros(8, 1, 8, 8), torch.zeros(4, 8, 8)
        for i, (r, c) in enumerate(corners):
            x[i, 0, r : r + 2, c : c + 2] = masks[i, r : r + 2, c : c + 2] = 1.0
            x[i, 0, 3:5, 3:5] = masks[i, 3:5, 3:5] = 1.0
        data = TensorDataset(x, torch.ones(8, dtype=torch.long))
        return Seen(1, masks.mean(0), x[:4].mean(0), np.arange(4), np.arange(4, 8), Localized(masks)), data
    apart, data = seen([(0, 0), (0, 6), (6, 0), (6, 6)])
    built = Transformations(apart, data)
    assert agreed_area(built.local.mask) >= MIN_AGREED_AREA
    with pytest.raises(ValueError, match=OPEN):
        kind_figures(built, None)
    figures = kind_figures(built, bright_pixels(brightest=True))
    assert MIN_SPREAD < figures.spread < 18**0.5 / 8  # the corners' spread, pulled in by the shared block
    assert figures.open and set(figures.reproduction) == {"moving", "global", "spectral"}  # the model asked
    together, data = seen([(0, 0)] * 4)
    figures = kind_figures(Transformations(together, data), None)
    assert figures.spread == pytest.approx(0.0, abs=1e-6) and figures.kind == "local"
    assert KindFigures(0.2, 0.3, spread=MIN_SPREAD - 0.01).kind == "local"
    assert KindFigures(0.2, 0.3, spread=MIN_SPREAD, reproduction={"moving": 0.5, "global": 0.8, "spectral": 0.8},
                       chance=0.05).kind == "moving"


class Magnitude(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


def test_the_kind_rule_takes_the_spectral_map_for_a_blur_the_model_sees_as_lost_detail():
    # 8×8 random images, the cluster's 30 low-passed (rings ≥ 3 gone); the model's layer 1 is |Laplacian|, the
    # fine detail, and the CAV points to less of it. One gain scales the detail by the power-weighted mean and
    # leaves the rest's above the cluster's; the spectral map removes it as the blur did.
    x = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    x[:30] = torch.fft.ifft2(torch.fft.fft2(x[:30]) * (radial_bins(8, 8) < 3)).real
    data = TensorDataset(x, torch.ones(60, dtype=torch.long))
    blurred = Seen(1, torch.ones(8, 8), x[:30].mean(0), np.arange(30), np.arange(30, 60),
                   Localized(torch.ones(30, 8, 8)), direction=-torch.ones(1))
    laplacian = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular", bias=False)
    with torch.no_grad():
        laplacian.weight.copy_(torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]))
    model = torch.nn.Sequential(laplacian, Magnitude()).eval()
    built = Transformations(blurred, data)
    assert built.intensity.gain < GLOBAL_GAIN  # the contrast fell: global without the model
    assert kind_figures(built, None).kind == "global" and isinstance(artifact_transform(blurred, data), Intensity)
    figures = kind_figures(built, model)
    assert figures.reproduction["spectral"] < 0.6 < 0.9 < figures.reproduction["global"]
    assert figures.kind == "spectral"
    assert isinstance(artifact_transform(blurred, data, model=model), Spectrum)


def test_the_mean_shift_is_the_cluster_mean_minus_the_rest_mean():
    assert torch.equal(group_moments(dataset(), artifact(1.0)).shift, torch.full((1, 4, 4), 2.0))
    # the rest does not vary: the intensity map's gain is 1, and it adds the mean shift
    shift = artifact_transform(artifact(1.0), dataset())
    assert isinstance(shift, Intensity) and shift.kind == "global" and shift.gain == 1.0
    assert torch.equal(shift(torch.ones(2, 1, 4, 4)), torch.full((2, 1, 4, 4), 3.0))


def transformed_class(lift) -> tuple[TensorDataset, Masked]:
    """Class 1 of 40 random 6×6 images: 20 as they are (the rest), 20 others made ``lift(x)`` (the cluster)."""
    x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    x[:, :, 0] = 0.0  # a row where the class never varies
    x[:20] = lift(x[:20])
    return TensorDataset(x, torch.ones(40, dtype=torch.long)), Masked(1, torch.ones(6, 6), x[:20].mean(0),
                                                                        np.arange(20), np.arange(20, 40))


def test_the_intensity_map_gives_the_rest_the_clusters_mean_and_contrast():
    # A background lifted to 0.3, x' = 0.3 + 0.7 x: the group's own digits are other digits than the rest's,
    # so the map is estimated, not exact: gain near 0.7, offset near 0.3 on average where the class varies
    # (each pixel's from 20 samples; the mean shift, about 0.3 − 0.3 · 0.5, would leave the contrast as it was)
    data, lifted = transformed_class(lambda x: 0.3 + 0.7 * x)
    found = intensity_map(group_moments(data, lifted))
    assert found.gain == pytest.approx(0.7, abs=0.05)
    assert float(found.offset[:, 1:].mean()) == pytest.approx(0.3, abs=0.02)
    assert torch.allclose(found.offset[:, 0], torch.tensor(0.3), atol=1e-6)  # μ_cluster − g · 0 where x is 0
    # a patch painted over part of every cluster image, where the class varies: those pixels no longer vary in
    # the cluster, and the gain falls under 1 (one gain for the whole image; a sticker on the background, where
    # the class does not vary, is outside the support); it is the variance ratio over the values where the
    # rest's deviation is at least GAIN_SUPPORT of its largest
    patch = torch.zeros(1, 6, 6, dtype=torch.bool)
    patch[:, 1:3, 1:3] = True
    data, patched = transformed_class(lambda x: x.masked_fill(patch, 1.0))
    found = intensity_map(group_moments(data, patched))
    x = data.tensors[0]
    _, sd_rest = x[20:].mean(0), x[20:].std(0, unbiased=False)
    support = sd_rest >= GAIN_SUPPORT * sd_rest.max()
    assert not support[0, 0].any() and support[0, 1:].all()
    expected = (x[:20].var(0)[support].sum() / x[20:].var(0)[support].sum()).sqrt()
    assert found.gain == pytest.approx(float(expected), rel=1e-5) and found.gain < 1
    assert torch.allclose(found.offset, x[:20].mean(0) - found.gain * x[20:].mean(0), atol=1e-6)
    # read by the kind rule without a model: the lifted background changes the contrast, so it is global
    # however little of the image its masks cover; the patch keeps it (gain above GLOBAL_GAIN), so the masks
    # decide, and masks that agree nowhere leave it to the model
    unmasked = {"mask": torch.zeros(6, 6), "patch": torch.zeros(1, 6, 6)}
    data, lifted = transformed_class(lambda x: 0.3 + 0.7 * x)
    figures = kind_figures(Transformations(replace(lifted, **unmasked), data), None)
    assert figures == KindFigures(0.0, 0.0, intensity_map(group_moments(data, lifted)).gain)
    assert figures.kind == "global"
    data, patched = transformed_class(lambda x: x.masked_fill(patch, 1.0))
    assert GLOBAL_GAIN < intensity_map(group_moments(data, patched)).gain < 1
    with pytest.raises(ValueError, match=OPEN):
        kind_figures(Transformations(replace(patched, **unmasked), data), None)
    # the same images for both groups, the cluster's made 0.3 + 0.7 x: the map is exact
    x = torch.rand(20, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(torch.cat([0.3 + 0.7 * x, x]), torch.ones(40, dtype=torch.long))
    found = intensity_map(group_moments(data, Masked(1, torch.ones(6, 6), x.mean(0), np.arange(20), np.arange(20, 40))))
    assert found.gain == pytest.approx(0.7, rel=1e-6) and torch.allclose(found.offset, torch.tensor(0.3), atol=1e-6)
    assert torch.allclose(found(x), 0.3 + 0.7 * x, atol=1e-6)


def test_a_local_artifact_is_pasted_and_the_kind_can_be_forced():
    paste = artifact_transform(artifact(0.25), dataset())
    assert isinstance(paste, Paste) and paste.kind == "local"
    out = paste(torch.zeros(1, 1, 4, 4))
    assert out.sum() == 9.0 * 4 and out[0, 0, 0, 0] == 9.0
    assert isinstance(artifact_transform(artifact(0.25), dataset(), "global"), Intensity)
    with pytest.raises(BadInputError, match="artifact kind"):
        artifact_transform(artifact(0.25), dataset(), "diffuse")


def test_the_patch_is_pasted_only_where_the_cluster_differs_from_the_rest_of_its_class():
    # The mask covers row 0 (the artifact, in the cluster only; its pixel 3 equals the rest's, as a stamp's
    # dark cell on a dark background) and rows 4-5 (the class's own content, in every sample of the class, as
    # a frame's mask covers the strokes of the 8s inside it): row 0 alone is pasted, its pixel 3 with it.
    x = torch.zeros(4, 1, 8, 8)
    x[:, 0, 4:6] = 1.0
    x[:2, 0, 0] = 1.0
    x[:2, 0, 0, 3] = 0.0
    data = TensorDataset(x, torch.tensor([1, 1, 1, 1]))
    mask = torch.zeros(8, 8)
    mask[0] = mask[4:6] = 1.0
    both = Masked(1, mask, torch.full((1, 8, 8), 9.0), np.array([0, 1]), np.array([2, 3]))
    pasted = difference_mask(group_moments(data, both).shift) * mask
    assert torch.equal(Transformations(both, data).local.mask, pasted)
    assert torch.all(pasted[0] > 0.5) and torch.all(pasted[1:] == 0)
    out = artifact_transform(both, data, "local")(torch.zeros(1, 1, 8, 8))
    assert torch.equal(out[0, 0], 9.0 * pasted)


def test_either_gives_each_image_the_patch_or_the_intensity_map_drawn_per_image():
    built = Transformations(artifact(0.25), dataset())
    either = built.of("local+global")
    assert isinstance(either, Either) and either.kind == "local+global"
    assert either.transforms[0] is built.local and either.transforms[1] is built.intensity
    x = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    kept = x.clone()
    out = either(x)
    pasted, mapped = built.local(x), built.intensity(x)
    is_pasted = [torch.equal(o, p) for o, p in zip(out, pasted)]
    is_mapped = [torch.equal(o, m) for o, m in zip(out, mapped)]
    assert all(a != b for a, b in zip(is_pasted, is_mapped))  # each image exactly one of the two
    assert 16 < sum(is_pasted) < 48  # both drawn, about half each
    assert torch.equal(x, kept) and torch.equal(either(x), out)  # the input kept; the same draws for the same batch
    other = Either(either.transforms, seed=1)
    assert not torch.equal(other(x), out)
    assert other.fingerprint()["transforms"] == [built.local.fingerprint(), built.intensity.fingerprint()]
    assert other.fingerprint() != either.fingerprint()


class Recorder(torch.nn.Module):
    """A model that records the batches it is given (``seen``) and predicts nothing."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(len(x), 2, requires_grad=True)


def test_aclarc_adds_the_mean_shift_of_a_global_artifact_to_other_classes():
    recorder = Recorder()
    corrector = AClArC(fraction=1.0)
    corrector.transform_ = artifact_transform(artifact(1.0), dataset())
    loss = corrector.objective(artifact(1.0))
    x, y = dataset().tensors
    loss(recorder, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(recorder.seen[0][4:], x[4:] + 2.0)  # class 0 shifted
    assert torch.equal(recorder.seen[0][:4], x[:4])  # the artifact's class unchanged


def test_aclarc_with_both_forms_gives_each_other_class_sample_the_patch_or_the_map():
    recorder = Recorder()
    built = Transformations(artifact(0.25), dataset())
    corrector = AClArC(fraction=1.0, kind="local+global")
    corrector.transform_ = built.of(corrector.kind)
    x, y = dataset().tensors
    x, y = x.repeat(8, 1, 1, 1), y.repeat(8)  # 16 samples of class 0
    corrector.objective(artifact(0.25))(recorder, x, y, torch.Generator().manual_seed(0))
    other = y == 0
    pasted = [torch.equal(a, b) for a, b in zip(recorder.seen[0][other], built.local(x[other]))]
    mapped = [torch.equal(a, b) for a, b in zip(recorder.seen[0][other], built.intensity(x[other]))]
    assert all(p != m for p, m in zip(pasted, mapped)) and 0 < sum(pasted) < len(pasted)
    assert torch.equal(recorder.seen[0][~other], x[~other])  # the artifact's class unchanged


def test_the_transplant_takes_what_differs_beyond_the_class_s_own_variation():
    # The rest of the class varies in row 4 (strokes written one way or another) and is blank elsewhere; the group
    # sample has ink in row 4 too, and a sticker at the top left. With masks over the whole image, only the sticker
    # is transplanted: row 4 differs from the rest's mean by half its spread there.
    x = torch.zeros(5, 1, 8, 8)
    x[[2, 4], 0, 4] = 1.0
    x[0, 0, 4] = 1.0
    x[0, 0, :2, :2] = 1.0
    data = TensorDataset(x, torch.ones(5, dtype=torch.long))
    group = Seen(1, torch.ones(8, 8), x[:1].mean(0), np.array([0]), np.arange(1, 5), Localized(torch.ones(1, 8, 8)))
    moved = transplant(data, group, group_moments(data, group))
    assert torch.all(moved.masks[0, :2, :2] > 0.8) and torch.all(moved.masks[0, 4] == 0)
    assert torch.equal(moved.sources, x[:1])


class Counted(TensorDataset):
    """A dataset that counts how often each sample is read."""

    def __init__(self, *tensors):
        super().__init__(*tensors)
        self.reads = np.zeros(len(self), dtype=int)

    def __getitem__(self, index):
        self.reads[index] += 1
        return super().__getitem__(index)


def test_the_class_is_read_once_for_every_transformation_and_the_kind():
    # the moments of cluster and rest once for the pasted mask, the intensity map and the transplant's masks;
    # the cluster's samples once more, as the transplant's sources; asked again, nothing is read
    x = dataset().tensors[0]
    data = Counted(x, dataset().tensors[1])
    found = Seen(1, torch.ones(4, 4), torch.full((1, 4, 4), 9.0), np.array([0, 1]), np.array([2, 3]),
                 Localized(torch.ones(2, 4, 4)))
    built = Transformations(found, data)
    assert kind_figures(built, None).kind == "global"
    for _ in range(2):
        assert [type(built.of(k)) for k in ("local", "global", "moving", "auto")] == [
            Paste, Intensity, Transplant, Intensity]
    assert data.reads.tolist() == [2, 2, 1, 1, 0, 0]
    assert torch.equal(built.moments.shift, group_moments(dataset(), found).shift)
