"""The attribution runner: every sample into the store, resumable to identical bytes, inputs validated."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from spray.attribution import AttributionRun, attribute_dataset
from spray.attribution.methods import get_method
from spray.data import load_model, open_source
from spray.errors import BadInputError, StoreError
from spray.store import AuditStore, format_info

N, CLASSES, BATCH = 50, 4, 8


class GradientTimesInput:
    """A minimal attributor following the contract: gradient of the target logit times the input."""

    name = "gxi"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def params(self) -> dict:
        return {"scale": self.scale}

    def attribute(self, model, x, target):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
        return (self.scale * grad * x).detach(), logits.detach()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 5, CLASSES)
    ).eval()


def make_dataset(n: int = N) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 2, 6, 10, generator=gen)
    return TensorDataset(x, torch.randint(0, CLASSES, (n,), generator=gen))


def run(path: Path, model=None, dataset=None, attributor=None, **kwargs) -> dict:
    kwargs = {"model_hash": "h1", "model_name": "net", "dataset_name": "toy", "batch_size": BATCH,
              "progress": False, **kwargs}
    run = AttributionRun(attributor or GradientTimesInput(), **kwargs)
    return attribute_dataset(path, model or make_model(), dataset or make_dataset(), run)


def datasets_of(path: Path) -> dict[str, np.ndarray]:
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


class _Interrupt(Exception):
    pass


def _interrupt_after(batches: int):
    seen = []

    def on_batch(start: int, stop: int) -> None:
        seen.append((start, stop))
        if len(seen) == batches:
            raise _Interrupt

    return on_batch


def test_every_sample_is_attributed_with_labels_targets_and_thumbnails(tmp_path):
    path = tmp_path / "audit.h5"
    model, data = make_model(), make_dataset()
    summary = run(path, model, data, label_names=["a", "b", "c", "d"])
    assert (summary["computed"], summary["skipped"], summary["complete"]) == (N, 0, True)
    x, y = data.tensors
    relevance, logits = GradientTimesInput().attribute(model, x, y)
    with AuditStore(path) as store:
        stored = store.read("attributions/gxi/relevance")
        np.testing.assert_allclose(stored, relevance.numpy(), rtol=1e-5, atol=1e-7)
        logged = store.read("attributions/gxi/logits")
        np.testing.assert_allclose(logged, logits.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(store.read("attributions/gxi/target"), y.numpy())
        np.testing.assert_array_equal(store.read("samples/label"), y.numpy())
        np.testing.assert_array_equal(store.read("samples/index"), np.arange(N))
        thumbs = store.read("samples/thumbnail")
        info = store.info()
    assert thumbs.shape == (N, 2, 6, 10) and thumbs.dtype == np.uint8
    assert (thumbs.reshape(N, -1).min(1) == 0).all() and (thumbs.reshape(N, -1).max(1) == 255).all()
    assert info["model"] == {"name": "net", "hash": "h1"} and info["dataset"] == {"name": "toy", "size": N}
    assert info["label_names"] == ["a", "b", "c", "d"]
    a = info["attributions"]["gxi"]
    assert (a["method"], a["params"], a["target"], a["batch_size"]) == ("gxi", {"scale": 1.0}, "label", BATCH)


def test_prediction_target_explains_the_argmax(tmp_path):
    path = tmp_path / "audit.h5"
    model, data = make_model(), make_dataset()
    run(path, model, data, target="prediction", name="pred")
    with torch.no_grad():
        predicted = model(data.tensors[0]).argmax(1).numpy()
    with AuditStore(path) as store:
        np.testing.assert_array_equal(store.read("attributions/pred/target"), predicted)
        np.testing.assert_array_equal(store.read("samples/label"), data.tensors[1].numpy())
        assert store.attribution_info("pred")["target"] == "prediction"


def test_resumed_run_is_byte_identical_to_an_uninterrupted_run(tmp_path):
    fresh, resumed = tmp_path / "fresh.h5", tmp_path / "resumed.h5"
    run(fresh)
    with pytest.raises(_Interrupt):
        run(resumed, on_batch=_interrupt_after(3))
    with AuditStore(resumed) as store:
        assert store.attribution_info("gxi")["done"] == 3 * BATCH
    summary = run(resumed)
    assert (summary["skipped"], summary["computed"], summary["complete"]) == (3 * BATCH, N - 3 * BATCH, True)
    want, got = datasets_of(fresh), datasets_of(resumed)
    assert set(want) == set(got)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), name


def test_run_killed_by_sigkill_resumes_to_the_same_result(tmp_path):
    fresh, killed = tmp_path / "fresh.h5", tmp_path / "killed.h5"
    run(fresh)
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import importlib.util, os, signal
            spec = importlib.util.spec_from_file_location("t", {__file__!r})
            t = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(t)
            def die(start, stop):
                if stop >= 4 * t.BATCH:
                    os.kill(os.getpid(), signal.SIGKILL)
            t.run({str(killed)!r}, on_batch=die)
        """)],
        capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    summary = run(killed)  # the writer lock died with the child
    assert summary["skipped"] == 4 * BATCH
    want, got = datasets_of(fresh), datasets_of(killed)
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name


