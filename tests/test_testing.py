"""spray.testing's pipeline presets: each parses as written, and overrides change only what they name."""

from __future__ import annotations

import pytest

from spray.pipeline import pipeline_from_text
from spray.testing import PIPELINES, pipeline_text


@pytest.mark.parametrize("preset", sorted(PIPELINES))
def test_every_preset_parses_to_its_own_parameters(preset):
    spec = pipeline_from_text(pipeline_text(preset))
    assert spec.name == "spray"
    for table, params in PIPELINES[preset].items():
        assert spec.nodes[table] | params == spec.nodes[table], table


def test_overrides_update_one_parameter_add_tables_and_keep_the_rest():
    base = pipeline_from_text(pipeline_text("tiny"))
    spec = pipeline_from_text(pipeline_text("tiny", kmeans={"k_max": 6}, tsne={}, analysis={"name": "tiny"}))
    assert spec.name == "tiny"
    assert spec.nodes["kmeans"] == base.nodes["kmeans"] | {"k_max": 6}
    assert "tsne" not in base.nodes and "tsne" in spec.nodes
    assert {k: v for k, v in spec.nodes.items() if k not in ("kmeans", "tsne")} == {
        k: v for k, v in base.nodes.items() if k != "kmeans"}
    assert PIPELINES["tiny"]["kmeans"]["k_max"] == 4  # the preset itself is left as it was


def test_an_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="preset must be one of synthetic, tiny, minimal, got 'huge'"):
        pipeline_text("huge")
