"""spray.seeding.seeded: the same seed gives the same draws, and the caller's state is left as it was."""

from __future__ import annotations

import pytest
import torch

from spray.seeding import seeded


def test_same_seed_same_draws_and_the_global_state_is_restored():
    before = torch.get_rng_state()
    with seeded(5):
        a = torch.rand(3)
    with seeded(5):
        b = torch.rand(3)
    with seeded(6):
        c = torch.rand(3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)


def test_without_a_seed_the_block_continues_a_copy_of_the_callers_stream():
    torch.manual_seed(1)
    with seeded():
        inside = torch.rand(2)
    after = torch.rand(2)
    assert torch.equal(inside, after)  # the block's draws did not advance the caller's generator


@pytest.mark.parametrize("outer", [(False, False), (True, True), (True, False)])
def test_deterministic_setting_is_restored_even_after_an_error(outer):
    enabled, warn_only = outer
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    try:
        with pytest.raises(RuntimeError, match="boom"), seeded(0, deterministic=True):
            assert torch.are_deterministic_algorithms_enabled()
            assert torch.is_deterministic_algorithms_warn_only_enabled()
            raise RuntimeError("boom")
        assert torch.are_deterministic_algorithms_enabled() == enabled
        assert torch.is_deterministic_algorithms_warn_only_enabled() == warn_only
    finally:
        torch.use_deterministic_algorithms(False)