def test_complete_attribution_is_not_recomputed(tmp_path):
    path = tmp_path / "audit.h5"
    run(path)
    summary = run(path)
    assert (summary["computed"], summary["skipped"], summary["complete"]) == (0, N, True)


def test_attribution_of_another_model_is_refused_with_overwrite_hint(tmp_path):
    path = tmp_path / "audit.h5"
    run(path)
    hint = r"holds attribution 'gxi' of model h1 .*overwrite=True \(--overwrite\)"
    with pytest.raises(StoreError, match=hint):
        run(path, model_hash="h2")
    with pytest.raises(StoreError, match="params"):
        run(path, attributor=GradientTimesInput(scale=2.0))
    with pytest.raises(StoreError, match="target"):
        run(path, target="prediction")


def test_overwrite_replaces_the_attribution(tmp_path):
    path = tmp_path / "audit.h5"
    run(path)
    with AuditStore(path) as store:
        before = store.read("attributions/gxi/relevance")
        old_id = store.attribution_info("gxi")["attribution_id"]
    summary = run(
        path, model_hash="h2", model_name="net2", attributor=GradientTimesInput(scale=2.0), overwrite=True
    )
    assert summary["computed"] == N
    with AuditStore(path) as store:
        info = store.info()
        np.testing.assert_allclose(store.read("attributions/gxi/relevance"), 2 * before, rtol=1e-6)
    a = info["attributions"]["gxi"]
    assert (a["model_hash"], a["params"], a["complete"]) == ("h2", {"scale": 2.0}, True)
    assert a["attribution_id"] != old_id
    assert info["model"] == {"name": "net2", "hash": "h2"}  # no attribution of the old model is left


def test_resume_with_another_batch_size_is_refused(tmp_path):
    path = tmp_path / "audit.h5"
    with pytest.raises(_Interrupt):
        run(path, on_batch=_interrupt_after(1))
    with pytest.raises(BadInputError, match=f"batch size {BATCH}.*batch_size={BATCH}"):
        run(path, batch_size=BATCH + 1)


def test_dataset_of_another_size_is_refused(tmp_path):
    path = tmp_path / "audit.h5"
    run(path)
    with pytest.raises(StoreError, match=f"holds {N} samples .*'toy'.* has {N - 1}"):
        run(path, dataset=make_dataset(N - 1), name="other")


def test_non_finite_output_names_the_samples_and_keeps_earlier_batches(tmp_path):
    path = tmp_path / "audit.h5"
    data = make_dataset()
    data.tensors[0][19, 0, 0, 0] = float("nan")
    data.tensors[0][21, 1, 2, 3] = float("inf")
    with pytest.raises(BadInputError, match=r"non-finite .* dataset samples 19, 21;"):
        run(path, dataset=data)
    with AuditStore(path) as store:
        done = store.read("attributions/gxi/done")
        labels = store.read("samples/label")
    assert done[:16].all() and not done[16:].any()  # batch [16, 24) wrote nothing
    assert (labels[16:24] == -1).all()


def test_label_out_of_range_names_the_sample(tmp_path):
    data = make_dataset()
    data.tensors[1][5] = CLASSES
    with pytest.raises(BadInputError, match=f"sample 5 has label {CLASSES}, outside \\[0, {CLASSES}\\)"):
        run(tmp_path / "audit.h5", dataset=data)


class ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_first_sample_of_another_shape_is_named(tmp_path):
    items = [(torch.rand(2, 6, 10), 0) for _ in range(12)]
    items[9] = (torch.rand(2, 6, 11), 0)
    items[11] = (torch.rand(2, 5, 10), 0)
    message = r"sample 9 has shape \(2, 6, 11\), but sample 0 has \(2, 6, 10\)"
    with pytest.raises(BadInputError, match=message):
        run(tmp_path / "audit.h5", dataset=ListDataset(items))


@pytest.mark.parametrize(("item", "message"), [
    ((torch.zeros(2, 6, 10, dtype=torch.uint8), 0), "dtype torch.uint8.*x.float"),
    ((torch.zeros(2, 6, 10), 1.0), "label 1.0; labels must be integers"),
    (torch.zeros(2, 6, 10), "must yield \\(x, y\\) pairs"),
])
def test_unusable_samples_are_refused_by_index(tmp_path, item, message):
    with pytest.raises(BadInputError, match=f"sample 0.*{message}"):
        run(tmp_path / "audit.h5", dataset=ListDataset([item] * 3))


