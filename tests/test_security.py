"""Untrusted files stay data (docs/bad-input.md, "Security"): weights load weights_only, nothing is unpickled,
and nothing a store records is ever imported."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from spray.cli import main
from spray.testing import pipeline_text

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spray"


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a call's function, as written."""
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword(call: ast.Call, name: str) -> object:
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0].value if found and isinstance(found[0], ast.Constant) else "<not a constant>" if found else None


def _package_calls() -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            found.append((f"{path.relative_to(REPO)}:{call.lineno}", call))
    return found


def test_every_torch_load_in_the_package_is_weights_only():
    loads = [(where, call) for where, call in _package_calls()
             if _dotted(call.func) in ("torch.load", "torch.serialization.load", "load")]
    assert len(loads) >= 3  # spray.data.models.safe_load, fine-tuning checkpoints, the demo's weights
    assert [where for where, call in loads if _keyword(call, "weights_only") is not True] == []


def test_the_package_never_unpickles_evaluates_or_imports_by_a_name_it_read():
    """No pickle/marshal loading, no eval/exec; np.load only with allow_pickle=False; importlib only in the
    MOD:FACTORY importer and in spray/__init__.py's fixed table of lazy re-exports."""
    problems = []
    for where, call in _package_calls():
        name = _dotted(call.func)
        if name in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "eval", "exec", "__import__"):
            problems.append(f"{where}: {name}")
        if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is not False:
            problems.append(f"{where}: {name} without allow_pickle=False")
        if name == "importlib.import_module" and not where.startswith(("spray/data/_imports.py", "spray/__init__.py")):
            problems.append(f"{where}: {name}")
    assert problems == []


# ---------------------------------------------------------------------------------------------- imports

EVIL = "planted_by_store"
PIPELINE = pipeline_text("tiny")


def _cli(*argv: str) -> tuple[int, str, str]:
    with CliRunner().isolation() as (out, err, _):
        code = main(list(argv))
    return code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")


@pytest.fixture
def planted(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """An analysed store whose every record names module ``planted_by_store``, which, if imported,
    writes a marker file; the module is importable from the working directory and from sys.path."""
    marker = tmp_path / "imported"
    (tmp_path / f"{EVIL}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def build():\n    raise RuntimeError('planted code ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(REPO)  # tests.data.factories
    store = tmp_path / "audit.h5"
    (tmp_path / "p.toml").write_text(PIPELINE)
    factories = ("--model", "tests.data.factories:conv_model", "--data", "tests.data.factories:conv_data")
    assert _cli("attribute", *factories, "--store", str(store))[0] == 0
    assert _cli("analyze", str(store), "--pipeline", str(tmp_path / "p.toml"))[0] == 0
    spec = f"{EVIL}:build"
    with h5py.File(store, "r+") as f:
        f.attrs["model"] = json.dumps({"name": spec, "hash": spec})
        f.attrs["dataset"] = json.dumps({"name": spec, "size": 40})
        group = f["attributions/epsilon_plus_flat"]
        group.attrs["model_name"] = spec
        group.attrs["method"] = spec
        group.attrs["params"] = json.dumps({"names": {"features.0": spec}, "types": {spec: spec}})
    monkeypatch.chdir(tmp_path)
    return store, marker


def test_reading_and_correcting_a_store_never_imports_what_it_names(planted, tmp_path, monkeypatch):
    store, marker = planted
    monkeypatch.chdir(REPO)
    model = ("--model", "tests.data.factories:conv_model")
    commands = [
        ("info", str(store)), ("info", str(store), "--json"), ("rank", str(store)), ("rank", str(store), "--json"),
        ("report", str(store), "-o", str(tmp_path / "report.html")),
        ("export", "tables", str(store), "--out", str(tmp_path / "tables")),
        ("export", "virelay", str(store), "--out", str(tmp_path / "virelay")),
        ("clarc", str(store), "--cluster", "1:kmeans_2:0", "--method", "pclarc", *model,
         "--data", "tests.data.factories:conv_data", "--out", str(tmp_path / "runs"), "--json"),
        ("evaluate", str(store), "--run", "pclarc_1_kmeans_2_0", *model, "--test", "tests.data.factories:conv_data"),
    ]
    for argv in commands:
        code, out, err = _cli(*argv)
        assert code == 0, (argv, err)
        assert EVIL not in sys.modules and not marker.exists(), argv
        if argv[:3] == ("info", str(store), "--json"):
            info = json.loads(out)  # the records are shown as the text they are
            assert info["model"]["name"] == info["attributions"]["epsilon_plus_flat"]["method"] == f"{EVIL}:build"
    # The control: naming the module on the command line is what imports it.
    assert _cli("attribute", "--model", f"{EVIL}:build", "--data", "tests.data.factories:conv_data",
                "--store", str(tmp_path / "new.h5"))[0] == 2
    assert marker.exists()
    sys.modules.pop(EVIL, None)


def test_an_analysis_pipeline_with_a_model_table_imports_nothing(planted, tmp_path):
    store, marker = planted
    pipeline = tmp_path / "evil.toml"
    pipeline.write_text(f'[model]\nfactory = "{EVIL}:build"\n' + PIPELINE)
    code, _, err = _cli("analyze", str(store), "--pipeline", str(pipeline))
    assert code == 2 and "unknown node [model]" in err
    assert EVIL not in sys.modules and not marker.exists()
