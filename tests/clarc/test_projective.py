"""P-ClArC: the projection removes the component along v of (a − z), keeps the rest, and comes off cleanly."""

from __future__ import annotations

import copy

import pytest
import torch

from spray.attribution.methods import get_method
from spray.clarc.projective import (
    Projected,
    Projection,
    explaining,
    insert_projection,
    load_corrected,
    project_model,
    remove_projection,
)
from spray.errors import BadInputError


def random_setup(channels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5, channels, 4, 3, generator=g)
    v = torch.randn(channels, generator=g)
    z = torch.randn(channels, 4, 3, generator=g)
    return a, v, z


def test_projection_sets_the_v_component_to_the_clean_mean_and_keeps_the_orthogonal_part():
    a, v, z = random_setup()
    h = Projection(v, z)(a)
    unit = (v / v.norm()).reshape(1, -1, 1, 1)
    along = lambda t: (t * unit).sum(1)  # noqa: E731
    # The component of (h − z) along v is gone, at every spatial position ...
    torch.testing.assert_close(along(h - z), torch.zeros(5, 4, 3), atol=1e-5, rtol=0)
    # ... and the part of a orthogonal to v is unchanged.
    orthogonal = lambda t: t - unit * along(t)[:, None]  # noqa: E731
    torch.testing.assert_close(orthogonal(h), orthogonal(a), atol=1e-5, rtol=0)


def test_projection_with_channel_mean_z_broadcasts_over_positions():
    a, v, z = random_setup()
    z_channels = z.mean((1, 2))
    h = Projection(v, z_channels)(a)
    unit = (v / v.norm()).reshape(1, -1, 1, 1)
    torch.testing.assert_close(((h - z_channels.reshape(1, -1, 1, 1)) * unit).sum(1), torch.zeros(5, 4, 3),
                               atol=1e-5, rtol=0)


def test_projection_is_idempotent():
    a, v, z = random_setup()
    projection = Projection(v, z)
    torch.testing.assert_close(projection(projection(a)), projection(a), atol=1e-5, rtol=0)


def test_insert_and_remove_restore_the_model_exactly(new_model):
    model = new_model()
    before = copy.deepcopy(model.state_dict())
    original = model.features[3]
    x = torch.rand(3, 1, 8, 8)
    expected = model(x)
    insert_projection(model, "features.3", torch.ones(6), torch.zeros(6, 8, 8))
    assert isinstance(model.features[3], Projected)
    assert not torch.equal(model(x), expected)
    remove_projection(model, "features.3")
    assert model.features[3] is original
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert torch.equal(model(x), expected)


def test_projected_model_saves_v_and_z_and_reloads_into_a_fresh_model(tmp_path, new_model):
    model = new_model()
    v, z = torch.randn(6), torch.rand(6, 8, 8)
    corrected = project_model(model, "features.3", v, z)
    assert not any(isinstance(m, Projected) for m in model.modules()), "the input model is left alone"
    state = corrected.state_dict()
    torch.testing.assert_close(state["features.3.projection.v"], v / v.norm())
    assert torch.equal(state["features.3.projection.z"], z)
    torch.save(state, tmp_path / "weights.pt")
    reloaded = load_corrected(new_model(seed=5), tmp_path / "weights.pt")
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(reloaded(x), corrected(x))


def test_projected_model_can_be_explained_with_lrp(new_model):
    from spray.clarc.evaluate import artifact_relevance

    corrected = project_model(new_model(), "features.3", torch.randn(6), torch.rand(6, 8, 8))
    dataset = torch.utils.data.TensorDataset(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))
    share = artifact_relevance(corrected, dataset, torch.ones(8, 8))
    assert abs(share - 1.0) < 1e-6


def test_the_projection_s_bias_is_its_constant_part_so_relevance_accounting_lets_it_absorb():
    v, z = torch.tensor([3.0, 4.0]), torch.rand(2, 3, 3)
    projection = Projection(v, z)
    a = torch.rand(5, 2, 3, 3)
    unit = (v / 5).reshape(1, 2, 1, 1)
    linear = a - unit * (a * unit).sum(1, keepdim=True)
    assert torch.allclose(projection(a), linear + projection.bias, atol=1e-6)
    assert projection.bias.shape == z.shape


def test_subspace_projection_sets_every_direction_to_the_clean_mean_and_keeps_the_rest():
    a, _, z = random_setup()
    g = torch.Generator().manual_seed(1)
    V = torch.randn(2, 6, generator=g)  # not orthonormal: the projection orthonormalises the rows
    projection = Projection(V, z)
    q = projection.v
    torch.testing.assert_close(q @ q.T, torch.eye(2), atol=1e-5, rtol=0)
    h = projection(a)
    coordinates = lambda t: torch.einsum("nchw,kc->nkhw", t, V)  # noqa: E731
    torch.testing.assert_close(coordinates(h - z), torch.zeros(5, 2, 4, 3), atol=1e-5, rtol=0)
    orthogonal = torch.linalg.svd(V, full_matrices=True).Vh[2:]  # the complement of V's row space
    torch.testing.assert_close(torch.einsum("nchw,kc->nkhw", h, orthogonal),
                               torch.einsum("nchw,kc->nkhw", a, orthogonal), atol=1e-5, rtol=0)
    torch.testing.assert_close(projection(h), h, atol=1e-5, rtol=0)


def test_a_subspace_projection_reloads_into_a_fresh_model(tmp_path, new_model):
    V = torch.randn(3, 6)
    corrected = project_model(new_model(), "features.3", V, torch.rand(6, 8, 8))
    assert corrected.state_dict()["features.3.projection.v"].shape == (3, 6)
    torch.save(corrected.state_dict(), tmp_path / "weights.pt")
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(load_corrected(new_model(seed=5), tmp_path / "weights.pt")(x), corrected(x))


def test_dependent_or_zero_directions_are_refused():
    message = r"the projection direction v must be a finite, non-zero vector \(C,\) or k linearly independent ones"
    for v in (torch.zeros(6), torch.stack([torch.ones(6), 2 * torch.ones(6)]), torch.full((6,), float("nan"))):
        with pytest.raises(BadInputError, match=message):
            Projection(v, torch.zeros(6))


def test_an_attributor_explains_a_projected_model_with_the_epsilon_rule_on_the_projection():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    lrp, gradient = get_method("epsilon_plus_flat"), get_method("saliency")
    assert explaining(lrp, model) is lrp and explaining(gradient, model) is gradient
    projected = project_model(model, "0", torch.ones(3), torch.zeros(3, 2, 2))
    extended = explaining(lrp, projected)
    assert type(extended.composite.types[Projection]).__name__ == "Epsilon" and Projection not in lrp.composite.types
    assert explaining(gradient, projected) is gradient
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    relevance, _ = extended.attribute(projected, x, torch.tensor([0, 1]))
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