def test_model_modes_are_restored(tmp_path):
    model = make_model().train()
    model[0].eval()
    run(tmp_path / "audit.h5", model=model)
    assert model.training and not model[0].training and model[1].training


def test_thumbnails_are_area_downsampled_within_a_fixed_range(tmp_path):
    x = torch.linspace(0, 1, 100).repeat(2, 40, 1)[None].repeat(3, 1, 1, 1)  # (3, 2, 40, 100) ramps
    data = TensorDataset(x, torch.zeros(3, dtype=torch.int64))
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 40 * 100, CLASSES))
    run(tmp_path / "audit.h5", model=model, dataset=data, thumbnail_size=25, thumbnail_range=(0.0, 2.0))
    with AuditStore(tmp_path / "audit.h5") as store:
        thumbs = store.read("samples/thumbnail")
    assert thumbs.shape == (3, 2, 10, 25)
    expected = np.rint(x[0, 0, 0].reshape(25, 4).mean(1).numpy() / 2 * 255)
    np.testing.assert_array_equal(thumbs[0, 0, 0], expected)


def test_float16_relevance_and_no_thumbnails(tmp_path):
    path = tmp_path / "audit.h5"
    run(path, relevance_dtype="float16", thumbnail_size=None)
    with AuditStore(path) as store:
        info = store.info()
    assert info["attributions"]["gxi"]["dtype"] == "float16" and info["thumbnails"] is None


