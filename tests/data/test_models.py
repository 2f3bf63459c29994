"""Model factories, safe weight loading, and the model hash."""

from __future__ import annotations

import pickle

import pytest
import torch

from spray.data import load_model, model_hash
from spray.data.models import device_named
from spray.errors import BadInputError

SPEC = "tests.data.factories:tiny_model"


def test_load_model_builds_in_eval_mode_and_loads_weights(tmp_path):
    trained = load_model(SPEC)
    with torch.no_grad():
        trained[1].weight.add_(1.0)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    model = load_model(SPEC, tmp_path / "w.pt")
    assert not model.training
    assert torch.equal(model[1].weight, trained[1].weight)


def test_model_hash_is_stable_and_sensitive_to_every_weight():
    a, b = load_model(SPEC), load_model(SPEC)
    assert model_hash(a) == model_hash(b) and len(model_hash(a)) == 64
    with torch.no_grad():
        b[1].bias[0] += 1e-6
    assert model_hash(a) != model_hash(b)


def test_mismatched_weights_list_missing_unexpected_and_shapes(tmp_path):
    torch.save({"1.weight": torch.zeros(3, 4), "extra": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(BadInputError, match=r"missing keys \['1.bias'\].*unexpected keys \['extra'\].*"
                                            r"1.weight: file \(3, 4\) vs model \(2, 4\)"):
        load_model(SPEC, tmp_path / "w.pt")


def test_pickled_objects_are_refused_by_weights_only_loading(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": object()}, f)
    with pytest.raises(BadInputError, match="cannot be loaded safely"):
        load_model(SPEC, tmp_path / "evil.pt")


def test_factory_returning_a_non_module_is_refused():
    with pytest.raises(BadInputError, match="returned TensorDataset, not a torch.nn.Module"):
        load_model("tests.data.factories:tiny_dataset")


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(BadInputError, match="nope.pt does not exist"):
        load_model(SPEC, tmp_path / "nope.pt")


def test_a_file_holding_something_else_than_a_state_dict_is_refused(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(BadInputError, match="does not hold a state_dict .* but Tensor"):
        load_model(SPEC, tmp_path / "t.pt")


def test_checkpoint_nesting_the_state_dict_loads_and_dataparallel_prefix_gets_a_hint(tmp_path):
    state = load_model(SPEC).state_dict()
    torch.save({"state_dict": state, "epoch": torch.tensor(3)}, tmp_path / "ckpt.pt")
    assert model_hash(load_model(SPEC, tmp_path / "ckpt.pt")) == model_hash(load_model(SPEC))
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")
    with pytest.raises(BadInputError, match="saved from DataParallel"):
        load_model(SPEC, tmp_path / "dp.pt")


def test_model_hash_depends_on_dtype_and_buffers_not_only_bytes():
    a = torch.nn.BatchNorm1d(2)
    b = torch.nn.BatchNorm1d(2)
    assert model_hash(a) == model_hash(b)
    b.running_mean += 1
    assert model_hash(a) != model_hash(b)
    four_zero_bytes = [torch.zeros(1, dtype=torch.float32), torch.zeros(1, dtype=torch.int32)]
    hashes = set()
    for tensor in four_zero_bytes:
        module = torch.nn.Module()
        module.register_buffer("w", tensor)
        hashes.add(model_hash(module))
    assert len(hashes) == 2


def test_model_hash_is_the_same_in_another_process():
    import subprocess
    import sys

    code = f"from spray.data import load_model, model_hash; print(model_hash(load_model({SPEC!r})))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == model_hash(load_model(SPEC))


def test_devices_are_checked_before_anything_runs():
    assert device_named("cpu") == torch.device("cpu")
    assert next(load_model(SPEC, device="cpu").parameters()).device == torch.device("cpu")
    with pytest.raises(BadInputError, match=r"^device must be cpu, cuda, cuda:N or mps, got 'cuda:x'$"):
        device_named("cuda:x")
    if not torch.cuda.is_available():  # the suite's machines: a CPU build of torch
        with pytest.raises(BadInputError, match=r"^device 'cuda:0' is not available: torch .* use --device cpu$"):
            load_model(SPEC, device="cuda:0")
