"""`spray run FILE.toml`: a declarative audit; its file errors name the table and parameter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spray.cli import main
from spray.errors import PipelineError
from spray.run import read_run

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
[preprocess]
grid = 2
[knn]
n_neighbors = 4
[spectral]
n_eigenpairs = 3
[kmeans]
k_max = 3
n_init = 1
[fda]
n_permutations = 10
"""


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
    ],
)
def test_bad_run_files_name_the_problem(run_dir, change, message):
    (run_dir / "run.toml").write_text(RUN.replace(*change))
    with pytest.raises(PipelineError, match=message):
        read_run(run_dir / "run.toml")


def test_shipped_run_files_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pipelines"
    for name in ("demo.toml", "template.toml"):
        tables, spec = read_run(root / name)
        assert tables["data"]["source"] and "fda" in spec.nodes