def test_progress_goes_to_stderr_only(tmp_path, capsys):
    run(tmp_path / "audit.h5", progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "attribute gxi" in err


def test_a_run_refused_before_its_first_batch_leaves_no_store_and_a_later_refusal_keeps_done_batches(tmp_path):
    """An unreadable image in the first batch: no store is left; in a later batch: earlier batches stay."""
    root = tmp_path / "images"
    for i, cls in enumerate("aabb"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.new("L", (2, 2), color=i).save(root / cls / f"{i}.png")
    broken = root / "b" / "3.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: data.index(b"IDAT") + 6])  # a valid header, the pixel data cut short
    path = tmp_path / "audit.h5"
    args = (load_model("tests.data.factories:tiny_model"), open_source(f"folder:{root}"))
    kwargs = {"model_hash": "h", "model_name": "tiny", "dataset_name": "folder"}
    message = f"^image {broken} cannot be read: .*; replace or remove the file$"
    with pytest.raises(BadInputError, match=message):
        attribute_dataset(path, *args, AttributionRun(get_method("epsilon_plus_flat"), batch_size=4, **kwargs))
    assert not path.exists()
    with pytest.raises(BadInputError, match=message):
        attribute_dataset(path, *args, AttributionRun(get_method("epsilon_plus_flat"), batch_size=2, **kwargs))
    with AuditStore(path) as store:
        assert store.read("attributions/epsilon_plus_flat/done").tolist() == [True, True, False, False]


def test_each_samples_input_share_is_stored_and_summarised(tmp_path):
    path = tmp_path / "audit.h5"
    model, data = make_model(), make_dataset()
    run(path, model, data)
    x, y = data.tensors
    relevance, logits = GradientTimesInput().attribute(model, x, y)
    expected = relevance.sum((1, 2, 3)).double() / logits.gather(1, y[:, None])[:, 0].double()
    with AuditStore(path) as store:
        share = store.read("attributions/gxi/input_share")
        summary = store.info()["attributions"]["gxi"]["input_share"]
    assert share.dtype == np.float32
    np.testing.assert_allclose(share, expected.numpy(), rtol=1e-4)
    q = np.quantile(share.astype(np.float64), [0.0, 0.05, 0.5, 0.95, 1.0])
    assert summary == {"n": N, "min": round(q[0], 6), "p05": round(q[1], 6), "median": round(q[2], 6),
                       "p95": round(q[3], 6), "max": round(q[4], 6),
                       "within_5pct": int(np.count_nonzero(np.abs(share.astype(np.float64) - 1) <= 0.05))}


def test_lrp_that_creates_relevance_is_refused_before_the_store_unless_allowed(tmp_path):
    from spray.errors import NonConservativeError
    from tests.data.factories import conv_data, power_mean_model

    path = tmp_path / "audit.h5"
    lrp = get_method("epsilon_plus_flat")
    with pytest.raises(NonConservativeError, match=r"^LRP creates relevance at module 'pool' \(_PowerMean"):
        run(path, power_mean_model(), conv_data(), lrp)
    assert not path.exists()
    summary = run(path, power_mean_model(), conv_data(), lrp, allow_nonconservative=True)
    assert summary["complete"]
    with AuditStore(path) as store:
        share = store.info()["attributions"]["epsilon_plus_flat"]["input_share"]
    assert share["n"] == 40 and share["within_5pct"] == 0 and share["median"] > 1.5


def test_an_attribution_without_input_share_resumes_without_it(tmp_path):
    path = tmp_path / "audit.h5"
    with pytest.raises(_Interrupt):
        run(path, on_batch=_interrupt_after(2))
    with h5py.File(path, "a") as f:  # as a store written before spray stored the input share
        del f["attributions/gxi/input_share"]
    assert run(path)["complete"]
    with AuditStore(path) as store:
        assert "input_share" not in store.info()["attributions"]["gxi"]
        assert "input share" not in format_info(store.info())


def test_decoding_workers_give_the_store_one_process_gives_and_the_same_refusal(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(10):
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (2, 2), dtype=np.uint8)).save(root / "ab"[i % 2] / f"{i}.png")
    model = load_model("tests.data.factories:tiny_model")
    kwargs = {"model_hash": "h", "model_name": "tiny", "dataset_name": "folder", "batch_size": 3, "progress": False}
    stores = {}
    for workers in (0, 2):
        stores[workers] = tmp_path / f"w{workers}.h5"
        attribute_dataset(stores[workers], model, open_source(f"folder:{root}"),
                          AttributionRun(get_method("epsilon"), workers=workers, **kwargs))
    with AuditStore(stores[0]) as one, AuditStore(stores[2]) as two:
        for path in ("attributions/epsilon/relevance", "samples/thumbnail", "samples/index"):
            assert np.array_equal(one.read(path), two.read(path))
    broken = root / "b" / "7.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: data.index(b"IDAT") + 6])
    with pytest.raises(BadInputError, match=f"^image {broken} cannot be read: .*; replace or remove the file$"):
        attribute_dataset(tmp_path / "w.h5", model, open_source(f"folder:{root}"),
                          AttributionRun(get_method("epsilon"), workers=2, **kwargs))
    with AuditStore(tmp_path / "w.h5") as store:  # the batches before the one holding 7.png are done
        assert store.read("attributions/epsilon/done").tolist() == [True] * 6 + [False] * 4


def test_lrp_records_the_traced_graph_and_resumes_only_the_same_one(tmp_path):
    from tests.data.factories import conv_data, plain_block_model, residual_block_model

    path, lrp, data = tmp_path / "audit.h5", get_method("epsilon_plus_flat"), conv_data()
    with pytest.raises(_Interrupt):
        run(path, plain_block_model(), data, lrp, on_batch=_interrupt_after(2))
    with AuditStore(path) as store:
        trace = store.attribution_info("epsilon_plus_flat")["trace"]
    assert trace == lrp.trace_record(plain_block_model(), data[0][0][None])
    new = lrp.trace_record(residual_block_model(), data[0][0][None])
    message = (f"store {path} holds attribution 'epsilon_plus_flat' of another graph of this model: same weights, "
               f"but the traced forward or its rules differ (trace sha256: store {trace['hash']}, this run "
               f"{new['hash']}; first difference: the store has 'mean' (Proportional(epsilon=1e-09)) where this "
               "run has 'add' (Proportional(epsilon=1e-09))); pass overwrite=True (--overwrite) to replace it, or "
               "choose another name (--name)")
    with pytest.raises(StoreError) as refused:
        run(path, residual_block_model(), data, lrp)
    assert str(refused.value) == message
    summary = run(path, plain_block_model(), data, lrp)
    assert (summary["skipped"], summary["complete"]) == (2 * BATCH, True)


def test_an_attribution_without_a_trace_record_resumes_and_gradient_methods_record_none(tmp_path):
    from tests.data.factories import conv_data, plain_block_model, residual_block_model

    path, lrp = tmp_path / "audit.h5", get_method("epsilon_plus_flat")
    with pytest.raises(_Interrupt):
        run(path, plain_block_model(), conv_data(), lrp, on_batch=_interrupt_after(1))
    with h5py.File(path, "a") as f:  # as a store written before spray recorded the trace
        del f["attributions/epsilon_plus_flat"].attrs["trace"]
    assert run(path, residual_block_model(), conv_data(), lrp)["complete"]
    run(path, plain_block_model(), conv_data(), name="gradient")
    with AuditStore(path) as store:
        assert "trace" not in store.attribution_info("epsilon_plus_flat")
        assert "trace" not in store.attribution_info("gradient")
