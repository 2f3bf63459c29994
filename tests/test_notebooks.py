"""The notebooks in notebooks/ run end to end, headless, with their quick settings, so they never rot.

Each notebook is executed with nbclient in a fresh kernel (``python3`` from ipykernel) whose working
directory is a temporary one. Its cell tagged ``parameters`` is followed by an injected cell setting
``QUICK = True`` and ``OUT_DIR`` (papermill's convention), so a run takes seconds instead of a minute or more (notebooks/README.md).
No shell magics: the notebooks are plain Python, and the command line is checked here with subprocesses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT = 600  # seconds per cell: the demo's training is one cell, and CI machines can be busy
SHAPES_MODEL_HEADER = """\
from collections import OrderedDict

import torch
from torch import nn

from spray.lrp import Sum

"""

pytestmark = pytest.mark.slow


def tagged(nb: nbformat.NotebookNode, tag: str) -> list[int]:
    return [i for i, cell in enumerate(nb.cells) if tag in cell.metadata.get("tags", [])]


def execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    """Run notebook ``name`` with QUICK = True and OUT_DIR under ``workdir``; returns it with outputs."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (index,) = tagged(nb, "parameters")
    injected = nbformat.v4.new_code_cell(f"QUICK = True\nOUT_DIR = {str(workdir / 'out')!r}")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell and the traceback, on the first error
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors, errors
    return nb


def text(nb: nbformat.NotebookNode) -> str:
    """Everything the code cells printed or returned, as plain text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def count(nb: nbformat.NotebookNode, mime: str) -> int:
    return sum(
        mime in out.get("data", {})
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.output_type in ("execute_result", "display_data")
    )


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert len(tagged(nb, "parameters")) == 1, f"{path.name}: one cell must be tagged 'parameters'"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


def test_quickstart_finds_the_planted_artifact(tmp_path):
    nb = execute("quickstart.ipynb", tmp_path)
    printed = text(nb)
    assert re.search(r"planted artifact FOUND: class 8 was poisoned, class 8 ranks first", printed), printed
    assert count(nb, "text/html") >= 2  # the ranking and the flagged memberships as DataFrames
    assert count(nb, "image/png") >= 3  # heatmaps, spectrum, map
    report = tmp_path / "out" / "quick-seed0" / "report.html"
    assert report.is_file() and "report written to" in printed


def run_commands(nb: nbformat.NotebookNode, workdir: Path, commands: list[list[object]]) -> str:
    """Run ``spray`` commands in ``workdir``, where the notebook's model cells become ``shapes_model.py``
    (as its markdown says); each must exit 0. Returns the last one's stdout."""
    model_cells = tagged(nb, "model")
    assert model_cells
    (workdir / "shapes_model.py").write_text(
        SHAPES_MODEL_HEADER + "\n\n".join(nb.cells[i].source for i in model_cells) + "\n"
    )
    for argv in commands:
        result = subprocess.run(
            [sys.executable, "-m", "spray.cli", *map(str, argv)], cwd=workdir, capture_output=True, text=True
        )
        assert result.returncode == 0, (argv, result.stderr[-2000:])
    return result.stdout


@pytest.fixture(scope="module")
def own_model(tmp_path_factory) -> tuple[nbformat.NotebookNode, Path]:
    workdir = tmp_path_factory.mktemp("own_model")
    return execute("audit_your_own_model.ipynb", workdir), workdir


def test_own_model_audit_ranks_the_shortcut_class_first(own_model):
    nb, workdir = own_model
    printed = text(nb)
    found = re.search(
        r"top-ranked class: (\w+) \(planted shortcut: (\w+)\); its flagged cluster holds (\d+) images, "
        r"(\d+) of the (\d+) with the bar", printed
    )
    assert found, printed
    top, shortcut, flagged, hit, planted = found.groups()
    assert top == shortcut == "cross"
    assert int(hit) >= 0.9 * int(planted) and int(hit) >= 0.9 * int(flagged), found.group(0)
    assert count(nb, "image/png") >= 3  # examples, custom rules, flagged heatmaps
    assert (workdir / "out" / "quick" / "report.html").is_file()


def test_own_model_cli_commands_reproduce_the_notebook(own_model):
    """The markdown cell's `spray` commands, run on the files the notebook saved, give its ranking."""
    from spray import AuditStore, rank_classes

    nb, workdir = own_model
    out = workdir / "out" / "quick"
    commands = [
        ["attribute", "--model", "shapes_model:build_model", "--weights", out / "model.pt",
         "--data", f"npz:{out / 'shapes.npz'}", "--store", out / "cli.h5", "--batch-size", "64"],
        ["analyze", out / "cli.h5", "--pipeline", out / "pipeline.toml"],
        ["rank", out / "cli.h5"],
        ["report", out / "cli.h5", "-o", out / "cli-report.html"],
        ["info", out / "cli.h5"],
        ["rank", out / "cli.h5", "--json"],
    ]
    cli_ranking = json.loads(run_commands(nb, workdir, commands))
    with AuditStore(out / "shapes.h5") as store:
        notebook_ranking = rank_classes(store)
    assert cli_ranking[0]["name"] == "cross"
    assert [(e["class"], e["members"]) for e in cli_ranking] == [
        (e["class"], e["members"]) for e in notebook_ranking.to_json()
    ]
    assert (out / "cli-report.html").is_file()


def test_own_model_image_files_are_audited_from_the_command_line_with_a_preprocessing_spec(own_model):
    """The image-files cell's commands: a folder of JPEGs of mixed sizes and a label table, preprocessed back
    into the model's inputs, rank the shortcut class first; the report names the site of its flagged group."""
    nb, workdir = own_model
    out = workdir / "out" / "quick"
    images = out / "images"
    spec = ["--resize", "32,32", "--grayscale", "--normalize", "0,0.5", "--batch-size", "64"]
    model = ["--model", "shapes_model:build_model", "--weights", out / "model.pt"]
    ranking = json.loads(run_commands(nb, workdir, [
        ["attribute", *model, "--data", f"folder:{images}", *spec, "--store", out / "folder.h5"],
        ["attribute", *model, "--data", f"csv:{images / 'labels.csv'}?names=classes.txt", *spec, "--workers", "2",
         "--store", out / "table.h5"],
        ["analyze", out / "table.h5", "--pipeline", out / "pipeline.toml"],
        ["report", out / "table.h5", "-o", out / "table-report.html"],
        ["rank", out / "table.h5", "--json"],
    ]))
    assert ranking[0]["name"] == "cross" and ranking[0]["flagged"]
    report = (out / "table-report.html").read_text(encoding="utf-8")
    assert re.search(r"The flagged group of class &#39;cross&#39; is \d+ % site &#39;B&#39; \(class: \d+ %\)", report)
    from spray import AuditStore

    with AuditStore(out / "folder.h5") as folder, AuditStore(out / "table.h5") as table:
        assert folder.read("samples/label").tolist() == table.read("samples/label").tolist()
        record = table.attrs()["dataset"]
    assert record["transform"]["resize"] == [32, 32] and len(record["sha256"]) == len(record["files"])
