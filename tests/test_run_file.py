"""`spray run FILE.toml`: a declarative audit, ClArC and its evaluation included; its file errors name the file,
line, table and parameter (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spray.cli import cli, main
from spray.errors import PipelineError
from spray.run import read_run, run_file
from spray.testing import pipeline_text

RUN = """
[audit]
out = "out"
[model]
factory = "tests.data.factories:tiny_model"
[train]
data = "npz:data.npz"
epochs = 2
batch_size = 8
[data]
source = "npz:data.npz"
[attribution]
method = "input_x_gradient"
batch_size = 8
[report]
path = ""
""" + pipeline_text("minimal")


@pytest.fixture()
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((40, 1, 2, 2), dtype=np.float32), y=np.arange(40) % 2)
    (tmp_path / "run.toml").write_text(RUN)
    return tmp_path


def test_run_trains_attributes_analyses_and_ranks_relative_to_the_file(run_dir, capsys):
    assert main(["run", str(run_dir / "run.toml"), "--json"]) == 0
    ranking = json.loads(capsys.readouterr().out)
    assert sorted(e["class"] for e in ranking) == [0, 1]
    assert (run_dir / "out" / "audit.h5").exists() and list((run_dir / "out").glob("model-*.pt"))


def test_second_run_reuses_trained_weights(run_dir, capsys):
    assert main(["run", str(run_dir / "run.toml")]) == 0
    weights = list((run_dir / "out").glob("model-*.pt"))
    mtime = weights[0].stat().st_mtime_ns
    assert main(["run", str(run_dir / "run.toml")]) == 0
    assert weights[0].stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[data]\nsource", "[dataz]\nsource"), r"unknown node \[dataz\]"),
        (("epochs = 2", "epochz = 2"), "unknown parameter 'train.epochz'"),
        (('[model]\nfactory = "tests.data.factories:tiny_model"', "[model]"), r"\[model\] needs factory"),
        (("batch_size = 8\n[report]", 'batch_size = 8\ndevice = "tpu"\n[report]'),
         r"attribution.device must be cpu, cuda, cuda:N or mps, got 'tpu'"),
    ],
)
def test_bad_run_files_name_the_problem(run_dir, change, message):
    (run_dir / "run.toml").write_text(RUN.replace(*change))
    with pytest.raises(PipelineError, match=message):
        read_run(run_dir / "run.toml")


def test_attribution_table_passes_allow_nonconservative_on(tmp_path, capsys):
    run = (RUN.replace('"tests.data.factories:tiny_model"', '"tests.data.factories:power_mean_model"')
           .replace("[train]\ndata = \"npz:data.npz\"\nepochs = 2\nbatch_size = 8\n", "")
           .replace('source = "npz:data.npz"', 'source = "tests.data.factories:conv_data"')
           .replace('method = "input_x_gradient"', 'method = "epsilon_plus_flat"'))
    (tmp_path / "run.toml").write_text(run)
    assert main(["run", str(tmp_path / "run.toml")]) == 2
    assert "error: LRP creates relevance at module 'pool' (_PowerMean" in capsys.readouterr().err
    (tmp_path / "run.toml").write_text(run.replace("batch_size = 8\n[report]",
                                                   "batch_size = 8\nallow_nonconservative = true\n[report]"))
    assert main(["run", str(tmp_path / "run.toml")]) == 0
    assert (tmp_path / "out" / "audit.h5").exists()


CLARC_RUN = """
[audit]
out = "out"
[model]
factory = "spray.demo:build_model"
[train]
data = "npz:train.npz"
epochs = 3
batch_size = 16
lr = 1e-2
[data]
source = "npz:train.npz"
[attribution]
batch_size = 40
[clarc]
methods = ["pclarc", "rrclarc"]
epochs = 1
[evaluate]
test = "npz:test.npz"
everywhere_test = "npz:stamped.npz"
[report]
path = "report.html"
""" + pipeline_text("tiny")


def _stamped_digits(n: int, seed: int, stamp: float) -> dict[str, np.ndarray]:
    """8x8 noise images of two classes (class 1 brighter); a share ``stamp`` of class 1 gets a bright corner."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = (rng.random((n, 1, 8, 8)) * 0.5 + 0.2 * y[:, None, None, None]).astype(np.float32)
    chosen = np.flatnonzero(y == 1)[: int(stamp * n / 2)]
    x[chosen, :, :3, :3] = 1.0
    return {"x": x, "y": y}


