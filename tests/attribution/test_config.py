"""AttributionRun: one value says which attribution and how; the store's record of it is derived from it."""

from __future__ import annotations

import dataclasses

import pytest

from spray.attribution import AttributionRun, attribute_dataset
from spray.attribution.methods import get_method
from spray.errors import BadInputError
from spray.store import AuditStore
from tests.attribution.test_runner import make_dataset, make_model


def _run(**fields) -> AttributionRun:
    return AttributionRun(get_method("epsilon_plus_flat"),
                          **{"model_hash": "h1", "model_name": "net", "dataset_name": "toy", **fields})


def test_the_store_records_the_runs_identity_and_names_the_attribution_after_the_method_by_default(tmp_path):
    run = _run(batch_size=8, progress=False, target="prediction")
    assert run.attribution == "epsilon_plus_flat" and dataclasses.replace(run, name="mine").attribution == "mine"
    assert run.identity() == {"method": "epsilon_plus_flat", "params": run.attributor.params(),
                              "model_hash": "h1", "target": "prediction"}
    attribute_dataset(tmp_path / "a.h5", make_model(), make_dataset(), run)
    with AuditStore(tmp_path / "a.h5") as store:
        info = store.attribution_info("epsilon_plus_flat")
    assert {key: info[key] for key in run.stored_attrs()} == {**run.identity(), "model_name": "net", "batch_size": 8}


@pytest.mark.parametrize(("fields", "message"), [
    ({"target": "logit"}, "target must be one of 'label', 'prediction'; got 'logit'"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"relevance_dtype": "float64"}, "relevance_dtype must be one of 'float32', 'float16'; got 'float64'"),
    ({"thumbnail_range": (1, 1)}, r"thumbnail_range must be \(low, high\) with high > low, got \(1, 1\)"),
    ({"scheduler": "local:0"}, "--scheduler local:N needs N >= 1 worker processes, got 'local:0'"),
    ({"shard_batches": 0}, "shard_batches must be >= 1, got 0"),
])
def test_a_bad_field_is_refused_when_the_run_is_made(fields, message):
    with pytest.raises(BadInputError, match=message):
        _run(**fields)


def test_an_attributor_without_the_contract_is_refused_and_a_run_is_immutable():
    with pytest.raises(BadInputError, match=r"^attributor <object object at 0x[0-9a-f]+> lacks 'name' \(see the "
                                            r"attributor contract\)$"):
        AttributionRun(object(), model_hash="h", model_name="m", dataset_name="d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        _run().batch_size = 64  # type: ignore[misc]
    assert _run(thumbnail_range=(0, 1)).thumbnail_range == ((0.0,), (1.0,))
    assert _run(thumbnail_range=([0, -1], [1, 2])).thumbnail_range == ((0.0, -1.0), (1.0, 2.0))