@pytest.fixture()
def clarc_dir(tmp_path):
    np.savez(tmp_path / "train.npz", **_stamped_digits(80, 0, 0.3))
    test = _stamped_digits(40, 1, 0.0)
    np.savez(tmp_path / "test.npz", **test)
    np.savez(tmp_path / "stamped.npz", **_stamped_digits(40, 1, 2.0))  # the corner in every image
    (tmp_path / "run.toml").write_text(CLARC_RUN)
    return tmp_path


def test_run_with_clarc_and_evaluate_corrects_the_top_cluster_and_measures_it(clarc_dir, capsys):
    from spray.clarc import run_name
    from spray.ranking import rank_classes
    from spray.store import AuditStore

    assert main(["run", str(clarc_dir / "run.toml")]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    out = clarc_dir / "out"
    with AuditStore(out / "audit.h5") as store:
        top = rank_classes(store).top_candidate()
        cluster = top.cluster.reference
        # The tiny classes are not flagged: 'top' is the best-ranked class, and each run says so on stderr.
        assert not top.flagged and f"top candidate: class {top.name!r} (not flagged, z {top.z_score:.1f})" in printed
        assert [line.split(", whose")[0] for line in captured.err.splitlines() if " is not flagged (q = " in line] == [
            f"warning: {method} corrected cluster {cluster}" for method in ("pclarc", "rrclarc")]
        for method in ("pclarc", "rrclarc"):
            run = run_name(method, cluster)
            _, attrs = store.read_node(f"clarc/{run}/result")
            assert attrs["cluster"] == cluster and attrs["everywhere"] == "given"
            assert attrs["epochs"] == (1 if method == "rrclarc" else None)
            assert (out / "clarc" / run / "weights.pt").is_file()
            original, corrected = attrs["metrics"]
            for row in (original, corrected):
                assert 0 <= row["clean_accuracy"] <= 1 and 0 <= row["everywhere_accuracy"] <= 1
                assert row["poisoned_accuracy"] is None and row["fda_rank"] is None
            assert f"{method} on cluster {cluster}" in printed
            verified = attrs["verification"]  # on by default; the tiny classes are not flagged, before or after
            assert verified["cluster"] == cluster and verified["verdict"] == "not flagged"
            assert (out / "clarc" / run / Path(verified["store"]).name).is_file()
    assert printed.count("everywhere acc") == 2  # one before/after table per method
    assert printed.count(f"verification: class {cluster.split(':')[0]} NOT FLAGGED") == 2
    assert "P-ClArC" in (out / "report.html").read_text(encoding="utf-8")


def test_run_without_evaluate_corrects_but_leaves_the_metrics_empty(clarc_dir, capsys):
    text = CLARC_RUN.replace('[evaluate]\ntest = "npz:test.npz"\neverywhere_test = "npz:stamped.npz"\n', "")
    text = text.replace('methods = ["pclarc", "rrclarc"]', 'methods = ["pclarc"]\nverify = false').replace(
        '"report.html"', '""')
    (clarc_dir / "run.toml").write_text(text)
    result = run_file(clarc_dir / "run.toml", progress=False)
    (corrected,) = result.clarc
    assert corrected.method == "pclarc" and corrected.weights.is_file()
    assert all(row["clean_accuracy"] is None for row in corrected.metrics)
    assert corrected.verification is None and not list(corrected.run_dir.glob("verify-*.h5"))  # verify = false


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[clarc]\nmethods", "[clarcs]\nmethods"), r"unknown node \[clarcs\]"),
        (("epochs = 1", 'epochs = "1"'), r"run.toml, line 17: 'clarc.epochs' must be int, got '1'"),
        (("epochs = 1", "epochs = 0"), r"line 17: clarc.epochs must be at least 1, got 0"),
        (('methods = ["pclarc", "rrclarc"]', 'methods = ["xclarc"]'),
         r"line 16: clarc.methods must list distinct methods of aclarc, auto, dfr, groupdro, pclarc, rrclarc, got \['xclarc'\]"),
        (("[clarc]\n", '[clarc]\ncluster = "8:kmeans"\n'),
         r"line 16: clarc.cluster must be \"top\" or cluster '8:kmeans' is not CLASS:CLUSTERING:ID"),
        (('test = "npz:test.npz"\n', ""), r"line 18: \[evaluate\] needs test"),
        (("[evaluate]\n", '[evaluate]\nrelevance_target = "input"\n'),
         r"evaluate.relevance_target must be one of label, prediction"),
        (("[clarc]\nmethods = [\"pclarc\", \"rrclarc\"]\nepochs = 1\n", ""),
         r"\[evaluate\] measures a ClArC correction: add a \[clarc\] table"),
        (("[evaluate]\n", "[evaluate]\nseed = 1\n"),
         r"unknown parameter 'evaluate.seed'; valid: everywhere_test, fda_rank, poisoned_test, relevance_target, "
         "test"),
    ],
)
def test_bad_clarc_and_evaluate_tables_name_file_line_table_and_key(clarc_dir, change, message, capsys):
    assert change[0] in CLARC_RUN
    (clarc_dir / "run.toml").write_text(CLARC_RUN.replace(*change))
    with pytest.raises(PipelineError, match=message):
        read_run(clarc_dir / "run.toml")
    assert main(["run", str(clarc_dir / "run.toml")]) == 2
    assert "run.toml" in capsys.readouterr().err


def test_shipped_run_files_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pipelines"
    for name in ("demo.toml", "template.toml"):
        tables, spec = read_run(root / name)
        assert tables["data"]["source"] and "fda" in spec.nodes
        assert tables["clarc"]["cluster"] == "top" and tables["evaluate"]["test"]


def test_demo_run_file_is_the_chain_spray_demo_runs():
    """pipelines/demo.toml trains with the demo's recipe, analyses with the default pipeline and evaluates on
    the demo's three test versions, as `spray demo` does."""
    from pathlib import Path

    from spray.demo import BATCH_SIZE, EPOCHS, LR
    from spray.pipeline import read_pipeline

    tables, spec = read_run(Path(__file__).resolve().parents[1] / "pipelines" / "demo.toml")
    assert {k: tables["train"][k] for k in ("epochs", "batch_size", "lr")} == {
        "epochs": EPOCHS, "batch_size": BATCH_SIZE, "lr": LR}
    assert spec.nodes == read_pipeline(None).nodes
    assert tables["evaluate"] | {"fda_rank": False} == {
        "test": "spray.demo:clean_test_dataset", "poisoned_test": "spray.demo:poisoned_test_dataset",
        "everywhere_test": "spray.demo:everywhere_test_dataset", "fda_rank": False,
        "relevance_target": "prediction"}
    demo = next(p for p in cli.commands["demo"].params if p.name == "clarc_method")
    assert tables["clarc"]["methods"] == [demo.default] == ["auto"]
    assert "auto" in demo.type.choices


def test_quick_demo_pipeline_is_the_default_without_umap():
    """`spray demo --quick` saves UMAP's numba compilation only: its clusterings, hence the ranking, are the
    default pipeline's."""
    from spray.pipeline import pipeline_from_text, read_pipeline
    from spray.demo.audit import QUICK_PIPELINE

    quick, default = pipeline_from_text(QUICK_PIPELINE).nodes, read_pipeline(None).nodes
    assert quick == {name: params for name, params in default.items() if name != "umap"}


def test_data_transform_table_preprocesses_a_folder_of_mixed_sizes(tmp_path, capsys):
    from PIL import Image

    from spray.store import AuditStore

    rng = np.random.default_rng(0)
    for i in range(40):
        folder = tmp_path / "images" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(3, 9)), int(rng.integers(3, 9)))
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    text = RUN.replace('[train]\ndata = "npz:data.npz"\nepochs = 2\nbatch_size = 8\n', "").replace(
        'source = "npz:data.npz"',
        'source = "folder:images"\n[data.transform]\nresize = [2, 2]\nmode = "grayscale"\nmean = 0.5\nstd = 0.25',
    ).replace('method = "input_x_gradient"', 'method = "epsilon_gamma_box"\nallow_nonconservative = true')
    (tmp_path / "run.toml").write_text(text)
    assert main(["run", str(tmp_path / "run.toml"), "--json"]) == 0
    with AuditStore(tmp_path / "out" / "audit.h5") as store:
        record = store.attrs()["dataset"]
        params = store.attribution_info("epsilon_gamma_box")["params"]
    assert record["transform"] == {"resize": [2, 2], "crop": None, "mode": "grayscale", "mean": [0.5], "std": [0.25]}
    assert len(record["sha256"]) == 40 and record["files"][:2] == ["a/0.jpg", "a/10.jpg"]
    assert params["low"] == [[[-2.0]]] and params["high"] == [[[2.0]]]  # (0 - 0.5) / 0.25, (1 - 0.5) / 0.25


def test_relative_csv_sources_resolve_against_the_file_keeping_their_options(tmp_path):
    from spray.run import _relative_source

    assert _relative_source("csv:t/l.csv?label=y", tmp_path) == f"csv:{tmp_path / 't' / 'l.csv'}?label=y"
    assert _relative_source("csv:/abs/l.csv", tmp_path) == "csv:/abs/l.csv"
